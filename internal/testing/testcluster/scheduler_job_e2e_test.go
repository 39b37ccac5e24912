//go:build e2e

package testcluster

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/testing/solanatest"
	"github.com/modelnodes/modelnodes/internal/testing/testbin"
	"github.com/modelnodes/modelnodes/names"
)

// schedulerJobID is the job id deploy/nomad/scheduler.nomad.hcl, the Consul
// binding rule (deploy/consul/setup) and deploy/nomad/setup scheduler-job
// default to.
const schedulerJobID = "modelnodes-scheduler"

// testSchedulerJob runs the scheduler the way docs/operations.md tells
// operators to, on c (Nomad and Consul ACLs on, deploy/nomad/setup applied):
// deploy/nomad/scheduler.nomad.hcl submitted with the nomad CLI, its
// settings in the job's Nomad Variable, its Nomad token its workload identity
// on the task API socket, its Consul token its Consul workload identity: the
// test hands it no credential at all. Two allocations come up, one leads and
// registers the chain's models; its allocation is stopped and the standby
// takes over without writing a job.
func testSchedulerJob(t *testing.T, c *Cluster) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	t0 := time.Now()
	if _, err := c.RunScript(ctx, "deploy/nomad/setup", "scheduler-job"); err != nil {
		t.Fatal(err)
	}
	f := solanatest.StartFront(t)
	chain := solanatest.NewChain(t, f)
	models := []string{"ops-a", "ops-b", "ops-c"}
	for _, id := range models {
		f.SetAccount(t, solana.NewWallet().PublicKey(), chain.Program, chain.Auth(id, true, 0).Encode())
	}
	api := c.Nomad.Client

	// The settings: the job's own variable, one item per flag. The models'
	// jobs go to a datacenter no client is in: this is about the
	// scheduler's placement and credentials, not the models'.
	settings := nomadapi.VariableItems{
		"solana_rpc": f.RPC, "solana_ws": f.WS, "solana_program": chain.Program.String(),
		"consul_addr": c.Consul.Addr, "crl_url": c.Vault.Addr + "/v1/pki_int/issuers",
		"artifact_hosts": "models.example", "python_constraints": "false", "datacenters": "nowhere",
		"resync": "2s",
	}
	if _, _, err := api.Variables().Create(&nomadapi.Variable{Path: "nomad/jobs/" + schedulerJobID, Items: settings}, nil); err != nil {
		t.Fatal(err)
	}
	url, sum := serveFile(t, testbin.Path(t, "scheduler"))
	t.Cleanup(func() { stopSchedulerJob(t, api) })
	run := exec.CommandContext(ctx, c.Nomad.Bin, "job", "run", "-detach",
		"-var", "artifact_url="+url, "-var", "artifact_sha256="+sum, "-var", "distinct_hosts=false",
		"-var", "lock_ttl=10s", filepath.Join(c.root, "deploy", "nomad", "scheduler.nomad.hcl"))
	run.Env = c.scriptEnv()
	if out, err := run.CombinedOutput(); err != nil {
		t.Fatalf("nomad job run: %v\n%s", err, out)
	}

	// Two instances come up; exactly one leads and registers the models.
	var insts []schedInstance
	pollUntil(t, ctx, "two scheduler allocations serving /metrics, one leading", func() (bool, string) {
		if failed := failedAllocs(api); failed != "" {
			t.Fatalf("scheduler allocations failed: %s", failed)
		}
		var err error
		insts, err = schedulerInstances(ctx, api)
		if err != nil || len(insts) != 2 {
			return false, fmt.Sprintf("%d instances (%v); %s", len(insts), err, schedAllocReport(api))
		}
		return insts[0].leader != insts[1].leader, fmt.Sprintf("leaders %v %v", insts[0].leader, insts[1].leader)
	})
	t.Logf("scheduler job: two instances, one leading, %.1fs after the job was submitted", time.Since(t0).Seconds())
	lead, standby := insts[0], insts[1]
	if standby.leader {
		lead, standby = standby, lead
	}
	var before map[string]uint64
	pollUntil(t, ctx, "the chain's models registered", func() (bool, string) {
		before = modelJobIndexes(api)
		return len(before) == len(models), fmt.Sprintf("%d jobs", len(before))
	})
	if standby.writes != 0 {
		t.Fatalf("the standby wrote %v jobs while the other led", standby.writes)
	}

	// The leader's allocation goes away (Nomad stops it: SIGTERM, the lock
	// released): the standby takes over, finds every job as it should be
	// and writes none.
	t1 := time.Now()
	if _, err := api.Allocations().Stop(&nomadapi.Allocation{ID: lead.allocID}, nil); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, ctx, "the standby leading after a pass", func() (bool, string) {
		m, err := scrape(ctx, standby.addr)
		if err != nil {
			return false, err.Error()
		}
		standby.leader, standby.writes = m["modelnodes_scheduler_leader"] == 1, m["modelnodes_scheduler_nomad_writes_total"]
		// A pass that ended after the takeover: reconciles_total counts
		// only the leader's passes.
		return standby.leader && m["modelnodes_scheduler_reconciles_total"] >= 1, fmt.Sprintf("%v", m)
	})
	t.Logf("scheduler job: the standby led and finished a pass %.1fs after the leader's allocation was stopped", time.Since(t1).Seconds())
	if standby.writes != 0 {
		t.Errorf("the new leader wrote %v jobs; want none (every job was already as desired)", standby.writes)
	}
	for id, idx := range modelJobIndexes(api) {
		if before[id] != idx {
			t.Errorf("job %s was written again after the takeover (index %d -> %d)", id, before[id], idx)
		}
	}
}

