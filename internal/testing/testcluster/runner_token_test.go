//go:build e2e

package testcluster

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	vaultapi "github.com/hashicorp/vault/api"
)

// A runner's Vault token (JWT role "runner", deploy/vault/setup) has a
// finite TTL and max TTL and no period: a leaked one dies by itself, where
// a periodic token could be renewed forever. The runner outlives it: when
// Nomad can no longer renew the task's token it logs in again with the
// task's workload identity and writes the new token to secrets/vault_token
// (which the runner reads at each use); with change_mode "noop" the task
// is not even restarted.
func TestRunnerTokensExpire(t *testing.T) {
	c := Start(t, Nomad)
	ctx := t.Context()
	vc := c.Vault.Client

	role := func() map[string]any {
		t.Helper()
		sec, err := vc.Logical().ReadWithContext(ctx, "auth/jwt-nomad/role/runner")
		if err != nil || sec == nil {
			t.Fatalf("read the runner role: %v", err)
		}
		return sec.Data
	}
	num := func(v any) int64 {
		n, _ := v.(json.Number) // absent: 0
		i, _ := n.Int64()
		return i
	}
	r := role()
	if num(r["token_period"]) != 0 || num(r["token_ttl"]) != 3600 || num(r["token_max_ttl"]) != 86400 {
		t.Errorf("runner role: token_period=%v token_ttl=%v token_max_ttl=%v; want 0, 1h, 24h",
			r["token_period"], r["token_ttl"], r["token_max_ttl"])
	}

	// Short lifetimes, to see the end of one within the test.
	const ttl, maxTTL = 10 * time.Second, 30 * time.Second
	if _, err := c.RunScriptEnv(ctx, []string{"RUNNER_TOKEN_TTL=10s", "RUNNER_TOKEN_MAX_TTL=30s"}, "deploy/vault/setup", "jwt"); err != nil {
		t.Fatal(err)
	}
	const jobID = "model-node-ttl"
	task := HelperTask("runner")
	task.Env[HelperListenEnv] = "${NOMAD_ADDR_grpc}"
	task.Resources = &nomadapi.Resources{CPU: new(50), MemoryMB: new(32)}
	task.Vault = &nomadapi.Vault{Role: "runner", ChangeMode: new("noop")}
	group := nomadapi.NewTaskGroup("runner", 1)
	group.Networks = []*nomadapi.NetworkResource{{DynamicPorts: []nomadapi.Port{{Label: "grpc"}}}}
	group.AddTask(task)
	group.RestartPolicy = &nomadapi.RestartPolicy{Attempts: new(0), Mode: new("fail")}
	job := nomadapi.NewServiceJob(jobID, jobID, "global", 50)
	job.Datacenters = []string{"*"}
	job.AddTaskGroup(group)
	if _, _, err := c.Nomad.Client.Jobs().Register(job, nil); err != nil {
		t.Fatal(err)
	}
	alloc := runningAlloc(ctx, t, c.Nomad.Client, jobID)
	tokenFile := filepath.Join(c.Nomad.DataDir, "alloc", alloc.ID, "runner", "secrets", "vault_token")
	readToken := func() string {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			t.Fatalf("the task's token: %v", err)
		}
		return strings.TrimSpace(string(b))
	}
	first := readToken()
	t0 := time.Now()
	lookup := func(token string) (*vaultapi.Secret, error) {
		return vc.Auth().Token().LookupWithContext(ctx, token)
	}
	sec, err := lookup(first)
	if err != nil {
		t.Fatalf("lookup of the task's token: %v", err)
	}
	if p := num(sec.Data["period"]); p != 0 {
		t.Errorf("the task's token is periodic (period %ds): renewable forever", p)
	}
	if got := num(sec.Data["creation_ttl"]); got <= 0 || got > int64(ttl.Seconds()) {
		t.Errorf("the task's token has creation_ttl %ds, want finite and at most %s", got, ttl)
	}
	if pol, _ := sec.TokenPolicies(); !strings.Contains(strings.Join(pol, ","), "runner") {
		t.Errorf("the task's token has policies %v, want runner", pol)
	}

	// Nomad renews the token until its max TTL, then logs in again.
	var second string
	waitFor(t, maxTTL+60*time.Second, "a new token after the first one's max TTL", func() bool {
		second = readToken()
		return second != first
	})
	t.Logf("Nomad replaced the task's token %.1fs after the first one was read (max TTL %s)", time.Since(t0).Seconds(), maxTTL)
	if age := time.Since(t0); age < maxTTL-5*time.Second {
		t.Errorf("the token was replaced after %s, before its max TTL %s: was it renewed at all?", age, maxTTL)
	}
	if _, err := lookup(first); err == nil {
		t.Error("the first token still works after its max TTL")
	}
	if _, err := lookup(second); err != nil {
		t.Errorf("the new token does not work: %v", err)
	}
	alloc, _, err = c.Nomad.Client.Allocations().Info(alloc.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st := alloc.TaskStates["runner"]; st == nil || st.State != "running" || st.Restarts != 0 {
		t.Errorf("the task after the token change: %+v, want running without restarts\n%s", st, allocReport(c.Nomad.Client, jobID))
	}

	// Where the Nomad clients' addresses are known, tokens work only from
	// there.
	if _, err := c.RunScriptEnv(ctx, []string{"RUNNER_TOKEN_CIDRS=10.0.0.0/8,192.168.1.0/24"}, "deploy/vault/setup", "jwt"); err != nil {
		t.Fatal(err)
	}
	if got, _ := json.Marshal(role()["token_bound_cidrs"]); string(got) != `["10.0.0.0/8","192.168.1.0/24"]` {
		t.Errorf("token_bound_cidrs = %s", got)
	}
	if _, err := c.RunScriptEnv(ctx, []string{`RUNNER_TOKEN_CIDRS=10.0.0.0/8"]`}, "deploy/vault/setup", "jwt"); err == nil {
		t.Error("setup accepted a CIDR list that breaks out of its JSON")
	}
}
