package scheduler

import (
	"errors"
	"fmt"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/scheduler/source"
)

// Fail static: a source that fails keeps its last good models.
func TestWatcherKeepsLastGoodState(t *testing.T) {
	w := NewWatcher([]string{"chain", "file"}, testOptions, nil)
	a := testModel("demo", "a", true)
	w.Report("chain", source.Snapshot{Models: []jobs.Model{a}})
	if _, ready := w.Desired(); ready {
		t.Fatal("ready before every source was read")
	}
	w.Report("file", source.Snapshot{})
	w.Report("chain", source.Snapshot{Err: errors.New("rpc down")})
	d, ready := w.Desired()
	if !ready || len(d) != 1 || d[jobs.JobID(jobs.Named(&a))] == nil {
		t.Fatalf("desired state after a failed read: %v ready=%v", d, ready)
	}
	st := w.Sources()[0]
	if st.LastError != "rpc down" || st.Models != 1 {
		t.Fatalf("source status: %+v", st)
	}
	// A good empty snapshot is a real change.
	w.Report("chain", source.Snapshot{})
	if d, _ := w.Desired(); len(d) != 0 {
		t.Fatalf("deauthorization ignored: %v", d)
	}
}

// The watcher applies the deployment's policy to every source (here the
// feed and the YAML file, which chain-independent code reaches): a model
// the options refuse is skipped with its reason, logged and counted once,
// and the others stay desired.
func TestWatcherRefusesByPolicy(t *testing.T) {
	opts := &jobs.Options{ArtifactHosts: []string{"models.example"}, CRLURL: "https://vault.example:8200/v1/pki_int/issuers"}
	m := NewMetrics()
	w := NewWatcher([]string{"feed"}, opts, m)
	var logs syncbuf.Buffer
	w.Logger = hclog.New(&hclog.LoggerOptions{Output: &logs})
	good := jobs.Model{Crunch: "c", ModelID: "good", ArtifactURL: "https://models.example/a.tar.gz",
		ArtifactSHA256: strings.Repeat("ab", 32), Hardware: jobs.CPU, Running: true}
	elsewhere, plain, hostDir := good, good, good
	elsewhere.ModelID, elsewhere.ArtifactURL = "elsewhere", "https://evil.example/a.tar.gz"
	plain.ModelID, plain.ArtifactURL = "plain", "http://models.example/a.tar.gz"
	hostDir.ModelID, hostDir.ArtifactURL, hostDir.ArtifactSHA256, hostDir.ModelDir = "hostdir", "", "", "/etc"
	for range 3 {
		w.Report("feed", source.Snapshot{Models: []jobs.Model{good, elsewhere, plain, hostDir}})
	}
	d, _ := w.Desired()
	if len(d) != 1 || d[jobs.JobID(jobs.Named(&good))] == nil {
		t.Fatalf("desired: %v", d)
	}
	st := w.Sources()[0]
	joined := strings.Join(st.Skipped, "\n")
	for _, want := range []string{`model "elsewhere"`, "--artifact-hosts", "--allow-http-artifacts", "--allow-host-model-dirs"} {
		if !strings.Contains(joined, want) {
			t.Errorf("skipped lacks %q:\n%s", want, joined)
		}
	}
	if n := strings.Count(logs.String(), "skipped entry"); n != 3 {
		t.Errorf("logged %d times, want each refusal once:\n%s", n, logs.String())
	}
	rec := httptest.NewRecorder()
	(&Scheduler{Metrics: m, Reconciler: &Reconciler{Options: opts}}).Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`modelnodes_scheduler_refused_entries_total{reason="artifact",source="feed"} 2`,
		`modelnodes_scheduler_refused_entries_total{reason="model_dir",source="feed"} 1`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("/metrics lacks %s:\n%s", want, grepLines(rec.Body.String(), "refused"))
		}
	}
	// A source error with credentials in its URL is kept redacted.
	w.Report("feed", source.Snapshot{Err: &httpErr{"Get \"https://u:pw@feed.example/x?api-key=k\": refused"}})
	if e := w.Sources()[0].LastError; strings.Contains(e, "pw") || strings.Contains(e, "api-key=k") {
		t.Errorf("source error kept with credentials: %s", e)
	}
}

type httpErr struct{ s string }

