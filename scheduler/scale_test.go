//go:build e2e

package scheduler

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/testing/solanatest"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
)

// BenchmarkScale measures the scheduler and the servers at SCALE_MODELS
// models (default 10,000) on SCALE_CLIENTS simulated machines (default 8):
// a real Nomad server and Consul server keeping Raft on disk (not -dev),
// Nomad client agents each with its own Consul agent, the real scheduler
// (two cmd/scheduler processes holding the Consul lock) reading the
// authorizations from the Solana front, every job built by jobs.Build.
//
// The task is a stand-in that costs nothing: between the schedulers and
// Nomad a proxy (standIn) swaps each registered job's task for Nomad's
// mock_driver and leaves out what a task without a runner cannot use (its
// Vault block, templates and artifact: 10,000 Vault logins and RSA keys,
// and an artifact server, are not what is measured here; docs/scaling.md
// keeps their cost extrapolated). Everything else of the job is what
// jobs.Build wrote: the Consul service with its meta, canary tags and gRPC
// check (critical: nothing listens on the stand-in's port), the update
// block (with health_check = "task_states": with "checks", every starting
// allocation would poll its Consul agent twice a second until its check
// passed, which it never does here), restart and reschedule policies,
// resources, the workload identity, the job's meta. The scheduler only
// reads the job's meta (its spec hash), so the swap is invisible to it.
//
// Figures (one run, -benchtime 1x): the first full pass, a steady pass,
// a chain change to its job at full size beside a direct register, the
// servers' memory and Raft size, each simulated machine's agents, and a
// leader change. Takes 45-60 minutes on 2 cores; far too long for make
// test: scripts/scale runs it (make scale).
func BenchmarkScale(b *testing.B) {
	n := envInt(b, "SCALE_MODELS", 10000)
	k := envInt(b, "SCALE_CLIENTS", 16)
	sched := filepath.Join(os.Getenv("MODELNODES_BIN"), "scheduler")
	if _, err := os.Stat(sched); err != nil {
		b.Skipf("the scheduler binary is needed (make build; MODELNODES_BIN=$PWD/bin): %v", err)
	}
	for b.Loop() {
		s := &scaleRun{b: b, n: n, k: k, sched: sched}
		s.run()
	}
}

type scaleRun struct {
	b     *testing.B
	n, k  int
	sched string
	t0    time.Time

	cl      *testcluster.Cluster
	clients []*testcluster.NomadClientAgent
	px      *standIn
	front   *solanatest.Front
	chain   *solanatest.Chain
	keys    []solana.PublicKey
	insts   []*schedProc
}

func (s *scaleRun) logf(format string, args ...any) {
	load, _ := os.ReadFile("/proc/loadavg")
	msg := fmt.Sprintf(format, args...)
	line := fmt.Sprintf("[scale %4.0fs] %s (load %s)", time.Since(s.t0).Seconds(), msg, strings.Join(strings.Fields(string(load))[:3], " "))
	fmt.Fprintln(os.Stderr, line)
}

