package scheduler

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
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
	// Duplicate, when set, says that another entry of the source names the
	// same model (source.Duplicate, naming both): a running job of it is
	// left as it is rather than replaced by either entry.
	Duplicate string
	// Origin is the entry that authorized the model (source.Snapshot.Origins),
	// written into the job's meta; zero when the source gives none.
	Origin source.Origin
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
	// Undecodable are entries whose newest reading did not decode; their
	// last good version stays in force.
	Undecodable []string `json:"undecodable,omitempty"`
	// Kept are entries kept from an earlier reading for want of positive
	// evidence that they stop (source.Snapshot.Kept).
	Kept []string `json:"kept,omitempty"`
	// Duplicates are entries left out because another names the same model.
	Duplicates []string `json:"duplicates,omitempty"`
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
	dups    map[string]map[string]string // per source: model key -> its duplicate's message
	origins map[string]map[string]source.Origin
	// crossLogged are the models two sources name, as last warned about;
	// contestLogged the contested names (jobs.AssignNames).
	crossLogged   map[string]bool
	contestLogged map[string]bool
	// HashedNames keeps every model named by its key (jobs.Key): model ids
	// claim no names (jobs.AssignNames). Set before the first Desired.
	HashedNames bool
	logged      map[string]map[string]bool // per source: skipped entries already logged and counted
	version     uint64
	changed     chan struct{} // closed and replaced on every change
	// running caches runningIDs at runningAt (a version).
	running   map[string]bool
	runningAt uint64
	// keys caches coordinatorKeys at keysAt (a version): the orchestrator
	// WebSocket asks at every connection, and a pass over every model
	// (10,000 at scale) per connection is wasted between changes.
	keys   map[string][]string
	keysAt uint64
}

