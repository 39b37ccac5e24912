package scheduler

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/nomad"
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
	if res.Updated != 1 || f.jobs[jobs.JobID(&b)].Stop {
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
	if res.Stopped != 0 || f.jobs[jobs.JobID(&a)].Stop {
		t.Fatalf("stopped a model before all sources were read: %v", res)
	}
}

func TestReconcileLeavesForeignJobsAlone(t *testing.T) {
	ctx := context.Background()
	f := newFakeNomad()
	opts := testOptions
	a := testModel("demo", "a", true)
	f.jobs[jobs.JobID(&a)] = &nomad.JobStub{ID: jobs.JobID(&a), JobModifyIndex: 7, Meta: map[string]string{}}
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
	j, _ := jobs.Build(&a, testOptions)
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
	id := jobs.JobID(&a)
	res, _ := r.Reconcile(ctx, desiredOf(opts, a), map[string]bool{id: true}, true)
	if res.Stopped != 1 || res.Held != 1 || !f.jobs[id].Stop {
		t.Fatalf("held model not stopped: %v", res)
	}
	res, _ = r.Reconcile(ctx, desiredOf(opts, a), nil, true)
	if res.Updated != 1 || f.jobs[id].Stop {
		t.Fatalf("model not started again after its hold: %v", res)
	}
}

// Fail static: a source that fails keeps its last good models.
func TestWatcherKeepsLastGoodState(t *testing.T) {
	w := NewWatcher([]string{"chain", "file"}, testOptions, nil)
	a := testModel("demo", "a", true)
	w.Report("chain", Snapshot{Models: []jobs.Model{a}})
	if _, ready := w.Desired(); ready {
		t.Fatal("ready before every source was read")
	}
	w.Report("file", Snapshot{})
	w.Report("chain", Snapshot{Err: errors.New("rpc down")})
	d, ready := w.Desired()
	if !ready || len(d) != 1 || d[jobs.JobID(&a)] == nil {
		t.Fatalf("desired state after a failed read: %v ready=%v", d, ready)
	}
	st := w.Sources()[0]
	if st.LastError != "rpc down" || st.Models != 1 {
		t.Fatalf("source status: %+v", st)
	}
	// A good empty snapshot is a real change.
	w.Report("chain", Snapshot{})
	if d, _ := w.Desired(); len(d) != 0 {
		t.Fatalf("deauthorization ignored: %v", d)
	}
}
