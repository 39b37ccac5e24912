package scheduler

import (
	"context"
	"fmt"
	"maps"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/scheduler/quarantine"
	"github.com/modelnodes/modelnodes/scheduler/source"
)

// Which changes a pass over the changed models does alone: models added or
// changed and desired running; not a model gone or desired stopped (the
// stop guard weighs stops against the crunch), nor hundreds at once.
func TestChangedModels(t *testing.T) {
	opts := &jobs.Options{Plaintext: true, AllowHostModelDirs: true}
	a, b := testModel("demo", "a", true), testModel("demo", "b", true)
	last := desiredOf(opts, a, b)
	bigger := a
	bigger.MemoryMB = 1024
	stopped := a
	stopped.Running = false
	c := testModel("demo", "c", true)
	var many []jobs.Model
	for i := range maxModelPass + 1 {
		many = append(many, testModel("demo", fmt.Sprintf("n%03d", i), true))
	}
	id := func(m jobs.Model) string { return jobs.JobID(jobs.Named(&m)) }
	waiting := desiredOf(opts, a, b)
	waiting[id(a)].Wait = "reading the submission's code archive"
	for _, tc := range []struct {
		name string
		now  map[string]*Desired
		ids  []string
		ok   bool
	}{
		{"nothing changed", desiredOf(opts, a, b), nil, false},
		{"a new submission", desiredOf(opts, bigger, b), []string{id(a)}, true},
		{"a new model", desiredOf(opts, a, b, c), []string{id(c)}, true},
		{"a model now waits", waiting, []string{id(a)}, true},
		{"a model gone", desiredOf(opts, a), nil, false},
		{"a model desired stopped", desiredOf(opts, stopped, b), nil, false},
		{"too many", desiredOf(opts, append([]jobs.Model{a, b}, many...)...), nil, false},
	} {
		ids, ok := changedModels(last, tc.now)
		if ok != tc.ok || !slices.Equal(ids, tc.ids) {
			t.Errorf("%s: %v %v; want %v %v", tc.name, ids, ok, tc.ids, tc.ok)
		}
	}
}

// A pass over some models lists their jobs alone (never the whole list)
// and writes their registrations and updates only, under a full pass's
// rules: a job it was not asked about is untouched (even one whose id
// starts with an asked one's), nothing is stopped, MaxRollouts counts the
// rollouts the last full pass saw and those started since, a failed
// rollout is not written again, and nothing is written before the
// quarantines were read.
func TestReconcileModelsWritesOnlyTheChangedModels(t *testing.T) {
	ctx := context.Background()
	f := &rolloutNomad{fakeNomad: newFakeNomad(), failed: map[string]string{}}
	opts := &jobs.Options{Plaintext: true, AllowHostModelDirs: true}
	q := &memQuarantines{recs: map[string]quarantine.Record{}, fail: fmt.Errorf("consul is down")}
	r := &Reconciler{Nomad: f, Options: opts, MaxRollouts: 2, Quarantines: q}
	a, ab, c := testModel("demo", "a", true), testModel("demo", "ab", true), testModel("demo", "c", true)
	id := func(m jobs.Model) string { return jobs.JobID(jobs.Named(&m)) }
	if !strings.HasPrefix(id(ab), id(a)) {
		t.Fatalf("%s does not start with %s", id(ab), id(a))
	}
	d := testModel("demo", "d", true)
	all := desiredOf(opts, a, ab, c, d)
	if res, err := r.ReconcileModels(ctx, all, []string{id(d)}, nil); err != nil || res.Registered != 0 || f.count("register") != 0 {
		t.Fatalf("before the quarantines were ever read: %v, %v; want nothing written", res, err)
	}
	q.fail = nil
	if res, err := r.Reconcile(ctx, desiredOf(opts, a, ab, c), nil, true); err != nil || res.Registered != 3 {
		t.Fatalf("full pass: %v, %v", res, err)
	}
	lists := f.count("list")

	// A new submission of a and of ab, c gone, d new: a pass over a and d.
	a.MemoryMB, ab.MemoryMB = 1024, 1024
	now := desiredOf(opts, a, ab, d)
	res, err := r.ReconcileModels(ctx, now, []string{id(a), id(d)}, nil)
	if err != nil || res.Registered != 1 || res.Updated != 1 || res.Stopped != 0 {
		t.Fatalf("pass over a and d: %v, %v; want d registered, a updated", res, err)
	}
	if f.count("list") != lists || f.count("list-some") != 2 {
		t.Errorf("listings: %d full (was %d), %d by id; want no full listing, one per model", f.count("list"), lists, f.count("list-some"))
	}
	f.mu.Lock()
	abMeta, cStop := f.jobs[id(ab)].Meta[names.MetaSpec], f.jobs[id(c)].Stop
	f.mu.Unlock()
	if abMeta == now[id(ab)].Spec || cStop {
		t.Errorf("jobs not asked about were written: ab updated %v, c stopped %v", abMeta == now[id(ab)].Spec, cStop)
	}

	// MaxRollouts 2: a is rolling; of ab and c's new versions one goes.
	c.MemoryMB = 1024
	now = desiredOf(opts, a, ab, c, d)
	if res, _ := r.ReconcileModels(ctx, now, []string{id(ab), id(c)}, nil); res.Updated != 1 || res.DeferredRollouts != 1 || res.Rolling != 1 {
		t.Errorf("two rollouts with one started and a bound of 2: %v; want 1 update, 1 deferred", res)
	}

	// d's new version failed and Nomad reverted it: not written again.
	r.MaxRollouts = 0
	f.mu.Lock()
	served := *f.jobs[id(d)]
	served.Meta = maps.Clone(served.Meta)
	f.mu.Unlock()
	d.MemoryMB = 2048
	now = desiredOf(opts, a, ab, c, d)
	if res, _ := r.ReconcileModels(ctx, now, []string{id(d)}, nil); res.Updated != 1 {
		t.Fatalf("d's new version: %v", res)
	}
	f.revert(id(d), served)
	if res, _ := r.ReconcileModels(ctx, now, []string{id(d)}, nil); res.Updated != 0 || res.FailedRollouts != 1 {
		t.Errorf("a failed version: %v; want it not written, counted as a failed rollout", res)
	}

	// Quarantined (as last read): left to the full pass, which ends it.
	q.put(quarantine.Record{JobID: id(ab), Key: jobs.Key(&ab), Code: "BAD_IMPLEMENTATION", At: time.Now()})
	if _, err := r.Reconcile(ctx, now, nil, true); err != nil {
		t.Fatal(err)
	}
	ab.MemoryMB = 2048
	now = desiredOf(opts, a, ab, c, d)
	if res, _ := r.ReconcileModels(ctx, now, []string{id(ab)}, nil); res.Quarantined != 1 || res.Updated != 0 {
		t.Errorf("a quarantined model: %v; want it counted, not written", res)
	}
}

