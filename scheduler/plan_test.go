package scheduler

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/scheduler/source"
)

// ours is a job the scheduler created for d, at modify index 10, with d's
// spec unless spec says otherwise; stopped since stoppedAt when stop.
func ours(d *Desired, spec string, stop bool, stoppedAt time.Time) nomad.JobStub {
	if spec == "" {
		spec = d.Spec
	}
	return nomad.JobStub{ID: d.JobID, JobModifyIndex: 10, Stop: stop, SubmitTime: stoppedAt,
		Meta: map[string]string{names.MetaManaged: "true", names.MetaSpec: spec}}
}

func describe(actions []Action) []string {
	var out []string
	for _, a := range actions {
		s := fmt.Sprintf("%s %s", a.Op, a.JobID)
		if a.Index != 0 {
			s += fmt.Sprintf(" index=%d", a.Index)
		}
		if a.WasStopped {
			s += " was_stopped"
		}
		if a.Reason != "" {
			s += " (" + a.Reason + ")"
		}
		if a.StoppedFor != 0 {
			s += " stopped_for=" + a.StoppedFor.String()
		}
		out = append(out, s)
	}
	return out
}

func TestPlan(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	const purgeAfter = time.Hour
	stop := func(m jobs.Model) jobs.Model { m.Running = false; return m }
	a, b, c := testModel("demo", "a", true), testModel("demo", "b", true), testModel("demo", "c", true)
	da, db, dc := desiredOf(testOptions, a)[jobs.JobID(jobs.Named(&a))], desiredOf(testOptions, b)[jobs.JobID(jobs.Named(&b))], desiredOf(testOptions, c)[jobs.JobID(jobs.Named(&c))]
	stoppedA := desiredOf(testOptions, stop(a))[jobs.JobID(jobs.Named(&a))]
	idA, idB, idC := da.JobID, db.JobID, dc.JobID
	foreign := func(d *Desired, meta map[string]string) nomad.JobStub {
		return nomad.JobStub{ID: d.JobID, JobModifyIndex: 7, Meta: meta}
	}
	want := func(ds ...*Desired) map[string]*Desired {
		out := map[string]*Desired{}
		for _, d := range ds {
			out[d.JobID] = d
		}
		return out
	}

	for _, tc := range []struct {
		name     string
		desired  map[string]*Desired
		complete bool
		jobs     []nomad.JobStub
		held     []string
		actions  []string
		// unchanged, held and refused (errors) of the plan's result
		unchanged, nheld int
		refused          string
	}{
		{name: "new model: registered", desired: want(da), complete: true,
			actions: []string{"register " + idA}},
		{name: "new model before every source was read: registered", desired: want(da),
			actions: []string{"register " + idA}},
		{name: "unchanged: nothing", desired: want(da), complete: true, jobs: []nomad.JobStub{ours(da, "", false, now)},
			unchanged: 1},
		{name: "spec changed (new version, resources): updated at the listed index", desired: want(da), complete: true,
			jobs:    []nomad.JobStub{ours(da, "older-spec", false, now)},
			actions: []string{"update " + idA + " index=10"}},
		{name: "stopped job of a running model: started again", desired: want(da), complete: true,
			jobs:    []nomad.JobStub{ours(da, "", true, now.Add(-2*purgeAfter))},
			actions: []string{"update " + idA + " index=10 was_stopped"}},
		{name: "model gone: stopped", desired: want(), complete: true, jobs: []nomad.JobStub{ours(da, "", false, now)},
			actions: []string{"stop " + idA + " (no longer authorized)"}},
		{name: "desired STOPPED: stopped", desired: want(stoppedA), complete: true, jobs: []nomad.JobStub{ours(da, "", false, now)},
			actions: []string{"stop " + idA + " (desired state STOPPED)"}},
		{name: "desired STOPPED and no job: nothing", desired: want(stoppedA), complete: true},
		{name: "gone and stopped recently: kept for the purge delay", desired: want(), complete: true,
			jobs: []nomad.JobStub{ours(da, "", true, now.Add(-purgeAfter+time.Second))}},
		{name: "gone and stopped for the purge delay: purged", desired: want(), complete: true,
			jobs:    []nomad.JobStub{ours(da, "", true, now.Add(-purgeAfter))},
			actions: []string{"purge " + idA + " stopped_for=1h0m0s"}},
		{name: "desired STOPPED and stopped long ago: purged", desired: want(stoppedA), complete: true,
			jobs:    []nomad.JobStub{ours(da, "", true, now.Add(-3*purgeAfter))},
			actions: []string{"purge " + idA + " stopped_for=3h0m0s"}},
		{name: "crash-loop hold: stopped", desired: want(da), complete: true, held: []string{idA},
			jobs: []nomad.JobStub{ours(da, "", false, now)}, nheld: 1,
			actions: []string{"stop " + idA + " (crash-loop backoff)"}},
		{name: "crash-loop hold of a stopped job: not purged while held", desired: want(da), complete: true, held: []string{idA},
			jobs: []nomad.JobStub{ours(da, "", true, now.Add(-3*purgeAfter))}, nheld: 1},
		{name: "crash-loop hold and no job: nothing", desired: want(da), complete: true, held: []string{idA}, nheld: 1},
		// Fail static: a source that is down keeps its last good snapshot
		// in the watcher; one never read leaves the state incomplete, and
		// then nothing is stopped or purged.
		{name: "a source not read yet: nothing stopped", desired: want(), jobs: []nomad.JobStub{ours(da, "", false, now)}},
		{name: "a source not read yet: nothing purged", desired: want(), jobs: []nomad.JobStub{ours(da, "", true, now.Add(-3*purgeAfter))}},
		{name: "a source not read yet: a held model is not stopped", desired: want(da), held: []string{idA},
			jobs: []nomad.JobStub{ours(da, "", false, now)}, nheld: 1},
		{name: "a job not created by the scheduler under a model's id: untouched, reported", desired: want(da), complete: true,
			jobs:    []nomad.JobStub{foreign(da, map[string]string{})},
			refused: "job " + idA + " exists but was not created by the scheduler; leaving it alone (model a of demo)"},
		{name: "a job with other meta, not desired: untouched, silently", desired: want(), complete: true,
			jobs: []nomad.JobStub{foreign(da, map[string]string{names.MetaManaged: "false"}), foreign(db, nil)}},
		{name: "a stopped job of another owner, long ago: not purged", desired: want(), complete: true,
			jobs: []nomad.JobStub{{ID: idA, Stop: true, SubmitTime: now.Add(-3 * purgeAfter)}}},
		{name: "several at once: ordered by op, then job id", desired: want(db, dc, da), complete: true,
			jobs: []nomad.JobStub{ours(dc, "old", false, now), {ID: "model-node-zzz", JobModifyIndex: 3, Stop: true,
				SubmitTime: now.Add(-2 * purgeAfter), Meta: map[string]string{names.MetaManaged: "true"}},
				{ID: "model-node-000", Meta: map[string]string{names.MetaManaged: "true"}}},
			actions: sortedWithin([]string{"register " + idA, "register " + idB}, []string{"update " + idC + " index=10"},
				[]string{"stop model-node-000 (no longer authorized)"}, []string{"purge model-node-zzz stopped_for=2h0m0s"})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			held := map[string]bool{}
			for _, id := range tc.held {
				held[id] = true
			}
			jobsBefore := fmt.Sprint(tc.jobs)
			actions, res := Plan(Want{Models: tc.desired, Complete: tc.complete}, Actual{Jobs: tc.jobs, Held: held, Now: now}, purgeAfter)
			if got := describe(actions); !slices.Equal(got, tc.actions) {
				t.Errorf("actions:\n  got  %q\n  want %q", got, tc.actions)
			}
			for _, a := range actions {
				if (a.Op == OpRegister || a.Op == OpUpdate) && a.Desired != tc.desired[a.JobID] {
					t.Errorf("%s %s writes %+v, not the desired model", a.Op, a.JobID, a.Desired)
				}
			}
			if res.Unchanged != tc.unchanged || res.Held != tc.nheld {
				t.Errorf("unchanged %d held %d, want %d and %d", res.Unchanged, res.Held, tc.unchanged, tc.nheld)
			}
			var refused []string
			for _, err := range res.Errors {
				refused = append(refused, err.Error())
			}
			if strings.Join(refused, "\n") != tc.refused {
				t.Errorf("errors %q, want %q", refused, tc.refused)
			}
			if res.Registered+res.Updated+res.Stopped+res.Purged != 0 {
				t.Errorf("a plan counts writes it did not make: %v", res)
			}
			if fmt.Sprint(tc.jobs) != jobsBefore {
				t.Error("Plan changed the listed jobs")
			}
		})
	}
}

