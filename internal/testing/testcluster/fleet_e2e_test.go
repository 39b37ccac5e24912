//go:build e2e

package testcluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/credentials"
	"github.com/modelnodes/modelnodes/client/discovery/consul"
	"github.com/modelnodes/modelnodes/names"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

// What the fleets of the e2e tests (goFleet, fleet) share: a recorded
// fan-out, and stopping their models.

// recorder is one coordinator client of a crunch (Consul discovery, mTLS,
// Setup on join) fanning "echo" out to the crunch's models every 200 ms,
// and what each fan-out saw: the fleets of the e2e tests embed it.
type recorder struct {
	client *client.Client

	mu      sync.Mutex    // guards models, samples, changed
	models  []string      // the model ids (jobs.ShortID) called, sorted
	samples []sample      // every fan-out, in order
	changed chan struct{} // closed and replaced at every sample
}

// sample is one fan-out: when it returned, how many models answered OK and
// each model's target.
type sample struct {
	at      time.Time
	ok      int
	targets map[string]string
	failed  []string // "<model>: <status> <message>" of failed results
}

// addModel adds a model id to the fan-out.
func (r *recorder) addModel(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.models = append(r.models, id)
	slices.Sort(r.models)
}

// modelIDs returns the models the fan-out calls.
func (r *recorder) modelIDs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.models)
}

// start starts the client of crunch's coordinator (discovery reads Consul
// with discoveryClient, TLS from tlsm, logs at level to t) and the fan-out
// to the models added so far; both stop when ctx ends or at t's cleanup,
// which runs before those registered earlier (the models' jobs stop after
// it). It waits for a fan-out OK from every model and returns how long
// that took.
func (r *recorder) start(t testing.TB, ctx context.Context, crunch string, discoveryClient *consulapi.Client, tlsm credentials.Material, level hclog.Level) time.Duration {
	t.Helper()
	if r.changed == nil {
		r.changed = make(chan struct{})
	}
	var err error
	r.client, err = client.New(client.Config{
		Source: &consul.Source{Client: discoveryClient, Service: names.Service(crunch), Crunch: crunch, MaxBackoff: time.Second},
		TLS:    tlsm,
		// A model started (or rescheduled) while the client runs is a
		// fresh runner: CrunchDAO's client sets up each model as it joins.
		SetupOnJoin: &client.SetupOnJoin{ClassName: "crunch_base.Tracker", Timeout: 20 * time.Second, MaxBackoff: time.Second},
		Timeout:     5 * time.Second,
		Logger:      hclog.New(&hclog.LoggerOptions{Name: "coordinator", Level: level, Output: testWriter{t}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = r.client.Run(ctx) }()
	go func() { defer wg.Done(); r.fanOut(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	start := time.Now()
	r.waitAllOK(t, start, 3*time.Minute)
	return time.Since(start)
}

// fanOut calls every model, every 200 ms, until ctx ends.
func (r *recorder) fanOut(ctx context.Context) {
	for ctx.Err() == nil {
		rs := r.client.Call(ctx, "echo", client.Request{Args: client.Positional(commonspb.String("ping")), Models: r.modelIDs(), Timeout: 3 * time.Second})
		s := sample{at: time.Now(), targets: map[string]string{}}
		for _, res := range rs {
			s.targets[res.Model.ID] = res.Model.Target
			if got, _ := res.Value.AsString(); res.OK() && got == "ping" {
				s.ok++
			} else {
				s.failed = append(s.failed, fmt.Sprintf("%s: %s %s", res.Model.ID, res.Status, res.Message))
			}
		}
		r.mu.Lock()
		r.samples = append(r.samples, s)
		close(r.changed)
		r.changed = make(chan struct{})
		r.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitAllOK waits for a fan-out that returned after since with every model
// OK, and returns it.
func (r *recorder) waitAllOK(t testing.TB, since time.Time, timeout time.Duration) sample {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		changed := r.changed
		var last sample
		for _, s := range r.samples {
			if s.at.After(since) {
				last = s
				// A fan-out that began before a model was added
				// did not call it.
				if s.ok == len(s.targets) && len(s.targets) == len(r.models) {
					r.mu.Unlock()
					return s
				}
			}
		}
		n := len(r.models)
		r.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no fan-out with all %d models OK within %s; last: %d OK, failed %v", n, timeout, last.ok, last.failed)
		}
	}
}

// last returns the latest fan-out.
func (r *recorder) last() sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.samples[len(r.samples)-1]
}

// since returns the fan-outs that returned after t0.
func (r *recorder) since(t0 time.Time) []sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []sample
	for _, s := range r.samples {
		if s.at.After(t0) {
			out = append(out, s)
		}
	}
	return out
}

// failures returns the fan-outs after t0 that were not OK from every model
// they called (of the given ones, when given).
func (r *recorder) failures(t0 time.Time, only ...string) []sample {
	var out []sample
	for _, s := range r.since(t0) {
		if len(only) == 0 {
			if s.ok < len(s.targets) {
				out = append(out, s)
			}
			continue
		}
		for _, msg := range s.failed {
			id, _, _ := strings.Cut(msg, ":")
			if slices.Contains(only, id) {
				out = append(out, s)
				break
			}
		}
	}
	return out
}

// describe summarises failed fan-outs for an error message.
func describe(ss []sample) string {
	var b strings.Builder
	for i, s := range ss {
		if i == 5 {
			fmt.Fprintf(&b, "... and %d more", len(ss)-5)
			break
		}
		fmt.Fprintf(&b, "\n  %s: %d OK, %v", s.at.Format("15:04:05.000"), s.ok, s.failed)
	}
	return b.String()
}

// stopJobs stops the jobs (model id -> job id; purged, when purge) and waits
// until their allocations are over: agents stopped while tasks are stopping
// leave them running.
func stopJobs(t testing.TB, nc *nomadapi.Client, jobIDs map[string]string, purge bool) {
	t.Helper()
	for _, id := range jobIDs {
		if _, _, err := nc.Jobs().Deregister(id, purge, nil); err != nil {
			t.Errorf("stop job %s: %v", id, err)
		}
	}
	waitFor(t, time.Minute, "models stopped", func() bool {
		for _, id := range jobIDs {
			as, _, err := nc.Jobs().Allocations(id, true, nil)
			if err != nil && purge {
				continue // purged: gone with its allocations
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range as {
				switch a.ClientStatus {
				case nomadapi.AllocClientStatusComplete, nomadapi.AllocClientStatusFailed, nomadapi.AllocClientStatusLost:
				default:
					return false
				}
			}
		}
		return true
	})
}
