package runner

import (
	"context"
	"fmt"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/runner/runneropts"
	"github.com/modelnodes/modelnodes/runner/supersede"
)

// supersedeGrace is how long a superseded runner keeps answering after it
// saw its replacement pass in Consul: long enough for coordinators that saw
// the replacement in the same answer to set it up and move to it.
const supersedeGrace = 2 * time.Second

// watchSuperseded starts the supersession watch when o names the runner's
// Consul instance (--consul-service): it returns the context to serve with,
// which ends when Nomad has placed the model elsewhere, and the function to
// call once serving stopped. That function keeps a superseded runner's
// process alive, answering nothing, until ctx ends (Nomad stops it when its
// agent is back): a runner that exited would be restarted by a live agent.
func watchSuperseded(ctx context.Context, o *runneropts.Options, self string, log hclog.Logger) (context.Context, func() error, error) {
	if o.ConsulService == "" {
		return ctx, func() error { return nil }, nil
	}
	// CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT...: what Nomad and
	// the job give the task.
	client, err := consulapi.NewClient(consulapi.DefaultConfig())
	if err != nil {
		return nil, nil, fmt.Errorf("--consul-service: %w", err)
	}
	serveCtx, stop := context.WithCancel(ctx)
	w := &supersede.Watch{Client: client, Service: o.ConsulService, ModelID: o.ConsulModelID, Self: self, Logger: log}
	go func() {
		newer, err := w.Run(serveCtx)
		if err != nil {
			return
		}
		log.Error("this model runs elsewhere now (Nomad replaced this runner's allocation): stopping to answer", "newer", newer.String(), "in", supersedeGrace)
		// Coordinators learn of the replacement from the same Consul
		// answer and move to it once their Setup on join there succeeded
		// (make before break, milliseconds): answering a little longer
		// keeps their calls in between from failing on this runner.
		t := time.NewTimer(supersedeGrace)
		defer t.Stop()
		select {
		case <-t.C:
		case <-serveCtx.Done():
		}
		stop()
	}()
	log.Info("watching Consul for a newer instance of this model", "service", o.ConsulService, "model", o.ConsulModelID, "self", self)
	return serveCtx, func() error {
		defer stop()
		if ctx.Err() == nil {
			<-ctx.Done()
		}
		return nil
	}, nil
}
