package observer

import (
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/names"
)

func TestObserverCrashLoopBackoff(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	o := &Observer{Backoff: Backoff{Failures: 3, Window: 10 * time.Minute, Initial: time.Minute, Max: 4 * time.Minute},
		now: func() time.Time { return now }, states: map[string]*ModelState{}}
	fail := func(id string, idx uint64) {
		o.mu.Lock()
		defer o.mu.Unlock()
		o.add(&nomadapi.AllocationListStub{ID: id, JobID: "model-node-x", ClientStatus: "failed", CreateIndex: idx,
			ModifyTime: now.UnixNano(), TaskStates: map[string]*nomadapi.TaskState{"model": {Events: []*nomadapi.TaskEvent{
				{Type: "Driver Failure", DisplayMessage: "model_dir missing", Time: now.UnixNano()}}}}})
		o.refresh("model-node-x")
	}
	fail("a1", 1)
	fail("a2", 2)
	if held, _ := o.Held(); held["model-node-x"] {
		t.Fatal("held after 2 failures; threshold is 3")
	}
	fail("a3", 3)
	held, until := o.Held()
	if !held["model-node-x"] || until.Sub(now) != time.Minute {
		t.Fatalf("not held for 1 min after 3 failures: %v %v", held, until)
	}
	st := o.States()[0]
	if st.State != StateBackoff || !strings.Contains(st.Reason, "model_dir missing") {
		t.Fatalf("state: %+v", st)
	}
	// The hold ends; old failures are forgiven; three new ones double it.
	now = now.Add(61 * time.Second)
	if held, _ := o.Held(); held["model-node-x"] {
		t.Fatal("still held after the hold ended")
	}
	fail("a4", 4)
	fail("a5", 5)
	fail("a6", 6)
	if _, until := o.Held(); until.Sub(now) != 2*time.Minute {
		t.Fatalf("second hold %v, want 2m", until.Sub(now))
	}
}

// A model whose environment failed to build runs (its runner answers every
// call BAD_IMPLEMENTATION): the status says so, with the resolver's words,
// and it is no crash loop. A later task with a good environment clears it.
func TestObserverReportsFailedEnvironment(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	o := &Observer{now: func() time.Time { return now }, states: map[string]*ModelState{}}
	event := func(stage, msg string, at time.Time) *nomadapi.TaskEvent {
		return &nomadapi.TaskEvent{Type: "Driver", DisplayMessage: msg, Time: at.UnixNano(),
			Details: map[string]string{names.EventEnvironment: stage}}
	}
	running := func(idx uint64, evs ...*nomadapi.TaskEvent) ModelState {
		o.mu.Lock()
		defer o.mu.Unlock()
		o.add(&nomadapi.AllocationListStub{ID: "a", JobID: "model-node-x", ClientStatus: "running", CreateIndex: idx,
			TaskStates: map[string]*nomadapi.TaskState{"model": {Events: evs}}})
		o.refresh("model-node-x")
		return *o.states["model-node-x"]
	}
	st := running(1,
		event("resolving", "Environment: resolving", now),
		event(names.EnvironmentFailed, "Environment failed: ╰─▶ Because there is no version of pandas==0.0.1, we can conclude that your requirements are unsatisfiable.", now.Add(time.Second)),
		&nomadapi.TaskEvent{Type: "Driver", DisplayMessage: "Model runner started; the worker runs sandboxed", Time: now.Add(2 * time.Second).UnixNano()})
	if st.State != StateFaulty || st.Reason != "environment failed: ╰─▶ Because there is no version of pandas==0.0.1, we can conclude that your requirements are unsatisfiable." {
		t.Fatalf("state %q reason %q", st.State, st.Reason)
	}
	if held, _ := o.Held(); held["model-node-x"] {
		t.Fatal("a faulty model was put on crash-loop hold")
	}
	st = running(2, event("failed", "Environment failed: x", now), event(names.EnvironmentReady, "Environment abc built in 4s", now.Add(time.Minute)))
	if st.State != StateRunning || st.Reason != "" {
		t.Fatalf("after a good build: state %q reason %q", st.State, st.Reason)
	}
}

