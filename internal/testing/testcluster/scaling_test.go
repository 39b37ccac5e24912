//go:build e2e

package testcluster

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/procfs"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/runner/authz"
)

// scaleHeartbeat makes a lost machine show within seconds (see Options):
// Nomad's defaults (10 s TTL, 10 s grace) would take 20-30 s.
var scaleHeartbeat = Options{MinHeartbeatTTL: 2 * time.Second, HeartbeatGrace: 3 * time.Second}

// recoveryBound is how long the models of a lost machine may take to answer
// again. Expected: the node is down within 2 TTLs + grace (7 s), its models
// run elsewhere about 1 s later, Consul runs a new check first after a
// random part of its 10 s interval, then one Setup: about 20 s at worst,
// with room left for a loaded machine.
const recoveryBound = time.Minute

const (
	scaleCrunch = "scale"
	// scaleModels: 2 cores run all three machines' agents, runners and
	// Python workers.
	scaleModels = 6
)

// Three machines (the cluster's agent and two more Nomad clients, each with
// its own Consul agent) run six secure models built by the production job
// builder. One coordinator client (Consul discovery, Vault mTLS, Setup on
// join) fans calls out without pause. One machine is taken away at once
// (agent, tasks and Consul agent SIGKILLed): Nomad must mark its node down
// and place its models on the survivors, and the same client instance must
// get OK from every model again, without a restart.
func TestModelsSpreadAndSurviveNodeLoss(t *testing.T) {
	f := newFleet(t, scaleModels)
	byNode := f.placement(t)
	if len(byNode) != 3 {
		t.Fatalf("models on %d nodes, want all 3: %v", len(byNode), byNode)
	}
	victim := f.busiestExtra(byNode)
	lost := byNode[victim.NodeID]
	t.Logf("placement: %v; taking away %s (node %.8s) with %d models", countByNode(byNode), victim.Name, victim.NodeID, len(lost))

	r := f.killAndRecover(t, victim, lost)
	t.Logf("node loss -> lost models out of the client's membership %.1fs, node down %.1fs -> replacements placed %.1fs -> running %.1fs -> listed by the client (Consul check passing) %.1fs -> all %d models OK %.1fs (first failed fan-out after %.2fs, %d task processes killed)",
		r.dropped.Seconds(), r.down.Seconds(), r.placed.Seconds(), r.running.Seconds(), r.listed.Seconds(), scaleModels, r.allOK.Seconds(), r.firstFail.Seconds(), r.killed)
	after := f.placement(t)
	if _, ok := after[victim.NodeID]; ok {
		t.Errorf("models still placed on the lost node: %v", after[victim.NodeID])
	}
	running := 0
	for _, ms := range after {
		running += len(ms)
	}
	if running != scaleModels {
		t.Errorf("%d models running after the loss, want %d: %v", running, scaleModels, after)
	}
}

// BenchmarkNodeLoss measures, on the fleet of TestModelsSpreadAndSurviveNodeLoss
// (three machines, six secure models, one coordinator client fanning out
// every 200 ms), how long until every model answers OK again after the
// models of one machine went away. failure=alloc-stop is the baseline: the
// machine's allocations are stopped through Nomad's API, so nothing has to
// be detected; failure=machine-kill takes the machine away (agent, tasks and
// Consul agent SIGKILLed) with heartbeats tuned to scaleHeartbeat. Metrics
// are seconds from the failure: dropped-s (no lost model is in the client's
// membership any more), node-down-s (Nomad marks the node down),
// running-s (every replacement runs), listed-s (the client lists each at its
// new address: its Consul check passed), all-ok-s (a fan-out is OK from all).
func BenchmarkNodeLoss(b *testing.B) {
	f := newFleet(b, scaleModels)
	b.Run("failure=alloc-stop", func(b *testing.B) {
		var rs []recovery
		for range b.N {
			b.StopTimer()
			node, models := busiest(f.placement(b))
			b.StartTimer()
			rs = append(rs, f.stopAndRecover(b, node, models))
		}
		reportRecovery(b, rs, false)
	})
	b.Run("failure=machine-kill", func(b *testing.B) {
		var rs []recovery
		for range b.N {
			b.StopTimer()
			victim, models := f.victim(b)
			b.StartTimer()
			rs = append(rs, f.killAndRecover(b, victim, models))
		}
		reportRecovery(b, rs, true)
	})
}

