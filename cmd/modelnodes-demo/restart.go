package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/modelnodes/modelnodes/internal/testing/devchain"
)

// restart restarts parts of a kept demo the way an operator would after a
// fault, with their state: the local Solana front (its accounts are kept in
// solana/accounts.json, so it serves the same chain at a later slot), or
// agents of the dev cluster (deploy/dev/restart: stopped gracefully, started
// again with their data, Vault unsealed with the key in the state dir; the
// models keep running).
func (d *demo) restart(ctx context.Context, what []string) error {
	if _, err := os.Stat(d.path(".modelnodes-demo")); err != nil {
		return fmt.Errorf("%s is not a demo state dir: nothing to restart", d.o.state)
	}
	if len(what) == 0 {
		return errors.New("restart what? front, consul, vault or nomad")
	}
	offset := d.o.offset
	if b, err := os.ReadFile(d.path("state.json")); err == nil {
		var rec record
		if json.Unmarshal(b, &rec) == nil {
			offset = rec.Offset
		}
	}
	for _, w := range what {
		switch w {
		case "front", "solana":
			if err := d.restartFront(ctx, offset); err != nil {
				return err
			}
		case "consul", "vault", "nomad":
			c, err := d.openCluster()
			if err != nil {
				return fmt.Errorf("the demo's dev cluster: %w", err)
			}
			cmd := exec.CommandContext(ctx, filepath.Join(d.repo, "deploy", "dev", "restart"), w)
			cmd.Env = c.environ("MODELNODES_STATE="+d.path("cluster"), "DEV_PORT_OFFSET="+strconv.Itoa(offset))
			d.command(fmt.Sprintf("MODELNODES_STATE=%s DEV_PORT_OFFSET=%d %s %s", d.path("cluster"), offset,
				d.rel(filepath.Join(d.repo, "deploy", "dev", "restart")), w))
			out, err := cmd.CombinedOutput()
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if l != "" && !strings.HasPrefix(l, "export ") {
					d.detail("%s", l)
				}
			}
			if err != nil {
				return fmt.Errorf("deploy/dev/restart %s: %w", w, err)
			}
		default:
			return fmt.Errorf("restart %q: want front, consul, vault or nomad", w)
		}
	}
	return nil
}

// restartFront stops the demo's Solana front and starts it again on the
// same port with the same chain.
func (d *demo) restartFront(ctx context.Context, offset int) error {
	if pid, err := stopPidFile(d.path("solana", "front.pid"), 10*time.Second); err != nil {
		return err
	} else if pid != 0 {
		d.detail("Solana front stopped (pid %d)", pid)
	}
	log := d.path("solana", "front.log")
	_ = os.Rename(log, log+".1") // the new front writes a new log; keep the old one
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	chain, err := devchain.Start(sctx, devchain.Options{Dir: devchain.Dir(d.repo), Port: baseSolanaPort + offset,
		Detached: true, LogFile: log, StateFile: d.path("solana", "accounts.json")})
	if err != nil {
		return err
	}
	if err := writePidFile(d.path("solana", "front.pid"), chain.Pid()); err != nil {
		return err
	}
	st, err := chain.Stats(ctx)
	if err != nil {
		return err
	}
	d.detail("Solana front started again with the chain in %s: slot %d (pid %d)", d.path("solana", "accounts.json"), st.Slot, chain.Pid())
	return nil
}