func (s *scaleRun) run() {
	b := s.b
	s.t0 = time.Now()
	s.logf("starting Consul and Nomad servers (Raft on disk), Vault")
	s.cl = testcluster.StartWith(b, testcluster.All, testcluster.Options{DiskRaft: true})
	api := s.cl.Nomad.Client
	// The server's own client runs as root (tmpfs per task): nothing of
	// the stand-ins on it.
	stubs, _, err := api.Nodes().List(nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, st := range stubs {
		if _, err := api.Nodes().ToggleEligibility(st.ID, false, nil); err != nil {
			b.Fatal(err)
		}
	}
	perClient := (s.n + s.k - 1) / s.k
	for i := range s.k {
		// A machine big enough for its share (the host is shared by all),
		// and only the mock driver.
		a := s.cl.AddNomadClientWith(b, testcluster.ClientOptions{
			UID: 65534, GID: 65534,
			PluginHCL: "plugin \"mock_driver\" {}\n", Drivers: []string{"mock_driver"},
			// Each job asks 500 MHz, its memory and the default 300 MB of
			// ephemeral disk: the machine's size, not the host's.
			ClientHCL: fmt.Sprintf("  cpu_total_compute = %d\n  memory_total_mb   = %d\n  disk_total_mb     = %d\n  disk_free_mb      = %d",
				perClient*600+10000, perClient*600+10000, perClient*400+10000, perClient*400+10000),
		})
		s.clients = append(s.clients, a)
		if i == 0 {
			nomadRSS, consulRSS := s.clientRSS(a)
			s.logf("client %s: nomad %.0f MiB, consul %.0f MiB RSS idle", a.Name, nomadRSS, consulRSS)
			b.ReportMetric(nomadRSS, "idle-client-nomad-MiB")
			b.ReportMetric(consulRSS, "idle-client-consul-MiB")
		}
	}
	s.logf("%d simulated machines ready", s.k)
	s.px = newStandIn(b, s.cl.Nomad.Addr)

	s.front = solanatest.StartFront(b)
	s.chain = solanatest.NewChain(b, s.front)
	t0 := time.Now()
	for i := range s.n {
		key := solana.NewWallet().PublicKey()
		s.keys = append(s.keys, key)
		s.front.SetAccount(b, key, s.chain.Program, s.chain.Auth(fmt.Sprintf("m%05d", i), true, 256).Encode())
	}
	s.logf("%d authorizations planted in %.1fs", s.n, time.Since(t0).Seconds())

	s.firstPass()
	s.placed()
	s.steadyPass()
	s.chainChange()
	s.sizes()
	s.leaderChange()
}

// firstPass starts two scheduler instances and waits until the leader has
// registered every job.
func (s *scaleRun) firstPass() {
	b := s.b
	calls0 := s.px.snapshot()
	t0 := time.Now()
	for _, name := range []string{"sched-a", "sched-b"} {
		s.insts = append(s.insts, startSchedProc(b, s, name))
	}
	s.logf("two schedulers started; waiting for %d jobs", s.n)
	deadline := time.Now().Add(20 * time.Minute)
	var lead *schedProc
	for {
		for _, p := range s.insts {
			if r := p.registered(); r >= s.n {
				lead = p
			}
		}
		if lead != nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("the jobs were not all registered within 20 minutes: %s", s.px.snapshot().sub(calls0))
		}
		time.Sleep(time.Second)
	}
	took := time.Since(t0)
	calls := s.px.snapshot().sub(calls0)
	passes := lead.passes()
	var passTime time.Duration
	errs := 0
	for _, p := range passes {
		passTime += p.took
		errs += p.errors
	}
	s.logf("first pass(es) by %s: %d jobs in %.1fs from start (%d writing passes, %.1fs in passes), %s, %d errors",
		lead.name, s.n, took.Seconds(), len(passes), passTime.Seconds(), calls, errs)
	b.ReportMetric(took.Seconds(), "first-pass-s")
	b.ReportMetric(passTime.Seconds(), "first-pass-reconcile-s")
	b.ReportMetric(float64(calls.total()), "first-pass-nomad-calls")
	b.ReportMetric(float64(calls.writes), "first-pass-nomad-writes")
	b.ReportMetric(float64(errs+calls.failed), "first-pass-errors")
}

// placed waits until every model's allocation runs.
func (s *scaleRun) placed() {
	b := s.b
	t0 := time.Now()
	deadline := t0.Add(50 * time.Minute)
	profiled := false
	for {
		running := s.running()
		s.checkMemory()
		if path := os.Getenv("SCALE_PROFILE"); path != "" && !profiled && running >= s.n/2 {
			profiled = true
			s.profileNomadServer(path, running)
		}
		if running >= s.n {
			break
		}

		if time.Now().After(deadline) {
			b.Fatalf("%d of %d allocations running after 50 minutes", running, s.n)
		}
		s.logf("%d of %d allocations running", running, s.n)
		time.Sleep(15 * time.Second)
	}
	s.logf("all %d allocations running (%.0fs after the last job was registered)", s.n, time.Since(t0).Seconds())
	b.ReportMetric(time.Since(t0).Seconds(), "all-running-s")
}

// profileNomadServer writes a 30 s CPU profile of the Nomad server (its
// agent pprof endpoint, with the cluster's management token) to path:
// what bounds placement as the server's state grows.
func (s *scaleRun) profileNomadServer(path string, running int) {
	s.logf("profiling the Nomad server's CPU for 30 s at %d running → %s", running, path)
	prof, err := s.cl.Nomad.Client.Agent().CPUProfile(nomadapi.PprofOptions{Seconds: 30}, nil)
	if err == nil {
		err = os.WriteFile(path, prof, 0o644)
	}
	if err != nil {
		s.b.Logf("profiling the Nomad server: %v", err)
	}
}

func (s *scaleRun) running() int {
	allocs, _, err := s.cl.Nomad.Client.Allocations().List(&nomadapi.QueryOptions{
		Filter: `ClientStatus == "running"`, Params: map[string]string{"resources": "false"}})
	if err != nil {
		s.b.Logf("listing allocations: %v", err)
		return 0
	}
	return len(allocs)
}

