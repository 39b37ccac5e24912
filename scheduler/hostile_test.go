package scheduler

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"
	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/nomad"
)

// A cruncher's authorization carrying ${VAULT_TOKEN} (in its entry, or in
// its artifact URI) is refused by the scheduler on the real stack: a real
// Solana runtime, the real Nomad. No job is registered for it, the status
// API names the account and why, a metric counts it, and the crunch's
// other models keep their jobs untouched (issue 13 item 1).
func TestHostileAuthorizationIsRefused(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	f := startFront(t)
	c := newChain(t, f)
	keyA, keyB := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	f.setAccount(t, keyA, c.program, c.auth("model-a", true, 0).Encode())
	f.setAccount(t, keyB, c.program, c.auth("model-b", true, 0).Encode())
	var logs syncbuf.Buffer
	s := startSchedulerWith(t, func(s *Scheduler) {
		s.Logger = hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	}, nc, nc, nil, &SolanaSource{RPCURL: f.RPC, WSURL: f.WS, Program: c.program, Resync: 3 * time.Second})
	jobA, jobB := jobOf(c, "model-a"), jobOf(c, "model-b")
	before := waitJobs(t, nc, 30*time.Second, "the good models registered", func(m map[string]nomad.JobStub) bool {
		return len(m) == 2 && !m[jobA].Stop && !m[jobB].Stop
	})

	keyEntry, keyArtifact := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	bad := c.auth("model-entry", true, 0)
	bad.Entry = "${VAULT_TOKEN}"
	f.setAccount(t, keyEntry, c.program, bad.Encode())
	bad = c.auth("model-artifact", true, 0)
	bad.ArtifactURI = "https://models.example/m.tar.gz?t=${VAULT_TOKEN}"
	f.setAccount(t, keyArtifact, c.program, bad.Encode())

	srv := httptest.NewServer(s.s.Handler())
	defer srv.Close()
	var skipped []string
	deadline := time.Now().Add(20 * time.Second)
	for {
		var st struct {
			Sources []SourceStatus `json:"sources"`
		}
		getJSON(t, srv.URL+"/v1/status", &st)
		skipped = st.Sources[0].Skipped
		if len(skipped) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hostile authorizations never showed as skipped: %+v", st.Sources)
		}
		time.Sleep(100 * time.Millisecond)
	}
	joined := strings.Join(skipped, "\n")
	for _, want := range []string{keyEntry.String(), keyArtifact.String(), "entry", "artifact_url", "which Nomad interpolates"} {
		if !strings.Contains(joined, want) {
			t.Errorf("/v1/status skipped lacks %q:\n%s", want, joined)
		}
	}
	t.Logf("/v1/status skipped:\n%s", joined)

	// Passes go on for a while (the resync is 3 s): the hostile models
	// never get a job, the good ones keep theirs unchanged.
	time.Sleep(4 * time.Second)
	after := waitJobs(t, nc, time.Second, "jobs", func(map[string]nomad.JobStub) bool { return true })
	if len(after) != 2 {
		t.Fatalf("jobs in Nomad: %s (want only model-a and model-b)", describeJobs(after))
	}
	for _, id := range []string{jobA, jobB} {
		if after[id].Stop || after[id].JobModifyIndex != before[id].JobModifyIndex {
			t.Errorf("job %s was stopped or rewritten (stop=%v, index %d -> %d)", id, after[id].Stop,
				before[id].JobModifyIndex, after[id].JobModifyIndex)
		}
	}
	if job, _, err := cl.Nomad.Client.Jobs().Info(jobA, nil); err != nil || job.TaskGroups[0].Tasks[0].Vault == nil ||
		job.TaskGroups[0].Tasks[0].Vault.Env == nil || *job.TaskGroups[0].Tasks[0].Vault.Env {
		t.Errorf("the registered job leaves VAULT_TOKEN in the task's environment: %v", err)
	}

	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	const metric = `modelnodes_scheduler_refused_entries_total{reason="interpolation",source="solana"} 2`
	if !strings.Contains(string(body), metric) {
		t.Errorf("/metrics lacks %s:\n%s", metric, grepLines(string(body), "refused"))
	}
	if n := strings.Count(logs.String(), "skipped entry"); n != 2 {
		t.Errorf("each refused authorization is logged once, got %d lines:\n%s", n, logs.String())
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
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
		w.Report("feed", Snapshot{Models: []jobs.Model{good, elsewhere, plain, hostDir}})
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
	w.Report("feed", Snapshot{Err: &httpErr{"Get \"https://u:pw@feed.example/x?api-key=k\": refused"}})
	if e := w.Sources()[0].LastError; strings.Contains(e, "pw") || strings.Contains(e, "api-key=k") {
		t.Errorf("source error kept with credentials: %s", e)
	}
}

type httpErr struct{ s string }

func (e *httpErr) Error() string { return e.s }