func (e *httpErr) Error() string { return e.s }

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// What a source reports besides its models reaches the status API and the
// log: undecodable entries (logged once per entry, though their message
// changes with every reading), kept entries, and duplicates, which mark the
// model's desired state.
func TestWatcherReportsUndecodableKeptAndDuplicates(t *testing.T) {
	m := NewMetrics()
	w := NewWatcher([]string{"chain"}, testOptions, m)
	var logs syncbuf.Buffer
	w.Logger = hclog.New(&hclog.LoggerOptions{Output: &logs})
	a := testModel("demo", "a", true)
	for slot := range 3 {
		w.Report("chain", source.Snapshot{
			Models:      []jobs.Model{a},
			Undecodable: []error{&source.EntryError{Entry: "account X", Err: fmt.Errorf("garbage at slot %d", slot)}},
			Kept:        []error{errors.New("account Y: awaiting confirmation")},
			Duplicates:  []source.Duplicate{{Model: a, Entry: "account Z", Used: "account W"}},
		})
	}
	st := w.Sources()[0]
	if len(st.Undecodable) != 1 || !strings.Contains(st.Undecodable[0], "slot 2") || len(st.Kept) != 1 || len(st.Duplicates) != 1 {
		t.Fatalf("status: %+v", st)
	}
	if n := strings.Count(logs.String(), "undecodable entry"); n != 1 {
		t.Fatalf("undecodable entry logged %d times, want once:\n%s", n, logs.String())
	}
	if line := grepLines(logs.String(), "duplicate model id"); !strings.Contains(line, "[WARN]") || !strings.Contains(line, "account Z") || !strings.Contains(line, "account W") {
		t.Fatalf("duplicate not logged naming both entries: %q", line)
	}
	d, _ := w.Desired()
	if got := d[jobs.JobID(jobs.Named(&a))].Duplicate; !strings.Contains(got, "account Z") {
		t.Fatalf("the desired model does not carry its duplicate: %q", got)
	}
	if g := gauge(t, m, "modelnodes_scheduler_undecodable_accounts"); g != 1 {
		t.Fatalf("undecodable_accounts %v", g)
	}
}

// Two sources naming the same model: the first configured source's entry
// is used, the other source's status says so, and the operator is warned
// once, not at every pass.
func TestWatcherReportsDuplicatesAcrossSources(t *testing.T) {
	w := NewWatcher([]string{"chain", "yaml"}, testOptions, NewMetrics())
	var logs syncbuf.Buffer
	w.Logger = hclog.New(&hclog.LoggerOptions{Output: &logs})
	a, b := testModel("demo", "a", true), testModel("demo", "b", true)
	bigger := a
	bigger.MemoryMB = 4096
	w.Report("chain", source.Snapshot{Models: []jobs.Model{a}})
	w.Report("yaml", source.Snapshot{Models: []jobs.Model{bigger, b}})
	for range 3 {
		d, _ := w.Desired()
		if got := d[jobs.JobID(jobs.Named(&a))]; got.Source != "chain" || got.Model.MemoryMB != a.MemoryMB {
			t.Fatalf("model a comes from %s with %d MB, want the chain's entry", got.Source, got.Model.MemoryMB)
		}
	}
	if n := strings.Count(logs.String(), "model named by two sources"); n != 1 || !strings.Contains(logs.String(), "ignored=yaml") {
		t.Fatalf("warned %d times (want once, naming yaml as ignored):\n%s", n, logs.String())
	}
	st := w.Sources()
	if len(st[0].Duplicates) != 0 || len(st[1].Duplicates) != 1 || !strings.Contains(st[1].Duplicates[0], `source yaml names it too; the entry of chain`) {
		t.Fatalf("status duplicates: chain %v, yaml %v", st[0].Duplicates, st[1].Duplicates)
	}
}