// A new version's canary that fails while the previous version serves is a
// failed rollout (Nomad reverts the job), not a crash loop: the model is
// never held stopped for it, and its state is the serving version's, with
// the rollout's failure beside it. Once a canary was promoted and is the
// only allocation, its failures count again.
func TestObserverFailedCanaryIsNoCrashLoop(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	o := &Observer{Backoff: Backoff{Failures: 2, Window: 10 * time.Minute}, now: func() time.Time { return now }, states: map[string]*ModelState{}}
	healthy := true
	put := func(a *nomadapi.AllocationListStub) ModelState { return o.put(a, now) }
	put(&nomadapi.AllocationListStub{ID: "old", ClientStatus: "running", DesiredStatus: "run", CreateIndex: 1,
		DeploymentStatus: &nomadapi.AllocDeploymentStatus{Healthy: &healthy}})
	crash := map[string]*nomadapi.TaskState{"model": {Events: []*nomadapi.TaskEvent{{Type: "Terminated", DisplayMessage: "Exit Code: 3", Time: now.UnixNano()}}}}
	var st ModelState
	for i, id := range []string{"canary1", "canary2", "canary3"} {
		st = put(&nomadapi.AllocationListStub{ID: id, ClientStatus: "failed", DesiredStatus: "stop", CreateIndex: uint64(2 + i),
			DeploymentStatus: &nomadapi.AllocDeploymentStatus{Canary: true}, TaskStates: crash})
	}
	if held, _ := o.Held(); held["model-node-x"] {
		t.Fatal("three failed canaries put the serving model on crash-loop hold")
	}
	if st := o.States()[0]; st.State != StateHealthy || st.Allocation != "old" || !strings.Contains(st.Rollout, "Exit Code: 3") {
		t.Fatalf("state %q allocation %q rollout %q; want the serving version healthy, and the canary's failure", st.State, st.Allocation, st.Rollout)
	}
	// Promoted: the old allocation stopped, the canary alone crashes.
	put(&nomadapi.AllocationListStub{ID: "old", ClientStatus: "complete", DesiredStatus: "stop", CreateIndex: 1})
	put(&nomadapi.AllocationListStub{ID: "new", ClientStatus: "failed", DesiredStatus: "run", CreateIndex: 10,
		DeploymentStatus: &nomadapi.AllocDeploymentStatus{Canary: true}, TaskStates: crash})
	st = put(&nomadapi.AllocationListStub{ID: "new2", ClientStatus: "failed", DesiredStatus: "run", CreateIndex: 11, TaskStates: crash})
	if held, _ := o.Held(); !held["model-node-x"] || st.State != StateBackoff || st.Rollout != "" {
		t.Fatalf("a promoted canary crash-looping alone is not held: %+v", st)
	}
}