// NewWatcher returns a watcher of the named sources; the desired state is
// ready once each of them delivered one good snapshot.
func NewWatcher(sources []string, opts *jobs.Options, m *Metrics) *Watcher {
	w := &Watcher{opts: opts, metrics: m, status: map[string]*SourceStatus{}, models: map[string][]jobs.Model{},
		dups: map[string]map[string]string{}, origins: map[string]map[string]source.Origin{}, logged: map[string]map[string]bool{}, changed: make(chan struct{})}
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
	out := source.Snapshot{Models: make([]jobs.Model, 0, len(s.Models)), Skipped: make([]error, 0, len(s.Skipped)),
		Duplicates: s.Duplicates, Origins: s.Origins}
	for _, e := range s.Skipped {
		out.Skipped = append(out.Skipped, redact.Error(e))
	}
	for _, e := range s.Undecodable {
		out.Undecodable = append(out.Undecodable, redact.Error(e))
	}
	for _, e := range s.Kept {
		out.Kept = append(out.Kept, redact.Error(e))
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
	st.Undecodable, st.Kept, st.Duplicates = nil, nil, nil
	for _, e := range s.Undecodable {
		msg := e.Error()
		st.Undecodable = append(st.Undecodable, msg)
		// Logged once per entry: the message names slots, which change
		// with every reading.
		key := "undecodable " + msg
		if ee := (*source.EntryError)(nil); errors.As(e, &ee) {
			key = "undecodable " + ee.Entry
		}
		if !w.logged[name][key] {
			log.Warn("undecodable entry; keeping its last good version", "source", name, "error", msg)
		}
		seen[key] = true
	}
	for _, e := range s.Kept {
		st.Kept = append(st.Kept, e.Error())
	}
	dups := map[string]string{}
	for _, d := range s.Duplicates {
		msg := redact.URLsIn(d.Error())
		st.Duplicates = append(st.Duplicates, msg)
		if !w.logged[name]["duplicate "+msg] {
			log.Warn("duplicate model id; a running job of it is left as it is", "source", name, "error", msg)
		}
		seen["duplicate "+msg] = true
		id := jobs.Key(&d.Model)
		if dups[id] == "" {
			dups[id] = msg
		}
	}
	w.logged[name] = seen
	// Origins change with every reading (slots) and change no job: they
	// are written with the next write of each job, and trigger no pass.
	w.origins[name] = s.Origins
	w.metrics.sourceOK(name, len(s.Models), len(s.Skipped), now)
	w.metrics.undecodable(name, len(s.Undecodable))
	if sameModels(w.models[name], s.Models) && maps.Equal(w.dups[name], dups) {
		return
	}
	w.models[name], w.dups[name] = s.Models, dups
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
// sources name the same model, the first configured source wins. Every
// model's short id is decided over the whole set (jobs.AssignNames).
func (w *Watcher) Desired() (map[string]*Desired, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ready := true
	for _, name := range w.order {
		if !w.status[name].Ready {
			ready = false
		}
	}
	merged, cross := w.merge()
	logged := map[string]bool{}
	for _, c := range cross {
		logged[c.msg] = true
		if !w.crossLogged[c.msg] && w.Logger != nil {
			w.Logger.Warn("model named by two sources; the first configured source's entry is used",
				"model", c.model.ModelID, "crunch", c.model.Crunch, "used", c.used, "ignored", c.ignored)
		}
	}
	w.crossLogged = logged
	out := make(map[string]*Desired, len(merged))
	for _, d := range merged {
		d.Spec = jobs.SpecHash(&d.Model, w.opts)
		out[d.JobID] = d
	}
	return out, ready
}

// crossEntry is an entry of a source left out because a source configured
// earlier names the same model.
type crossEntry struct {
	model         jobs.Model
	ignored, used string
	msg           string
}

// merge returns the sources' models, one per key (the first configured
// source's entry), in configuration order, named (jobs.AssignNames), with
// the entries left out; w.mu held. Spec is left to the caller.
func (w *Watcher) merge() ([]*Desired, []crossEntry) {
	var out []*Desired
	var cross []crossEntry
	first := map[string]string{} // key -> the source whose entry is used
	for _, name := range w.order {
		for _, m := range w.models[name] {
			key := jobs.Key(&m)
			if used, dup := first[key]; dup {
				cross = append(cross, crossEntry{model: m, ignored: name, used: used, msg: crossDuplicate(&m, name, used)})
				continue
			}
			first[key] = name
			out = append(out, &Desired{Model: m, Source: name, Duplicate: w.dups[name][key], Origin: w.origins[name][key]})
		}
	}
	ms := make([]*jobs.Model, len(out))
	for i, d := range out {
		ms[i] = &d.Model
	}
	contests := jobs.AssignNames(ms, w.HashedNames)
	logged := map[string]bool{}
	for _, c := range contests {
		msg := c.Name + " " + strings.Join(c.Keys, ",")
		logged[msg] = true
		if !w.contestLogged[msg] && w.Logger != nil {
			w.Logger.Warn("models of different crunches claim the same name; none gets it, each is named by its key",
				"name", c.Name, "keys", strings.Join(c.Keys, ","))
		}
	}
	w.contestLogged = logged
	for _, d := range out {
		d.JobID = jobs.JobID(&d.Model)
	}
	return out, cross
}

// crossDuplicate says that source ignored names the same model as used.
func crossDuplicate(m *jobs.Model, ignored, used string) string {
	return fmt.Sprintf("model %q of crunch %q: source %s names it too; the entry of %s (configured first) is used", m.ModelID, m.Crunch, ignored, used)
}

// runningIDs returns the job ids of the models desired running, computed
// once per change of the desired state.
func (w *Watcher) runningIDs() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.running != nil && w.runningAt == w.version {
		return w.running
	}
	ids := map[string]bool{}
	merged, _ := w.merge()
	for _, d := range merged {
		if d.Model.Running {
			ids[d.JobID] = true
		}
	}
	w.running, w.runningAt = ids, w.version
	return ids
}

// coordinatorKeys returns the key hashes the desired state gives the
// coordinator of crunch (its name): every primary and secondary hash its
// models carry, running or not, sorted; computed for every crunch once per
// change of the desired state. The caller may keep and change the slice.
func (w *Watcher) coordinatorKeys(crunch string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.keys == nil || w.keysAt != w.version {
		sets := map[string]map[string]bool{}
		merged, _ := w.merge()
		for _, d := range merged {
			for _, h := range []string{d.Model.CertHash, d.Model.CertHashSecondary} {
				if h == "" {
					continue
				}
				if sets[d.Model.Crunch] == nil {
					sets[d.Model.Crunch] = map[string]bool{}
				}
				sets[d.Model.Crunch][h] = true
			}
		}
		w.keys = make(map[string][]string, len(sets))
		for c, set := range sets {
			w.keys[c] = slices.Sorted(maps.Keys(set))
		}
		w.keysAt = w.version
	}
	return slices.Clone(w.keys[crunch])
}

// Sources returns each source's status, in configuration order.
func (w *Watcher) Sources() []SourceStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []SourceStatus
	_, cross := w.merge()
	for _, name := range w.order {
		st := *w.status[name]
		st.Skipped = append([]string(nil), st.Skipped...)
		st.Undecodable = append([]string(nil), st.Undecodable...)
		st.Kept = append([]string(nil), st.Kept...)
		st.Duplicates = append([]string(nil), st.Duplicates...)
		for _, c := range cross {
			if c.ignored == name {
				st.Duplicates = append(st.Duplicates, c.msg)
			}
		}
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