// On the scheduler: a source's change that only adds or changes running
// models reaches Nomad through a pass over them, with no full listing; a
// change that stops a model takes a full pass; and full passes go on at
// every resync whatever the changes.
func TestAChangeReachesNomadWithoutAFullPass(t *testing.T) {
	f := newFakeNomad()
	ms := []jobs.Model{testModel("demo", "a", true), testModel("demo", "b", true)}
	want := make(chan []jobs.Model, 1)
	want <- slices.Clone(ms)
	s := runOnFake(t, f, want, time.Hour)
	waitFor(t, 5*time.Second, "registered", func() bool { return f.count("register") == 2 })
	full := f.count("list")

	ms = append(ms, testModel("demo", "c", true))
	ms[0].MemoryMB = 1024
	want <- slices.Clone(ms)
	waitFor(t, 5*time.Second, "c registered and a updated", func() bool { return f.count("register") == 4 })
	time.Sleep(100 * time.Millisecond)
	if f.count("list") != full || f.count("list-some") != 2 {
		t.Errorf("listings for the change: %d full, %d by id; want none full, 2 by id", f.count("list")-full, f.count("list-some"))
	}
	if !strings.Contains(metricsOf(s), `modelnodes_scheduler_model_passes_total{outcome="ok"} 1`) {
		t.Error("model_passes_total does not count the pass")
	}

	want <- slices.Clone(ms[1:]) // a revoked
	waitFor(t, 5*time.Second, "a stopped", func() bool { return f.count("stop") == 1 })
	if f.count("list") != full+1 {
		t.Errorf("a stop took %d full passes; want 1", f.count("list")-full)
	}
}

// A stream of changes does not put off the full pass: it runs at its
// resync however often a pass over changed models runs.
func TestChangesDoNotPutOffTheFullPass(t *testing.T) {
	f := newFakeNomad()
	ms := []jobs.Model{testModel("demo", "a", true)}
	want := make(chan []jobs.Model, 1)
	want <- slices.Clone(ms)
	runOnFake(t, f, want, 300*time.Millisecond)
	waitFor(t, 5*time.Second, "registered", func() bool { return f.count("register") == 1 })
	full := f.count("list")
	for i := range 20 { // a change every 100 ms for 2 s
		ms[0].MemoryMB = 512 + i
		want <- slices.Clone(ms)
		time.Sleep(100 * time.Millisecond)
	}
	if n := f.count("list") - full; n < 4 {
		t.Errorf("%d full passes in 2 s of changes with a 300 ms resync; want at least 4", n)
	}
	if f.count("list-some") < 10 {
		t.Errorf("%d passes over the changed model for 20 changes", f.count("list-some"))
	}
}

// runOnFake runs a scheduler on f, its one source reporting the models
// sent on want, until the test ends.
func runOnFake(t *testing.T, f *fakeNomad, want chan []jobs.Model, resync time.Duration) *Scheduler {
	s := &Scheduler{Sources: []source.Source{&chanSource{ch: want}}, Reconciler: &Reconciler{Nomad: f, Options: testOptions},
		Resync: resync, Metrics: NewMetrics()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// metricsOf returns the scheduler's /metrics page.
func metricsOf(s *Scheduler) string {
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}
