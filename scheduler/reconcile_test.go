package scheduler

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/scheduler/source"
)

func TestReconcileLifecycle(t *testing.T) {
	ctx := context.Background()
	f := newFakeNomad()
	opts := &jobs.Options{Plaintext: true, AllowHostModelDirs: true}
	r := &Reconciler{Nomad: f, Options: opts, PurgeAfter: time.Hour}
	a, b := testModel("demo", "a", true), testModel("demo", "b", true)

	res, err := r.Reconcile(ctx, desiredOf(opts, a, b), nil, true)
	if err != nil || res.Registered != 2 {
		t.Fatalf("first pass: %v %v", res, err)
	}
	// Nothing changed: no write at all.
	before := f.count("register")
	res, _ = r.Reconcile(ctx, desiredOf(opts, a, b), nil, true)
	if res.Unchanged != 2 || f.count("register") != before || f.count("stop") != 0 {
		t.Fatalf("idle pass wrote to Nomad: %v %v", res, f.calls)
	}
	// A change updates in place with check-and-set.
	a.MemoryMB = 1024
	res, _ = r.Reconcile(ctx, desiredOf(opts, a, b), nil, true)
	if res.Updated != 1 || res.Unchanged != 1 {
		t.Fatalf("update pass: %v", res)
	}
	// STOPPED and deauthorized models are stopped, not purged yet.
	b.Running = false
	res, _ = r.Reconcile(ctx, desiredOf(opts, b), nil, true)
	if res.Stopped != 2 || res.Purged != 0 {
		t.Fatalf("stop pass: %v", res)
	}
	// Back to running: the stopped job is registered again.
	b.Running = true
	res, _ = r.Reconcile(ctx, desiredOf(opts, b), nil, true)
	if res.Updated != 1 || f.jobs[jobs.JobID(jobs.Named(&b))].Stop {
		t.Fatalf("restart pass: %v", res)
	}
	// After the grace period the stopped job is purged.
	r.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	res, _ = r.Reconcile(ctx, desiredOf(opts, b), nil, true)
	if res.Purged != 1 || len(f.jobs) != 1 {
		t.Fatalf("purge pass: %v, %d jobs left", res, len(f.jobs))
	}
}

// Until every source was read, an absent model may just be unread: nothing
// is stopped.
func TestReconcileIncompleteStopsNothing(t *testing.T) {
	ctx := context.Background()
	f := newFakeNomad()
	opts := testOptions
	r := &Reconciler{Nomad: f, Options: opts}
	a := testModel("demo", "a", true)
	if _, err := r.Reconcile(ctx, desiredOf(opts, a), nil, true); err != nil {
		t.Fatal(err)
	}
	res, _ := r.Reconcile(ctx, map[string]*Desired{}, nil, false)
	if res.Stopped != 0 || f.jobs[jobs.JobID(jobs.Named(&a))].Stop {
		t.Fatalf("stopped a model before all sources were read: %v", res)
	}
}

func TestReconcileLeavesForeignJobsAlone(t *testing.T) {
	ctx := context.Background()
	f := newFakeNomad()
	opts := testOptions
	a := testModel("demo", "a", true)
	f.jobs[jobs.JobID(jobs.Named(&a))] = &nomad.JobStub{ID: jobs.JobID(jobs.Named(&a)), JobModifyIndex: 7, Meta: map[string]string{}}
	f.jobs["model-node-byhand"] = &nomad.JobStub{ID: "model-node-byhand", JobModifyIndex: 8}
	r := &Reconciler{Nomad: f, Options: opts}
	res, _ := r.Reconcile(ctx, desiredOf(opts, a), nil, true)
	if f.count("register")+f.count("stop") != 0 || len(res.Errors) != 1 || !strings.Contains(res.Errors[0].Error(), "not created by the scheduler") {
		t.Fatalf("touched a job it does not own: %v %v", res, f.calls)
	}
}

