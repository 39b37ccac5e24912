// Command modelnodes-demo tells the whole Model Nodes story on one machine
// (`make demo`): a dev cluster (Consul, Vault, Nomad with the modelbox
// driver), a local Solana endpoint, the scheduler, a crunch with four model
// authorizations (a Python model, a scikit-learn model whose environment the
// node builds from its requirements.txt, a Go model, and one whose
// requirements cannot be met), a fan-out from the coordinator CLI through
// Consul with Vault-issued mTLS, a DataFrame prediction, and a revocation.
// Then it tears everything down (`--keep` leaves it running).
//
//	modelnodes-demo [run] [--keep]   the story
//	modelnodes-demo down             stop whatever a demo left running (make demo-down)
//	modelnodes-demo restart WHAT...  restart the kept demo's front or agents with their state
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/modelnodes/modelnodes/internal/envflag"
)

const envPrefix = "MODELNODES_DEMO"

const usage = `modelnodes-demo: the Model Nodes story on one machine, then a clean teardown.

Usage:
  modelnodes-demo [run] [flags]   start everything, fan calls out, revoke a model, tear down
  modelnodes-demo down [flags]    stop what a demo left running (a --keep run, a killed run,
                                  or a run in another shell)
  modelnodes-demo restart WHAT... [flags]
                                  restart parts of a kept demo with their state: front (the
                                  Solana endpoint, same chain), consul, vault, nomad (the
                                  models keep running; Vault is unsealed again)

Progress goes to stderr ("[demo 12.3s] step 4/12: …"), the commands it runs and their
output to stdout. Ctrl-C tears everything down. Everything lives in --state: the dev
cluster (cluster/), each process's log and pid file, the coordinator's credentials.
The dev cluster runs on deploy/dev/up's ports shifted by --port-offset (default 1000, so
it does not meet a "make dev" cluster); the demo's own ports are shifted the same way:
Solana RPC/websocket 18899, artifact server 18081, scheduler status 18464.
`

// exit statuses
const (
	exitFailed      = 1
	exitUsage       = 2
	exitInterrupted = 130
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && (args[0] == "run" || args[0] == "down" || args[0] == "restart" || args[0] == "artifacts") {
		cmd, args = args[0], args[1:]
	}
	// restart's arguments come first: what to restart, then flags.
	var what []string
	for cmd == "restart" && len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		what, args = append(what, args[0]), args[1:]
	}
	if len(args) > 0 && args[0] == "help" {
		args = []string{"--help"}
	}
	if cmd == "artifacts" {
		return serveArtifacts(args, stderr)
	}
	fs := flag.NewFlagSet("modelnodes-demo "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	o.register(fs)
	fs.Usage = envflag.Usage(fs, envPrefix, usage)
	if err := envflag.Parse(fs, envPrefix, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "modelnodes-demo: unexpected arguments %q\n\n%s", fs.Args(), usage)
		return exitUsage
	}
	d, err := newDemo(o, stdout, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "modelnodes-demo:", err)
		return exitUsage
	}

	// The first SIGINT/SIGTERM cancels the story, which then tears down;
	// later ones only say that the teardown is under way.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		first := true
		for s := range sigs {
			if first {
				d.interrupted.Store(true)
				d.progress("%s: stopping the demo and tearing everything down", s)
				cancel()
				first = false
				continue
			}
			d.progress("%s: still tearing down, please wait (if you kill me, `make demo-down` finishes the job)", s)
		}
	}()

	if cmd == "restart" {
		if err := d.restart(ctx, what); err != nil {
			d.progress("restart: %v", err)
			return exitFailed
		}
		return 0
	}
	if cmd == "down" {
		if err := d.down(ctx, true); err != nil {
			d.progress("demo-down: %v", err)
			return exitFailed
		}
		return 0
	}
	return d.runStory(ctx)
}

// options are the flags of run and down.
type options struct {
	state, repo, bin string
	offset           int
	keep             bool
	readyTimeout     time.Duration
}

func (o *options) register(fs *flag.FlagSet) {
	state := os.Getenv("XDG_STATE_HOME")
	if state == "" {
		home, _ := os.UserHomeDir()
		state = filepath.Join(home, ".local", "state")
	}
	fs.StringVar(&o.state, "state", filepath.Join(state, "modelnodes", "demo"), "the demo's state dir: logs, pid files, the dev cluster")
	fs.StringVar(&o.repo, "repo", "", "the Model Nodes checkout (default: the one holding this binary's bin/, else the current directory's)")
	fs.StringVar(&o.bin, "bin", "", "the project's binaries (default $MODELNODES_BIN, else REPO/bin)")
	fs.IntVar(&o.offset, "port-offset", 1000, "shift of every port (the dev cluster's DEV_PORT_OFFSET and the demo's own)")
	fs.BoolVar(&o.keep, "keep", false, "leave everything running at the end, to explore; `make demo-down` stops it")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 3*time.Minute, "how long models may take to become callable")
}