// schedInstance is one running allocation of the scheduler job as its
// /metrics describe it.
type schedInstance struct {
	allocID, addr string
	leader        bool
	writes        float64
}

// schedulerInstances scrapes every running allocation of the scheduler job.
func schedulerInstances(ctx context.Context, api *nomadapi.Client) ([]schedInstance, error) {
	stubs, _, err := api.Jobs().Allocations(schedulerJobID, false, nil)
	if err != nil {
		return nil, err
	}
	var out []schedInstance
	for _, s := range stubs {
		if s.ClientStatus != nomadapi.AllocClientStatusRunning || s.DesiredStatus != nomadapi.AllocDesiredStatusRun {
			continue
		}
		a, _, err := api.Allocations().Info(s.ID, nil)
		if err != nil {
			return nil, err
		}
		addr := ""
		for _, p := range a.AllocatedResources.Shared.Ports {
			if p.Label == "http" {
				addr = net.JoinHostPort(p.HostIP, strconv.Itoa(p.Value))
			}
		}
		m, err := scrape(ctx, addr)
		if err != nil {
			return nil, fmt.Errorf("allocation %s: %w", s.ID, err)
		}
		out = append(out, schedInstance{allocID: s.ID, addr: addr, leader: m["modelnodes_scheduler_leader"] == 1,
			writes: m["modelnodes_scheduler_nomad_writes_total"]})
	}
	return out, nil
}

// scrape reads a scheduler's /metrics: each metric's samples summed over
// their labels.
func scrape(ctx context.Context, addr string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, "{")
		if v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64); err == nil {
			m[name] += v
		}
	}
	return m, sc.Err()
}

// modelJobIndexes is the JobModifyIndex of every model job not stopped.
func modelJobIndexes(api *nomadapi.Client) map[string]uint64 {
	stubs, _, err := api.Jobs().PrefixList(names.JobPrefix)
	if err != nil {
		return nil
	}
	out := map[string]uint64{}
	for _, s := range stubs {
		if !s.Stop {
			out[s.ID] = s.JobModifyIndex
		}
	}
	return out
}

// failedAllocs describes the scheduler job's failed allocations, "" when
// none failed.
func failedAllocs(api *nomadapi.Client) string {
	stubs, _, err := api.Jobs().Allocations(schedulerJobID, false, nil)
	if err != nil {
		return ""
	}
	for _, s := range stubs {
		if s.ClientStatus == nomadapi.AllocClientStatusFailed {
			return schedAllocReport(api)
		}
	}
	return ""
}

func schedAllocReport(api *nomadapi.Client) string {
	stubs, _, err := api.Jobs().Allocations(schedulerJobID, false, nil)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, s := range stubs {
		fmt.Fprintf(&b, "%s %s/%s", s.ID[:8], s.DesiredStatus, s.ClientStatus)
		for task, st := range s.TaskStates {
			if n := len(st.Events); n > 0 {
				fmt.Fprintf(&b, " %s: %s %s", task, st.Events[n-1].Type, st.Events[n-1].DisplayMessage)
			}
		}
		b.WriteString("; ")
	}
	return b.String()
}

// stopSchedulerJob stops the scheduler job, waits (bounded) for its
// allocations to finish, then purges it and the models' jobs.
func stopSchedulerJob(t *testing.T, api *nomadapi.Client) {
	_, _, _ = api.Jobs().Deregister(schedulerJobID, false, nil)
	for deadline := time.Now().Add(45 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		stubs, _, err := api.Jobs().Allocations(schedulerJobID, false, nil)
		if err != nil {
			break
		}
		live := 0
		for _, s := range stubs {
			if s.ClientStatus == nomadapi.AllocClientStatusRunning || s.ClientStatus == nomadapi.AllocClientStatusPending {
				live++
			}
		}
		if live == 0 {
			break
		}
	}
	_, _, _ = api.Jobs().Deregister(schedulerJobID, true, nil)
	stubs, _, _ := api.Jobs().PrefixList(names.JobPrefix)
	for _, s := range stubs {
		_, _, _ = api.Jobs().Deregister(s.ID, true, nil)
	}
}

// serveFile serves path over loopback HTTP for the length of t (a Nomad
// artifact) and returns its URL and SHA-256 (hex).
func serveFile(t *testing.T, path string) (url, sum string) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(data)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(data) }),
		ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String() + "/" + filepath.Base(path), hex.EncodeToString(h[:])
}

// pollUntil polls ok every 200 ms until it holds or ctx ends; the failure
// names what and ok's last explanation.
func pollUntil(t *testing.T, ctx context.Context, what string, ok func() (bool, string)) {
	t.Helper()
	last := ""
	for {
		var done bool
		if done, last = ok(); done {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not before the deadline; last: %s", what, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