// sortedWithin sorts each group of expected actions (job ids are hashes)
// and joins the groups in order.
func sortedWithin(groups ...[]string) []string {
	var out []string
	for _, g := range groups {
		slices.SortFunc(g, func(x, y string) int { return strings.Compare(strings.Fields(x)[1], strings.Fields(y)[1]) })
		out = append(out, g...)
	}
	return out
}

// The same inputs give the same actions in the same order, whatever the
// order of the maps and of the listing.
func TestPlanIsDeterministic(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	desired := map[string]*Desired{}
	var listed []nomad.JobStub
	for i := range 200 {
		m := testModel("demo", fmt.Sprintf("m%03d", i), i%5 != 0)
		d := desiredOf(testOptions, m)[jobs.JobID(jobs.Named(&m))]
		if i%3 != 0 {
			desired[d.JobID] = d
		}
		if i%2 == 0 {
			listed = append(listed, ours(d, map[bool]string{true: "old"}[i%4 == 0], i%7 == 0, now.Add(-48*time.Hour)))
		}
	}
	first, _ := Plan(Want{Models: desired, Complete: true}, Actual{Jobs: listed, Now: now}, time.Hour)
	if len(first) < 100 {
		t.Fatalf("only %d actions: the fixture does not exercise the order", len(first))
	}
	for i := range 20 {
		slices.Reverse(listed)
		again, _ := Plan(Want{Models: desired, Complete: true}, Actual{Jobs: listed, Now: now}, time.Hour)
		if !slices.Equal(describe(again), describe(first)) {
			t.Fatalf("plan %d differs from the first", i+1)
		}
	}
}