// Two writers racing on the same job: check-and-set lets one win, the
// other reports a conflict instead of registering a duplicate version.
func TestReconcileConflict(t *testing.T) {
	ctx := context.Background()
	f := newFakeNomad()
	opts := testOptions
	a := testModel("demo", "a", true)
	r := &Reconciler{Nomad: &racingNomad{fakeNomad: f}, Options: opts}
	res, _ := r.Reconcile(ctx, desiredOf(opts, a), nil, true)
	if len(res.Errors) != 1 || !errors.Is(res.Errors[0], nomad.ErrConflict) || res.Registered != 0 {
		t.Fatalf("lost race not reported as a conflict: %v", res)
	}
	if f.count("register") != 2 || len(f.jobs) != 1 {
		t.Fatalf("want one job from the winner, have %d", len(f.jobs))
	}
}

// racingNomad registers the job behind the reconciler's back between its
// List and its Register.
type racingNomad struct{ *fakeNomad }

func (r *racingNomad) ListJobs(ctx context.Context, prefix string) ([]nomad.JobStub, error) {
	out, err := r.fakeNomad.ListJobs(ctx, prefix)
	a := testModel("demo", "a", true)
	j, _ := jobs.Build(jobs.Named(&a), testOptions)
	_ = r.fakeNomad.Register(ctx, j, 0)
	return out, err
}

func TestReconcileHeldModelIsStopped(t *testing.T) {
	ctx := context.Background()
	f := newFakeNomad()
	opts := testOptions
	a := testModel("demo", "a", true)
	r := &Reconciler{Nomad: f, Options: opts}
	_, _ = r.Reconcile(ctx, desiredOf(opts, a), nil, true)
	id := jobs.JobID(jobs.Named(&a))
	res, _ := r.Reconcile(ctx, desiredOf(opts, a), map[string]bool{id: true}, true)
	if res.Stopped != 1 || res.Held != 1 || !f.jobs[id].Stop {
		t.Fatalf("held model not stopped: %v", res)
	}
	res, _ = r.Reconcile(ctx, desiredOf(opts, a), nil, true)
	if res.Updated != 1 || f.jobs[id].Stop {
		t.Fatalf("model not started again after its hold: %v", res)
	}
}

// failingNomad refuses every write to one job.
type failingNomad struct {
	*fakeNomad
	id string
}

func (f *failingNomad) Register(ctx context.Context, job *nomadapi.Job, idx uint64) error {
	if *job.ID == f.id {
		return fmt.Errorf("register %s: 500 internal error", f.id)
	}
	return f.fakeNomad.Register(ctx, job, idx)
}

func (f *failingNomad) Stop(ctx context.Context, id string) error {
	if id == f.id {
		return fmt.Errorf("stop %s: 500 internal error", id)
	}
	return f.fakeNomad.Stop(ctx, id)
}

// Each write stands alone: one that Nomad refuses, or one the builder
// refuses, is an error of the pass and the others are made.
func TestApplyWritesStandAlone(t *testing.T) {
	ctx := context.Background()
	f := newFakeNomad()
	a, b, c, gone := testModel("demo", "a", true), testModel("demo", "b", true), testModel("demo", "c", true), testModel("demo", "gone", true)
	refused := testModel("demo", "refused", true)
	refused.ModelDir = "" // neither a model dir nor an artifact: jobs.Build refuses it
	for _, m := range []jobs.Model{c, gone} {
		j, _ := jobs.Build(jobs.Named(&m), testOptions)
		_ = f.Register(ctx, j, 0)
	}
	r := &Reconciler{Nomad: &failingNomad{fakeNomad: f, id: jobs.JobID(jobs.Named(&b))}, Options: testOptions, Concurrency: 1}
	desired := desiredOf(testOptions, a, b, refused)
	actions, planned := Plan(Want{Models: desired, Complete: true}, Actual{Jobs: mustList(t, f), Now: time.Now()}, time.Hour)
	if len(actions) != 5 || len(planned.Errors) != 0 {
		t.Fatalf("plan: %q %v", describe(actions), planned)
	}
	res, err := r.Apply(ctx, actions)
	if err != nil || res.Registered != 1 || res.Stopped != 2 || len(res.Errors) != 2 {
		t.Fatalf("apply: %v %v (want a registered, c and gone stopped, b and refused failed)", res, err)
	}
	joined := fmt.Sprint(res.Errors)
	t.Logf("errors: %s", joined)
	if !strings.Contains(joined, "500 internal error") || !strings.Contains(joined, `model "refused"`) {
		t.Fatalf("errors do not name the failed writes: %s", joined)
	}
	if f.jobs[jobs.JobID(jobs.Named(&a))] == nil || !f.jobs[jobs.JobID(jobs.Named(&c))].Stop || !f.jobs[jobs.JobID(jobs.Named(&gone))].Stop {
		t.Fatalf("the writes after a failed one were not made: %v", f.jobs)
	}

	// A pass whose context ends says so (the leader lost its lock).
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if res, err := r.Apply(cctx, actions); !errors.Is(err, context.Canceled) {
		t.Fatalf("apply after cancel: %v %v", res, err)
	}
}