// victim returns the added client running most models and its models; when
// none runs any, it adds a client and moves the busiest node's models to it
// (stopped, they are placed on the least loaded node).
func (f *fleet) victim(tb testing.TB) (*NomadClientAgent, []string) {
	tb.Helper()
	byNode := f.placement(tb)
	if len(f.extra) > 0 {
		if a := f.busiestExtra(byNode); len(byNode[a.NodeID]) > 0 {
			return a, byNode[a.NodeID]
		}
	}
	a := f.c.AddNomadClient(tb)
	f.extra = append(f.extra, a)
	node, models := busiest(byNode)
	f.stopAndRecover(tb, node, models)
	byNode = f.placement(tb)
	if len(byNode[a.NodeID]) == 0 {
		tb.Fatalf("no model moved to the new client %s: %v", a.Name, countByNode(byNode))
	}
	return a, byNode[a.NodeID]
}

// busiest returns the node running most models, and its models.
func busiest(byNode map[string][]string) (string, []string) {
	var node string
	for n, ms := range byNode {
		if node == "" || len(ms) > len(byNode[node]) || len(ms) == len(byNode[node]) && n < node {
			node = n
		}
	}
	return node, byNode[node]
}

// reportRecovery reports the mean of each step over rs, in seconds.
func reportRecovery(b *testing.B, rs []recovery, nodeDown bool) {
	var dropped, down, running, listed, allOK float64
	for _, r := range rs {
		dropped += r.dropped.Seconds()
		down += r.down.Seconds()
		running += r.running.Seconds()
		listed += r.listed.Seconds()
		allOK += r.allOK.Seconds()
	}
	n := float64(len(rs))
	b.ReportMetric(dropped/n, "dropped-s")
	if nodeDown {
		b.ReportMetric(down/n, "node-down-s")
	}
	b.ReportMetric(running/n, "running-s")
	b.ReportMetric(listed/n, "listed-s")
	b.ReportMetric(allOK/n, "all-ok-s")
}

// recovery is how long each step took after the machine was taken away.
type recovery struct {
	killed    int           // task processes killed with the machine
	firstFail time.Duration // first fan-out without all models OK
	dropped   time.Duration // first fan-out without any lost model in the membership (Consul dropped them)
	down      time.Duration // Nomad marks the node down
	placed    time.Duration // every lost model has a replacement allocation
	running   time.Duration // ... and all replacements run
	listed    time.Duration // a fan-out lists every lost model at its new address (set up or not)
	allOK     time.Duration // the client's fan-out is OK from every model again
}

// fleet is a three-machine cluster running n models, and a coordinator
// client fanning out to them continuously.
type fleet struct {
	recorder
	c      *Cluster
	extra  []*NomadClientAgent
	jobIDs map[string]string
}

func newFleet(t testing.TB, n int) *fleet {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"nomad-driver-modelbox", "model-runner"} {
		if !isExecutable(filepath.Join(root, "bin", b)) {
			t.Skipf("bin/%s is missing: run `make build` first (make test does)", b)
		}
	}
	t0 := time.Now()
	c := StartWith(t, All, scaleHeartbeat)
	f := &fleet{c: c, jobIDs: map[string]string{}}
	f.extra = []*NomadClientAgent{c.AddNomadClient(t), c.AddNomadClient(t)}
	nc := c.Nomad.Client
	// Each model is its own job of count 1, so a job's spread or
	// distinct_hosts cannot spread models: the cluster's scheduler
	// algorithm does (binpack, the default, would stack them).
	sc, _, err := nc.Operator().SchedulerGetConfiguration(nil)
	if err != nil {
		t.Fatal(err)
	}
	sc.SchedulerConfig.SchedulerAlgorithm = nomadapi.SchedulerAlgorithmSpread
	if _, _, err := nc.Operator().SchedulerSetConfiguration(sc.SchedulerConfig, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	iss, err := c.CoordinatorIssuer(ctx, scaleCrunch)
	if err != nil {
		t.Fatal(err)
	}
	modelDir := copyModel(t, filepath.Join(root, "runner", "testdata", "pymodel"))
	// As production: the coordinator's key hash is what the chain records
	// (no hash admits nobody), and runners fetch Vault's revocation lists.
	certHash := authz.SPKIHash(iss.Certificate().Leaf)
	for i := range n {
		m := jobs.Model{Crunch: scaleCrunch, ModelID: fmt.Sprintf("model-%d", i), ModelDir: modelDir,
			Hardware: jobs.CPU, CPU: 100, MemoryMB: 256, Running: true, CertHash: certHash}
		job, err := jobs.Build(&m, &jobs.Options{CertTTL: "1h", AllowHostModelDirs: true,
			CRLURL: c.Vault.Addr + "/v1/pki_int/issuers"})
		if err != nil {
			t.Fatal(err)
		}
		// The test's one change to the production job: a spread makes
		// Nomad score every node instead of log2(nodes) but at least 2 of
		// them, so with 3 nodes each model surely goes to the least loaded.
		job.TaskGroups[0].AddSpread(&nomadapi.Spread{Attribute: "${node.unique.id}"})
		if _, _, err := nc.Jobs().Register(job, nil); err != nil {
			t.Fatal(err)
		}
		f.jobIDs[jobs.ShortID(&m)] = *job.ID
		f.addModel(jobs.ShortID(&m))
		// One placement at a time: each sees the previous one.
		waitFor(t, 30*time.Second, "model "+*job.ID+" placed", func() bool {
			as, _, err := nc.Jobs().Allocations(*job.ID, false, nil)
			return err == nil && len(as) > 0
		})
	}
	t.Cleanup(func() { stopJobs(t, nc, f.jobIDs, false) })

	took := f.start(t, ctx, scaleCrunch, c.Consul.Client, iss, logLevel(t))
	t.Logf("%d models answering through Consul discovery and Vault mTLS %.1fs after registration (%.1fs with the cluster)",
		n, took.Seconds(), time.Since(t0).Seconds())
	f.logSizes(t)
	return f
}

