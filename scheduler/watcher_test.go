package scheduler

import (
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/jobs"
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
	if !ready || len(d) != 1 || d[jobs.JobID(&a)] == nil {
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
	if len(d) != 1 || d[jobs.JobID(&good)] == nil {
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
	if got := d[jobs.JobID(&a)].Duplicate; !strings.Contains(got, "account Z") {
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
		if got := d[jobs.JobID(&a)]; got.Source != "chain" || got.Model.MemoryMB != a.MemoryMB {
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
