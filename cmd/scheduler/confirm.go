package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/modelnodes/modelnodes/internal/envflag"
	"github.com/modelnodes/modelnodes/scheduler"
)

const confirmSynopsis = `scheduler confirm-stops: confirm the stops the leader holds (GET /v1/status, stop_holds):
its next pass makes them, if it still wants them.

Usage:
  scheduler confirm-stops [--status-addr http://127.0.0.1:9464] [--crunch ID|NAME]

Without --crunch, every hold is confirmed. The request carries --admin-token
(MODELNODES_SCHEDULER_ADMIN_TOKEN) as a bearer token; ask the leader's status API.
`

// confirmStops is the confirm-stops subcommand: POST /v1/stop-holds/confirm
// to a scheduler's status API, then a line per confirmed hold on out.
func confirmStops(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("scheduler confirm-stops", flag.ContinueOnError)
	addr := fs.String("status-addr", "http://127.0.0.1:9464", "the leading scheduler's status API")
	crunch := fs.String("crunch", "", "the crunch (id or name) whose held stops to confirm; empty: every hold")
	token := fs.String("admin-token", "", "the scheduler's --admin-token (prefer MODELNODES_SCHEDULER_ADMIN_TOKEN)")
	fs.Usage = envflag.Usage(fs, envPrefix, confirmSynopsis)
	if err := envflag.Parse(fs, envPrefix, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *token == "" {
		return errors.New("no admin token: set MODELNODES_SCHEDULER_ADMIN_TOKEN (or --admin-token)")
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var res struct {
		Confirmed []scheduler.StopHold `json:"confirmed"`
	}
	if err := statusRequest(cctx, http.MethodPost, *addr, "/v1/stop-holds/confirm", *token, scheduler.ConfirmRequest{Crunch: *crunch}, &res); err != nil {
		return err
	}
	for _, h := range res.Confirmed {
		fmt.Fprintf(out, "confirmed: crunch %s (%s): %d of %d running models will stop: %s\n",
			h.Crunch, h.CrunchName, len(h.Jobs), h.Running, strings.Join(h.Jobs, " "))
	}
	return nil
}

// statusRequest sends a request to a scheduler's status API (the body, when
// not nil, as JSON; the token, when set, as a bearer token) and decodes the
// JSON answer of a 200 into answer; other answers are an error that carries
// the API's words.
func statusRequest(ctx context.Context, method, addr, path, token string, body, answer any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(addr, "/")+path, rd)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, answer); err != nil {
		return fmt.Errorf("answer: %w", err)
	}
	return nil
}
