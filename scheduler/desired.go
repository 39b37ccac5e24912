// Package scheduler keeps Nomad running exactly the models that are
// authorized: sources of desired state (Solana program accounts, CrunchDAO's
// HTTP feed, a YAML file) feed a watcher, and a level-triggered, idempotent
// reconciler registers, updates, stops and purges one job per model. Only
// the instance holding a Consul lock reconciles. An observer of Nomad's
// event stream reports each model's state and backs off models that
// crash-loop. See docs/scheduler.md.
package scheduler

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/jobs"
)

// Source produces the complete desired state of its models, again and
// again: each Snapshot replaces the previous one of the same source (level,
// not deltas). A source that cannot read its data reports Err and the
// watcher keeps its last good snapshot (fail static).
type Source interface {
	// Name identifies the source in logs, status and metrics.
	Name() string
	// Run reports snapshots until ctx ends. It returns only when ctx ends
	// or on a configuration error; transient failures are reported as
	// snapshots with Err and retried.
	Run(ctx context.Context, report func(Snapshot)) error
}

// Snapshot is one complete reading of a source.
type Snapshot struct {
	Models []jobs.Model
	// Skipped lists entries that could not be used (a corrupt account, an
	// invalid feed entry), each error naming the entry; the others count.
	Skipped []error
	// Err means the source could not be read at all: the previous good
	// snapshot stays in force.
	Err error
}

// Desired is one model the scheduler wants to exist (running or stopped).
type Desired struct {
	Model  jobs.Model
	JobID  string
	Spec   string // jobs.SpecHash
	Source string
}

// SourceStatus is what the status API says about a source.
type SourceStatus struct {
	Name        string    `json:"name"`
	Ready       bool      `json:"ready"` // has delivered a good snapshot
	Models      int       `json:"models"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	Skipped     []string  `json:"skipped,omitempty"`
}

// Watcher merges the sources' last good snapshots into the desired state.
// It screens every snapshot first: models the deployment's policy refuses
// (jobs.Options.CheckModel: artifact hosts, http, host model dirs) become
// skipped entries, and every error it keeps, logs or serves has its URLs
// redacted.
type Watcher struct {
	opts    *jobs.Options
	metrics *Metrics
	// Logger logs source errors and each newly skipped entry once.
	Logger hclog.Logger

	mu      sync.Mutex
	order   []string
	status  map[string]*SourceStatus
	models  map[string][]jobs.Model
	logged  map[string]map[string]bool // per source: skipped entries already logged and counted
	version uint64
	changed chan struct{} // closed and replaced on every change
}

// NewWatcher returns a watcher of the named sources; the desired state is
// ready once each of them delivered one good snapshot.
func NewWatcher(sources []string, opts *jobs.Options, m *Metrics) *Watcher {
	w := &Watcher{opts: opts, metrics: m, status: map[string]*SourceStatus{}, models: map[string][]jobs.Model{},
		logged: map[string]map[string]bool{}, changed: make(chan struct{})}
	for _, s := range sources {
		w.order = append(w.order, s)
		w.status[s] = &SourceStatus{Name: s}
	}
	return w
}

// screen applies the deployment's policy to a snapshot's models and
// redacts its errors.
func (w *Watcher) screen(s Snapshot) Snapshot {
	if s.Err != nil {
		return Snapshot{Err: redactErr(s.Err)}
	}
	out := Snapshot{Models: make([]jobs.Model, 0, len(s.Models)), Skipped: make([]error, 0, len(s.Skipped))}
	for _, e := range s.Skipped {
		out.Skipped = append(out.Skipped, redactErr(e))
	}
	for _, m := range s.Models {
		if err := w.opts.CheckModel(&m); err != nil {
			out.Skipped = append(out.Skipped, redactErr(&entryError{
				entry: fmt.Sprintf("model %q of crunch %q", m.ModelID, m.Crunch), err: err}))
			continue
		}
		out.Models = append(out.Models, m)
	}
	return out
}

// Report records a snapshot of source.
func (w *Watcher) Report(source string, s Snapshot) {
	s = w.screen(s)
	w.mu.Lock()
	defer w.mu.Unlock()
	log := w.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	st, ok := w.status[source]
	if !ok {
		st = &SourceStatus{Name: source}
		w.status[source] = st
		w.order = append(w.order, source)
	}
	now := time.Now()
	if s.Err != nil {
		st.LastError, st.LastErrorAt = s.Err.Error(), now
		w.metrics.sourceError(source)
		log.Error("source unreadable; keeping its last good state", "source", source, "error", s.Err)
		return
	}
	st.Ready, st.LastSuccess, st.Models = true, now, len(s.Models)
	st.Skipped = st.Skipped[:0]
	seen := map[string]bool{}
	for _, e := range s.Skipped {
		msg := e.Error()
		st.Skipped = append(st.Skipped, msg)
		seen[msg] = true
		if !w.logged[source][msg] {
			class := refusalClass(e)
			log.Warn("skipped entry", "source", source, "reason", class, "error", msg)
			w.metrics.refused(source, class)
		}
	}
	w.logged[source] = seen
	w.metrics.sourceOK(source, len(s.Models), len(s.Skipped), now)
	if sameModels(w.models[source], s.Models) {
		return
	}
	w.models[source] = s.Models
	w.version++
	close(w.changed)
	w.changed = make(chan struct{})
}

func sameModels(a, b []jobs.Model) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Changed returns a channel closed at the next change of the desired state.
func (w *Watcher) Changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

// Desired returns the merged desired state by job id, and whether every
// source has delivered a good snapshot (before that, nothing may be
// stopped: an empty state could just mean "not read yet"). When two
// sources name the same model, the first configured source wins.
func (w *Watcher) Desired() (map[string]*Desired, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ready := true
	out := map[string]*Desired{}
	for _, name := range w.order {
		if !w.status[name].Ready {
			ready = false
		}
		for _, m := range w.models[name] {
			id := jobs.JobID(&m)
			if _, dup := out[id]; dup {
				continue
			}
			out[id] = &Desired{Model: m, JobID: id, Spec: jobs.SpecHash(&m, w.opts), Source: name}
		}
	}
	return out, ready
}

// Sources returns each source's status, in configuration order.
func (w *Watcher) Sources() []SourceStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []SourceStatus
	for _, name := range w.order {
		st := *w.status[name]
		st.Skipped = append([]string(nil), st.Skipped...)
		out = append(out, st)
	}
	return out
}

// sortModels orders models by crunch and id, so snapshots of the same
// content compare equal.
func sortModels(ms []jobs.Model) {
	sort.Slice(ms, func(i, j int) bool {
		if ms[i].Crunch != ms[j].Crunch {
			return ms[i].Crunch < ms[j].Crunch
		}
		return ms[i].ModelID < ms[j].ModelID
	})
}

// entryError names a skipped entry.
type entryError struct {
	entry string
	err   error
}

func (e *entryError) Error() string { return fmt.Sprintf("%s: %v", e.entry, e.err) }
func (e *entryError) Unwrap() error { return e.err }