func mustList(t *testing.T, f *fakeNomad) []nomad.JobStub {
	t.Helper()
	list, err := f.ListJobs(context.Background(), names.JobPrefix)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// adoptingSource vouches for the jobs named in keep (source.Adopter) and
// records what it was asked.
type adoptingSource struct {
	keep  map[string]string
	asked []source.Adoptee
}

func (a *adoptingSource) Name() string                                     { return "test" }
func (a *adoptingSource) Run(context.Context, func(source.Snapshot)) error { return nil }
func (a *adoptingSource) Adopt(jobs []source.Adoptee) map[string]string {
	a.asked = jobs
	out := map[string]string{}
	for _, j := range jobs {
		if why, ok := a.keep[j.JobID]; ok {
			out[j.JobID] = why
		}
	}
	return out
}

// A job is written with the entry that authorized it; a running job the
// desired state lacks is stopped unless the source named in its meta
// vouches for it (a restarted scheduler whose first readings lack its
// authorization): the source is asked with the job's origin, and a job it
// does not keep is stopped.
func TestReconcileAsksTheSourceBeforeStopping(t *testing.T) {
	ctx := context.Background()
	f := newFakeNomad()
	opts := &jobs.Options{Plaintext: true, AllowHostModelDirs: true}
	src := &adoptingSource{keep: map[string]string{}}
	r := &Reconciler{Nomad: f, Options: opts, PurgeAfter: time.Hour, Sources: []source.Source{src}}
	a, b := testModel("demo", "a", true), testModel("demo", "b", true)
	want := desiredOf(opts, a, b)
	ida, idb := jobs.JobID(jobs.Named(&a)), jobs.JobID(jobs.Named(&b))
	want[ida].Origin = source.Origin{Entry: "AccountA", Slot: 1234, Chain: "genesis-1"}
	if res, err := r.Reconcile(ctx, want, nil, true); err != nil || res.Registered != 2 {
		t.Fatalf("first pass: %v %v", res, err)
	}
	meta := f.jobs[ida].Meta
	if meta[names.MetaAuthorization] != "AccountA" || meta[names.MetaAuthorizedSlot] != "1234" || meta[names.MetaAuthorizedChain] != "genesis-1" {
		t.Fatalf("job a's meta lacks its origin: %v", meta)
	}
	if _, ok := f.jobs[idb].Meta[names.MetaAuthorization]; ok {
		t.Fatalf("job b has an origin it was not given: %v", f.jobs[idb].Meta)
	}
	// A scheduler whose readings lack both: a is kept while its source
	// vouches for it, b (no origin) stops as before.
	src.keep[ida] = "reading it on its own"
	res, err := r.Reconcile(ctx, map[string]*Desired{}, nil, true)
	if err != nil || res.Kept != 1 || res.Stopped != 1 || f.jobs[ida].Stop || !f.jobs[idb].Stop {
		t.Fatalf("pass without a and b: %v %v (a stopped %v, b stopped %v)", res, err, f.jobs[ida].Stop, f.jobs[idb].Stop)
	}
	if len(src.asked) != 1 || src.asked[0] != (source.Adoptee{JobID: ida, Origin: source.Origin{Entry: "AccountA", Slot: 1234, Chain: "genesis-1"}}) {
		t.Fatalf("the source was asked about %+v", src.asked)
	}
	// Incomplete desired state: nothing is stopped, nobody is asked.
	src.asked = nil
	if res, _ := r.Reconcile(ctx, map[string]*Desired{}, nil, false); res.Stopped != 0 || src.asked != nil {
		t.Fatalf("incomplete pass: %v, asked %v", res, src.asked)
	}
	// Evidence: the source no longer vouches, and a stops.
	delete(src.keep, ida)
	if res, _ := r.Reconcile(ctx, map[string]*Desired{}, nil, true); res.Stopped != 1 || !f.jobs[ida].Stop {
		t.Fatalf("pass after the evidence: %v", res)
	}
}

// rolloutNomad is a Nomad whose jobs' latest deployments failed for the
// versions with the specs in failed (it reverted them).
type rolloutNomad struct {
	*fakeNomad
	failed map[string]string // job id -> spec of the version that failed
	asked  int
}

func (n *rolloutNomad) FailedRollout(_ context.Context, id string) (string, error) {
	n.asked++
	return n.failed[id], nil
}

// revert plays Nomad's auto-revert: the job is written back as the served
// version, a new version that keeps the served one's SubmitTime (as
// Nomad's deployment watcher does).
func (n *rolloutNomad) revert(id string, served nomad.JobStub) {
	n.mu.Lock()
	defer n.mu.Unlock()
	j := n.jobs[id]
	n.failed[id] = j.Meta[names.MetaSpec]
	n.index++
	j.Meta[names.MetaSpec], j.JobModifyIndex, j.SubmitTime = served.Meta[names.MetaSpec], n.index, served.SubmitTime
}

// rolloutReconciler is a reconciler of a rolloutNomad, at the time *now,
// that retries a failed rollout after 30 minutes.
func rolloutReconciler(now *time.Time) (*rolloutNomad, *Reconciler) {
	n := &rolloutNomad{fakeNomad: newFakeNomad(), failed: map[string]string{}}
	return n, &Reconciler{Nomad: n, Options: &jobs.Options{Plaintext: true, AllowHostModelDirs: true},
		RolloutRetry: 30 * time.Minute, now: func() time.Time { return *now }}
}

// A version whose rollout failed (Nomad reverted the job) is not written
// again at every pass, which would put its canary back on trial in a loop;
// it is after RolloutRetry from the revert (not from when the served
// version was submitted, hours before: the revert keeps its SubmitTime),
// and a newer version is written at once. Nomad is asked once per revert,
// not once per pass.
func TestReconcileDoesNotRetryAFailedRolloutAtOnce(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	n, r := rolloutReconciler(&now)
	opts := r.Options
	a := testModel("demo", "a", true)
	id := jobs.JobID(jobs.Named(&a))
	if res, err := r.Reconcile(ctx, desiredOf(opts, a), nil, true); err != nil || res.Registered != 1 {
		t.Fatalf("first pass: %v %v", res, err)
	}
	served := *n.jobs[id]
	served.Meta = maps.Clone(served.Meta)
	now = now.Add(2 * time.Hour) // the served version has run for a while
	a.MemoryMB = 1024            // the new submission
	if res, _ := r.Reconcile(ctx, desiredOf(opts, a), nil, true); res.Updated != 1 {
		t.Fatalf("the new version is not written: %v", res)
	}
	n.revert(id, served)
	asked := n.asked
	for range 3 {
		res, _ := r.Reconcile(ctx, desiredOf(opts, a), nil, true)
		if res.Updated != 0 || res.FailedRollouts != 1 || n.jobs[id].Meta[names.MetaSpec] != served.Meta[names.MetaSpec] {
			t.Fatalf("the failed version was written again at once: %v", res)
		}
	}
	if n.asked != asked+1 {
		t.Fatalf("Nomad was asked %d times about one revert, want once", n.asked-asked)
	}
	now = now.Add(31 * time.Minute)
	if res, _ := r.Reconcile(ctx, desiredOf(opts, a), nil, true); res.Updated != 1 {
		t.Fatalf("the failed version is not retried after RolloutRetry: %v", res)
	}
	n.revert(id, served)
	a.MemoryMB = 2048 // a newer submission goes out at once
	if res, _ := r.Reconcile(ctx, desiredOf(opts, a), nil, true); res.Updated != 1 || res.FailedRollouts != 0 {
		t.Fatalf("a newer version waits for the failed one's retry: %v", res)
	}
}

// What the reconciler remembers of failed rollouts is forgotten once a job
// is no longer updated: a revoked model's entry goes with its stop, and a
// version whose retry succeeded leaves none; over weeks of models coming
// and going the memory stays the size of the rollouts failing now.
func TestReconcileForgetsRolloutsNoLongerFailing(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	n, r := rolloutReconciler(&now)
	opts := r.Options
	a, b := testModel("demo", "a", true), testModel("demo", "b", true)
	ida, idb := jobs.JobID(jobs.Named(&a)), jobs.JobID(jobs.Named(&b))
	if res, err := r.Reconcile(ctx, desiredOf(opts, a, b), nil, true); err != nil || res.Registered != 2 {
		t.Fatalf("first pass: %v %v", res, err)
	}
	served, servedB := *n.jobs[ida], *n.jobs[idb]
	served.Meta, servedB.Meta = maps.Clone(served.Meta), maps.Clone(servedB.Meta)
	a.MemoryMB, b.MemoryMB = 1024, 1024 // new submissions, whose rollouts fail
	if res, _ := r.Reconcile(ctx, desiredOf(opts, a, b), nil, true); res.Updated != 2 {
		t.Fatalf("the new versions are not written: %v", res)
	}
	n.revert(ida, served)
	n.revert(idb, servedB)
	if res, _ := r.Reconcile(ctx, desiredOf(opts, a, b), nil, true); res.FailedRollouts != 2 {
		t.Fatalf("both failed rollouts are not held: %v", res)
	}
	remembered := func() []string {
		r.mu.Lock()
		defer r.mu.Unlock()
		return slices.Sorted(maps.Keys(r.rollouts))
	}
	if got := remembered(); len(got) != 2 {
		t.Fatalf("remembered rollouts %v, want both jobs", got)
	}
	// a is revoked: it is stopped, and forgotten.
	if res, _ := r.Reconcile(ctx, desiredOf(opts, b), nil, true); res.Stopped != 1 || res.FailedRollouts != 1 {
		t.Fatalf("revoking a: %v", res)
	}
	if got := remembered(); !slices.Equal(got, []string{idb}) {
		t.Fatalf("after a's revocation, remembered rollouts %v, want only %s", got, idb)
	}
	// b's retry succeeds (Nomad keeps the new version): nothing is left.
	now = now.Add(31 * time.Minute)
	if res, _ := r.Reconcile(ctx, desiredOf(opts, b), nil, true); res.Updated != 1 {
		t.Fatalf("b is not retried after RolloutRetry: %v", res)
	}
	if res, _ := r.Reconcile(ctx, desiredOf(opts, b), nil, true); res.Unchanged != 1 || res.FailedRollouts != 0 {
		t.Fatalf("pass after b's successful rollout: %v", res)
	}
	if got := remembered(); len(got) != 0 {
		t.Fatalf("after b's successful rollout, remembered rollouts %v, want none", got)
	}
}

// At most MaxRollouts running models roll out a new version at once (each
// canary needs room for one more allocation): the jobs already rolling
// count, the other updates wait for a later pass, and starting a stopped
// model or registering a new one is no rollout.
func TestReconcileBoundsRollouts(t *testing.T) {
	ctx := context.Background()
	f := newFakeNomad()
	opts := &jobs.Options{Plaintext: true, AllowHostModelDirs: true}
	r := &Reconciler{Nomad: f, Options: opts, MaxRollouts: 2}
	var ms []jobs.Model
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		ms = append(ms, testModel("demo", id, true))
	}
	if res, _ := r.Reconcile(ctx, desiredOf(opts, ms...), nil, true); res.Registered != 5 {
		t.Fatalf("five new models are registered at once, no rollout: %v", res)
	}
	// Job a is still rolling out an earlier version (two allocations).
	f.mu.Lock()
	f.jobs[jobs.JobID(jobs.Named(&ms[0]))].Allocs = 2
	f.mu.Unlock()
	for i := range ms {
		ms[i].MemoryMB = 1024 // a change to every job
	}
	res, _ := r.Reconcile(ctx, desiredOf(opts, ms...), nil, true)
	if res.Updated != 1 || res.Rolling != 1 || res.DeferredRollouts != 4 {
		t.Fatalf("with one job rolling and a bound of 2: %v; want 1 update, 4 deferred", res)
	}
	f.mu.Lock()
	for _, j := range f.jobs {
		j.Allocs = 1 // every rollout done
	}
	f.mu.Unlock()
	if res, _ := r.Reconcile(ctx, desiredOf(opts, ms...), nil, true); res.Updated != 2 || res.DeferredRollouts != 2 {
		t.Fatalf("next pass: %v; want 2 updates, 2 deferred", res)
	}
	// A stopped model started again is no rollout.
	stopped := ms[4]
	stopped.Running = false
	if res, _ := r.Reconcile(ctx, desiredOf(opts, ms[0], ms[1], ms[2], ms[3], stopped), nil, true); res.Stopped != 1 {
		t.Fatalf("stop pass: %v", res)
	}
	f.mu.Lock()
	for _, j := range f.jobs {
		j.Allocs = 2 // everything rolling
	}
	f.mu.Unlock()
	ms[4].MemoryMB = 2048
	if res, _ := r.Reconcile(ctx, desiredOf(opts, ms...), nil, true); res.Updated != 1 || f.jobs[jobs.JobID(jobs.Named(&ms[4]))].Stop {
		t.Fatalf("a stopped model is not started while others roll: %v", res)
	}
}

