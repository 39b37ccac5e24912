package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/modelnodes/modelnodes/internal/envflag"
	"github.com/modelnodes/modelnodes/scheduler"
	"github.com/modelnodes/modelnodes/scheduler/quarantine"
)

const quarantineSynopsis = `scheduler quarantine: the models held stopped after their coordinator's failure reports.

Usage:
  scheduler quarantine list [--status-addr http://127.0.0.1:9464]
  scheduler quarantine lift [--status-addr http://127.0.0.1:9464] MODEL

list prints one line per quarantine (GET /v1/quarantines). lift ends the quarantine of
MODEL (its job id, its short id as coordinators see it, or its full model id; POST
/v1/quarantines/lift): the leader's next pass starts it again. lift carries
--admin-token (MODELNODES_SCHEDULER_ADMIN_TOKEN) as a bearer token; any instance
answers it (quarantines live in Consul KV).
`

// quarantineCmd is the quarantine subcommand.
func quarantineCmd(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("scheduler quarantine", flag.ContinueOnError)
	addr := fs.String("status-addr", "http://127.0.0.1:9464", "a scheduler's status API")
	token := fs.String("admin-token", "", "the scheduler's --admin-token, for lift (prefer MODELNODES_SCHEDULER_ADMIN_TOKEN)")
	fs.Usage = envflag.Usage(fs, envPrefix, quarantineSynopsis)
	if len(args) == 0 {
		fs.Usage()
		return errors.New("want list or lift")
	}
	verb := args[0]
	if verb == "-h" || verb == "--help" || verb == "-help" || verb == "help" {
		fs.SetOutput(out)
		fs.Usage()
		return nil
	}
	if err := envflag.Parse(fs, envPrefix, args[1:]); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	switch {
	case verb == "list" && fs.NArg() == 0:
		var res struct {
			Quarantines []quarantine.Record `json:"quarantines"`
		}
		if err := statusRequest(ctx, http.MethodGet, *addr, "/v1/quarantines", "", nil, &res); err != nil {
			return err
		}
		for _, r := range res.Quarantines {
			printRecord(out, "", r)
		}
		return nil
	case verb == "lift" && fs.NArg() == 1:
		if *token == "" {
			return errors.New("no admin token: set MODELNODES_SCHEDULER_ADMIN_TOKEN (or --admin-token)")
		}
		var res struct {
			Lifted []quarantine.Record `json:"lifted"`
		}
		if err := statusRequest(ctx, http.MethodPost, *addr, "/v1/quarantines/lift", *token, scheduler.LiftRequest{Model: fs.Arg(0)}, &res); err != nil {
			return err
		}
		for _, r := range res.Lifted {
			printRecord(out, "lifted: ", r)
		}
		return nil
	}
	fs.Usage()
	return fmt.Errorf("unexpected arguments %q", args)
}

func printRecord(out io.Writer, prefix string, r quarantine.Record) {
	fmt.Fprintf(out, "%s%s crunch %s model %s: %s since %s (%d reports, coordinator key %.16s...): %q\n",
		prefix, r.JobID, r.Crunch, r.ModelID, r.Code, r.At.UTC().Format(time.RFC3339), r.Reports, r.Coordinator, r.Reason)
}
