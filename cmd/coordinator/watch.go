package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/modelnodes/modelnodes/client/discovery"
)

func watch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	c.register(fs)
	duration := fs.Duration("duration", 0, "stop after this long (0: until interrupted)")
	if _, err := parse(fs, args, "coordinator watch [flags]: print the membership, then every model that joins (+) or leaves (-).", stderr); err != nil {
		return err
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	cl, stop, err := c.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer stop()
	known := map[string]discovery.Model{}
	for {
		changed := cl.Changed()
		now := map[string]discovery.Model{}
		for _, m := range cl.Members() {
			now[m.ID] = m.Model
		}
		ts := time.Now().UTC().Format("15:04:05.000")
		for id, m := range known {
			if n, ok := now[id]; !ok || !n.Equal(m) {
				fmt.Fprintf(stdout, "%s - %s %s\n", ts, id, m.Target)
			}
		}
		for _, m := range cl.Members() {
			if k, ok := known[m.ID]; !ok || !k.Equal(m.Model) {
				fmt.Fprintf(stdout, "%s + %s %s\n", ts, m.ID, m.Target)
			}
		}
		fmt.Fprintf(stdout, "%s = %d models\n", ts, len(now))
		known = now
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}
