package scheduler

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/redact"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/scheduler/source"
)

// Desired is one model the scheduler wants to exist (running or stopped).
type Desired struct {
	Model  jobs.Model
	JobID  string
	Spec   string // jobs.SpecHash, with the Python folded in (jobs.SpecWithPython)
	Source string
	// Python is what the submission's code asks for (Scheduler.Inspector);
	// the job is constrained to nodes that have it.
	Python jobs.Python
	// Wait, when set, says why the job is neither written nor stopped this
	// pass (its code is being inspected, or asks for what no node can run).
	Wait string
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
func (w *Watcher) screen(s source.Snapshot) source.Snapshot {
	if s.Err != nil {
		return source.Snapshot{Err: redact.Error(s.Err)}
	}
	out := source.Snapshot{Models: make([]jobs.Model, 0, len(s.Models)), Skipped: make([]error, 0, len(s.Skipped))}
	for _, e := range s.Skipped {
		out.Skipped = append(out.Skipped, redact.Error(e))
	}
	for _, m := range s.Models {
		if err := w.opts.CheckModel(&m); err != nil {
			out.Skipped = append(out.Skipped, redact.Error(&source.EntryError{
				Entry: fmt.Sprintf("model %q of crunch %q", m.ModelID, m.Crunch), Err: err}))
			continue
		}
		out.Models = append(out.Models, m)
	}
	return out
}

// Report records a snapshot of the named source. A snapshot with Err
// changes nothing but the source's status: its last good models stay in force
// (fail static).
func (w *Watcher) Report(name string, s source.Snapshot) {
	s = w.screen(s)
	w.mu.Lock()
	defer w.mu.Unlock()
	log := w.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	st, ok := w.status[name]
	if !ok {
		st = &SourceStatus{Name: name}
		w.status[name] = st
		w.order = append(w.order, name)
	}
	now := time.Now()
	if s.Err != nil {
		st.LastError, st.LastErrorAt = s.Err.Error(), now
		w.metrics.sourceError(name)
		log.Error("source unreadable; keeping its last good state", "source", name, "error", s.Err)
		return
	}
	st.Ready, st.LastSuccess, st.Models = true, now, len(s.Models)
	st.Skipped = st.Skipped[:0]
	seen := map[string]bool{}
	for _, e := range s.Skipped {
		msg := e.Error()
		st.Skipped = append(st.Skipped, msg)
		seen[msg] = true
		if !w.logged[name][msg] {
			class := refusalClass(e)
			log.Warn("skipped entry", "source", name, "reason", class, "error", msg)
			w.metrics.refused(name, class)
		}
	}
	w.logged[name] = seen
	w.metrics.sourceOK(name, len(s.Models), len(s.Skipped), now)
	if sameModels(w.models[name], s.Models) {
		return
	}
	w.models[name] = s.Models
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

// Refusal classes of skipped entries, the reason label of
// modelnodes_scheduler_refused_entries_total.
const (
	RefusedInterpolation = "interpolation" // $ { } % or control characters
	RefusedEntry         = "entry"         // entry grammar
	RefusedArtifact      = "artifact"      // artifact URL policy or digest
	RefusedModelDir      = "model_dir"     // host model dir
	RefusedInvalid       = "invalid"       // anything else (corrupt account, missing field)
)

// refusalClass classes a skipped entry's error.
func refusalClass(err error) string {
	switch {
	case errors.Is(err, jobs.ErrInterpolation):
		return RefusedInterpolation
	case errors.Is(err, jobs.ErrEntry):
		return RefusedEntry
	case errors.Is(err, jobs.ErrArtifact):
		return RefusedArtifact
	case errors.Is(err, jobs.ErrModelDir):
		return RefusedModelDir
	}
	return RefusedInvalid
}
