package scheduler

import (
	"context"
	"errors"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/scheduler/quarantine"
)

// memQuarantines is an in-memory QuarantineStore (the Consul KV store runs
// on the real Consul in TestFailureReportsAct).
type memQuarantines struct {
	mu    sync.Mutex
	recs  map[string]quarantine.Record
	index uint64
	fail  error
}

func (m *memQuarantines) List(context.Context) (map[string]quarantine.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return nil, m.fail
	}
	return maps.Clone(m.recs), nil
}

func (m *memQuarantines) Delete(_ context.Context, id string, index uint64) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.recs[id]; !ok || r.Index != index {
		return false, nil
	}
	delete(m.recs, id)
	return true, nil
}

func (m *memQuarantines) put(r quarantine.Record) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.index++
	r.Index = m.index
	m.recs[r.JobID] = r
}

// A quarantined model's job is written stopped with the reason in its meta,
// stays stopped (and is not purged) whatever the sources say, and never
// takes another model with it; a new submission ends the quarantine and
// starts it again. A store that cannot be read keeps the last reading; one
// never read stops the pass before it starts anything.
func TestReconcileHoldsQuarantinedModel(t *testing.T) {
	ctx := context.Background()
	f := newFakeNomad()
	opts := &jobs.Options{Plaintext: true, AllowHostModelDirs: true}
	store := &memQuarantines{recs: map[string]quarantine.Record{}}
	r := &Reconciler{Nomad: f, Options: opts, PurgeAfter: time.Hour, Quarantines: store}
	a, b := testModel("demo", "a", true), testModel("demo", "b", true)
	ja, jb := jobs.JobID(jobs.Named(&a)), jobs.JobID(jobs.Named(&b))
	if res, err := r.Reconcile(ctx, desiredOf(opts, a, b), nil, true); err != nil || res.Registered != 2 {
		t.Fatalf("first pass: %v %v", res, err)
	}
	bIndex := f.jobs[jb].JobModifyIndex

	at := time.Date(2026, 4, 1, 12, 0, 0, 0, time.UTC)
	store.put(quarantine.Record{JobID: ja, Crunch: "demo", ModelID: "a", Code: "BAD_IMPLEMENTATION", Coordinator: strings.Repeat("ab", 32),
		At: at, Submission: quarantine.Fingerprint(a)})
	res, err := r.Reconcile(ctx, desiredOf(opts, a, b), nil, true)
	if err != nil || res.Stopped != 1 || res.Quarantined != 1 || res.Unchanged != 1 {
		t.Fatalf("quarantine pass: %v %v", res, err)
	}
	ma := f.jobs[ja].Meta
	if !f.jobs[ja].Stop || ma[names.MetaQuarantineCode] != "BAD_IMPLEMENTATION" || ma[names.MetaQuarantineAt] != "2026-04-01T12:00:00Z" ||
		ma[names.MetaQuarantineBy] != strings.Repeat("ab", 32) {
		t.Fatalf("quarantined job: stop=%v meta %v", f.jobs[ja].Stop, ma)
	}
	if f.jobs[jb].Stop || f.jobs[jb].JobModifyIndex != bIndex {
		t.Fatal("the quarantine touched another model")
	}

	// Later passes write nothing, even past the purge delay, and even when
	// the store cannot be read.
	r.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	writes := f.count("register") + f.count("stop") + f.count("purge")
	for i, fail := range []error{nil, errors.New("consul: 500")} {
		store.fail = fail
		res, err = r.Reconcile(ctx, desiredOf(opts, a, b), nil, true)
		if err != nil || res.Quarantined != 1 || f.count("register")+f.count("stop")+f.count("purge") != writes || !f.jobs[ja].Stop {
			t.Fatalf("pass %d while quarantined: %v %v, jobs %v", i, res, err, f.calls)
		}
	}
	store.fail = nil

	// A new submission: the quarantine ends and the model runs again.
	a.SubmissionID = "second"
	res, err = r.Reconcile(ctx, desiredOf(opts, a, b), nil, true)
	if err != nil || res.Lifted != 1 || res.Updated != 1 || f.jobs[ja].Stop || len(store.recs) != 0 {
		t.Fatalf("new submission: %v %v, stop=%v, records %v", res, err, f.jobs[ja].Stop, store.recs)
	}
	if _, ok := f.jobs[ja].Meta[names.MetaQuarantineCode]; ok {
		t.Error("the running job still carries the quarantine")
	}

	// A scheduler that never read the quarantines starts nothing.
	fresh := &Reconciler{Nomad: newFakeNomad(), Options: opts, Quarantines: &memQuarantines{fail: errors.New("consul: connection refused")}}
	if _, err := fresh.Reconcile(ctx, desiredOf(opts, a), nil, true); err == nil || fresh.Nomad.(*fakeNomad).count("register") != 0 {
		t.Fatalf("a pass without any reading of the quarantines: %v", err)
	}
}

