// Package consul discovers the models of a crunch through Consul's health
// API: one service per crunch, one instance per model, only instances whose
// checks all pass and whose meta names the crunch. Membership follows
// blocking queries, so a registration, deregistration or failed check
// reaches the caller within one query round (no polling interval to wait
// out).
//
// A service name proves nothing: any job allowed to register services can
// call one crunch-<name>. The scheduler writes the crunch's id in every
// model's service meta (names.MetaCrunch); an instance that names another crunch,
// or none, is left out. The runner's certificate (it must name the model)
// and, with client.DelegationFromMeta, the cruncher's delegation are
// checked on top, at every connection.
package consul

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/internal/consulwatch"
	"github.com/modelnodes/modelnodes/names"
)

// Source watches one service.
type Source struct {
	// Client talks to the local Consul agent.
	Client *consulapi.Client
	// Service is the crunch's service (names.Service).
	Service string
	// Crunch is what the scheduler writes in the meta of each of the
	// crunch's instances (names.MetaCrunch): the crunch's on-chain id (base58),
	// or its name when it has none. Required: instances whose meta names
	// another crunch, or none, are not members (they are logged once).
	Crunch string
	// Tag, if set, keeps only instances carrying it.
	Tag string
	// Wait bounds one blocking query (Consul caps it at 10 minutes);
	// default 5 minutes.
	Wait time.Duration
	// MaxBackoff bounds the wait between failed queries; default 30 s.
	MaxBackoff time.Duration
	// Logger receives query failures.
	Logger hclog.Logger
	// Registerer, if set, receives modelnodes_client_discovery_up and
	// modelnodes_client_discovery_errors_total, labelled by service (several
	// Sources may share one registry).
	Registerer prometheus.Registerer
}

// discoveryMetrics are a Source's series; the vectors are shared by every
// Source registered on the same registry.
type discoveryMetrics struct {
	up     *prometheus.GaugeVec
	errors *prometheus.CounterVec
}

func newDiscoveryMetrics(reg prometheus.Registerer) (*discoveryMetrics, error) {
	m := &discoveryMetrics{
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "modelnodes_client_discovery_up",
			Help: "1 when the last Consul health query for the crunch's service succeeded, 0 while queries fail (the last membership stays in force).",
		}, []string{"service"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modelnodes_client_discovery_errors_total",
			Help: "Failed Consul health queries for the crunch's service.",
		}, []string{"service"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.up, err = register(reg, m.up); err != nil {
		return nil, err
	}
	if m.errors, err = register(reg, m.errors); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under
// its name by another Source.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("consul: discovery metrics: %w", err)
	}
	return c, nil
}

// Watch implements discovery.Source.
func (s *Source) Watch(ctx context.Context, update func([]discovery.Model)) error {
	log := s.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if s.Crunch == "" {
		// Fail closed: without it, anyone's crunch-<name> instance would
		// be called.
		return fmt.Errorf("consul: watching %q: the crunch id its instances must carry in meta %q is needed", s.Service, names.MetaCrunch)
	}
	m, err := newDiscoveryMetrics(s.Registerer)
	if err != nil {
		return err
	}
	foreign := map[string]bool{} // instances already logged as foreign
	h := &consulwatch.Health{Client: s.Client, Service: s.Service, Tag: s.Tag, MaxBackoff: s.MaxBackoff,
		Wait: func() time.Duration { return s.Wait },
		OnError: func(err error, retryIn time.Duration) {
			// Fail static: keep the last membership.
			log.Warn("consul health query failed; keeping the last membership", "service", s.Service, "error", err, "retry_in", retryIn)
			m.up.WithLabelValues(s.Service).Set(0)
			m.errors.WithLabelValues(s.Service).Inc()
		}}
	return h.Run(ctx, func(entries []*consulapi.ServiceEntry, changed bool) bool {
		m.up.WithLabelValues(s.Service).Set(1)
		if changed {
			ms, dropped := members(s.Crunch, entries)
			logForeign(log, s.Service, s.Crunch, dropped, foreign)
			update(ms)
		}
		return true
	})
}

// logForeign warns once about each instance left out for its crunch meta
// (and forgets those gone, so one that comes back is logged again).
func logForeign(log hclog.Logger, service, crunch string, dropped []*consulapi.ServiceEntry, logged map[string]bool) {
	now := map[string]bool{}
	for _, e := range dropped {
		key := e.Service.ID
		if e.Node != nil {
			key = e.Node.Node + "/" + key
		}
		now[key] = true
		if !logged[key] {
			log.Warn("ignoring a service instance that does not belong to this crunch", "service", service,
				"instance", key, "address", e.Service.Address, "crunch_meta", e.Service.Meta[names.MetaCrunch], "want", crunch)
		}
	}
	clear(logged)
	for k := range now {
		logged[k] = true
	}
}

// Models turns health entries into the members of crunch: instances whose
// meta names.MetaCrunch is crunch, their id from names.MetaModelID (the Consul service
// id when absent), their address from the service (the node's when the
// service has none). When a model has several passing instances (a Nomad
// deployment in progress), the most recently registered one wins.
func Models(crunch string, entries []*consulapi.ServiceEntry) []discovery.Model {
	ms, _ := members(crunch, entries)
	return ms
}

// members is Models, also returning the instances left out for their
// crunch meta.
func members(crunch string, entries []*consulapi.ServiceEntry) ([]discovery.Model, []*consulapi.ServiceEntry) {
	byID := map[string]*consulapi.ServiceEntry{}
	var foreign []*consulapi.ServiceEntry
	for _, e := range entries {
		if e.Service == nil {
			continue
		}
		// Before picking the newest instance per model: a foreign
		// instance must not displace the model's own.
		if crunch == "" || e.Service.Meta[names.MetaCrunch] != crunch {
			foreign = append(foreign, e)
			continue
		}
		id := modelID(e)
		if old, ok := byID[id]; !ok || e.Service.CreateIndex > old.Service.CreateIndex {
			byID[id] = e
		}
	}
	models := make([]discovery.Model, 0, len(byID))
	for id, e := range byID {
		addr := e.Service.Address
		if addr == "" && e.Node != nil {
			addr = e.Node.Address
		}
		models = append(models, discovery.Model{
			ID:     id,
			Target: net.JoinHostPort(addr, strconv.Itoa(e.Service.Port)),
			Meta:   e.Service.Meta,
		})
	}
	ms, err := discovery.Normalize(models)
	if err != nil {
		// Unreachable: ids are map keys and targets are never empty.
		panic(fmt.Sprintf("consul: %v", err))
	}
	return ms, foreign
}

func modelID(e *consulapi.ServiceEntry) string {
	if id := e.Service.Meta[names.MetaModelID]; id != "" {
		return id
	}
	return e.Service.ID
}