// A version that replaces a serving one (its canary beside it) is checked
// on the runner's "loaded" health, so that a submission that cannot load
// never turns healthy and the serving version goes on; a first version,
// and a model started again after a stop, keep the overall health, under
// which a model that fails to load answers BAD_IMPLEMENTATION.
func TestAnUpdateChecksThatItsModelLoaded(t *testing.T) {
	ctx := context.Background()
	n := newFakeNomad()
	opts := &jobs.Options{Plaintext: true, AllowHostModelDirs: true}
	r := &Reconciler{Nomad: n, Options: opts}
	a := testModel("demo", "a", true)
	id := jobs.JobID(jobs.Named(&a))
	checked := func() string {
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.written[id].TaskGroups[0].Services[0].Checks[0].GRPCService
	}
	pass := func(m jobs.Model) Result {
		res, err := r.Reconcile(ctx, desiredOf(opts, m), nil, true)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := pass(a); res.Registered != 1 || checked() != "" {
		t.Fatalf("first version: %v, check service %q, want the overall health", res, checked())
	}
	a.MemoryMB = 1024 // a new submission
	if res := pass(a); res.Updated != 1 || checked() != names.HealthLoaded {
		t.Fatalf("new version: %v, check service %q, want %q", res, checked(), names.HealthLoaded)
	}
	if res := pass(a); res.Unchanged != 1 {
		t.Fatalf("the check's service is no part of the spec: %v", res)
	}
	a.Running = false
	if res := pass(a); res.Stopped != 1 {
		t.Fatalf("stop: %v", res)
	}
	a.Running = true
	if res := pass(a); res.Updated != 1 || checked() != "" {
		t.Fatalf("started again: %v, check service %q, want the overall health", res, checked())
	}
}