// The plan for quarantined models, whatever else holds them: a job stopped
// by hand gets the reason in its meta, one no longer authorized is stopped
// as usual even when a source vouches for it, one Nomad does not have is
// not registered.
func TestPlanQuarantine(t *testing.T) {
	a, b, c := testModel("demo", "a", true), testModel("demo", "b", true), testModel("demo", "c", true)
	d := desiredOf(testOptions, a, b, c)
	ja, jb, jc := jobs.JobID(jobs.Named(&a)), jobs.JobID(jobs.Named(&b)), jobs.JobID(jobs.Named(&c))
	q := map[string]quarantine.Record{}
	for _, id := range []string{ja, jb, jc} {
		q[id] = quarantine.Record{JobID: id, Code: "LOW_PERFORMANCE", At: time.Unix(1e9, 0)}
	}
	recorded := ours(d[jc], "", true, time.Unix(0, 0))
	recorded.Meta[names.MetaQuarantineCode], recorded.Meta[names.MetaQuarantineAt] = "LOW_PERFORMANCE", time.Unix(1e9, 0).UTC().Format(time.RFC3339)
	gone := ours(&Desired{JobID: "model-node-gone", Spec: "x"}, "", false, time.Time{})
	q[gone.ID] = quarantine.Record{JobID: gone.ID, Code: "LOW_PERFORMANCE"}
	actions, res := Plan(Want{Models: map[string]*Desired{ja: d[ja], jb: d[jb], jc: d[jc]}, Complete: true, Keep: map[string]string{gone.ID: "reading"}},
		Actual{Jobs: []nomad.JobStub{ours(d[ja], "", true, time.Unix(0, 0)), recorded, gone}, Quarantined: q, Now: time.Unix(1e10, 0)}, time.Hour)
	want := []string{"quarantine " + ja + " index=10 was_stopped (quarantined (LOW_PERFORMANCE))", "stop model-node-gone (quarantined (LOW_PERFORMANCE))"}
	if got := describe(actions); strings.Join(got, "\n") != strings.Join(want, "\n") || res.Quarantined != 3 || res.Kept != 0 {
		t.Fatalf("plan:\n%s\nwant\n%s\n%v", strings.Join(got, "\n"), strings.Join(want, "\n"), res)
	}
}

// Quarantining most of a crunch at once is weighed by the stop guard like
// any other mass stop (a coordinator that lost its network reports every
// model).
func TestStopGuardWeighsQuarantines(t *testing.T) {
	a, b := testModel("demo", "a", true), testModel("demo", "b", true)
	d := desiredOf(testOptions, a, b)
	ja, jb := jobs.JobID(jobs.Named(&a)), jobs.JobID(jobs.Named(&b))
	job := func(id string) nomad.JobStub {
		j := ours(d[id], "", false, time.Time{})
		j.Meta[names.MetaCrunch] = "demo"
		return j
	}
	rec := func(id string) quarantine.Record { return quarantine.Record{JobID: id, Code: "CONNECTION_FAILED"} }
	existing := []nomad.JobStub{job(ja), job(jb)}
	actions, _ := Plan(Want{Models: d, Complete: true}, Actual{Jobs: existing, Quarantined: map[string]quarantine.Record{ja: rec(ja), jb: rec(jb)}}, time.Hour)
	g := &StopGuard{MaxShare: 0.5}
	if kept, held := g.filter(actions, existing, time.Now()); len(kept) != 0 || held != 2 {
		t.Fatalf("quarantining 2 of 2: %v kept, %d held", describe(kept), held)
	}
}

// A quarantined model whose job is renamed (its model id contested by
// another crunch, or no longer) stays quarantined under its new job id:
// the record names the model by its key, and the name is no part of the
// submission. Otherwise a cruncher could free its own quarantined model by
// authorizing the same model id in another crunch.
func TestQuarantineFollowsARenamedModel(t *testing.T) {
	ctx := context.Background()
	f := newFakeNomad()
	opts := &jobs.Options{Plaintext: true, AllowHostModelDirs: true}
	store := &memQuarantines{recs: map[string]quarantine.Record{}}
	r := &Reconciler{Nomad: f, Options: opts, PurgeAfter: time.Hour, Quarantines: store}
	a := testModel("demo", "a", true)
	named := jobs.Named(&a)
	store.put(quarantine.Record{JobID: jobs.JobID(named), Key: jobs.Key(&a), Crunch: "demo", ModelID: "a", Code: "BAD_IMPLEMENTATION",
		At: time.Now(), Submission: quarantine.Fingerprint(*named)})
	// Renamed: the model now goes by its key (a contest took its name).
	hashed := a
	hashed.Name = jobs.Key(&a)
	d := map[string]*Desired{jobs.JobID(&hashed): {Model: hashed, JobID: jobs.JobID(&hashed), Spec: jobs.SpecHash(&hashed, opts), Source: "test"}}
	res, err := r.Reconcile(ctx, d, nil, true)
	if err != nil || res.Quarantined != 1 || res.Lifted != 0 || res.Registered != 0 {
		t.Fatalf("renamed quarantined model: %v %v", res, err)
	}
	if j := f.jobs[jobs.JobID(&hashed)]; j != nil && !j.Stop {
		t.Fatalf("the renamed model runs: %+v", j)
	}
	if len(store.recs) != 1 {
		t.Fatalf("the quarantine was lifted: %v", store.recs)
	}
}
