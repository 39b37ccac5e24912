package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gagliardetto/solana-go"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
)

// cruncherKeys are the wallets the demo plants as crunchers and hotkeys, by
// model id: step 9 signs with one, as its cruncher would.
type cruncherKeys struct {
	wallet solana.PrivateKey
	hotkey string
}

// vouch is CrunchDAO's secure mode end to end: the cruncher reads its
// runner's public key (verifying the runner's certificate), signs it with
// its wallet, the operator puts the signature into the job's Nomad
// variable, the runner picks it up by itself, and the coordinator's CLI
// with --verify-delegation believes only that runner.
func (d *demo) vouch(ctx context.Context, c *cluster, co *coordinator, m *model, keys cruncherKeys) (map[string]callRow, error) {
	dir := d.path("cruncher")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// The wallet as solana-keygen writes it: a JSON array of 64 bytes.
	ints := make([]int, len(keys.wallet))
	for i, b := range keys.wallet {
		ints[i] = int(b)
	}
	keyJSON, _ := json.Marshal(ints)
	keypair := filepath.Join(dir, "id.json")
	if err := os.WriteFile(keypair, keyJSON, 0o600); err != nil {
		return nil, err
	}
	cc, err := c.consul()
	if err != nil {
		return nil, err
	}
	entries, _, err := cc.Health().Service(names.Service(crunchName), "", true, nil)
	if err != nil {
		return nil, err
	}
	addr := ""
	for _, e := range entries {
		if e.Service.Meta[names.MetaModelID] == m.ShortID {
			addr = fmt.Sprintf("%s:%d", e.Service.Address, e.Service.Port)
		}
	}
	if addr == "" {
		return nil, fmt.Errorf("%s is not listed in Consul", m.ID)
	}
	runnerBin := filepath.Join(d.bin, "model-runner")
	argv := []string{runnerBin, "delegation", "key", "--runner-addr", addr,
		"--runner-ca", filepath.Join(co.dir, "ca.crt"), "--runner-name", names.ModelServerName(m.ShortID)}
	d.command(d.rel(runnerBin) + " " + shellJoin(argv[1:]))
	out, err := runCommand(ctx, os.Environ(), argv...)
	if err != nil {
		return nil, err
	}
	certPub := strings.TrimSpace(out)
	d.output(certPub)

	delegationFile := filepath.Join(dir, "delegation.json")
	argv = []string{runnerBin, "delegation", "sign", "--keypair", keypair, "--cert-pub", certPub,
		"--model-id", m.ID, "--hotkey", keys.hotkey, "--ttl", "720h", "--out", delegationFile}
	d.command(d.rel(runnerBin) + " delegation sign --keypair " + keypair + " --cert-pub " + certPub[:12] + "… " +
		shellJoin(argv[7:]))
	if _, err := runCommand(ctx, os.Environ(), argv...); err != nil {
		return nil, err
	}
	proof, err := os.ReadFile(delegationFile)
	if err != nil {
		return nil, err
	}
	d.command(fmt.Sprintf(`nomad var put nomad/jobs/%s %s="$(cat %s)"`, m.JobID, jobs.DelegationItem, delegationFile))
	if _, err := runCommand(ctx, c.environ(), c.env["NOMAD_BIN"], "var", "put", "-force", "nomad/jobs/"+m.JobID,
		jobs.DelegationItem+"="+strings.TrimSpace(string(proof))); err != nil {
		return nil, err
	}
	d.detail("the job renders it into the runner's local/delegation.json; the runner sends it with every call from then on")

	// The runner picks the delegation up within a template render and a
	// reload: ask until it is there, then show the coordinator's view.
	args := append(append([]string{}, callArgs...), "--verify-delegation")
	deadline := time.Now().Add(60 * time.Second)
	for {
		quiet := command(ctx, co.bin, args...)
		quiet.Env = co.env
		out, _ := quiet.Output()
		if parseCallTable(string(out))[m.ShortID].status == "success" {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the runner of %s sends no valid delegation 60 s after the variable was written:\n%s", m.ID, indent(string(out)))
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return nil, err
		}
	}
	return d.call(ctx, co, args)
}

// checkVouched checks the table of the --verify-delegation call, and says it.
func (d *demo) checkVouched(models []*model, vouched *model, rows map[string]callRow) error {
	fmt.Fprintln(d.stdout, "\n    With --verify-delegation an answer counts only if its runner presents the cruncher's signature over its own TLS key:")
	var problems []string
	for _, m := range models {
		r, ok := rows[m.ShortID]
		switch {
		case m == vouched:
			fmt.Fprintf(d.stdout, "    %-16s  %-10s  its cruncher signed its runner's key: believed\n", m.ShortID, m.ID)
			if !ok || r.status != "success" {
				problems = append(problems, fmt.Sprintf("%s answered %s, want success", m.ID, r.status))
			}
		default:
			fmt.Fprintf(d.stdout, "    %-16s  %-10s  no delegation: its answer is refused (%s)\n", m.ShortID, m.ID, r.code)
			if !ok || r.status != "unauthenticated" {
				problems = append(problems, fmt.Sprintf("%s answered %s, want unauthenticated", m.ID, r.status))
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("the delegation check did not go as it should: %s", strings.Join(problems, "; "))
	}
	return nil
}
