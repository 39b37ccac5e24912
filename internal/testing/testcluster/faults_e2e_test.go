//go:build e2e

package testcluster

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/client/credentials"
	"github.com/modelnodes/modelnodes/driver/launcher"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/runner/authz"
)

// goFleet is a crunch of Go models (bin/example-model) running as the
// production job builder makes them (artifact with its digest, runner keys
// in Vault, Vault's revocation lists, Consul service with a gRPC check) on
// a cluster, and one coordinator client (Consul discovery with the
// coordinator's own token, Vault mTLS, Setup on join) fanning "echo" out to
// them every 200 ms, recording what it saw.
type goFleet struct {
	recorder
	c      *Cluster
	crunch string
	jobIDs map[string]string // model id -> job id

	url, digest, certHash string               // the submission and the coordinator's key hash
	tls                   credentials.Material // the coordinator's (key hashing to certHash)
	opts                  []func(*jobs.Options)
	edit                  func(*nomadapi.Job) // if set, applied to each job before it is registered
}

// register registers the next model's job (go-<n>) and adds it to the
// fan-out; it returns the model id.
func (f *goFleet) register() (string, error) {
	job, id, err := f.job(len(f.modelIDs()))
	if err != nil {
		return "", err
	}
	if f.edit != nil {
		f.edit(job)
	}
	if _, _, err := f.c.Nomad.Client.Jobs().Register(job, nil); err != nil {
		return "", err
	}
	f.jobIDs[id] = *job.ID
	f.addModel(id)
	return id, nil
}

// job builds the job of the fleet's model go-<n> with the fleet's options
// as they are now, and returns it with the model's id.
func (f *goFleet) job(n int) (*nomadapi.Job, string, error) {
	m := jobs.Model{Crunch: f.crunch, ModelID: fmt.Sprintf("go-%d", n), ArtifactURL: f.url, ArtifactSHA256: f.digest,
		Runtime: "executable", Entry: "example-model", Hardware: jobs.CPU, CPU: 100, MemoryMB: 128,
		Running: true, CertHash: f.certHash}
	// As the demo's scheduler builds them (make demo): runner keys in
	// Vault, every issuer's revocation list, artifacts over http on
	// loopback.
	o := &jobs.Options{CertTTL: "1h", RunnerVaultAddr: f.c.Vault.Addr,
		CRLURL: f.c.Vault.Addr + "/v1/pki_int/issuers", ArtifactHosts: []string{"127.0.0.1"}, AllowHTTPArtifacts: true}
	for _, opt := range f.opts {
		opt(o)
	}
	job, err := jobs.Build(&m, o)
	return job, jobs.ShortID(&m), err
}

// artifactServer serves bin/example-model packed as a submission (.tar.gz)
// on loopback and returns its URL and SHA-256.
func artifactServer(t testing.TB, root string) (url, digest string) {
	t.Helper()
	bin, err := os.ReadFile(filepath.Join(root, "bin", "example-model"))
	if err != nil {
		t.Skipf("bin/example-model: %v (make build)", err)
	}
	url, sum := ServeArchive(t, "example-model", map[string][]byte{"example-model": bin})
	return url, hex.EncodeToString(sum[:])
}

