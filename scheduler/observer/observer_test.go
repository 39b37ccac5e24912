package observer

import (
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
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
