//go:build e2e

package scheduler

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"
	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/client/discovery/consul"
	"github.com/modelnodes/modelnodes/internal/testing/solanatest"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/pki/vaultpki"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	"github.com/modelnodes/modelnodes/runner/authz"
	solanasrc "github.com/modelnodes/modelnodes/scheduler/source/solana"
	"github.com/modelnodes/modelnodes/scheduler/source/solana/onchain"
)

// The model of BenchmarkAuthorizationToCallable: the Go example model
// (cmd/example-model, an executable worker: it starts in milliseconds, so
// the figure is the platform's and not a Python import's), fetched by
// Nomad as an artifact from a loopback HTTP server, with its digest on
// chain as in production.
const (
	callableModels  = 20
	callableCrunch  = "bench"
	callableClass   = "tracker.Base"
	callableCPU     = 100 // MHz: 20 models must fit the dev node's 2 vCPUs
	callableMemory  = 128 // MB
	callableTimeout = 4 * time.Minute
)

// callableRound numbers the rounds of the process: every round uses new
// model ids, so nothing of a previous round (a Consul instance, a job
// version) can answer for it.
var callableRound atomic.Int64

// From an authorization landing on chain to the model answering a real
// mTLS Call, for 20 models authorized at once, on the real stack: the
// litesvm front, the scheduler (websocket + reconcile), Nomad, the
// modelbox driver, the runner with its Vault certificate, the Consul
// check, and the coordinator client discovering it through Consul with a
// Vault-issued certificate and the crunch's Consul token.
//
// Baseline path=direct-nomad: the same 20 jobs (jobs.Build of the models
// the scheduler derives from those authorizations; their spec hashes are
// checked equal) registered straight through nomad/api, no chain and no
// scheduler. Metrics, over the models: p50-ms/p95-ms from authorization
// (or register call) to the first successful Call, and the p50 of each
// stage: job-p50-ms (to the job registered in Nomad), alloc-p50-ms (to
// its allocation running), consul-p50-ms (to its Consul check passing),
// call-p50-ms (to the client's first successful Call).
func BenchmarkAuthorizationToCallable(b *testing.B) {
	exe := callableModel{runtime: onchain.RuntimeExecutable, entry: "example-model", class: callableClass}
	exe.url, exe.sum = serveExampleModel(b)
	benchAuthorizationToCallable(b, []callableRun{
		{name: fmt.Sprintf("models=%d/path=direct-nomad", callableModels), path: "direct-nomad", model: exe},
		{name: fmt.Sprintf("models=%d/path=chain-scheduler", callableModels), path: "chain-scheduler", model: exe},
	})
}

// The same path, chain and scheduler, for a Python model (runner/testdata's
// pymodel, with its own probe method echo) without requirements and with a
// requirements.txt whose environment the node already has (a first,
// untimed round builds it): the environment may cost at most 10 % of
// authorization → callable (issue 15).
func BenchmarkAuthorizationToCallablePython(b *testing.B) {
	none := callableModel{runtime: onchain.RuntimePython, class: "crunch_base.Tracker"}
	none.url, none.sum = servePythonModel(b, "")
	shared := none
	shared.url, shared.sum = servePythonModel(b, "six==1.16.0\n")
	benchAuthorizationToCallable(b, []callableRun{
		{name: fmt.Sprintf("models=%d/env=none", callableModels), path: "chain-scheduler", model: none},
		{name: fmt.Sprintf("models=%d/env=shared", callableModels), path: "chain-scheduler", model: shared, warm: true},
	})
}

// callableModel is the submission a benchmark authorizes: its artifact, how
// it runs, and the class the coordinator sets up.
type callableModel struct {
	url          string
	sum          [32]byte
	runtime      uint8 // onchain.Runtime*
	entry, class string
}

// callableRun is one sub-benchmark: a path, a model, and whether a first,
// untimed round warms the node (builds the model's environment).
type callableRun struct {
	name, path string
	model      callableModel
	warm       bool
}