// Every source's models are named by their model ids when those are DNS
// labels (the job, the Consul instance and the runner's certificate
// model-node-<model id>.crunchdao.internal, what CrunchDAO's client
// checks), by their key otherwise; --model-id-names=false keeps keys.
func TestWatcherNamesModelsByTheirIDs(t *testing.T) {
	chain := testModel("demo", "1234", true)
	chain.CrunchID = "CrunchAccount1111111111111111111111111111111"
	feed := testModel("feedcrunch", "py-tracker", true)
	yaml := testModel("demo", "Not_A_Label", true)
	hashShaped := testModel("demo", "abcdefghij234567", true)
	for _, hashed := range []bool{false, true} {
		w := NewWatcher([]string{"chain", "feed", "yaml"}, testOptions, nil)
		w.HashedNames = hashed
		w.Report("chain", source.Snapshot{Models: []jobs.Model{chain}})
		w.Report("feed", source.Snapshot{Models: []jobs.Model{feed}})
		w.Report("yaml", source.Snapshot{Models: []jobs.Model{yaml, hashShaped}})
		d, _ := w.Desired()
		want := map[string]string{
			"model-node-1234":       "1234",
			"model-node-py-tracker": "py-tracker",
			jobs.JobID(&yaml):       "Not_A_Label",
			jobs.JobID(&hashShaped): "abcdefghij234567",
		}
		if hashed {
			want = map[string]string{jobs.JobID(&chain): "1234", jobs.JobID(&feed): "py-tracker", jobs.JobID(&yaml): "Not_A_Label",
				jobs.JobID(&hashShaped): "abcdefghij234567"}
		}
		if len(d) != len(want) {
			t.Fatalf("hashed=%v: desired %v, want %v", hashed, keysOf(d), want)
		}
		for id, modelID := range want {
			got := d[id]
			if got == nil || got.Model.ModelID != modelID {
				t.Errorf("hashed=%v: job %s: %+v, want model %s (desired %v)", hashed, id, got, modelID, keysOf(d))
				continue
			}
			// The job the builder writes carries the same name.
			if job, err := jobs.Build(&got.Model, testOptions); err != nil || *job.ID != id || got.Spec != jobs.SpecHash(&got.Model, testOptions) {
				t.Errorf("hashed=%v: job %s built as %v (%v)", hashed, id, job, err)
			}
		}
		if running := w.runningIDs(); len(running) != len(want) {
			t.Errorf("hashed=%v: running ids %v", hashed, running)
		}
	}
}

// The attack: a model id is whatever a crunch's authorization says, so an
// authorization of another crunch (here the chain's crunch B, and the YAML
// file) can name the model id of crunch A's model, or a model id shaped as
// another model's hashed name. Neither may take the victim's job (its
// service instance and its runner's certificate name): a name claimed by
// two crunches goes to none of them, in whatever order they appear, and
// comes back to the victim once the other claim is gone.
func TestWatcherContestedNameGoesToNoOne(t *testing.T) {
	victim := testModel("crunch-a", "m1", true)
	victim.CrunchID = "CrunchA111111111111111111111111111111111111"
	attacker := testModel("crunch-b", "m1", true)
	attacker.CrunchID = "CrunchB111111111111111111111111111111111111"
	attacker.ModelDir = "/srv/models/attacker"
	hashedVictim := testModel("crunch-a", "Victim_2", true)
	hashedVictim.CrunchID = victim.CrunchID
	shaped := testModel("crunch-b", jobs.Key(&hashedVictim), true) // the victim's hashed short id as a model id
	shaped.CrunchID = attacker.CrunchID
	operator := testModel("yaml-crunch", "x", true)
	operator.Name = "m1"

	for _, order := range [][]string{{"chain", "yaml"}, {"yaml", "chain"}} {
		w := NewWatcher(order, testOptions, nil)
		var logs syncbuf.Buffer
		w.Logger = hclog.New(&hclog.LoggerOptions{Output: &logs})
		w.Report("chain", source.Snapshot{Models: []jobs.Model{attacker, victim, hashedVictim, shaped}})
		w.Report("yaml", source.Snapshot{Models: []jobs.Model{operator}})
		d, _ := w.Desired()
		if len(d) != 5 {
			t.Fatalf("order %v: %d jobs for 5 models of different crunches: %v", order, len(d), keysOf(d))
		}
		for id, des := range d {
			if id == "model-node-m1" {
				t.Errorf("order %v: the contested name went to %s's model", order, des.Model.Crunch)
			}
			if id != jobs.JobID(&des.Model) || id != names.Job(jobs.Key(&des.Model)) {
				t.Errorf("order %v: a claimant of a contested or hash-shaped name is named %s, want its key %s", order, id, jobs.Key(&des.Model))
			}
		}
		if got := d[jobs.JobID(&hashedVictim)]; got == nil || got.Model.Crunch != "crunch-a" {
			t.Errorf("order %v: the victim's hashed job belongs to %+v", order, got)
		}
		if n := strings.Count(logs.String(), "claim the same name"); n != 1 || !strings.Contains(logs.String(), "name=m1") {
			t.Errorf("order %v: contest warned %d times:\n%s", order, n, logs.String())
		}
		// The other claims end: the victim gets its name back.
		w.Report("chain", source.Snapshot{Models: []jobs.Model{victim}})
		w.Report("yaml", source.Snapshot{})
		if d, _ := w.Desired(); len(d) != 1 || d["model-node-m1"] == nil || d["model-node-m1"].Model.Crunch != "crunch-a" {
			t.Errorf("order %v: the victim alone: %v", order, keysOf(d))
		}
	}
}

func keysOf(d map[string]*Desired) []string {
	var out []string
	for id := range d {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}
