//go:build e2e

package scheduler

import (
	"context"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/scheduler/observer"
	solanasrc "github.com/modelnodes/modelnodes/scheduler/source/solana"
	"github.com/modelnodes/modelnodes/scheduler/source/solana/onchain"
)

// A cruncher's new submission of a Python model that raises at import goes
// out while a coordinator calls the crunch's two models every 100 ms
// through Consul and mTLS (issue 20, zero-gap updates). The new version's
// runner starts and answers gRPC health, but its model did not load: it
// reports modelnodes.Loaded NOT_SERVING, which an update's Consul check
// asks for (jobs.CheckLoaded), so the canary never turns healthy and Nomad
// never promotes it. Failing its deployment (as Nomad does at its progress
// deadline) reverts the job; and throughout, the coordinator sees no failed
// call and both models answering every round, model A from its old
// allocation, at the same address, with the same key.
func TestPythonCanaryThatCannotLoadChangesNothing(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	requireModelbox(t, cl.Nomad.Client)
	nc := nomad.Wrap(cl.Nomad.Client)
	api := nc.API()
	t.Cleanup(func() { purgeAll(t, nc) })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	const crunchName = "pycanary"
	c := newExampleCrunch(t, ctx, cl, crunchName)
	working, workingSum := servePythonModel(t, "")
	code, err := os.ReadFile("../runner/testdata/pymodel/main.py")
	if err != nil {
		t.Fatal(err)
	}
	const missing = "a_module_the_submission_forgot"
	broken, brokenSum := servePythonModelWith(t, map[string][]byte{"main.py": append([]byte("import "+missing+"\n"), code...)})
	python := func(id, artifact string, sum [32]byte) []byte {
		a := c.auth(id)
		a.ArtifactURI, a.ArtifactSHA256 = artifact, sum
		a.Runtime, a.Entry = onchain.RuntimePython, ""
		return a.Encode()
	}
	ids := []string{"py-a", "py-b"}
	keys := []solana.PublicKey{solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()}
	jobIDs := make([]string, len(ids))
	for i, id := range ids {
		c.Front.SetAccount(t, keys[i], c.Program, python(id, working, workingSum))
		m := jobs.Model{Crunch: crunchName, CrunchID: c.Crunch.String(), ModelID: id}
		jobIDs[i] = jobs.JobID(jobs.Named(&m))
	}
	shortA := strings.TrimPrefix(jobIDs[0], names.JobPrefix)

	var logs syncbuf.Buffer
	logger := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	rs := startSchedulerWith(t, func(s *Scheduler) {
		s.Reconciler.Options, s.Reconciler.Logger, s.Logger = rolloutOptions(cl), logger, logger
	}, nc, nc, nil, &solanasrc.Source{RPCURL: c.Front.RPC, WSURL: c.Front.WS, Program: c.Program, Resync: 2 * time.Second, Logger: logger})
	status := httptest.NewServer(rs.s.Handler())
	t.Cleanup(status.Close)
	srv := status.URL
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("scheduler log:\n%s", logs.String())
			allocs, _, _ := api.Jobs().Allocations(jobIDs[0], true, nil)
			for _, a := range allocs {
				t.Logf("model A's allocation %s: version %d, %s/%s, deployment status %+v", a.ID, a.JobVersion, a.ClientStatus, a.DesiredStatus, a.DeploymentStatus)
			}
		}
	})

	_, loop := c.startFanOut(t, ctx, "crunch_base.Tracker")
	if !loop.waitAll(len(ids), callableTimeout) {
		t.Fatalf("the Python models do not both answer: %v", loop.lastFails())
	}

	// Model A has served a while: its version is stable (its deployment
	// succeeded), the one Nomad reverts to.
	good := stableJob(t, api, jobIDs[0])
	old := passingInstances(t, c.coord.consul, crunchName, shortA)
	serving := servingAllocs(t, nc, jobIDs[0])
	if len(old) != 1 || len(serving) != 1 {
		t.Fatalf("model A has %d passing instances and %d running allocations, want 1 and 1", len(old), len(serving))
	}
	key := runnerKey(t, old[0])
	loop.enter("rollout")

	// The new submission: its canary's runner starts, and its check, asking
	// whether the model loaded, fails.
	c.Front.SetAccount(t, keys[0], c.Program, python(ids[0], broken, brokenSum))
	var canary *nomadapi.AllocationListStub
	waitFor(t, 2*time.Minute, "model A's canary running", func() bool {
		allocs, _, err := api.Jobs().Allocations(jobIDs[0], true, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range allocs {
			if a.JobVersion > *good.Version && a.DeploymentStatus != nil && a.DeploymentStatus.Canary && a.ClientStatus == nomadapi.AllocClientStatusRunning {
				canary = a
			}
		}
		return canary != nil
	})
	var check *consulapi.AgentCheck
	waitFor(t, time.Minute, "the canary's check failing on "+names.HealthLoaded, func() bool {
		check = canaryCheck(t, cl.Consul.Client, crunchName, shortA)
		return check != nil && check.Status == consulapi.HealthCritical && strings.Contains(check.Output, "NOT_SERVING")
	})
	t.Logf("the canary's check: %s: %s", check.Status, check.Output)
	if !strings.Contains(check.Output, names.HealthLoaded) {
		t.Errorf("the canary's check does not ask whether the model loaded: %q", check.Output)
	}
	// Past the update block's min_healthy_time (10 s), twice: a canary
	// whose check passed would have been promoted by now.
	time.Sleep(25 * time.Second)
	d, _, err := api.Jobs().LatestDeployment(jobIDs[0], nil)
	if err != nil || d == nil || d.JobVersion != canary.JobVersion {
		t.Fatalf("the canary's deployment: %+v, %v", d, err)
	}
	if st := d.TaskGroups[jobs.GroupName]; d.Status != nomadapi.DeploymentStatusRunning || st.Promoted || st.HealthyAllocs != 0 {
		t.Errorf("the canary's deployment after 25 s: %s (%s), group %+v; want running, nothing healthy, not promoted", d.Status, d.StatusDescription, st)
	}
	if a, _, err := api.Allocations().Info(canary.ID, nil); err != nil || a.ClientStatus != nomadapi.AllocClientStatusRunning ||
		(a.DeploymentStatus.Healthy != nil && *a.DeploymentStatus.Healthy) {
		t.Errorf("the canary after 25 s: %v; want running and not healthy", err)
	}
	if check = canaryCheck(t, cl.Consul.Client, crunchName, shortA); check == nil || check.Status != consulapi.HealthCritical {
		t.Errorf("the canary's check after 25 s: %+v", check)
	}
	// The scheduler reports the model as its serving version does, and the
	// rollout beside it.
	if ms := modelStatus(t, srv, jobIDs[0]); ms.Allocation != serving[0] || ms.State != observer.StateHealthy ||
		!strings.Contains(ms.Rollout, "the new version is rolling out (its canary "+canary.ID[:8]+" is running, not yet healthy)") {
		t.Errorf("the scheduler reports model A during the rollout: %+v; want its serving allocation %s healthy, the canary on trial", ms, serving[0])
	}
	if logs := allocLogs(t, api, canary.ID); !strings.Contains(logs, missing) {
		t.Errorf("the canary's logs do not say why the model did not load:\n%s", logs)
	}

	// Nomad fails the deployment at its progress deadline (40 min); the
	// test does it through the API, which takes the same path: auto_revert
	// writes the stable version back.
	failRollout(t, api, jobIDs[0], canary, good)
	waitFor(t, 30*time.Second, "the canary stopped", func() bool {
		a, _, err := api.Allocations().Info(canary.ID, nil)
		return err == nil && a.ClientStatus != nomadapi.AllocClientStatusRunning
	})
	var ms ModelStatus
	waitFor(t, 30*time.Second, "the failed rollout reported", func() bool {
		ms = modelStatus(t, srv, jobIDs[0])
		return strings.HasPrefix(ms.Rollout, "the new version failed")
	})
	t.Logf("the scheduler reports model A: state=%s allocation=%s rollout=%q", ms.State, ms.Allocation, ms.Rollout)
	// (Nomad's revert updates the serving allocation in place to the new
	// job version, whose deployment finds it healthy again after
	// min_healthy_time: running, then healthy.)
	if ms.Allocation != serving[0] || (ms.State != observer.StateRunning && ms.State != observer.StateHealthy) || !ms.BackoffUntil.IsZero() || ms.Quarantine != nil ||
		ms.Rollout != "the new version failed its rollout (its canary "+canary.ID[:8]+" never turned healthy); the previous version serves" {
		t.Errorf("model A: %+v; want its serving allocation %s, no hold, no quarantine", ms, serving[0])
	}
	time.Sleep(2 * time.Second) // calls after the revert

	// Model A, as a coordinator and Nomad see it: the same allocation, at
	// the same address, with the same key; and no call missed.
	if now := servingAllocs(t, nc, jobIDs[0]); !slices.Equal(now, serving) {
		t.Errorf("model A's running allocations: %v -> %v", serving, now)
	}
	if now := passingInstances(t, c.coord.consul, crunchName, shortA); !slices.Equal(now, old) {
		t.Errorf("model A's passing instances: %v -> %v", old, now)
	} else if runnerKey(t, now[0]) != key {
		t.Error("model A's runner serves with another key after the failed rollout")
	}
	p := loop.enter("after")
	t.Logf("the coordinator saw: %d rounds, %d calls ok, %d failed, fewest models answering a round %d of %d",
		p.rounds, p.ok, len(p.fails), p.fewest, len(ids))
	if len(p.fails) > 0 || p.fewest < len(ids) || p.rounds < 100 {
		t.Errorf("the coordinator saw %d failed calls (%.3q), fewest models answering a round %d of %d, in %d rounds",
			len(p.fails), p.fails, p.fewest, len(ids), p.rounds)
	}
}