func benchAuthorizationToCallable(b *testing.B, runs []callableRun) {
	cl := testcluster.Shared(b, testcluster.Nomad)
	requireModelbox(b, cl.Nomad.Client)
	nc := nomad.Wrap(cl.Nomad.Client)
	b.Cleanup(func() { purgeAll(b, nc) })
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)

	coord := onboardCoordinator(b, ctx, cl, callableCrunch)
	f := solanatest.StartFront(b)
	c := solanatest.NewChain(b, f)
	cr := &onchain.Crunch{Name: callableCrunch, Bump: 255}
	copy(cr.Coordinator[:], c.Coord[:])
	hashBytes(b, authz.SPKIHash(coord.issuer.Certificate().Leaf), &cr.CertHash)
	f.SetAccount(b, c.Crunch, c.Program, cr.Encode())

	auth := func(m callableModel, id string, running bool) *onchain.ModelAuthorization {
		a := c.Auth(id, running, callableMemory)
		a.ArtifactURI, a.ArtifactSHA256 = m.url, m.sum
		a.Runtime, a.Entry, a.CPUMHz = m.runtime, m.entry, callableCPU
		return a
	}
	// model is what the scheduler derives from auth(id) (the solana source's
	// snapshot); the chain path checks the spec hashes agree.
	model := func(m callableModel, id string) jobs.Model {
		a := auth(m, id, true)
		runtime := "executable"
		if m.runtime == onchain.RuntimePython {
			runtime = "" // the solana source leaves python, jobs' default, unsaid
		}
		return jobs.Model{Crunch: cr.Name, CrunchID: c.Crunch.String(), ModelID: id,
			Cruncher: solana.PublicKeyFromBytes(a.Cruncher[:]).String(), Hotkey: solana.PublicKeyFromBytes(a.Hotkey[:]).String(),
			SubmissionID: a.SubmissionID, ArtifactURL: a.ArtifactURI, ArtifactSHA256: onchain.HashHex(a.ArtifactSHA256),
			Runtime: runtime, Entry: a.Entry, Hardware: jobs.CPU, CPU: int(a.CPUMHz), MemoryMB: int(a.MemoryMB),
			Coordinator: c.Coord.String(), CertHash: onchain.HashHex(cr.CertHash), Running: true}
	}

	// Production's options: runners fetch the test Vault's revocation lists.
	opts := *testOptions
	opts.CRLURL = cl.Vault.Addr + "/v1/pki_int/issuers"
	for _, run := range runs {
		path := run.path
		b.Run(run.name, func(b *testing.B) {
			tr := watchMilestones(b, ctx, cl, coord, c.Crunch.String(), run.model.class)
			if path == "chain-scheduler" {
				startSchedulerWith(b, func(s *Scheduler) { s.Reconciler.Options = &opts }, nc, nc, nil,
					&solanasrc.Source{RPCURL: f.RPC, WSURL: f.WS, Program: c.Program, Resync: time.Minute})
				f.WaitSubscribed(b, 1)
				time.Sleep(1500 * time.Millisecond) // past the post-subscribe resync
			}
			var all []*milestones
			rounds := b.N
			if run.warm {
				rounds++
			}
			b.ResetTimer()
			for round := range rounds {
				if run.warm && round == 0 {
					b.StopTimer() // the warm-up round builds the environment
				}
				r := callableRound.Add(1)
				ms := make([]jobs.Model, callableModels)
				keys := make([]solana.PublicKey, callableModels)
				for i := range ms {
					ms[i] = model(run.model, fmt.Sprintf("%s-r%d-m%02d", path, r, i))
					keys[i] = solana.NewWallet().PublicKey()
				}
				marks := tr.expect(ms)
				for i := range ms {
					marks[i].planted = time.Now()
					if path == "chain-scheduler" {
						f.SetAccount(b, keys[i], c.Program, auth(run.model, ms[i].ModelID, true).Encode())
						continue
					}
					job, err := jobs.Build(jobs.Named(&ms[i]), &opts)
					if err != nil {
						b.Fatal(err)
					}
					if err := nc.Register(ctx, job, 0); err != nil {
						b.Fatal(err)
					}
				}
				tr.wait(b, callableTimeout)
				b.StopTimer()
				if !run.warm || round > 0 {
					all = append(all, marks...)
				}
				logSlowest(b, cl, marks)
				if path == "chain-scheduler" {
					checkSameJobs(b, nc, &opts, ms)
					for i := range ms {
						f.SetAccount(b, keys[i], c.Program, auth(run.model, ms[i].ModelID, false).Encode())
					}
					waitJobs(b, nc, time.Minute, "the scheduler stopped the round's jobs", func(js map[string]nomad.JobStub) bool {
						for i := range ms {
							if !js[jobs.JobID(jobs.Named(&ms[i]))].Stop {
								return false
							}
						}
						return true
					})
				}
				clearRound(b, cl, nc, ms)
				b.StartTimer()
			}
			b.StopTimer()
			reportMilestones(b, all)
		})
	}
}

