//go:build e2e

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

	"github.com/modelnodes/modelnodes/internal/testing/solanatest"
	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/nomad"
	solanasrc "github.com/modelnodes/modelnodes/scheduler/source/solana"
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
	f := solanatest.StartFront(t)
	c := solanatest.NewChain(t, f)
	keyA, keyB := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	f.SetAccount(t, keyA, c.Program, c.Auth("model-a", true, 0).Encode())
	f.SetAccount(t, keyB, c.Program, c.Auth("model-b", true, 0).Encode())
	var logs syncbuf.Buffer
	s := startSchedulerWith(t, func(s *Scheduler) {
		s.Logger = hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	}, nc, nc, nil, &solanasrc.Source{RPCURL: f.RPC, WSURL: f.WS, Program: c.Program, Resync: 3 * time.Second})
	jobA, jobB := jobOf(c, "model-a"), jobOf(c, "model-b")
	before := waitJobs(t, nc, 30*time.Second, "the good models registered", func(m map[string]nomad.JobStub) bool {
		return len(m) == 2 && !m[jobA].Stop && !m[jobB].Stop
	})

	keyEntry, keyArtifact := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	bad := c.Auth("model-entry", true, 0)
	bad.Entry = "${VAULT_TOKEN}"
	f.SetAccount(t, keyEntry, c.Program, bad.Encode())
	bad = c.Auth("model-artifact", true, 0)
	bad.ArtifactURI = "https://models.example/m.tar.gz?t=${VAULT_TOKEN}"
	f.SetAccount(t, keyArtifact, c.Program, bad.Encode())

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
