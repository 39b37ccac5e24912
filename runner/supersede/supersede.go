// Package supersede tells a runner that its model runs elsewhere now, so it
// stops answering: a model must never answer from two runners.
//
// Nomad replaces an allocation whose client it lost (the agent died alone,
// or the node is cut off from the servers) while the old runner may still
// run: the modelbox driver starts each runner in a session of its own so that
// it survives a restart of the agent, and the node's Consul agent goes on
// checking it, so its instance stays registered and passing. Only the Nomad
// agent would stop it, when it comes back.
//
// The runner watches its crunch's service in Consul (blocking queries on
// the health API, as the coordinators' discovery does) and stops answering
// on positive evidence only: another passing instance of the same model,
// registered after its own. An unreachable Consul, its own instance missing
// or failing, or no other instance are no evidence: it keeps serving (fail
// static), as the Nomad agent's absence alone is none either (a restarting
// agent must not stop its models).
package supersede

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/consulwatch"
	"github.com/modelnodes/modelnodes/names"
)

// unseenWarnAfter is how long the runner's own instance may be missing from
// the passing ones (registration and the first check take seconds) before a
// warning says the watch sees nothing.
var unseenWarnAfter = 2 * time.Minute

// Watch describes the runner's instance.
type Watch struct {
	// Client reaches the node's Consul agent with a token that may read
	// the service (a Nomad task's Consul token does).
	Client *consulapi.Client
	// Service is the crunch's service (names.Service).
	Service string
	// ModelID is the model's id in its instances' meta (names.MetaModelID).
	ModelID string
	// Self is the address the runner serves on (host:port): its own
	// instance is the one registered there.
	Self string
	// Wait bounds one blocking query; default 5 minutes.
	Wait time.Duration
	// MaxBackoff bounds the wait between failed queries; default 30 s.
	MaxBackoff time.Duration
	Logger     hclog.Logger
}

// Newer is the evidence: the instance that superseded the runner's.
type Newer struct {
	Node, ServiceID, Address string
	CreateIndex              uint64 // of the newer instance
	Own                      uint64 // CreateIndex of the runner's own instance
}

func (n *Newer) String() string {
	return fmt.Sprintf("instance %s on node %s at %s (registered at index %d, after this runner's at %d)",
		n.ServiceID, n.Node, n.Address, n.CreateIndex, n.Own)
}

// Run watches until ctx ends (it returns nil, ctx.Err()) or another passing
// instance of the model was registered after the runner's own (it returns
// that instance).
func (w *Watch) Run(ctx context.Context) (*Newer, error) {
	log := w.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	wait := w.Wait
	if wait <= 0 {
		wait = 5 * time.Minute
	}
	var (
		newer       *Newer
		unseenSince time.Time
		warned      bool
	)
	h := &consulwatch.Health{Client: w.Client, Service: w.Service, MaxBackoff: w.MaxBackoff,
		Wait: func() time.Duration {
			if !warned {
				return min(wait, unseenWarnAfter) // look again in time to warn
			}
			return wait
		},
		OnError: func(err error, retryIn time.Duration) {
			// No evidence: keep serving and ask again.
			log.Warn("cannot read the model's instances from Consul; serving on", "service", w.Service, "error", err, "retry_in", retryIn)
		}}
	err := h.Run(ctx, func(entries []*consulapi.ServiceEntry, _ bool) bool {
		if newer = Supersedes(entries, w.ModelID, w.Self); newer != nil {
			return false
		}
		switch {
		case ownInstance(entries, w.ModelID, w.Self) != nil:
			unseenSince, warned = time.Time{}, false
		case unseenSince.IsZero():
			unseenSince = time.Now()
		case !warned && time.Since(unseenSince) > unseenWarnAfter:
			// Consul filters what a token may not read out of its answers
			// (an empty list, no error): say so, or the watch would be off
			// without a word.
			log.Warn("this runner's own instance is not among the model's passing instances in Consul: without it the runner cannot learn that it was replaced (is the task's Consul token allowed to read the service? is the instance registered and passing?)",
				"service", w.Service, "model", w.ModelID, "self", w.Self, "for", time.Since(unseenSince).Round(time.Second))
			warned = true
		}
		return true
	})
	if newer != nil {
		return newer, nil
	}
	return nil, err
}

// Supersedes applies the rule to passing instances of a service: it returns
// the newest instance of model registered after the one at self, if any,
// leaving out canaries (names.TagCanary): a new version's trial is not a
// replacement until Nomad promotes it.
// Without an instance at self (not registered yet, or failing) there is no
// evidence, whatever else is registered.
func Supersedes(entries []*consulapi.ServiceEntry, model, self string) *Newer {
	own := ownInstance(entries, model, self)
	if own == nil {
		return nil
	}
	var newer *Newer
	for _, e := range entries {
		if e.Service == nil || e == own || e.Service.Meta[names.MetaModelID] != model || at(e, self) {
			continue
		}
		if slices.Contains(e.Service.Tags, names.TagCanary) {
			// A new version on trial beside this one (jobs: the update
			// block's canary): this runner keeps serving until Nomad
			// promotes it, and is stopped by Nomad then; if it fails,
			// Nomad reverts to this one.
			continue
		}
		if e.Service.CreateIndex > own.Service.CreateIndex && (newer == nil || e.Service.CreateIndex > newer.CreateIndex) {
			newer = &Newer{ServiceID: e.Service.ID, Address: address(e), CreateIndex: e.Service.CreateIndex, Own: own.Service.CreateIndex}
			if e.Node != nil {
				newer.Node = e.Node.Node
			}
		}
	}
	return newer
}

// ownInstance returns the instance of model registered at self, if listed.
func ownInstance(entries []*consulapi.ServiceEntry, model, self string) *consulapi.ServiceEntry {
	var own *consulapi.ServiceEntry
	for _, e := range entries {
		if e.Service != nil && e.Service.Meta[names.MetaModelID] == model && at(e, self) {
			own = e
		}
	}
	return own
}

// at reports whether the instance is registered at host:port self.
func at(e *consulapi.ServiceEntry, self string) bool {
	return address(e) == self
}

func address(e *consulapi.ServiceEntry) string {
	host := e.Service.Address
	if host == "" && e.Node != nil {
		host = e.Node.Address
	}
	return net.JoinHostPort(host, strconv.Itoa(e.Service.Port))
}