// milestones are the moments one model went through.
type milestones struct {
	id                                              string // jobs.ShortID
	planted, registered, running, passing, callable time.Time
}

// tracker records milestones from the watchers as they happen.
type tracker struct {
	mu    sync.Mutex
	byID  map[string]*milestones
	left  int
	done  chan struct{}
	fails map[string]string // last failed call per model
}

func (tr *tracker) expect(ms []jobs.Model) []*milestones {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.byID, tr.fails, tr.left, tr.done = map[string]*milestones{}, map[string]string{}, len(ms), make(chan struct{})
	out := make([]*milestones, len(ms))
	for i := range ms {
		out[i] = &milestones{id: jobs.ShortID(jobs.Named(&ms[i]))}
		tr.byID[out[i].id] = out[i]
	}
	return out
}

// mark sets the milestone field picks for model id, once.
func (tr *tracker) mark(id string, at time.Time, pick func(*milestones) *time.Time) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	m := tr.byID[id]
	if m == nil {
		return
	}
	if p := pick(m); p.IsZero() {
		*p = at
		if p == &m.callable {
			if tr.left--; tr.left == 0 {
				close(tr.done)
			}
		}
	}
}

// pending returns the ids among ids not yet callable.
func (tr *tracker) pending(ids []string) []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out []string
	for _, id := range ids {
		if m := tr.byID[id]; m != nil && m.callable.IsZero() {
			out = append(out, id)
		}
	}
	return out
}