// canaryCheck returns the gRPC health check of a model's canary instance in
// a crunch's service as the node's Consul agent runs it (the catalog gets a
// check's output late: check_update_interval), nil while there is none.
func canaryCheck(t testing.TB, cc *consulapi.Client, crunch, model string) *consulapi.AgentCheck {
	t.Helper()
	entries, _, err := cc.Health().Service(names.Service(crunch), names.TagCanary, false, nil)
	if err != nil {
		t.Fatalf("consul: %v", err)
	}
	for _, e := range entries {
		if e.Service.Meta[names.MetaModelID] != model {
			continue
		}
		for _, ch := range e.Checks {
			if ch.Type != "grpc" {
				continue
			}
			local, err := cc.Agent().Checks()
			if err != nil {
				t.Fatalf("consul: %v", err)
			}
			return local[ch.CheckID]
		}
	}
	return nil
}

// allocLogs returns what an allocation's task wrote to stderr.
func allocLogs(t testing.TB, api *nomadapi.Client, allocID string) string {
	t.Helper()
	a, _, err := api.Allocations().Info(allocID, nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel := make(chan struct{})
	defer close(cancel)
	frames, errs := api.AllocFS().Logs(a, false, jobs.TaskName, "stderr", "start", 0, cancel, nil)
	var b strings.Builder
	for {
		select {
		case f, ok := <-frames:
			if !ok {
				return b.String()
			}
			b.Write(f.Data)
		case err := <-errs:
			if err != nil {
				t.Errorf("the allocation's logs: %v", err)
			}
			return b.String()
		}
	}
}