// While a new version's canary is on trial the model is the serving
// version, with the rollout said beside it: running and not yet healthy,
// unhealthy (Nomad's health event), stopped before it turned healthy (its
// deployment failed: the kill's exit code is no cause), and once healthy
// the canary is the model.
func TestObserverSaysHowARolloutStands(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	o := &Observer{now: func() time.Time { return now }, states: map[string]*ModelState{}}
	yes, no := true, false
	put := func(a *nomadapi.AllocationListStub) ModelState { return o.put(a, now) }
	at := func(s int) int64 { return now.Add(time.Duration(s) * time.Second).UnixNano() }
	started := &nomadapi.TaskEvent{Type: nomadapi.TaskStarted, DisplayMessage: "Task started by client", Time: at(1)}
	put(&nomadapi.AllocationListStub{ID: "0ld00000-aaaa", ClientStatus: "running", DesiredStatus: "run", CreateIndex: 1,
		DeploymentStatus: &nomadapi.AllocDeploymentStatus{Healthy: &yes}})
	canary := func(status string, healthy *bool, evs ...*nomadapi.TaskEvent) *nomadapi.AllocationListStub {
		return &nomadapi.AllocationListStub{ID: "c4nary00-bbbb", ClientStatus: status, DesiredStatus: "run", CreateIndex: 2,
			DeploymentStatus: &nomadapi.AllocDeploymentStatus{Canary: true, Healthy: healthy},
			TaskStates:       map[string]*nomadapi.TaskState{"model": {Events: evs}}}
	}
	for _, c := range []struct {
		name   string
		canary *nomadapi.AllocationListStub
		alloc  string
		state  string
		want   string
	}{
		{"starting", canary("pending", nil), "0ld00000-aaaa", StateHealthy,
			"the new version is rolling out (its canary c4nary00 is starting); the previous version serves"},
		{"on trial", canary("running", nil, started), "0ld00000-aaaa", StateHealthy,
			"the new version is rolling out (its canary c4nary00 is running, not yet healthy); the previous version serves"},
		{"unhealthy", canary("running", &no, started, &nomadapi.TaskEvent{Type: "Alloc Unhealthy", DisplayMessage: "Services not healthy by deadline", Time: at(2)}),
			"0ld00000-aaaa", StateHealthy,
			"the new version is failing its rollout (its canary c4nary00 is unhealthy: Alloc Unhealthy: Services not healthy by deadline); the previous version serves"},
		{"stopped by its failed deployment", canary("complete", nil, started,
			&nomadapi.TaskEvent{Type: nomadapi.TaskKilling, DisplayMessage: "Sent interrupt. Waiting 10s before force killing", Time: at(3)},
			&nomadapi.TaskEvent{Type: nomadapi.TaskTerminated, DisplayMessage: "Exit Code: 0", Time: at(4)},
			&nomadapi.TaskEvent{Type: nomadapi.TaskKilled, DisplayMessage: "Task successfully killed", Time: at(5)}),
			"0ld00000-aaaa", StateHealthy,
			"the new version failed its rollout (its canary c4nary00 never turned healthy); the previous version serves"},
		{"exited after a restart", canary("failed", nil, started,
			&nomadapi.TaskEvent{Type: nomadapi.TaskKilling, DisplayMessage: "Sent interrupt", Time: at(3)},
			&nomadapi.TaskEvent{Type: nomadapi.TaskTerminated, DisplayMessage: "Exit Code: 0", Time: at(4)},
			&nomadapi.TaskEvent{Type: nomadapi.TaskRestarting, DisplayMessage: "Task restarting in 5s", Time: at(5)},
			&nomadapi.TaskEvent{Type: nomadapi.TaskStarted, DisplayMessage: "Task started by client", Time: at(10)},
			&nomadapi.TaskEvent{Type: nomadapi.TaskTerminated, DisplayMessage: "Exit Code: 3", Time: at(11)},
			&nomadapi.TaskEvent{Type: nomadapi.TaskNotRestarting, DisplayMessage: "Exceeded allowed attempts", FailsTask: true, Time: at(12)}),
			"0ld00000-aaaa", StateHealthy,
			"the new version failed its rollout (Terminated: Exit Code: 3); the previous version serves"},
		{"healthy", canary("running", &yes, started), "c4nary00-bbbb", StateHealthy, ""},
	} {
		st := put(c.canary)
		if st.Allocation != c.alloc || st.State != c.state || st.Rollout != c.want {
			t.Errorf("%s: allocation %q state %q rollout %q; want %q %q %q", c.name, st.Allocation, st.State, st.Rollout, c.alloc, c.state, c.want)
		}
	}
}

// put adds an allocation of job model-node-x, as modified at now, and
// returns the job's state.
func (o *Observer) put(a *nomadapi.AllocationListStub, now time.Time) ModelState {
	o.mu.Lock()
	defer o.mu.Unlock()
	a.JobID, a.ModifyTime = "model-node-x", now.UnixNano()
	o.add(a)
	o.refresh(a.JobID)
	return *o.states[a.JobID]
}