func (tr *tracker) wait(b *testing.B, d time.Duration) {
	b.Helper()
	tr.mu.Lock()
	done := tr.done
	tr.mu.Unlock()
	select {
	case <-done:
		return
	case <-time.After(d):
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var stuck []string
	for id, m := range tr.byID {
		if m.callable.IsZero() {
			stage := "not registered"
			switch {
			case !m.passing.IsZero():
				stage = "passing in Consul, no successful call (last: " + tr.fails[id] + ")"
			case !m.running.IsZero():
				stage = "running, Consul check not passing"
			case !m.registered.IsZero():
				stage = "registered, no running allocation"
			}
			stuck = append(stuck, names.JobPrefix+id+": "+stage)
		}
	}
	slices.Sort(stuck)
	b.Fatalf("%d of %d models not callable within %s:\n%s", len(stuck), len(tr.byID), d, strings.Join(stuck, "\n"))
}

// watchMilestones follows Nomad's event stream (job registered, allocation
// running), Consul's health API (check passing) and a coordinator client
// (first successful Call) until b ends.
func watchMilestones(b *testing.B, parent context.Context, cl *testcluster.Cluster, coord *coordinator, crunchID, class string) *tracker {
	tr := &tracker{done: make(chan struct{})}
	ctx, cancel := context.WithCancel(parent)
	var wg sync.WaitGroup
	b.Cleanup(func() { cancel(); wg.Wait() })
	short := func(jobID string) string { return strings.TrimPrefix(jobID, names.JobPrefix) }

	events, err := cl.Nomad.Client.EventStream().Stream(ctx,
		map[nomadapi.Topic][]string{nomadapi.TopicJob: {"*"}, nomadapi.TopicAllocation: {"*"}}, 0, nil)
	if err != nil {
		b.Fatalf("nomad event stream: %v", err)
	}
	wg.Go(func() {
		for evs := range events {
			now := time.Now()
			if evs.Err != nil {
				if ctx.Err() == nil {
					b.Errorf("nomad event stream: %v", evs.Err)
				}
				return
			}
			for _, e := range evs.Events {
				switch {
				case e.Topic == nomadapi.TopicJob && e.Type == "JobRegistered":
					tr.mark(short(e.Key), now, func(m *milestones) *time.Time { return &m.registered })
				case e.Topic == nomadapi.TopicAllocation:
					if a, err := e.Allocation(); err == nil && a.ClientStatus == nomadapi.AllocClientStatusRunning {
						tr.mark(short(a.JobID), now, func(m *milestones) *time.Time { return &m.running })
					}
				}
			}
		}
	})

	service := names.Service(callableCrunch)
	passing := &consul.Source{Client: coord.consul, Service: service, Crunch: crunchID}
	wg.Go(func() {
		_ = passing.Watch(ctx, func(ms []discovery.Model) {
			now := time.Now()
			for _, m := range ms {
				tr.mark(m.ID, now, func(m *milestones) *time.Time { return &m.passing })
			}
		})
	})

	// The coordinator: its own Consul watch, Setup as models join, and a
	// probe Call to every ready model that has not answered yet.
	cc, err := client.New(client.Config{Source: &consul.Source{Client: coord.consul, Service: service, Crunch: crunchID}, TLS: coord.issuer,
		SetupOnJoin: &client.SetupOnJoin{ClassName: class, Timeout: 10 * time.Second}, Timeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	wg.Go(func() { _ = cc.Run(ctx) })
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			var ready []string
			for _, m := range cc.Members() {
				if m.Ready {
					ready = append(ready, m.ID)
				}
			}
			ids := tr.pending(ready)
			if len(ids) == 0 {
				continue
			}
			start := time.Now()
			for _, r := range cc.Call(ctx, "echo", client.Request{Args: client.Positional(commonspb.String(probeEcho)), Models: ids}) {
				if got, _ := r.Value.AsString(); r.OK() && got == probeEcho {
					tr.mark(r.Model.ID, start.Add(r.Latency), func(m *milestones) *time.Time { return &m.callable })
					continue
				}
				tr.mu.Lock()
				tr.fails[r.Model.ID] = fmt.Sprintf("%s %s %s", r.Status, r.Code, r.Message)
				tr.mu.Unlock()
			}
		}
	})
	return tr
}

// probeEcho is what the probe Call sends and must get back.
const probeEcho = "callable"

// reportMilestones reports the percentiles over every model of every round.
func reportMilestones(b *testing.B, all []*milestones) {
	stage := func(from, to func(*milestones) time.Time) []time.Duration {
		d := make([]time.Duration, len(all))
		for i, m := range all {
			d[i] = to(m).Sub(from(m))
		}
		slices.Sort(d)
		return d
	}
	planted := func(m *milestones) time.Time { return m.planted }
	registered := func(m *milestones) time.Time { return m.registered }
	running := func(m *milestones) time.Time { return m.running }
	passing := func(m *milestones) time.Time { return m.passing }
	callable := func(m *milestones) time.Time { return m.callable }
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	total := stage(planted, callable)
	b.ReportMetric(ms(percentile(total, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(total, 0.95)), "p95-ms")
	b.ReportMetric(ms(percentile(stage(planted, registered), 0.50)), "job-p50-ms")
	b.ReportMetric(ms(percentile(stage(registered, running), 0.50)), "alloc-p50-ms")
	b.ReportMetric(ms(percentile(stage(running, passing), 0.50)), "consul-p50-ms")
	b.ReportMetric(ms(percentile(stage(passing, callable), 0.50)), "call-p50-ms")
}

// percentile is the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[max(0, int(math.Ceil(p*float64(len(sorted))))-1)]
}

