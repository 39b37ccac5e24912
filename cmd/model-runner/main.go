// Command model-runner makes one model callable over gRPC, wire-compatible
// with CrunchDAO's model runner. It runs the participant's code in a separate
// worker process and never loads it itself. `serve` parses its flags into
// runneropts.Options and calls runner.Run, which does the rest.
//
//	model-runner serve --model-dir ./my-model --listen 127.0.0.1:50051 \
//	    --tls-cert server.crt --tls-key server.key --tls-client-ca ca.crt
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/modelnodes/modelnodes/internal/envflag"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/pyhost"
	"github.com/modelnodes/modelnodes/runner/runneropts"
)

const envPrefix = "MODEL_RUNNER"

const usage = `model-runner: serve one model over gRPC (CrunchDAO model runner protocol).

Usage:
  model-runner serve --model-dir DIR [--listen ADDR] (--tls-cert F --tls-key F [--tls-client-ca F] | --plaintext)
  model-runner serve ... --tls-vault-sign pki_int/sign/runner --tls-vault-key runner-keys/JOB --tls-common-name N
                                         certificate from Vault for a key kept in Vault (see docs/security.md)
  model-runner python-host > host.py     print the embedded Python worker host
  model-runner delegation key|sign ...  a runner's public key; a wallet delegation for it (crunchers)

The model runs in a worker process started by the runner: with --runtime python
the submission directory is loaded by the embedded host (main.py or its
modules); with --runtime executable, --entry names a program that speaks the
worker protocol on fd 3 (docs/worker-protocol.md).
`

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(map[bool]int{true: 0, false: 2}[len(os.Args) >= 2])
	}
	switch os.Args[1] {
	case "serve":
		if err := serve(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "model-runner:", err)
			os.Exit(1)
		}
	case "python-host":
		_, _ = os.Stdout.Write(pyhost.Script())
	case "delegation":
		if err := delegationCmd(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "model-runner delegation:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "model-runner: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}

// serve parses the flags of `model-runner serve` and runs the runner until
// SIGINT or SIGTERM.
func serve(args []string) error {
	o, err := parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	// The runner's stdout and stderr are pipes to Nomad's log collector
	// (logmon), which dies with its agent. Go kills a process that writes
	// to such a broken pipe on fd 1 or 2 with SIGPIPE: a runner that lives
	// on through an agent's death (its own session) would die at its first
	// log line, e.g. the one saying it was superseded, and lose the grace
	// it serves meanwhile. Ignored, the write fails and the runner goes on.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return runner.Run(ctx, o)
}

// parse reads the flags, each with its environment-variable fallback.
func parse(args []string) (runneropts.Options, error) {
	o := runneropts.Defaults()
	fs := flag.NewFlagSet("model-runner serve", flag.ContinueOnError)
	o.Flags(fs)
	fs.Usage = envflag.Usage(fs, envPrefix, usage)
	if err := envflag.Parse(fs, envPrefix, args); err != nil {
		return o, err
	}
	// Switches that open the door are taken only from an operator's command
	// line, never from the environment a job (or its template) can set.
	for _, name := range runneropts.CommandLineOnly() {
		if env := envflag.Name(envPrefix, name); os.Getenv(env) != "" {
			return o, fmt.Errorf("%s: --%s is a development switch and is only read from the command line", env, name)
		}
	}
	return o, nil
}