// steadyPass waits for one resync pass of the leader with nothing to do
// and measures its CPU.
func (s *scaleRun) steadyPass() {
	b := s.b
	// Let Nomad's deployments finish (min_healthy_time 10 s) and the
	// observer's kicks die down.
	time.Sleep(30 * time.Second)
	lead := s.leader()
	var standby *schedProc
	for _, p := range s.insts {
		if p != lead {
			standby = p
		}
	}
	// nextPass waits for the end of the leader's next pass.
	nextPass := func() (int, float64) {
		n0, _ := lead.metricPasses()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			n1, sum1 := lead.metricPasses()
			if n1 > n0 {
				return n1, sum1
			}
			if time.Now().After(deadline) {
				b.Fatal("no reconcile pass within 2 minutes (--resync 20s)")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for attempt := 0; ; attempt++ {
		// From the end of one pass to the end of the next: one resync
		// period holding one pass.
		n0, sum0 := nextPass()
		cpu0, base0 := procCPU(lead.pid()), procCPU(standby.pid())
		calls0 := s.px.snapshot()
		t0 := time.Now()
		nextPass()
		cpu, base := procCPU(lead.pid())-cpu0, procCPU(standby.pid())-base0
		period := time.Since(t0)
		n1, sum1 := lead.metricPasses()
		calls := s.px.snapshot().sub(calls0)
		if n1-n0 != 1 && attempt < 3 {
			continue // a kick and the resync together: measure again
		}
		// The standby runs the same sources and observer but does not
		// reconcile: its CPU over the same period is the baseline.
		s.logf("steady pass: %.0f ms; from one pass's end to the next's (%.1fs) the leader used %d ms of CPU, the standby %d ms; %s",
			(sum1-sum0)*1000, period.Seconds(), cpu.Milliseconds(), base.Milliseconds(), calls)
		b.ReportMetric((sum1-sum0)*1000, "steady-pass-ms")
		b.ReportMetric(float64(cpu.Milliseconds()), "steady-period-cpu-ms")
		b.ReportMetric(float64(base.Milliseconds()), "standby-period-cpu-ms")
		b.ReportMetric(float64(calls.writes), "steady-pass-writes")
		if calls.writes != 0 {
			b.Errorf("a pass with nothing to change wrote to Nomad: %s", calls)
		}
		return
	}
}

// chainChange changes one authorization on chain, five times, and times
// each until Nomad has the new job; the baseline registers the same
// change straight through nomad/api.
func (s *scaleRun) chainChange() {
	b := s.b
	api := s.cl.Nomad.Client
	nc := nomad.Wrap(api)
	waitMem := func(jobID string, want int) {
		deadline := time.Now().Add(time.Minute)
		var index uint64
		for {
			j, meta, err := api.Jobs().Info(jobID, &nomadapi.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Second})
			if err == nil {
				index = meta.LastIndex
				if *j.TaskGroups[0].Tasks[0].Resources.MemoryMB == want {
					return
				}
			}
			if time.Now().After(deadline) {
				b.Fatalf("job %s never reached memory %d", jobID, want)
			}
		}
	}
	var chainLat, directLat []time.Duration
	for i := range 5 {
		id := fmt.Sprintf("m%05d", i)
		jobID := jobOf(s.chain, id)
		t0 := time.Now()
		s.front.SetAccount(b, s.keys[i], s.chain.Program, s.chain.Auth(id, true, 300).Encode())
		waitMem(jobID, 300)
		chainLat = append(chainLat, time.Since(t0))

		list, err := nc.ListJobs(context.Background(), jobID)
		if err != nil || len(list) != 1 {
			b.Fatalf("list %s: %v", jobID, err)
		}
		m := jobs.Model{Crunch: "mid-one", CrunchID: s.chain.Crunch.String(), ModelID: id, Hardware: jobs.CPU,
			ArtifactURL: "https://models.example/" + id + ".tar.gz", ArtifactSHA256: strings.Repeat("ab", 32), MemoryMB: 310, Running: true}
		job, err := jobs.Build(jobs.Named(&m), testOptions)
		if err != nil {
			b.Fatal(err)
		}
		standInJob(job)
		t0 = time.Now()
		if err := nc.Register(context.Background(), job, list[0].JobModifyIndex); err != nil {
			b.Fatal(err)
		}
		waitMem(jobID, 310)
		directLat = append(directLat, time.Since(t0))
	}
	slices.Sort(chainLat)
	slices.Sort(directLat)
	s.logf("chain change → job registered: %v (p50 %v); direct register: %v", chainLat, chainLat[2], directLat)
	b.ReportMetric(float64(chainLat[2].Microseconds())/1000, "chain-to-job-p50-ms")
	b.ReportMetric(float64(chainLat[4].Microseconds())/1000, "chain-to-job-max-ms")
	b.ReportMetric(float64(directLat[2].Microseconds())/1000, "direct-register-p50-ms")
	// The scheduler registered memory 300 (its authorization); the direct
	// registrations wrote 310 behind its back: put its version back so the
	// leader change below finds nothing to do.
	for i := range 5 {
		s.front.SetAccount(b, s.keys[i], s.chain.Program, s.chain.Auth(fmt.Sprintf("m%05d", i), true, 256).Encode())
	}
	for i := range 5 {
		waitMem(jobOf(s.chain, fmt.Sprintf("m%05d", i)), 256)
	}
}

// sizes reports the servers' and the machines' memory and Raft sizes.
func (s *scaleRun) sizes() {
	b := s.b
	time.Sleep(20 * time.Second) // the canaries of chainChange promoted
	nomadRSS := rssMiB(pidOf(b, "nomad", filepath.Join(s.cl.Dir, "nomad")))
	consulRSS := rssMiB(pidOf(b, "consul", filepath.Join(s.cl.Dir, "consul")))
	raft := dirMiB(filepath.Join(s.cl.Nomad.DataDir, "server"))
	consulData := dirMiB(filepath.Join(s.cl.Dir, "consul", "data"))
	var cn, cc float64
	for _, a := range s.clients {
		n, c := s.clientRSS(a)
		cn += n
		cc += c
	}
	services, metrics := s.consulInstances()
	s.logf("Nomad server %.0f MiB RSS, Raft %.1f MiB on disk; Consul server %.0f MiB RSS, data %.1f MiB, %d model and %d metrics service instances; per machine: Nomad client %.0f MiB, Consul agent %.0f MiB (mean of %d)",
		nomadRSS, raft, consulRSS, consulData, services, metrics, cn/float64(s.k), cc/float64(s.k), s.k)
	b.ReportMetric(nomadRSS, "nomad-server-MiB")
	b.ReportMetric(raft, "nomad-raft-MiB")
	b.ReportMetric(consulRSS, "consul-server-MiB")
	b.ReportMetric(consulData, "consul-data-MiB")
	b.ReportMetric(float64(services), "consul-instances")
	b.ReportMetric(float64(metrics), "consul-metrics-instances")
	b.ReportMetric(cn/float64(s.k), "client-nomad-MiB")
	b.ReportMetric(cc/float64(s.k), "client-consul-MiB")
	for i, p := range s.insts {
		b.ReportMetric(rssMiB(p.pid()), fmt.Sprintf("scheduler%d-MiB", i))
	}
	full, stand := jobSizes(s.chain)
	b.ReportMetric(float64(full), "job-json-bytes")
	b.ReportMetric(float64(stand), "standin-job-json-bytes")
}

// consulInstances counts the crunch's model instances (every check
// critical: nothing listens on a stand-in's port) and the runners' metrics
// instances in Consul's catalog: one of each per model.
func (s *scaleRun) consulInstances() (models, metrics int) {
	for i, name := range []string{names.Service("mid-one"), names.MetricsService} {
		entries, _, err := s.cl.Consul.Client.Catalog().Service(name, "", nil)
		if err != nil {
			s.b.Logf("consul catalog: %v", err)
			continue
		}
		if i == 0 {
			models = len(entries)
		} else {
			metrics = len(entries)
		}
	}
	return models, metrics
}

// leaderChange kills the leading scheduler and times the standby's
// takeover; it must write nothing.
func (s *scaleRun) leaderChange() {
	b := s.b
	lead := s.leader()
	var standby *schedProc
	for _, p := range s.insts {
		if p != lead {
			standby = p
		}
	}
	n0, _ := standby.metricPasses()
	calls0 := s.px.snapshot()
	t0 := time.Now()
	lead.kill()
	deadline := t0.Add(3 * time.Minute)
	var leading time.Duration
	for {
		if leading == 0 && standby.metricLeader() {
			leading = time.Since(t0)
		}
		if n1, _ := standby.metricPasses(); leading > 0 && n1 > n0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the standby did not take over within 3 minutes")
		}
		time.Sleep(50 * time.Millisecond)
	}
	passed := time.Since(t0)
	time.Sleep(5 * time.Second)
	calls := s.px.snapshot().sub(calls0)
	s.logf("leader %s killed: %s leads after %.1fs, its first pass done after %.1fs; %s", lead.name, standby.name,
		leading.Seconds(), passed.Seconds(), calls)
	b.ReportMetric(leading.Seconds(), "failover-lead-s")
	b.ReportMetric(passed.Seconds(), "failover-pass-s")
	b.ReportMetric(float64(calls.writes), "failover-writes")
	if calls.writes != 0 {
		b.Errorf("the new leader wrote %d jobs", calls.writes)
	}
}