// logSlowest logs where the round's slowest model spent its time: its
// milestones and its allocation's task events, relative to its
// authorization.
func logSlowest(b *testing.B, cl *testcluster.Cluster, round []*milestones) {
	slow := round[0]
	for _, m := range round {
		if m.callable.Sub(m.planted) > slow.callable.Sub(slow.planted) {
			slow = m
		}
	}
	at := func(t time.Time) string { return t.Sub(slow.planted).Round(time.Millisecond).String() }
	lines := []string{fmt.Sprintf("slowest model %s%s: registered +%s, running +%s, passing +%s, callable +%s",
		names.JobPrefix, slow.id, at(slow.registered), at(slow.running), at(slow.passing), at(slow.callable))}
	allocs, _, err := cl.Nomad.Client.Jobs().Allocations(names.JobPrefix+slow.id, true, nil)
	if err != nil {
		lines = append(lines, "its allocations: "+err.Error())
	}
	for _, a := range allocs {
		lines = append(lines, fmt.Sprintf("allocation %.8s created +%s", a.ID, at(time.Unix(0, a.CreateTime))))
		for _, ts := range a.TaskStates {
			for _, e := range ts.Events {
				lines = append(lines, fmt.Sprintf("  +%s %s: %s", at(time.Unix(0, e.Time)), e.Type, strings.Join(strings.Fields(e.DisplayMessage), " ")))
			}
			if ts.Restarts > 0 || ts.Failed {
				full, _, err := cl.Nomad.Client.Allocations().Info(a.ID, nil)
				if err == nil {
					if r, err := cl.Nomad.Client.AllocFS().Cat(full, "alloc/logs/"+jobs.TaskName+".stderr.0", nil); err == nil {
						tail, _ := io.ReadAll(io.LimitReader(r, 4096))
						r.Close()
						lines = append(lines, "  stderr: "+strings.Join(strings.Fields(string(tail)), " "))
					}
				}
			}
		}
	}
	// One line: go test keeps only the first lines of a benchmark's log.
	b.Log(strings.Join(lines, " | "))
}

// checkSameJobs makes sure the baseline registers the jobs the scheduler
// does: the spec hash of each job it registered equals the baseline's.
func checkSameJobs(b *testing.B, nc *nomad.Client, opts *jobs.Options, ms []jobs.Model) {
	b.Helper()
	list, err := nc.ListJobs(context.Background(), names.JobPrefix)
	if err != nil {
		b.Fatal(err)
	}
	spec := map[string]string{}
	for _, j := range list {
		spec[j.ID] = j.Meta[names.MetaSpec]
	}
	for i := range ms {
		if got, want := spec[jobs.JobID(jobs.Named(&ms[i]))], jobs.SpecHash(jobs.Named(&ms[i]), opts); got != want {
			b.Fatalf("the scheduler's job for %s has spec %q, the baseline's model %q: the benchmark's model() no longer matches the solana source's",
				ms[i].ModelID, got, want)
		}
	}
}