// What the watcher merges is what Plan decides on: a source that fails
// keeps its models running (fail static), and a model whose entry turns
// into one the deployment's policy refuses is no longer desired, so its
// job is stopped like a deauthorized model's.
func TestPlanFromWatcher(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	good := jobs.Model{Crunch: "c", ModelID: "m", ArtifactURL: "https://models.example/m.tar.gz",
		ArtifactSHA256: strings.Repeat("ab", 32), Hardware: jobs.CPU, Running: true}
	other := good
	other.ModelID, other.ArtifactURL = "other", "https://models.example/other.tar.gz"
	w := NewWatcher([]string{"chain", "feed"}, testOptions, nil)
	w.Report("chain", source.Snapshot{Models: []jobs.Model{good, other}})
	plan := func() ([]Action, Result) {
		d, complete := w.Desired()
		var listed []nomad.JobStub
		for _, m := range []jobs.Model{good, other} {
			listed = append(listed, ours(desiredOf(testOptions, m)[jobs.JobID(jobs.Named(&m))], "", false, now))
		}
		return Plan(Want{Models: d, Complete: complete}, Actual{Jobs: listed, Now: now}, time.Hour)
	}
	if actions, res := plan(); len(actions) != 0 || res.Unchanged != 2 {
		t.Fatalf("feed never read: %q %v", describe(actions), res)
	}
	w.Report("feed", source.Snapshot{})
	w.Report("chain", source.Snapshot{Err: fmt.Errorf("rpc down")})
	if actions, res := plan(); len(actions) != 0 || res.Unchanged != 2 {
		t.Fatalf("chain down: %q %v (a source that is down must not stop its models)", describe(actions), res)
	}
	hostile := good
	hostile.ArtifactURL = "https://evil.example/m.tar.gz"
	w.Report("chain", source.Snapshot{Models: []jobs.Model{hostile, other}})
	actions, res := plan()
	if got, want := describe(actions), []string{"stop " + jobs.JobID(jobs.Named(&good)) + " (no longer authorized)"}; !slices.Equal(got, want) || res.Unchanged != 1 {
		t.Fatalf("refused entry: %q %v, want %q", got, res, want)
	}
}

// A model whose code is still being read (Desired.Wait) gets no job yet,
// and a job it already has is neither updated nor stopped.
func TestPlanLeavesWaitingModelsAlone(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a, b := testModel("demo", "a", true), testModel("demo", "b", true)
	want := desiredOf(testOptions, a, b)
	da, db := want[jobs.JobID(jobs.Named(&a))], want[jobs.JobID(jobs.Named(&b))]
	da.Wait, db.Wait = "reading the submission's code archive", "reading the submission's code archive"
	actions, res := Plan(Want{Models: want, Complete: true},
		Actual{Jobs: []nomad.JobStub{ours(db, "an older spec", false, time.Time{})}, Now: now}, time.Hour)
	if len(actions) != 0 || res.Waiting != 2 {
		t.Fatalf("actions %v, waiting %d; want none and 2", describe(actions), res.Waiting)
	}
}