func (s *scaleRun) leader() *schedProc {
	for range 600 {
		for _, p := range s.insts {
			if p.alive() && p.metricLeader() {
				return p
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.b.Fatal("no scheduler instance leads")
	return nil
}

// memoryBudget bounds what the agents of this run may hold (the host is
// shared): past it the run stops rather than starve the others.
// SCALE_MEMORY_MIB overrides it.
const memoryBudgetMiB = 12500

func (s *scaleRun) checkMemory() {
	total := 0.0
	for _, pid := range pidsUnder(s.cl.Dir) {
		total += rssMiB(pid)
	}
	for _, p := range s.insts {
		total += rssMiB(p.pid())
	}
	if budget := envInt(s.b, "SCALE_MEMORY_MIB", memoryBudgetMiB); total > float64(budget) {
		s.b.Fatalf("the agents hold %.0f MiB, over this run's budget of %d MiB (SCALE_MEMORY_MIB): use fewer SCALE_CLIENTS or SCALE_MODELS", total, budget)
	}
	s.logf("agents and schedulers: %.0f MiB RSS in all", total)
}

func (s *scaleRun) clientRSS(a *testcluster.NomadClientAgent) (nomadMiB, consulMiB float64) {
	return rssMiB(pidOf(s.b, "nomad", filepath.Join(a.Dir, "nomad"))), rssMiB(pidOf(s.b, "consul", filepath.Join(a.Dir, "consul")))
}

// jobSizes is the JSON size of one model's job as jobs.Build writes it and
// as the stand-in registers it.
func jobSizes(c *solanatest.Chain) (full, standIn int) {
	m := jobs.Model{Crunch: "mid-one", CrunchID: c.Crunch.String(), ModelID: "m00000", Hardware: jobs.CPU, SubmissionID: "sub-m00000",
		ArtifactURL: "https://models.example/m00000.tar.gz", ArtifactSHA256: strings.Repeat("ab", 32), MemoryMB: 256, Running: true}
	job, err := jobs.Build(&m, testOptions)
	if err != nil {
		return 0, 0
	}
	a, _ := json.Marshal(job)
	standInJob(job)
	bb, _ := json.Marshal(job)
	return len(a), len(bb)
}

// standIn is a reverse proxy in front of Nomad's HTTP API that swaps each
// registered job's task for the stand-in (standInJob) and counts the calls.
type standIn struct {
	srv                   *httptest.Server
	reads, writes, failed atomic.Int64
}

type callCount struct{ reads, writes, failed int }

func (c callCount) total() int { return c.reads + c.writes }
func (c callCount) sub(o callCount) callCount {
	return callCount{c.reads - o.reads, c.writes - o.writes, c.failed - o.failed}
}
func (c callCount) String() string {
	return fmt.Sprintf("Nomad API calls: %d reads, %d writes, %d failed", c.reads, c.writes, c.failed)
}

func (p *standIn) snapshot() callCount {
	return callCount{int(p.reads.Load()), int(p.writes.Load()), int(p.failed.Load())}
}

func newStandIn(b testing.TB, target string) *standIn {
	u, err := url.Parse(target)
	if err != nil {
		b.Fatal(err)
	}
	p := &standIn{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1 // the event stream
	rp.ModifyResponse = func(r *http.Response) error {
		if r.StatusCode >= 400 {
			p.failed.Add(1)
		}
		return nil
	}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			p.reads.Add(1)
		} else {
			p.writes.Add(1)
		}
		if (r.Method == http.MethodPut || r.Method == http.MethodPost) && r.URL.Path == "/v1/jobs" {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			var req nomadapi.JobRegisterRequest
			if err := json.Unmarshal(body, &req); err != nil || req.Job == nil {
				http.Error(w, fmt.Sprintf("stand-in: not a job registration: %v", err), http.StatusBadRequest)
				return
			}
			standInJob(req.Job)
			body, _ = json.Marshal(&req)
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
			r.Header.Set("Content-Length", strconv.Itoa(len(body)))
		}
		rp.ServeHTTP(w, r)
	}))
	b.Cleanup(p.srv.Close)
	return p
}