// clearRound purges the round's jobs and waits until none of their
// allocations runs and Consul lists none of their instances, so that the
// next round starts on a settled node. (Nomad's consul hook leaves about two
// idle connections to Consul per allocation for 90 s; Consul's default of
// 200 per address refused allocations of back-to-back rounds, which is why
// deploy/dev/consul.hcl and deploy/consul/client.hcl allow 1,000.)
func clearRound(b *testing.B, cl *testcluster.Cluster, nc *nomad.Client, ms []jobs.Model) {
	b.Helper()
	ids := map[string]bool{}
	for i := range ms {
		id := jobs.JobID(jobs.Named(&ms[i]))
		ids[id] = true
		if err := nc.Purge(context.Background(), id); err != nil {
			b.Fatalf("purge %s: %v", id, err)
		}
	}
	t0 := time.Now()
	deadline := t0.Add(3 * time.Minute)
	for {
		live := 0
		allocs, _, err := cl.Nomad.Client.Allocations().List(nil)
		if err == nil {
			for _, a := range allocs {
				if ids[a.JobID] && (a.ClientStatus == nomadapi.AllocClientStatusRunning || a.ClientStatus == nomadapi.AllocClientStatusPending) {
					live++
				}
			}
		}
		inst, _, cerr := cl.Consul.Client.Catalog().Service(names.Service(callableCrunch), "", nil)
		if err == nil && cerr == nil && live == 0 && len(inst) == 0 {
			if waited := time.Since(t0); waited > 5*time.Second {
				b.Logf("waited %s between rounds for allocations to stop", waited.Round(time.Second))
			}
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("round not cleared within 3 minutes: %d allocations live, %d Consul instances (errors %v, %v)",
				live, len(inst), err, cerr)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// coordinator is the crunch's coordinator as onboarded by the security
// team: a Vault AppRole signing its client certificate, and a Consul
// token that reads its crunch's service.
type coordinator struct {
	issuer *vaultpki.Issuer
	consul *consulapi.Client
}

func onboardCoordinator(b testing.TB, ctx context.Context, cl *testcluster.Cluster, crunch string) *coordinator {
	b.Helper()
	iss, err := cl.CoordinatorIssuer(ctx, crunch)
	if err != nil {
		b.Fatal(err)
	}
	cc, err := cl.CoordinatorConsul(ctx, crunch)
	if err != nil {
		b.Fatal(err)
	}
	return &coordinator{issuer: iss, consul: cc}
}

// serveExampleModel serves bin/example-model as a .tar.gz artifact on a
// loopback port and returns its URL and SHA-256.
func serveExampleModel(b testing.TB) (string, [32]byte) {
	b.Helper()
	return serveExampleModelWith(b, nil)
}

// serveExampleModelWith serves bin/example-model and extra files (another
// submission of the same model: another digest).
func serveExampleModelWith(b testing.TB, extra map[string][]byte) (string, [32]byte) {
	b.Helper()
	dir, _ := filepath.Abs("../bin")
	if env := os.Getenv("MODELNODES_BIN"); env != "" {
		dir = env
	}
	exe, err := os.ReadFile(filepath.Join(dir, "example-model"))
	if err != nil {
		b.Skipf("the Go example model is missing (%v): run `make build`", err)
	}
	files := map[string][]byte{"example-model": exe}
	maps.Copy(files, extra)
	return testcluster.ServeArchive(b, "model", files)
}

// servePythonModel serves runner/testdata/pymodel, with a requirements.txt
// holding requirements unless it is empty, as a .tar.gz artifact.
func servePythonModel(b testing.TB, requirements string) (string, [32]byte) {
	b.Helper()
	var extra map[string][]byte
	if requirements != "" {
		extra = map[string][]byte{"requirements.txt": []byte(requirements)}
	}
	return servePythonModelWith(b, extra)
}

// servePythonModelWith serves runner/testdata/pymodel with extra files
// added, or replacing its own (another submission of the same model).
func servePythonModelWith(b testing.TB, extra map[string][]byte) (string, [32]byte) {
	b.Helper()
	files := map[string][]byte{}
	for _, name := range []string{"main.py", "crunch_base.py"} {
		data, err := os.ReadFile(filepath.Join("../runner/testdata/pymodel", name))
		if err != nil {
			b.Fatal(err)
		}
		files[name] = data
	}
	maps.Copy(files, extra)
	return testcluster.ServeArchive(b, "model", files)
}

func hashBytes(b testing.TB, hexHash string, dst *[32]byte) {
	b.Helper()
	raw, err := hex.DecodeString(hexHash)
	if err != nil || len(raw) != len(dst) {
		b.Fatalf("hash %q: %v", hexHash, err)
	}
	copy(dst[:], raw)
}