// logSizes logs what docs/scaling.md extrapolates from: the size of the
// answer to a coordinator's health query, and the memory of one added
// machine's agents.
func (f *fleet) logSizes(t testing.TB) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+f.c.Consul.Addr+"/v1/health/service/"+names.Service(scaleCrunch)+"?passing=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Consul-Token", f.c.Consul.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	a := f.extra[0]
	nomadRSS, _ := procfs.RSSMiB(a.nomad.cmd.Process.Pid)
	consulRSS, _ := procfs.RSSMiB(a.consul.cmd.Process.Pid)
	t.Logf("sizes: Consul health answer %d bytes for %d models (%d per model); machine %s: Nomad client agent %.0f MiB RSS, Consul client agent %.0f MiB RSS",
		len(body), len(f.models), len(body)/len(f.models), a.Name, nomadRSS, consulRSS)
}

// placement returns the models' running allocations by node id.
func (f *fleet) placement(t testing.TB) map[string][]string {
	t.Helper()
	byNode := map[string][]string{}
	for model, job := range f.jobIDs {
		as, _, err := f.c.Nomad.Client.Jobs().Allocations(job, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			if a.ClientStatus == nomadapi.AllocClientStatusRunning && a.DesiredStatus == nomadapi.AllocDesiredStatusRun {
				byNode[a.NodeID] = append(byNode[a.NodeID], model)
			}
		}
	}
	return byNode
}

// busiestExtra is the added client running most models.
func (f *fleet) busiestExtra(byNode map[string][]string) *NomadClientAgent {
	best := f.extra[0]
	for _, a := range f.extra[1:] {
		if len(byNode[a.NodeID]) > len(byNode[best.NodeID]) {
			best = a
		}
	}
	return best
}

// killAndRecover takes victim away (see NomadClientAgent.Kill) and waits
// until Nomad has replaced its models on other nodes and the client's
// fan-out is OK from every model again.
func (f *fleet) killAndRecover(tb testing.TB, victim *NomadClientAgent, lost []string) recovery {
	tb.Helper()
	r := f.recoverFrom(tb, victim.NodeID, lost, true, func() int {
		pids, err := victim.Kill()
		if err != nil {
			tb.Fatal(err)
		}
		if len(pids) == 0 {
			tb.Fatalf("taking %s away killed no task process", victim.Name)
		}
		return len(pids)
	})
	f.extra = slices.DeleteFunc(f.extra, func(a *NomadClientAgent) bool { return a == victim })
	return r
}

