//go:build e2e

package scheduler

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/testing/solanatest"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/scheduler/leader"
	"github.com/modelnodes/modelnodes/scheduler/observer"
	"github.com/modelnodes/modelnodes/scheduler/source"
	solanasrc "github.com/modelnodes/modelnodes/scheduler/source/solana"
	"github.com/modelnodes/modelnodes/scheduler/source/yamlfile"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Main(m)) }

type runningScheduler struct {
	s      *Scheduler
	cancel context.CancelFunc
	done   chan struct{}
	passes chan Result
}

func startScheduler(t testing.TB, nc NomadJobs, ev observer.NomadEvents, el Elector, sources ...source.Source) *runningScheduler {
	return startSchedulerWith(t, nil, nc, ev, el, sources...)
}

// startSchedulerWith lets adjust changes the scheduler before it runs.
func startSchedulerWith(t testing.TB, adjust func(*Scheduler), nc NomadJobs, ev observer.NomadEvents, el Elector, sources ...source.Source) *runningScheduler {
	rs := &runningScheduler{done: make(chan struct{}), passes: make(chan Result, 1000)}
	rs.s = &Scheduler{
		Sources:    sources,
		Reconciler: &Reconciler{Nomad: nc, Options: testOptions, PurgeAfter: time.Hour},
		Elector:    el,
		Resync:     2 * time.Second,
		Metrics:    NewMetrics(),
		OnReconcile: func(r Result, err error) {
			if err == nil {
				select {
				case rs.passes <- r:
				default:
				}
			}
		},
	}
	if ev != nil {
		rs.s.Observer = &observer.Observer{Nomad: ev, Backoff: observer.Backoff{Failures: 1000}}
	}
	if adjust != nil {
		adjust(rs.s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rs.cancel = cancel
	go func() { defer close(rs.done); _ = rs.s.Run(ctx) }()
	t.Cleanup(rs.stop)
	return rs
}

func (rs *runningScheduler) stop() {
	rs.cancel()
	<-rs.done
}

// waitJobs polls Nomad until ok holds for our jobs.
func waitJobs(t testing.TB, nc *nomad.Client, d time.Duration, what string, ok func(map[string]nomad.JobStub) bool) map[string]nomad.JobStub {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		list, err := nc.ListJobs(context.Background(), names.JobPrefix)
		byID := map[string]nomad.JobStub{}
		for _, j := range list {
			byID[j.ID] = j
		}
		if err == nil && ok(byID) {
			return byID
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (err %v); jobs: %v", what, d, err, describeJobs(byID))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func describeJobs(m map[string]nomad.JobStub) string {
	var parts []string
	for id, j := range m {
		parts = append(parts, id+" stop="+map[bool]string{true: "yes", false: "no"}[j.Stop]+" model="+j.Meta[names.MetaModel])
	}
	return strings.Join(parts, ", ")
}

func purgeAll(t testing.TB, nc *nomad.Client) {
	ctx := context.Background()
	list, _ := nc.ListJobs(ctx, names.JobPrefix)
	// Stop first and wait (bounded) for the allocations to finish: once a
	// job is purged the servers forget its allocations, and a cluster
	// stopped while they still drain leaves their processes behind.
	for _, j := range list {
		_ = nc.Stop(ctx, j.ID)
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		allocs, _, err := nc.Allocations(ctx, names.JobPrefix)
		if err != nil {
			break
		}
		running := 0
		for _, a := range allocs {
			if a.ClientStatus == nomadapi.AllocClientStatusRunning || a.ClientStatus == nomadapi.AllocClientStatusPending {
				running++
			}
		}
		if running == 0 {
			break
		}
	}
	for _, j := range list {
		_ = nc.Purge(ctx, j.ID)
	}
}

func jobOf(c *solanatest.Chain, modelID string) string {
	m := jobs.Model{Crunch: "mid-one", CrunchID: c.Crunch.String(), ModelID: modelID}
	return jobs.JobID(jobs.Named(&m))
}

// The chain drives Nomad: authorizations appear, change and disappear on a
// real Solana runtime, and the right jobs appear, update and stop in a real
// Nomad; a restarted scheduler registers nothing twice.
func TestChainDrivesNomad(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	f := solanatest.StartFront(t)
	c := solanatest.NewChain(t, f)
	keyA, keyB := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	f.SetAccount(t, keyA, c.Program, c.Auth("model-a", true, 0).Encode())
	f.SetAccount(t, keyB, c.Program, c.Auth("model-b", true, 0).Encode())
	newSource := func() *solanasrc.Source {
		return &solanasrc.Source{RPCURL: f.RPC, WSURL: f.WS, Program: c.Program, Resync: 3 * time.Second}
	}
	s1 := startScheduler(t, nc, nc, nil, newSource())
	jobA, jobB := jobOf(c, "model-a"), jobOf(c, "model-b")

	js := waitJobs(t, nc, 30*time.Second, "both models registered", func(m map[string]nomad.JobStub) bool {
		return len(m) == 2 && !m[jobA].Stop && !m[jobB].Stop
	})
	if js[jobA].Meta[names.MetaModel] != "model-a" || js[jobA].Meta[names.MetaCrunch] != c.Crunch.String() {
		t.Fatalf("job meta: %v", js[jobA].Meta)
	}
	job, _, err := cl.Nomad.Client.Jobs().Info(jobA, nil)
	if err != nil {
		t.Fatal(err)
	}
	if task := job.TaskGroups[0].Tasks[0]; task.Driver != "modelbox" || task.Vault == nil || job.TaskGroups[0].Services[0].Name != "crunch-mid-one" {
		t.Fatalf("registered job is not the builder's: driver %s vault %v", task.Driver, task.Vault)
	}

	// Change: more memory for B -> B updated in place.
	f.SetAccount(t, keyB, c.Program, c.Auth("model-b", true, 1024).Encode())
	waitJobs(t, nc, 10*time.Second, "model-b updated", func(m map[string]nomad.JobStub) bool {
		j, _, err := cl.Nomad.Client.Jobs().Info(jobB, nil)
		return err == nil && *j.TaskGroups[0].Tasks[0].Resources.MemoryMB == 1024
	})
	// Desired STOPPED -> B stopped; A's authorization closed -> A stopped.
	f.SetAccount(t, keyB, c.Program, c.Auth("model-b", false, 1024).Encode())
	f.CloseAccount(t, keyA)
	waitJobs(t, nc, 15*time.Second, "both stopped", func(m map[string]nomad.JobStub) bool {
		return m[jobA].Stop && m[jobB].Stop
	})
	// B back to RUNNING.
	f.SetAccount(t, keyB, c.Program, c.Auth("model-b", true, 1024).Encode())
	before := waitJobs(t, nc, 10*time.Second, "model-b running again", func(m map[string]nomad.JobStub) bool {
		return !m[jobB].Stop && m[jobA].Stop
	})
	s1.stop()

	// A new scheduler instance: its first pass changes nothing.
	s2 := startScheduler(t, nc, nc, nil, newSource())
	var first Result
	select {
	case first = <-s2.passes:
	case <-time.After(20 * time.Second):
		t.Fatal("the restarted scheduler never reconciled")
	}
	for first.Unchanged == 0 { // passes before the chain was read register nothing either
		if first.Registered+first.Updated+first.Stopped > 0 {
			break
		}
		first = <-s2.passes
	}
	if first.Registered+first.Updated+first.Stopped+first.Purged != 0 {
		t.Fatalf("a restarted scheduler wrote to Nomad: %v", first)
	}
	after := waitJobs(t, nc, time.Second, "jobs", func(map[string]nomad.JobStub) bool { return true })
	for id, j := range before {
		if after[id].JobModifyIndex != j.JobModifyIndex {
			t.Errorf("job %s was written again by the restarted scheduler (index %d -> %d)", id, j.JobModifyIndex, after[id].JobModifyIndex)
		}
	}

	// The status API joins desired and observed state.
	srv := httptest.NewServer(s2.s.Handler())
	defer srv.Close()
	var models []ModelStatus
	getJSON(t, srv.URL+"/v1/models", &models)
	found := false
	for _, m := range models {
		if m.JobID == jobB && m.Desired == "running" && m.ModelID == "model-b" && m.State != "" {
			found = true
		}
	}
	if !found {
		t.Fatalf("/v1/models lacks model-b: %+v", models)
	}
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 1<<16)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if !strings.Contains(b.String(), `modelnodes_scheduler_source_up{source="solana"} 1`) || !strings.Contains(b.String(), "modelnodes_scheduler_leader 1") {
		t.Fatalf("/metrics lacks source_up or leader:\n%.2000s", b.String())
	}
}

func getJSON(t testing.TB, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

func modelsFile(t testing.TB, models ...jobs.Model) string {
	path := filepath.Join(t.TempDir(), "models.yaml")
	writeModels(t, path, models...)
	return path
}

func writeModels(t testing.TB, path string, models ...jobs.Model) {
	var b strings.Builder
	b.WriteString("models:\n")
	for _, m := range models {
		j, _ := json.Marshal(m) // JSON is YAML
		b.WriteString("  - " + string(j) + "\n")
	}
	if err := os.WriteFile(path+".tmp", []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func fileModel(id string) jobs.Model {
	return jobs.Model{Crunch: "lead", ModelID: id, ArtifactURL: "http://127.0.0.1:1/" + id + ".tar.gz",
		ArtifactSHA256: strings.Repeat("ab", 32), Hardware: jobs.CPU, Running: true}
}

// Two instances with the Consul lock: never both leading, exactly one
// reconciles, and when the leader goes the other takes over.
func TestTwoSchedulersOneLeader(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	path := modelsFile(t, fileModel("one"))
	lock := func(name string) *leader.ConsulLock {
		return &leader.ConsulLock{Client: cl.Consul.Client, Key: "modelnodes/scheduler/test-leader", Instance: name,
			SessionTTL: 10 * time.Second, LockDelay: 500 * time.Millisecond}
	}
	var writes [2]atomic.Int64
	counting := func(i int) NomadJobs { return &countingJobs{NomadJobs: nc, n: &writes[i]} }
	a := startScheduler(t, counting(0), nil, lock("a"), &yamlfile.Source{Path: path, Interval: 50 * time.Millisecond})
	b := startScheduler(t, counting(1), nil, lock("b"), &yamlfile.Source{Path: path, Interval: 50 * time.Millisecond})

	waitJobs(t, nc, 20*time.Second, "model one registered", func(m map[string]nomad.JobStub) bool { return len(m) == 1 })
	// Watch for 3 s while the desired state changes: at most one leads.
	var both atomic.Bool
	stopWatch := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if a.s.Leading() && b.s.Leading() {
				both.Store(true)
			}
		}
	}()
	writeModels(t, path, fileModel("one"), fileModel("two"))
	waitJobs(t, nc, 10*time.Second, "model two registered", func(m map[string]nomad.JobStub) bool { return len(m) == 2 })
	time.Sleep(2 * time.Second)
	close(stopWatch)
	wg.Wait()
	if both.Load() {
		t.Fatal("both instances led at the same time")
	}
	leader, follower := a, b
	lw, fw := &writes[0], &writes[1]
	if b.s.Leading() {
		leader, follower, lw, fw = b, a, &writes[1], &writes[0]
	}
	if !leader.s.Leading() || fw.Load() != 0 || lw.Load() == 0 {
		t.Fatalf("leader writes %d, follower writes %d (want all by the leader)", lw.Load(), fw.Load())
	}
	// The leader goes away: the other takes over and reconciles.
	leader.stop()
	deadline := time.Now().Add(15 * time.Second)
	for !follower.s.Leading() {
		if time.Now().After(deadline) {
			t.Fatal("no failover within 15 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	writeModels(t, path, fileModel("one"), fileModel("two"), fileModel("three"))
	waitJobs(t, nc, 10*time.Second, "model three registered by the new leader", func(m map[string]nomad.JobStub) bool { return len(m) == 3 })
	if fw.Load() == 0 {
		t.Fatal("the new leader did not write")
	}
}

// countingJobs counts the writes of one instance.
type countingJobs struct {
	NomadJobs
	n *atomic.Int64
}

func (c *countingJobs) Register(ctx context.Context, job *nomadapi.Job, idx uint64) error {
	c.n.Add(1)
	return c.NomadJobs.Register(ctx, job, idx)
}

func (c *countingJobs) Stop(ctx context.Context, id string) error {
	c.n.Add(1)
	return c.NomadJobs.Stop(ctx, id)
}

// Nomad becomes unreachable in the middle of a pass (connections cut,
// refused for 2 s, back): the scheduler retries, ends with every model
// registered exactly once, and stops nothing.
func TestNomadGoesAwayMidReconcile(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	direct := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, direct) })
	target, _ := url.Parse(cl.Nomad.Addr)
	var down atomic.Bool
	var registers atomic.Int64
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Path == "/v1/jobs" {
			if registers.Add(1) == 10 {
				down.Store(true)
				time.AfterFunc(2*time.Second, func() { down.Store(false) })
			}
		}
		if down.Load() {
			hj, _ := w.(http.Hijacker)
			conn, _, _ := hj.Hijack()
			conn.Close()
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	viaProxy, err := nomad.New(nomad.Config{Address: srv.URL, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var ms []jobs.Model
	for i := range 30 {
		ms = append(ms, fileModel("m"+string(rune('a'+i/26))+string(rune('a'+i%26))))
	}
	path := modelsFile(t, ms...)
	s := startScheduler(t, viaProxy, nil, nil, &yamlfile.Source{Path: path})
	got := waitJobs(t, direct, 60*time.Second, "all 30 registered after the outage", func(m map[string]nomad.JobStub) bool {
		if len(m) != 30 {
			return false
		}
		for _, j := range m {
			if j.Stop {
				return false
			}
		}
		return true
	})
	if registers.Load() < 10 {
		t.Fatal("the outage never happened")
	}
	for id := range got {
		j, _, err := cl.Nomad.Client.Jobs().Info(id, nil)
		if err != nil {
			t.Fatal(err)
		}
		if *j.Version != 0 {
			t.Errorf("job %s has version %d: registered more than once", id, *j.Version)
		}
	}
	s.stop()

}

// A model that cannot start (its artifact cannot be fetched) is reported
// by the status API as failed, with Nomad's reason.
func TestStatusReportsFailedModel(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	requireModelbox(t, cl.Nomad.Client)
	m := fileModel("broken") // artifact at 127.0.0.1:1: connection refused
	s := startScheduler(t, nc, nc, nil, &yamlfile.Source{Path: modelsFile(t, m)})
	id := jobs.JobID(jobs.Named(&m))
	srv := httptest.NewServer(s.s.Handler())
	defer srv.Close()
	deadline := time.Now().Add(90 * time.Second)
	var last []ModelStatus
	for {
		last = nil
		getJSON(t, srv.URL+"/v1/models", &last)
		for _, ms := range last {
			if ms.JobID == id && ms.State == observer.StateFailed {
				if ms.Desired != "running" || !strings.Contains(ms.Reason, "artifact") || ms.Allocation == "" {
					t.Fatalf("failed model without its cause (the artifact) or allocation: %+v", ms)
				}
				t.Logf("reported: state=%s reason=%q", ms.State, ms.Reason)
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("model never reported failed: %+v", last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// requireModelbox skips (saying why) when the Nomad node has no healthy
// modelbox driver, which needs bin/ built (make test does) and root.
func requireModelbox(t testing.TB, client *nomadapi.Client) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if nodes, _, err := client.Nodes().List(nil); err == nil && len(nodes) > 0 {
			if node, _, err := client.Nodes().Info(nodes[0].ID, nil); err == nil {
				if d := node.Drivers["modelbox"]; d != nil && d.Healthy {
					return
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Skip("the Nomad node has no healthy modelbox driver (needs bin/nomad-driver-modelbox from make build, and root)")
}

// deploy/jobs/example-model.nomad.hcl is accepted by `nomad job run` as is
// (jobs/hcl_test.go checks it equals the builder's job).
func TestExampleJobRuns(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	cmd := exec.Command(cl.Nomad.Bin, "job", "run", "-detach", "../deploy/jobs/example-model.nomad.hcl")
	cmd.Env = append(os.Environ(), "NOMAD_ADDR="+cl.Nomad.Addr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nomad job run: %v\n%s", err, out)
	}
	m := jobs.Model{Crunch: "demo", ModelID: "example"}
	waitJobs(t, nc, 10*time.Second, "the example job registered", func(j map[string]nomad.JobStub) bool {
		_, ok := j[jobs.JobID(&m)] // the file names it by its key
		return ok
	})
}

// nomad.Client's check-and-set on the real agent: a second "create" of the
// same job and a write at a stale index are refused as conflicts, so two
// writers can never both register a model.
func TestNomadCheckAndSet(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	ctx := context.Background()
	m := fileModel("cas")
	job, err := jobs.Build(jobs.Named(&m), testOptions)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Register(ctx, job, 0); err != nil {
		t.Fatal(err)
	}
	if err := nc.Register(ctx, job, 0); !errors.Is(err, nomad.ErrConflict) {
		t.Fatalf("second create: %v, want ErrConflict", err)
	}
	list, err := nc.ListJobs(ctx, jobs.JobID(jobs.Named(&m)))
	if err != nil || len(list) != 1 || list[0].Meta[names.MetaSpec] != jobs.SpecHash(jobs.Named(&m), testOptions) {
		t.Fatalf("list with meta: %v %+v", err, list)
	}
	idx := list[0].JobModifyIndex
	m.MemoryMB = 300
	job, _ = jobs.Build(jobs.Named(&m), testOptions)
	if err := nc.Register(ctx, job, idx); err != nil {
		t.Fatalf("update at the current index: %v", err)
	}
	if err := nc.Register(ctx, job, idx); !errors.Is(err, nomad.ErrConflict) {
		t.Fatalf("update at a stale index: %v, want ErrConflict", err)
	}
}

// Someone stops a model's job by hand (nomad job stop): the event stream
// tells the leader, which registers it again at once, long before its
// periodic resync.
func TestJobStoppedByHandIsRestored(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	m := fileModel("handstop")
	startSchedulerWith(t, func(s *Scheduler) { s.Resync = time.Hour }, nc, nc, nil, &yamlfile.Source{Path: modelsFile(t, m)})
	id := jobs.JobID(jobs.Named(&m))
	waitJobs(t, nc, 20*time.Second, "registered", func(j map[string]nomad.JobStub) bool { _, ok := j[id]; return ok })
	time.Sleep(500 * time.Millisecond) // let the passes that followed the registration settle
	if err := nc.Stop(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	waitJobs(t, nc, 10*time.Second, "running again", func(j map[string]nomad.JobStub) bool { return !j[id].Stop })
	t.Logf("restored %s after it was stopped by hand", time.Since(t0).Round(time.Millisecond))
}

// The whole chain of a scheduled model on the real stack: the job the
// scheduler builds (modelbox driver, Vault workload identity, the template
// rendering the runner's certificate named after the job, the Consul gRPC
// check over TLS) turns healthy, and the status API says so.
func TestScheduledModelTurnsHealthy(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	requireModelbox(t, cl.Nomad.Client)
	dir := filepath.Join(t.TempDir(), "pymodel")
	if out, err := exec.Command("cp", "-r", "../runner/testdata/pymodel", dir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	m := jobs.Model{Crunch: "healthy", ModelID: "py", ModelDir: dir, Hardware: jobs.CPU, MemoryMB: 256, CPU: 200, Running: true}
	// Production's revocation list: the runner fetches Vault's CRL.
	opts := *testOptions
	opts.CRLURL = cl.Vault.Addr + "/v1/pki_int/issuers"
	s := startSchedulerWith(t, func(s *Scheduler) { s.Reconciler.Options = &opts }, nc, nc, nil, &yamlfile.Source{Path: modelsFile(t, m)})
	srv := httptest.NewServer(s.s.Handler())
	defer srv.Close()
	id := jobs.JobID(jobs.Named(&m))
	deadline := time.Now().Add(120 * time.Second)
	var last []ModelStatus
	for {
		last = nil
		getJSON(t, srv.URL+"/v1/models", &last)
		for _, ms := range last {
			if ms.JobID == id && ms.State == observer.StateHealthy {
				checkRunnerCertificate(t, cl.Nomad.Client, ms.Allocation, id+".crunchdao.internal")
				return
			}
			if ms.JobID == id && ms.State == observer.StateFailed {
				t.Fatalf("scheduled model failed: %s", ms.Reason)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("scheduled model not healthy within 120 s: %+v", last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// checkRunnerCertificate connects to the model port of an allocation and
// checks the runner presents the Vault certificate named after its job.
func checkRunnerCertificate(t *testing.T, client *nomadapi.Client, allocID, name string) {
	t.Helper()
	alloc, _, err := client.Allocations().Info(allocID, nil)
	if err != nil {
		t.Fatal(err)
	}
	var addr string
	for _, p := range alloc.AllocatedResources.Shared.Ports {
		if p.Label == jobs.PortLabel {
			addr = net.JoinHostPort(p.HostIP, strconv.Itoa(p.Value))
		}
	}
	var names []string
	conf := &tls.Config{InsecureSkipVerify: true, // only the name is checked here
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if c, err := x509.ParseCertificate(raw[0]); err == nil {
				names = c.DNSNames
			}
			return nil
		}}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if err == nil {
		conn.Close()
	}
	if len(names) != 1 || names[0] != name {
		t.Fatalf("runner at %s presents names %v, want [%s]", addr, names, name)
	}
}