// newGoFleet registers n models on c and starts the coordinator's fan-out;
// it returns once a fan-out is OK from all of them.
func newGoFleet(t testing.TB, c *Cluster, crunch string, n int, opts ...func(*jobs.Options)) *goFleet {
	t.Helper()
	for _, b := range []string{"nomad-driver-modelbox", "model-runner", "example-model"} {
		if !isExecutable(filepath.Join(c.root, "bin", b)) {
			t.Skipf("bin/%s is missing: run `make build` first (make test does)", b)
		}
	}
	url, digest := artifactServer(t, c.root)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	iss, err := c.CoordinatorIssuer(ctx, crunch)
	if err != nil {
		t.Fatal(err)
	}
	discoveryClient, err := c.CoordinatorConsul(ctx, crunch)
	if err != nil {
		t.Fatal(err)
	}
	f := &goFleet{c: c, crunch: crunch, jobIDs: map[string]string{},
		url: url, digest: digest, certHash: authz.SPKIHash(iss.Certificate().Leaf), tls: iss, opts: opts}
	nc := c.Nomad.Client
	for range n {
		if _, err := f.register(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { stopJobs(t, nc, f.jobIDs, true) })
	took := f.start(t, ctx, crunch, discoveryClient, iss, hclog.Warn)
	t.Logf("%d Go models answering through Consul discovery and Vault mTLS %.1fs after registration", n, took.Seconds())
	return f
}

// allocState is what a model runs as: its allocation and how often Nomad
// restarted its task.
type allocState struct {
	id       string
	restarts uint64
	running  int // running allocations of the model's job
}

// allocs returns each model's running allocation (the first, when there
// are several: running counts them).
func (f *goFleet) allocs(t testing.TB) map[string]allocState {
	t.Helper()
	out := map[string]allocState{}
	for model, job := range f.jobIDs {
		as, _, err := f.c.Nomad.Client.Jobs().Allocations(job, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		var st allocState
		for _, a := range as {
			if a.ClientStatus != nomadapi.AllocClientStatusRunning || a.DesiredStatus != nomadapi.AllocDesiredStatusRun {
				continue
			}
			st.running++
			if st.id == "" {
				st.id = a.ID
				for _, ts := range a.TaskStates {
					st.restarts += ts.Restarts
				}
			}
		}
		out[model] = st
	}
	return out
}

// passing counts the passing Consul instances of each model (by its meta
// model id), asked with the management token.
func (f *goFleet) passing() (map[string]int, error) {
	entries, _, err := f.c.Consul.Client.Health().Service(names.Service(f.crunch), "", true, nil)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, e := range entries {
		out[e.Service.Meta[names.MetaModelID]]++
	}
	return out, nil
}

// runners returns the model runners running on this host for the fleet's
// allocations, by allocation id (the runner's --model-dir names it), without
// their launchers.
func (f *goFleet) runners(t testing.TB, allocIDs []string) map[string][]int {
	t.Helper()
	out := map[string][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		// The driver's root launcher (its runner-launch subcommand) holds
		// the runner's argv too: it is not a runner.
		if err != nil || !bytes.Contains(cmd, []byte("model-runner\x00serve")) || bytes.Contains(cmd, []byte("\x00"+launcher.CmdLaunch+"\x00")) {
			continue
		}
		var pid int
		fmt.Sscan(e.Name(), &pid)
		for _, id := range allocIDs {
			if bytes.Contains(cmd, []byte(id)) {
				out[id] = append(out[id], pid)
			}
		}
	}
	return out
}

// allocIDsOf lists every allocation (any status) of the fleet's jobs.
func (f *goFleet) allocIDsOf(t testing.TB) []string {
	t.Helper()
	var ids []string
	for _, job := range f.jobIDs {
		as, _, err := f.c.Nomad.Client.Jobs().Allocations(job, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			ids = append(ids, a.ID)
		}
	}
	return ids
}

// consulRestartGap bounds how long after a restarted Consul agent is back a
// model may be missing from discovery: Consul restores the checks of a
// restarted agent as critical ("to avoid placing potentially unhealthy
// services into the active pool") until their first run, which comes
// within one check interval.
const consulRestartGap = jobs.CheckInterval + 2*time.Second

// The dev cluster (make dev, make demo) runs its agents with their state on
// disk. Each agent crashes in turn (SIGKILL to the agent alone) and is
// started again by deploy/dev/up, the one command an operator runs, while a
// coordinator fans calls out to three Go models. No model is stopped or
// restarted, none runs twice (one allocation, one runner, one passing
// Consul instance each), nothing is configured by hand (Vault is unsealed
// by up with the key in the state dir), and the coordinator sees no failed
// call: through the Vault and Nomad restarts every fan-out is OK from every
// model; through Consul's, its discovery keeps the last membership while
// Consul is down, and a model may be missing from it (never failing) for at
// most consulRestartGap once Consul is back.
func TestDevAgentRestartsKeepModelsServing(t *testing.T) {
	d := StartDev(t, DevOptions{})
	f := newGoFleet(t, d.Cluster, "restarts", 3)
	before := f.allocs(t)
	var allocIDs []string
	for model, st := range before {
		if st.running != 1 {
			t.Fatalf("model %s has %d running allocations before the restarts", model, st.running)
		}
		allocIDs = append(allocIDs, st.id)
	}
	for _, agent := range []string{"consul", "vault", "nomad"} {
		t0 := time.Now()
		d.Kill(t, agent)
		// Down long enough for everyone to notice: the coordinator's
		// discovery queries, the runners' revocation-list fetches and
		// Vault renewals, Nomad's templates, heartbeats and Consul sync.
		time.Sleep(3 * time.Second)
		t1 := time.Now()
		d.Up(t)
		back := time.Now()
		// Keep calling with the agent back, past the longest gap allowed.
		time.Sleep(consulRestartGap + 2*time.Second)
		calls := f.since(t0)
		var gap time.Duration
		var bad []sample
		for _, s := range f.failures(t0) {
			// Out of the membership, or back in it and set up again
			// (the client sets up every joining model).
			missing := true
			for _, msg := range s.failed {
				missing = missing && (strings.Contains(msg, "no such model in the membership") ||
					strings.Contains(msg, "Setup on join has not succeeded yet"))
			}
			if agent == "consul" && missing && s.at.Before(back.Add(consulRestartGap)) {
				gap = max(gap, s.at.Sub(back))
				continue
			}
			bad = append(bad, s)
		}
		t.Logf("%s: killed, started again by deploy/dev/up in %.1fs; %d fan-outs through it; models missing from discovery until %.1fs after it was back",
			agent, back.Sub(t1).Seconds(), len(calls), gap.Seconds())
		if len(bad) > 0 {
			t.Errorf("%s restart: %d of %d fan-outs not OK from every model:%s", agent, len(bad), len(calls), describe(bad))
		}
		after := f.allocs(t)
		for _, m := range f.models {
			if after[m] != before[m] {
				t.Errorf("%s restart: model %s runs as %+v, was %+v (stopped, restarted or doubled)", agent, m, after[m], before[m])
			}
		}
		for id, pids := range f.runners(t, f.allocIDsOf(t)) {
			if len(pids) != 1 || !slices.Contains(allocIDs, id) {
				t.Errorf("%s restart: allocation %s has runners %v; want one runner per model, in its first allocation", agent, id, pids)
			}
		}
		if n, err := f.passing(); err != nil {
			t.Error(err)
		} else {
			for _, m := range f.models {
				if n[m] != 1 {
					t.Errorf("%s restart: model %s has %d passing instances in Consul", agent, m, n[m])
				}
			}
		}
	}
}

// shortTemplateRetries and shortVaultRequests shorten the one thing that
// makes a Vault outage slow to test: the spacing of the templates' Vault
// retries. A template's Vault read is one attempt; Nomad's default is 12
// attempts, 250 ms apart doubling to 1 min, and each attempt is a request
// of a Vault client that itself retries twice (1 to 1.5 s apart): about 6
// minutes in all, what the issue measured (tasks killed 5.5 to 6.6 minutes
// into the outage). Here the attempts are 100 ms apart doubling to 400 ms
// and a request is not retried: about 4 s. The number of attempts is not
// set here: it comes from deploy/dev/nomad.hcl, as on a production node
// from deploy/nomad/client.hcl (TestNomadClientTemplateSettingsMatchProduction
// keeps the two the same). consul-template gives up when attempts > 0
// and that many retries failed, whatever their spacing; with attempts = 0
// it never does. So a task killed after 12 quick attempts here is killed
// after 12 slow ones in production, and a task that outlives 7 windows
// here outlives any outage there. TestSoakVaultOutage runs Nomad's own
// windows.
const shortTemplateRetries = `client {
  template {
    vault_retry {
      backoff     = "100ms"
      max_backoff = "400ms"
    }
  }
}
`

// shortVaultRequests: the Vault clients in Nomad (its templates' too) read
// VAULT_MAX_RETRIES from the agent's environment.
var shortVaultRequests = []string{"VAULT_MAX_RETRIES=0"}

// vaultOutage is how long the short Vault outage lasts: 7 of the test
// cluster's retry windows.
const vaultOutage = 30 * time.Second

// Vault goes away (SIGKILL) while two Go models serve a coordinator's
// fan-out, and stays away for 7 template retry windows (see
// shortTemplateRetries; 30 s here stands for 35 minutes in production). Nomad's agent restarts meanwhile, which renders
// every template again at once (otherwise Nomad re-reads a secret without a
// lease, such as the CA bundle, every 5 minutes): with Nomad's default
// retries the templates give up and Nomad kills the tasks. Here no fan-out
// fails, no task is restarted or killed, and once deploy/dev/up has started
// and unsealed Vault again, with no hand step, a new model starts and
// answers (it logs in to Vault, signs its certificate, renders its
// templates).
func TestVaultOutageKeepsModelsServing(t *testing.T) {
	d := StartDev(t, DevOptions{NomadConfig: shortTemplateRetries, Env: shortVaultRequests})
	f := newGoFleet(t, d.Cluster, "outage", 2)
	first := f.modelIDs()
	before := f.allocs(t)
	t0 := time.Now()
	d.Kill(t, "vault")
	d.Restart(t, "nomad")
	t.Logf("vault down, nomad restarted (%.1fs)", time.Since(t0).Seconds())
	time.Sleep(vaultOutage - time.Since(t0))
	d.Up(t, "vault")
	t.Logf("vault back after %.1fs (started and unsealed by deploy/dev/up)", time.Since(t0).Seconds())
	added, err := f.register()
	if err != nil {
		t.Fatal(err)
	}
	f.waitAllOK(t, time.Now(), 2*time.Minute)
	t.Logf("a model registered after the outage (%s) answers %.1fs after Vault came back", added, time.Since(t0).Seconds()-vaultOutage.Seconds())
	calls := f.since(t0)
	if fails := f.failures(t0, first...); len(fails) > 0 {
		t.Errorf("%d of %d fan-outs through the outage not OK from every model:%s", len(fails), len(calls), describe(fails))
	}
	after := f.allocs(t)
	for _, m := range first {
		if after[m] != before[m] {
			t.Errorf("model %s runs as %+v after the outage, was %+v", m, after[m], before[m])
		}
	}
	for m, job := range f.jobIDs {
		as, _, err := f.c.Nomad.Client.Jobs().Allocations(job, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			for _, ts := range a.TaskStates {
				for _, ev := range ts.Events {
					if strings.Contains(ev.DisplayMessage, "Template failed") || ev.Type == nomadapi.TaskKilling {
						t.Errorf("model %s: task event %s %q", m, ev.Type, ev.DisplayMessage)
					}
				}
			}
		}
	}
}

// soakOutage is the soak test's Vault outage: past the first re-read of
// the CA bundle after Vault went away (every 4.25 to 4.75 minutes: 5
// minutes, consul-template's default lease for secrets without one, times
// its renewal threshold of 0.9 ± 0.05) plus Nomad's default retry window
// (12 attempts from 250 ms doubling to 1 minute: 5 min 4 s), with margin.
const soakOutage = 10*time.Minute + 30*time.Second

// The outage of TestVaultOutageKeepsModelsServing with nothing shortened
// and nothing forced: Nomad's default retry window, its own re-read of the
// templates, a Vault outage longer than both. make soak runs it (CI runs
// make soak after make test); it takes about 12 minutes.
func TestSoakVaultOutage(t *testing.T) {
	if os.Getenv("MODELNODES_SOAK") == "" {
		t.Skip("a soak test (a 10.5-minute Vault outage): make soak runs it (MODELNODES_SOAK=1)")
	}
	d := StartDev(t, DevOptions{})
	f := newGoFleet(t, d.Cluster, "soak", 2)
	first := f.modelIDs()
	before := f.allocs(t)
	t0 := time.Now()
	d.Kill(t, "vault")
	for time.Since(t0) < soakOutage {
		time.Sleep(30 * time.Second)
		t.Logf("vault down for %.0fs; %d fan-outs failed so far", time.Since(t0).Seconds(), len(f.failures(t0, first...)))
	}
	d.Up(t, "vault")
	added, err := f.register()
	if err != nil {
		t.Fatal(err)
	}
	f.waitAllOK(t, time.Now(), 2*time.Minute)
	t.Logf("a model registered after the outage (%s) answers", added)
	if fails := f.failures(t0, first...); len(fails) > 0 {
		t.Errorf("%d of %d fan-outs through the outage not OK from every model:%s", len(fails), len(f.since(t0)), describe(fails))
	}
	after := f.allocs(t)
	for _, m := range first {
		if after[m] != before[m] {
			t.Errorf("model %s runs as %+v after the outage, was %+v", m, after[m], before[m])
		}
	}
}

// supersedeBound is how long after its replacement passes its check in
// Consul a replaced runner that lives on may still answer: one Consul
// blocking query's answer (the runner watches the crunch's service), the
// runner's 2 s grace for coordinators to move (runner.supersedeGrace) and
// its graceful stop, with room for a loaded machine.
const supersedeBound = 6 * time.Second

// A model runs on a machine whose Nomad agent dies alone: its runner (in a
// session of its own) goes on serving and the machine's Consul agent goes on
// checking it. Nomad marks the node down and places the model on another
// machine. The old runner must stop answering once the replacement passes
// its check (within supersedeBound), and the coordinator's fan-out must never
// fail but while it moves from the old runner to the new one (the Setup of
// a joining model).
func TestReplacedRunnerStopsAnswering(t *testing.T) {
	c := StartWith(t, All, scaleHeartbeat)
	// The models run on the two added machines only, whose Consul agents
	// the runners reach through node meta (see AddNomadClient).
	a, b := c.AddNomadClient(t), c.AddNomadClient(t)
	stubs, _, err := c.Nomad.Client.Nodes().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range stubs {
		if n.ID != a.NodeID && n.ID != b.NodeID {
			if _, err := c.Nomad.Client.Nodes().ToggleEligibility(n.ID, false, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	f := newGoFleet(t, c, "replaced", 1, func(o *jobs.Options) { o.RunnerConsulAddr = "${meta.consul_http_addr}" })
	model := f.models[0]
	before := f.allocs(t)[model]
	as, _, err := c.Nomad.Client.Allocations().Info(before.id, nil)
	if err != nil {
		t.Fatal(err)
	}
	victim, other := a, b
	if as.NodeID == b.NodeID {
		victim, other = b, a
	}
	f.mu.Lock()
	oldTarget := f.samples[len(f.samples)-1].targets[model]
	f.mu.Unlock()
	t.Logf("model %s runs on %s at %s; killing that machine's Nomad agent alone", model, victim.Name, oldTarget)

	if procs := AllocProcesses(before.id); !slices.Contains(procs, "model-runner") {
		t.Fatalf("no runner found in allocation %.8s's cgroups (%q)", before.id, procs)
	}
	t0 := time.Now()
	victim.KillNomad()
	var down, placed, passing, stopped time.Duration
	for deadline := t0.Add(recoveryBound); stopped == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: node down %v, replacement placed %v, passing %v; the old runner at %s still answers",
				recoveryBound, down, placed, passing, oldTarget)
		}
		if down == 0 {
			if n, _, err := c.Nomad.Client.Nodes().Info(victim.NodeID, nil); err == nil && n.Status == nomadapi.NodeStatusDown {
				down = time.Since(t0)
			}
		}
		if placed == 0 {
			if st := f.allocs(t)[model]; st.id != "" && st.id != before.id {
				placed = time.Since(t0)
			}
		}
		if passing == 0 {
			entries, _, err := c.Consul.Client.Health().Service(names.Service(f.crunch), "", true, nil)
			for _, e := range entries {
				if err == nil && e.Node != nil && e.Node.Node == other.Name {
					passing = time.Since(t0)
				}
			}
		}
		if conn, err := net.DialTimeout("tcp", oldTarget, time.Second); err != nil {
			stopped = time.Since(t0)
		} else {
			conn.Close()
		}
	}
	t.Logf("agent killed -> node down %.1fs -> replacement placed %.1fs -> passing on %s %.1fs -> old runner stopped answering %.1fs",
		down.Seconds(), placed.Seconds(), other.Name, passing.Seconds(), stopped.Seconds())
	if passing == 0 || stopped < passing {
		t.Errorf("the old runner stopped answering (%.1fs) before its replacement passed (%v): it must serve until then", stopped.Seconds(), passing)
	}
	if stopped-passing > supersedeBound {
		t.Errorf("the old runner answered %.1fs after its replacement passed, want at most %s", (stopped - passing).Seconds(), supersedeBound)
	}
	// It answers through its grace (runner.supersedeGrace, 2 s: the
	// coordinators move meanwhile) and lives on after, answering nothing,
	// until its agent is back: a runner that exited would be restarted.
	if stopped-passing < time.Second {
		t.Errorf("the old runner stopped answering %.1fs after its replacement passed: it must serve through its 2 s grace", (stopped - passing).Seconds())
	}
	if procs := AllocProcesses(before.id); !slices.Contains(procs, "model-runner") {
		t.Errorf("the old runner's process is gone from allocation %.8s (%q left): a superseded runner must live on, answering nothing", before.id, procs)
	}
	ok := f.waitAllOK(t, time.Now(), time.Minute)
	if ok.targets[model] == oldTarget {
		t.Errorf("the coordinator still calls the old runner at %s", oldTarget)
	}
	// What the coordinator saw through it: answers from the old runner,
	// then from the new one; in between only the new one's Setup.
	for _, s := range f.failures(t0) {
		for _, msg := range s.failed {
			if !strings.Contains(msg, "Setup on join has not succeeded yet") && !strings.Contains(msg, "no such model in the membership") {
				t.Errorf("fan-out at %s failed: %s", s.at.Format("15:04:05.000"), msg)
			}
		}
	}
	var gap time.Duration
	var first time.Time
	for _, s := range f.failures(t0) {
		if first.IsZero() {
			first = s.at
		}
		gap = s.at.Sub(first)
	}
	t.Logf("the coordinator's fan-out went without the model for %.1fs (from the old runner to the new one)", gap.Seconds())
	if gap > supersedeBound {
		t.Errorf("the coordinator went without the model for %.1fs, want at most %s", gap.Seconds(), supersedeBound)
	}
	// The old runner lives on (Nomad will stop it when its agent is back)
	// but answers nothing, its health NOT_SERVING: its instance leaves the
	// passing ones at its next check.
	waitFor(t, jobs.CheckInterval+5*time.Second, "only the replacement passing in Consul", func() bool {
		n, err := f.passing()
		return err == nil && n[model] == 1
	})
}