// stopAndRecover stops the models' allocations through Nomad's API (the
// baseline of a lost machine: no failure to detect) and waits until they
// are replaced and the fan-out is OK from every model again.
func (f *fleet) stopAndRecover(tb testing.TB, node string, models []string) recovery {
	tb.Helper()
	nc := f.c.Nomad.Client
	return f.recoverFrom(tb, node, models, false, func() int {
		for _, model := range models {
			for _, a := range f.allocs(tb, model) {
				if a.NodeID == node && a.DesiredStatus == nomadapi.AllocDesiredStatusRun {
					if _, err := nc.Allocations().Stop(&nomadapi.Allocation{ID: a.ID}, nil); err != nil {
						tb.Fatal(err)
					}
				}
			}
		}
		return 0
	})
}

// recoverFrom runs loss, which takes away the models lost running on node,
// and waits until (when nodeDown) Nomad marks the node down, every lost
// model runs in a new allocation (on another node when nodeDown), the
// client lists each at a new address, and a fan-out is OK from every model.
func (f *fleet) recoverFrom(tb testing.TB, node string, lost []string, nodeDown bool, loss func() int) recovery {
	tb.Helper()
	if len(lost) == 0 {
		tb.Fatalf("no model runs on node %.8s", node)
	}
	nc := f.c.Nomad.Client
	old := map[string]bool{}
	for _, model := range lost {
		for _, a := range f.allocs(tb, model) {
			old[a.ID] = true
		}
	}
	before := f.last().targets

	t0 := time.Now()
	r := recovery{killed: loss()}
	deadline := t0.Add(recoveryBound)
	for (nodeDown && r.down == 0) || r.running == 0 {
		if time.Now().After(deadline) {
			tb.Fatalf("after %s: node down %v, replacements placed %v, running %v", time.Since(t0), r.down, r.placed, r.running)
		}
		if nodeDown && r.down == 0 {
			if n, _, err := nc.Nodes().Info(node, nil); err == nil && n.Status == nomadapi.NodeStatusDown {
				r.down = time.Since(t0)
			}
		}
		placed, running := 0, 0
		for _, model := range lost {
			for _, a := range f.allocs(tb, model) {
				if old[a.ID] || a.DesiredStatus != nomadapi.AllocDesiredStatusRun {
					continue
				}
				if nodeDown && a.NodeID == node {
					tb.Errorf("model %s placed again on the lost node", model)
				}
				placed++
				if a.ClientStatus == nomadapi.AllocClientStatusRunning {
					running++
				}
			}
		}
		if r.placed == 0 && placed == len(lost) {
			r.placed = time.Since(t0)
		}
		if r.running == 0 && running == len(lost) {
			r.running = time.Since(t0)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ok := f.waitAllOK(tb, t0, time.Until(deadline))
	r.allOK = ok.at.Sub(t0)
	for _, model := range lost {
		if ok.targets[model] == before[model] {
			tb.Errorf("model %s still answers at %s, its old address", model, before[model])
		}
	}
	for _, s := range f.since(t0) {
		if r.firstFail == 0 && s.ok < len(f.models) {
			r.firstFail = s.at.Sub(t0)
		}
		moved, gone := 0, 0
		for _, model := range lost {
			switch t := s.targets[model]; {
			case t == "":
				gone++
			case t != before[model]:
				moved++
			}
		}
		if r.dropped == 0 && gone == len(lost) {
			r.dropped = s.at.Sub(t0)
		}
		if r.listed == 0 && moved == len(lost) {
			r.listed = s.at.Sub(t0)
		}
	}
	if r.firstFail == 0 {
		tb.Errorf("no fan-out failed after the models on node %.8s were taken away: the loss went unnoticed", node)
	}
	return r
}

// allocs returns a model's allocations.
func (f *fleet) allocs(tb testing.TB, model string) []*nomadapi.AllocationListStub {
	tb.Helper()
	as, _, err := f.c.Nomad.Client.Jobs().Allocations(f.jobIDs[model], true, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return as
}

// copyModel copies a model dir where the sandboxed worker's unprivileged
// user can read it.
func copyModel(t testing.TB, src string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "model")
	if err := os.CopyFS(dir, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	err := filepath.Walk(filepath.Dir(dir), func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return os.Chmod(p, 0o755)
		}
		return os.Chmod(p, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func countByNode(byNode map[string][]string) map[string]int {
	out := map[string]int{}
	for n, ms := range byNode {
		out[n[:8]] = len(ms)
	}
	return out
}

// logLevel is info for a test, warn for a benchmark (whose log is always
// printed).
func logLevel(tb testing.TB) hclog.Level {
	if _, ok := tb.(*testing.B); ok {
		return hclog.Warn
	}
	return hclog.Info
}

// testWriter sends the client's log lines to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
