package runner

import (
	"context"
	"fmt"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/runner/runneropts"
	"github.com/modelnodes/modelnodes/runner/supersede"
)

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
		log.Error("this model runs elsewhere now (Nomad replaced this runner's allocation): stopping to answer", "newer", newer.String())
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