// schedProc is one cmd/scheduler process.
type schedProc struct {
	name, status string
	cmd          *exec.Cmd
	done         chan struct{}

	mu     sync.Mutex
	writes []passLine
}

type passLine struct {
	registered, errors int
	took               time.Duration
}

func startSchedProc(b testing.TB, s *scaleRun, name string) *schedProc {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := &schedProc{name: name, status: "http://" + addr, done: make(chan struct{})}
	f := s.front
	p.cmd = exec.Command(s.sched,
		"--nomad-addr", s.px.srv.URL, "--consul-addr", s.cl.Consul.Addr, "--consul-token", s.cl.Consul.Token,
		"--lock-key", "modelnodes/scheduler/leader", "--instance", name,
		"--solana-rpc", f.RPC, "--solana-ws", f.WS, "--solana-program", s.chain.Program.String(), "--solana-resync", "10m",
		"--listen", addr, "--log-json", "--resync", "20s",
		"--crl-url", testOptions.CRLURL, "--artifact-hosts", "models.example", "--python-constraints=false")
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !strings.HasPrefix(k, "NOMAD_") && !strings.HasPrefix(k, "CONSUL_") &&
			!strings.HasPrefix(k, "MODELNODES_SCHEDULER") {
			env = append(env, kv)
		}
	}
	p.cmd.Env = env
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	log, err := os.Create(filepath.Join(s.cl.Dir, name+".log"))
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			fmt.Fprintln(log, sc.Text())
			p.parse(sc.Bytes())
		}
		_ = p.cmd.Wait()
		log.Close()
	}()
	b.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
	return p
}

