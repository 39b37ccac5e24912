package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/names"
)

func models(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := flag.NewFlagSet("models", flag.ContinueOnError)
	c.register(fs)
	timeout := fs.Duration("timeout", 2*time.Second, "health check deadline per model")
	if _, err := parse(fs, args, "coordinator models [flags]: list the models with their address, health and connection state.", stderr); err != nil {
		return err
	}
	cl, stop, err := c.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer stop()
	results := cl.Health(ctx, client.Request{Timeout: *timeout})
	health := map[string]client.Result{}
	for _, r := range results {
		health[r.Model.ID] = r
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MODEL\tADDRESS\tHEALTH\tCONNECTION\tLATENCY\tFULL ID")
	for _, m := range cl.Members() {
		h := health[m.ID]
		status := h.Status.String()
		if h.OK() {
			status, _ = h.Value.AsString()
		} else if h.Code == "NOT_SERVING" {
			status = h.Code
		}
		full := m.Meta[names.MetaModel]
		if full == "" {
			full = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Target, status, m.State, latency(h.Latency), full)
	}
	return tw.Flush()
}

func latency(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000)
}
