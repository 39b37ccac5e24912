package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/scheduler"
	"github.com/modelnodes/modelnodes/scheduler/orchws"
	"github.com/modelnodes/modelnodes/scheduler/quarantine"
)

// orchestratorFlags configure the WebSocket CrunchDAO's coordinators find
// their models through (scheduler/orchws).
type orchestratorFlags struct {
	listen, certFile, keyFile, clientCA string
	crunchIDs                           stringList
}

func (o *orchestratorFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&o.listen, "orchestrator-listen", "", "serve CrunchDAO's orchestrator WebSocket (wss://ADDR/<crunch>: init and update events of the crunch's passing models) on this address, over TLS, to the crunch's coordinator only; empty: off (docs/client.md)")
	fs.StringVar(&o.certFile, "orchestrator-cert", "", "the orchestrator WebSocket's TLS certificate (PEM, re-read when it changes)")
	fs.StringVar(&o.keyFile, "orchestrator-key", "", "the orchestrator WebSocket's TLS key")
	fs.StringVar(&o.clientCA, "orchestrator-client-ca", "", "CA bundle coordinators' certificates chain to (Vault's model-call PKI, e.g. /v1/pki_int/ca_chain); their revocation lists come from --crl-url")
	fs.Var(&o.crunchIDs, "orchestrator-crunch-id", "NAME=ID: the crunch NAME's models carry its on-chain ID in their Consul meta (repeatable); a crunch not listed is its own id")
}

func (o *orchestratorFlags) check() error {
	if o.listen == "" {
		return nil
	}
	if o.certFile == "" || o.keyFile == "" || o.clientCA == "" {
		return errors.New("--orchestrator-listen needs --orchestrator-cert, --orchestrator-key and --orchestrator-client-ca: only a crunch's coordinator may learn its models")
	}
	_, err := o.ids()
	return err
}

func (o *orchestratorFlags) ids() (map[string]string, error) {
	m := map[string]string{}
	for _, e := range o.crunchIDs {
		name, id, ok := strings.Cut(e, "=")
		if !ok || name == "" || id == "" {
			return nil, fmt.Errorf("--orchestrator-crunch-id %q: want NAME=ID", e)
		}
		m[name] = id
	}
	return m, nil
}

// serveOrchestrator starts the orchestrator WebSocket, whose coordinators'
// failure reports act on s's models by --failure-policy; the returned func
// stops it.
func serveOrchestrator(ctx context.Context, c *config, log hclog.Logger, metrics *scheduler.Metrics, s *scheduler.Scheduler, nc *nomad.Client) (func(), error) {
	ids, err := c.orch.ids()
	if err != nil {
		return nil, err
	}
	tf, err := tlsfiles.New(tlsfiles.Files{CertFile: c.orch.certFile, KeyFile: c.orch.keyFile, CAFile: c.orch.clientCA}, func(err error) {
		if err != nil {
			log.Error("reloading the orchestrator's TLS files", "error", err)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("orchestrator TLS: %w", err)
	}
	// The runners' check: a certificate naming the crunch, not revoked,
	// whose key is one of the crunch's on-chain hashes (from the desired
	// state, CoordinatorKeys below); no hash on chain admits nobody.
	acfg := authz.Config{CAFile: c.orch.clientCA, Logger: log, Registerer: metrics.Registry}
	if c.crlURL != "" {
		acfg.CRLURLs = []string{c.crlURL}
	}
	az, err := authz.New(acfg)
	if err != nil {
		return nil, fmt.Errorf("orchestrator authorization: %w", err)
	}
	consul, err := c.consulClient()
	if err != nil {
		return nil, err
	}
	policies := quarantine.DefaultConfig()
	if c.failurePolicy != "" {
		if policies, err = quarantine.Load(c.failurePolicy); err != nil {
			return nil, err
		}
	}
	engine, err := quarantine.NewEngine(quarantine.EngineConfig{Policies: policies, Store: s.Quarantine, Nomad: nc,
		Lookup: s.DesiredModel, OnQuarantine: s.Kick, Logger: log.Named("reports"), Registerer: metrics.Registry})
	if err != nil {
		return nil, err
	}
	srv, err := orchws.New(orchws.Config{Consul: consul, Authorizer: az, Logger: log, Registerer: metrics.Registry,
		CrunchMeta:      func(crunch string) string { return ids[crunch] },
		CoordinatorKeys: s.CoordinatorKeys, Reporter: engine,
		ReportLimit: func(crunch string) (float64, int) {
			p := policies.For(crunch)
			return p.ReportRate, p.ReportBurst
		}})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", c.orch.listen)
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("orchestrator WebSocket: %w", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	go tf.Watch(wctx, 10*time.Second)
	go az.Watch(wctx, 10*time.Second)
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: orchws.ServerTLS(tf.Certificate, func() *x509.CertPool { return tf.Pool() })}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	log.Info("orchestrator WebSocket started", "address", "wss://"+ln.Addr().String())
	return func() {
		cancel()
		srv.Close()
		sctx, done := context.WithTimeout(context.Background(), 5*time.Second)
		defer done()
		_ = hs.Shutdown(sctx)
	}, nil
}
