package scheduler

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/jobs"
)

const feedBody = `[
 {"crunchName":"mid-one","crunchPubKey":"9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin",
  "cruncherWalletPubkey":"HN7cABqLq46Es1jh92dQQisAq662SmxELLLsHHe4YWrH","cruncherSmpHotkey":"hk",
  "coordinatorWalletPubkey":"CoordWa11et","coordinatorCertificate":{"certHash":"AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12","certHashSecondary":""},
  "model":{"id":"1234","submissionId":"sub-1","resourceId":"res-1","hardwareType":"CPU","signature":"s","owner":"o",
    "artifactSha256":"CDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCD"},
  "desiredState":"RUNNING_START"},
 {"crunchName":"mid-one","model":{"id":"99","submissionId":"sub-9","hardwareType":"GPU","artifactSha256":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"},"desiredState":"STOP"},
 {"crunchName":"mid-one","model":{"id":"","submissionId":"x","hardwareType":"CPU"},"desiredState":"START"}
]`

func TestFeedSource(t *testing.T) {
	var body = feedBody
	var gotQuery string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotQuery = r.URL.RawQuery
		if r.URL.Path != "/models/states" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	f := &FeedSource{URL: srv.URL, Crunches: []string{"mid-one"}, ArtifactURL: "https://store/{submission_id}.tar.gz"}
	snap := f.read(context.Background())
	if snap.Err != nil || len(snap.Models) != 2 || len(snap.Skipped) != 1 {
		t.Fatalf("snapshot: %+v", snap)
	}
	if !strings.Contains(gotQuery, "crunchNames%5B%5D=mid-one") {
		t.Fatalf("query %q lacks crunchNames[]", gotQuery)
	}
	m := snap.Models[0]
	if m.ModelID != "1234" || !m.Running || m.ArtifactURL != "https://store/sub-1.tar.gz" || m.CertHash != strings.Repeat("ab12", 16) || m.ArtifactSHA256 != strings.Repeat("cd", 32) || m.Hotkey != "hk" {
		t.Fatalf("model: %+v", m)
	}
	if snap.Models[1].Running || snap.Models[1].Hardware != "gpu" {
		t.Fatalf("stopped GPU model: %+v", snap.Models[1])
	}
	if !strings.Contains(snap.Skipped[0].Error(), "feed entry 2") {
		t.Fatalf("skip does not name the entry: %v", snap.Skipped[0])
	}
	body = "<html>bad gateway</html>"
	if snap := f.read(context.Background()); snap.Err == nil {
		t.Fatal("garbage accepted as a feed")
	}
	srv.Close()
	if snap := f.read(context.Background()); snap.Err == nil {
		t.Fatal("an unreachable feed must be an error, not an empty state")
	}
}

func TestFileSourceFollowsChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "models.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("models:\n  - {crunch: demo, model_id: a, model_dir: /m/a, desired: running}\n  - {crunch: demo, model_id: b, desired: running}\n")
	snaps := make(chan Snapshot, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = (&FileSource{Path: path, Interval: 20 * time.Millisecond}).Run(ctx, func(s Snapshot) { snaps <- s })
	}()
	s := <-snaps
	if len(s.Models) != 1 || !s.Models[0].Running || len(s.Skipped) != 1 || !strings.Contains(s.Skipped[0].Error(), `models[1] (model "b"`) {
		t.Fatalf("first read: %+v", s)
	}
	write("models: [oops")
	if s := <-snaps; s.Err == nil {
		t.Fatalf("broken YAML accepted: %+v", s)
	}
	write("models:\n  - {crunch: demo, model_id: a, model_dir: /m/a, desired: stopped}\n")
	if s := <-snaps; s.Err != nil || len(s.Models) != 1 || s.Models[0].Running {
		t.Fatalf("after the change: %+v", s)
	}
}

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

// With ModelIDNames, a feed model whose id is a DNS label gets the job
// (and certificate) name CrunchDAO's client expects.
func TestFeedModelIDNames(t *testing.T) {
	f := &FeedSource{ModelIDNames: true, ArtifactURL: "http://127.0.0.1:1/{model_id}"}
	var e1, e2 FeedEntry
	e1.CrunchName, e1.Model.ID, e1.Model.HardwareType, e1.DesiredState = "c", "1234", "CPU", "START"
	e2.CrunchName, e2.Model.ID, e2.Model.HardwareType, e2.DesiredState = "c", "Not_A_Label", "CPU", "START"
	e1.Model.ArtifactSHA256, e2.Model.ArtifactSHA256 = strings.Repeat("ab", 32), strings.Repeat("ab", 32)
	snap := f.convert([]FeedEntry{e1, e2})
	if len(snap.Models) != 2 {
		t.Fatalf("%+v", snap)
	}
	for _, m := range snap.Models {
		id := jobs.JobID(&m)
		switch m.ModelID {
		case "1234":
			if id != "model-node-1234" {
				t.Errorf("job id %s, want model-node-1234", id)
			}
		default:
			if !strings.HasPrefix(id, "model-node-") || strings.Contains(id, "Not") || len(id) != 27 {
				t.Errorf("a model id that is no DNS label must fall back to the hash: %s", id)
			}
		}
	}
}