// parse keeps the "reconciled" lines (passes that wrote or failed).
func (p *schedProc) parse(line []byte) {
	var l struct {
		Msg    string `json:"@message"`
		Result string `json:"result"`
		Took   any    `json:"took"`
	}
	if json.Unmarshal(line, &l) != nil || l.Msg != "reconciled" {
		return
	}
	pl := passLine{}
	for _, f := range strings.Fields(l.Result) {
		k, v, _ := strings.Cut(f, "=")
		n, _ := strconv.Atoi(v)
		switch k {
		case "registered":
			pl.registered = n
		case "errors":
			pl.errors = n
		}
	}
	switch t := l.Took.(type) {
	case float64:
		pl.took = time.Duration(t)
	case string:
		pl.took, _ = time.ParseDuration(t)
	}
	p.mu.Lock()
	p.writes = append(p.writes, pl)
	p.mu.Unlock()
}

func (p *schedProc) passes() []passLine {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.writes)
}

func (p *schedProc) registered() int {
	n := 0
	for _, l := range p.passes() {
		n += l.registered
	}
	return n
}

func (p *schedProc) pid() int { return p.cmd.Process.Pid }

func (p *schedProc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *schedProc) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// metrics reads the instance's /metrics as name{labels} → value.
func (p *schedProc) metrics() map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get(p.status + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func (p *schedProc) metricLeader() bool {
	return p.metrics()["modelnodes_scheduler_leader"] == 1
}

// metricPasses is the number of passes and their total duration (s).
func (p *schedProc) metricPasses() (int, float64) {
	m := p.metrics()
	return int(m["modelnodes_scheduler_reconcile_duration_seconds_count"]), m["modelnodes_scheduler_reconcile_duration_seconds_sum"]
}

func envInt(b testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// procCPU is a process's user+system CPU time.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (in parentheses): utime and stime are the
	// 14th and 15th fields of the whole line.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// rssMiB is a process's resident memory.
func rssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// pidsUnder lists the processes whose command line names a path under dir.
func pidsUnder(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(cmd, []byte(dir)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pidOf is the agent process (binary name) whose command line names dir.
func pidOf(b testing.TB, name, dir string) int {
	for _, pid := range pidsUnder(dir) {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if filepath.Base(exe) == name && bytes.Contains(cmd, []byte("agent")) {
			return pid
		}
	}
	b.Logf("no %s process under %s", name, dir)
	return 0
}

// dirMiB is the disk space of the files under dir.
func dirMiB(dir string) float64 {
	var total int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			}
		}
		return nil
	})
	return float64(total) / (1 << 20)
}
