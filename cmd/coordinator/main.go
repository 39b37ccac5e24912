// Command coordinator is the coordinator's view of a crunch: which models
// exist and whether they are healthy, a call to one or all of them with a
// table of results and latencies, and live membership.
//
//	coordinator models --crunch alpha --tls-cert c.crt --tls-key c.key --tls-ca ca.crt
//	coordinator call predict --args '[1.5, "x"]' --setup crunch.Base --crunch alpha ...
//	coordinator watch --crunch alpha ...
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const envPrefix = "COORDINATOR"

const usage = `coordinator: discover the models of a crunch and call them all at once.

Usage:
  coordinator models [flags]                 list models: address, health, connection
  coordinator call METHOD [flags]            call METHOD on every model (or --model ones)
  coordinator watch [flags]                  print membership changes as they happen

Where the models are (one of):
  --crunch NAME          Consul health API, service crunch-NAME (--consul-addr, --consul-token);
                         only instances whose meta "crunch" is --crunch-id (default NAME)
  --models id=host:port,…   a fixed list
  --dns ADDR --model-ids id,…  Consul DNS SRV at ADDR (e.g. 127.0.0.1:8600), service of --crunch

How to authenticate (mTLS; one of):
  --tls-cert F --tls-key F --tls-ca F       files, reloaded when they change on disk
  --vault-addr URL --vault-role-id … --vault-secret-id … --crunch NAME [--tls-ca F]
                                            a client certificate from Vault PKI, renewed
  --plaintext                               no TLS (laptops and tests only)

Replies: at most --max-reply-size (4MiB) per model, --max-fanout-reply-size (256MiB)
for all models of one call together; a model over its share is reported too_large.

Run "coordinator COMMAND --help" for every flag; each also reads COORDINATOR_<FLAG>.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit status.
//   - 0: done (for call: every model answered SUCCESS)
//   - 1: an error before any model was called (flags, TLS, discovery), or
//     no model to call
//   - 2: usage error
//   - 3: call: some models did not answer SUCCESS
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	var err error
	switch args[0] {
	case "models":
		err = models(ctx, args[1:], stdout, stderr)
	case "call":
		err = call(ctx, args[1:], stdout, stderr)
	case "watch":
		err = watch(ctx, args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "coordinator: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "coordinator:", err)
		return 2
	case errors.Is(err, errSomeFailed):
		return 3
	}
	fmt.Fprintln(stderr, "coordinator:", err)
	return 1
}

type usageError struct{ error }

var errSomeFailed = errors.New("some models did not answer SUCCESS")

// errNoModel: discovery found no model (none registered, none passing its
// check, or none of the --model ones).
var errNoModel = errors.New("no model to call: discovery found none")
