//go:build e2e

package scheduler

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	"github.com/modelnodes/modelnodes/scheduler/observer"
	"github.com/modelnodes/modelnodes/scheduler/source/feed"
	solanasrc "github.com/modelnodes/modelnodes/scheduler/source/solana"
	"github.com/modelnodes/modelnodes/scheduler/source/yamlfile"
)

// Fail static on the real stack (issue 19, items 1-3), with three Go
// models serving a coordinator that calls them all every 100 ms through
// Consul and mTLS. One fault at a time, and the coordinator must see no
// failed call and every model answer in every round:
//
//  1. the Solana front restarts empty (a new VM, its slot back to 1):
//     nothing is stopped, the kept authorizations are reported;
//
//  2. every account closed (slots advancing): the closings are confirmed,
//     but stopping 3 of 3 models is held (status, gauge, warning) and ends
//     when the accounts come back;
//
//  3. garbage over a running model's account: the model keeps running on
//     its last good version, the account is reported undecodable;
//
//  4. a second authorization of a running model's id, at a lower address
//     (the one the rule picks): the running job is not replaced, the
//     duplicate is reported naming both accounts;
//
//  5. the scheduler restarted while the front restarted empty: the new
//     scheduler reads the running jobs' accounts (from their meta) on its
//     own, and stops nothing, holds nothing;
//
//  6. a new submission of model C (another artifact): Nomad runs the new
//     version as a canary beside the old one, promotes it once healthy and
//     only then stops the old; the coordinator never misses C, and the new
//     runner serves with the same key (Vault's per-job key);
//
//  7. a new submission of model A that fails (its artifact is not the one
//     the chain names: Nomad's fetch refuses it): its canary fails, Nomad
//     reverts the job, and the coordinator never misses A, which keeps its
//     allocation and key; the scheduler reports the failed rollout, holds
//     nothing, and does not write the failed version again;
//
// then 8. two of the three authorizations closed: held until an operator
// confirms with the admin token, then exactly those two stop, and the
// third never misses a call.
//
// Before the faults, the runners' metrics are scraped as Prometheus does,
// through Consul (checkRunnerMetrics).
func TestFailStaticUnderFanOut(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	requireModelbox(t, cl.Nomad.Client)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	const crunchName = "failstatic"
	c := newExampleCrunch(t, ctx, cl, crunchName)
	f, coord := c.Front, c.coord
	auth := func(id string, memMB uint32) []byte {
		a := c.auth(id)
		a.MemoryMB = memMB
		return a.Encode()
	}
	authWith := func(id string, memMB uint32, artifact string, sum [32]byte) []byte {
		a := c.auth(id)
		a.MemoryMB, a.ArtifactURI, a.ArtifactSHA256 = memMB, artifact, sum
		return a.Encode()
	}
	ids := []string{"fs-a", "fs-b", "fs-c"}
	keys := []solana.PublicKey{solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()}
	plant := func() {
		c.plantCrunch(t)
		for i, k := range keys {
			f.SetAccount(t, k, c.Program, auth(ids[i], callableMemory))
		}
	}
	plant()
	jobIDs := make([]string, len(ids))
	for i, id := range ids {
		m := jobs.Model{Crunch: crunchName, CrunchID: c.Crunch.String(), ModelID: id}
		jobIDs[i] = jobs.JobID(jobs.Named(&m))
	}

	var logs syncbuf.Buffer
	logger := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	// The runners watch Consul for their replacement and keep their key
	// in Vault, as production's do (phase 6).
	opts := rolloutOptions(cl)
	const token = "e2e-admin-token"
	// start starts a scheduler as a fresh process would: its own source,
	// stop guard and status API.
	start := func() (*runningScheduler, *httptest.Server) {
		guard := &StopGuard{MaxShare: 0.5, Hold: time.Hour, Logger: logger}
		rs := startSchedulerWith(t, func(s *Scheduler) {
			s.Reconciler.Options, s.Reconciler.Guard, s.Reconciler.Logger = opts, guard, logger
			s.Logger, s.AdminToken = logger, token
			guard.Metrics = s.Metrics
			// One counted failure holds a model stopped (production's 3:
			// a failing canary is placed again until its deployment fails,
			// 40 min, so it fails more often than that): were phase 7's
			// failed canary counted as a crash, model A would stop.
			s.Observer.Backoff.Failures = 1
		}, nc, nc, nil, &solanasrc.Source{RPCURL: f.RPC, WSURL: f.WS, Program: c.Program, Resync: 2 * time.Second, Logger: logger})
		srv := httptest.NewServer(rs.s.Handler())
		t.Cleanup(srv.Close)
		return rs, srv
	}
	rs, srv := start()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("scheduler log:\n%s", logs.String())
		}
	})

	// The coordinator, and every model answering it.
	cc, loop := c.startFanOut(t, ctx, callableClass)
	short := func(i int) string { return strings.TrimPrefix(jobIDs[i], names.JobPrefix) }

	// The runners' metrics, as Prometheus scrapes them through Consul.
	t.Run("runner metrics through Consul", func(t *testing.T) {
		if !loop.waitAll(len(ids), callableTimeout) {
			t.Fatalf("the models do not all answer: %v", loop.lastFails())
		}
		// jobs.Build asks Vault for 24 h certificates (jobs.Options.CertTTL).
		t0 := time.Now()
		checkRunnerMetrics(t, cl.Consul.Client, c.Crunch.String(), []string{short(0), short(1), short(2)}, 24*time.Hour)
		t.Logf("scraped and evaluated in %s", time.Since(t0).Round(time.Millisecond))
	})

	// phase runs one fault as a subtest: once every model answers, it
	// records what the coordinator sees while body runs (restore puts the
	// chain back, even when body fails), and checks it: no failed call, and
	// every model answering every round (except where allowed says a failed
	// call is allowed).
	phase := func(name string, body func(t *testing.T, before map[string]string), restore func(), allowed func(fail string) bool) {
		t.Run(name, func(t *testing.T) {
			if !loop.waitAll(len(ids), callableTimeout) {
				t.Fatalf("the models do not all answer before the phase: %v", loop.lastFails())
			}
			before := jobIndexes(t, nc)
			loop.enter(name)
			func() {
				if restore != nil {
					defer restore()
				}
				body(t, before)
			}()
			p := loop.enter("between phases")
			t.Logf("the coordinator saw: %d rounds, %d calls ok, %d failed, fewest models answering a round %d of %d",
				p.rounds, p.ok, len(p.fails), p.fewest, len(ids))
			var bad []string
			for _, fl := range p.fails {
				if allowed == nil || !allowed(fl) {
					bad = append(bad, fl)
				}
			}
			if len(bad) > 0 || (allowed == nil && p.fewest < len(ids)) || p.rounds < 10 {
				t.Errorf("the coordinator saw %d failed calls (%.3q), fewest models answering a round %d of %d, in %d rounds",
					len(bad), bad, p.fewest, len(ids), p.rounds)
			}
		})
	}
	// 1. The front restarts empty: its listings are empty and its slots
	// older than those that authorized the models.
	phase("front restarted empty", func(t *testing.T, before map[string]string) {
		slot := f.Slot(t)
		f.Reset(t)
		until := time.Now().Add(8 * time.Second)
		for time.Now().Before(until) && f.Slot(t) < slot {
			time.Sleep(200 * time.Millisecond)
		}
		if st := schedulerStatus(t, srv.URL); len(st.Sources[0].Kept) != len(ids) {
			t.Errorf("the kept authorizations are not reported: %v", st.Sources[0].Kept)
		}
		sameJobs(t, nc, before, "after the front restarted empty")
		plant()
		waitStatus(t, srv.URL, "the chain back", func(st statusBody) bool { return len(st.Sources[0].Kept) == 0 && st.Sources[0].Models == len(ids) })
		sameJobs(t, nc, before, "after the chain came back")
	}, plant, nil)

	// 2. Every account closed, at advancing slots: positive evidence, read
	// twice; but 3 of 3 models is more than the allowed share: held.
	phase("every account closed", func(t *testing.T, before map[string]string) {
		f.CloseAccount(t, c.Crunch)
		for _, k := range keys {
			f.CloseAccount(t, k)
		}
		st := waitStatus(t, srv.URL, "the stops held", func(st statusBody) bool { return len(st.StopHolds) == 1 && len(st.StopHolds[0].Jobs) == len(ids) })
		if h := st.StopHolds[0]; h.Crunch != c.Crunch.String() || h.CrunchName != crunchName || h.Running != len(ids) || h.Until.IsZero() {
			t.Errorf("the hold: %+v", h)
		}
		if !strings.Contains(metricsText(t, srv.URL), "modelnodes_scheduler_held_stops 3") {
			t.Error("held_stops is not 3")
		}
		if !strings.Contains(grepLine(logs.String(), "holding stops"), "[WARN]") {
			t.Error("the hold is not logged as a warning")
		}
		time.Sleep(3 * time.Second)
		sameJobs(t, nc, before, "with every account closed")
		plant()
		waitStatus(t, srv.URL, "the hold ended", func(st statusBody) bool { return len(st.StopHolds) == 0 && st.Sources[0].Models == len(ids) })
		sameJobs(t, nc, before, "after the accounts came back")
	}, plant, nil)

	// 3. Garbage over model A's account (another discriminator: listings
	// no longer return it, its own read does not decode).
	phase("corrupt account", func(t *testing.T, before map[string]string) {
		garbage := make([]byte, 96)
		_, _ = rand.Read(garbage)
		f.SetAccount(t, keys[0], c.Program, garbage)
		time.Sleep(4 * time.Second) // two resyncs, their reads, and passes
		sameJobs(t, nc, before, "with model A's account corrupt")
		waitStatus(t, srv.URL, "the account reported undecodable", func(st statusBody) bool {
			return len(st.Sources[0].Undecodable) == 1 && strings.Contains(st.Sources[0].Undecodable[0], keys[0].String())
		})
		if !strings.Contains(metricsText(t, srv.URL), `modelnodes_scheduler_undecodable_accounts{source="solana"} 1`) {
			t.Error("undecodable_accounts is not 1")
		}
		f.SetAccount(t, keys[0], c.Program, auth(ids[0], callableMemory))
		waitStatus(t, srv.URL, "the account decodes again", func(st statusBody) bool { return len(st.Sources[0].Undecodable) == 0 })
	}, plant, nil)

	// 4. A second authorization of model B at a lower address (the one the
	// rule picks) asking for more memory: the running job stays.
	dup := solana.NewWallet().PublicKey()
	for bytes.Compare(dup[:], keys[1][:]) >= 0 {
		dup = solana.NewWallet().PublicKey()
	}
	phase("duplicate model id", func(t *testing.T, before map[string]string) {
		f.SetAccount(t, dup, c.Program, auth(ids[1], callableMemory+64))
		time.Sleep(5 * time.Second) // passes, resyncs and re-reads: no flapping
		sameJobs(t, nc, before, "with a duplicate of model B")
		waitFor(t, 30*time.Second, "the duplicate reported", func() bool {
			var models []ModelStatus
			getJSON(t, srv.URL+"/v1/models", &models)
			for _, m := range models {
				if m.JobID == jobIDs[1] && strings.Contains(m.Duplicate, dup.String()) && strings.Contains(m.Duplicate, keys[1].String()) {
					return true
				}
			}
			return false
		})
		if line := grepLine(logs.String(), "duplicate model id"); !strings.Contains(line, "[WARN]") || !strings.Contains(line, dup.String()) || !strings.Contains(line, keys[1].String()) {
			t.Errorf("the duplicate is not logged as a warning naming both accounts: %q", line)
		}
		f.CloseAccount(t, dup)
		waitStatus(t, srv.URL, "the duplicate gone", func(st statusBody) bool { return len(st.Sources[0].Duplicates) == 0 })
		sameJobs(t, nc, before, "after the duplicate closed")
	}, func() { f.CloseAccount(t, dup); plant() }, nil)

	// 5. The scheduler restarted while the front restarted empty: the new
	// one has never read the authorizations, and its first listings lack
	// them. Its source reads each running job's account (named in the
	// job's meta) on its own; another chain's "closed" is no evidence, so
	// nothing is stopped, nor even held, and the jobs are reported kept.
	phase("scheduler restarted, chain empty", func(t *testing.T, before map[string]string) {
		rs.stop()
		f.Reset(t)
		rs, srv = start()
		time.Sleep(6 * time.Second) // three resyncs, the reads of the accounts, passes
		st := waitStatus(t, srv.URL, "the running jobs reported kept", func(st statusBody) bool {
			n := 0
			for _, k := range st.Sources[0].Kept {
				if strings.Contains(k, "another chain") {
					n++
				}
			}
			return n == len(ids)
		})
		if len(st.StopHolds) != 0 {
			t.Errorf("the restarted scheduler holds stops: %+v", st.StopHolds)
		}
		sameJobs(t, nc, before, "after the scheduler restarted with the chain empty")
		if grepLine(logs.String(), "reading the authorization of a running job on its own") == "" {
			t.Error("the restarted scheduler does not log that it reads the running jobs' authorizations on their own")
		}
		plant()
		waitStatus(t, srv.URL, "the chain back", func(st statusBody) bool { return len(st.Sources[0].Kept) == 0 && st.Sources[0].Models == len(ids) })
		sameJobs(t, nc, before, "after the chain came back")
	}, plant, nil)

	// 6. A new submission of model C: its artifact changes. The job's new
	// version starts as a canary beside the serving one (jobs: the update
	// block), which serves until the canary is promoted: the coordinator
	// never misses C. The new runner holds the model's key from Vault.
	phase("new submission rolls out", func(t *testing.T, before map[string]string) {
		old := passingInstances(t, coord.consul, crunchName, short(2))
		if len(old) != 1 {
			t.Fatalf("model C has %d passing instances before its new submission, want 1", len(old))
		}
		key := runnerKey(t, old[0])
		artifact2, sum2 := serveExampleModelWith(t, map[string][]byte{"SUBMISSION": []byte("2\n")})
		a := c.auth(ids[2])
		a.ArtifactURI, a.ArtifactSHA256 = artifact2, sum2
		f.SetAccount(t, keys[2], c.Program, a.Encode())
		var now []string
		waitFor(t, 2*time.Minute, "the new version serving alone", func() bool {
			now = passingInstances(t, coord.consul, crunchName, short(2))
			return len(now) == 1 && now[0] != old[0]
		})
		d, _, err := nc.API().Jobs().LatestDeployment(jobIDs[2], nil)
		if err != nil || d == nil || d.Status != "successful" || d.TaskGroups[jobs.GroupName].DesiredCanaries != 1 {
			t.Errorf("model C's rollout: %+v, %v; want a successful deployment with one canary", d, err)
		}
		if runnerKey(t, now[0]) != key {
			t.Error("the new version's runner serves with another key than the old one's")
		}
		delete(before, jobIDs[2])
		sameJobs(t, nc, before, "after model C's new submission")
		time.Sleep(2 * time.Second) // calls on the new version alone
	}, nil, nil)

	// 7. A new submission of model A that fails: the chain names another
	// digest than its artifact's (a broken upload), so Nomad's fetch
	// refuses it and the canary's task fails. A deployment of jobs.Build's
	// (progress-based, reschedules unlimited) fails only at its progress
	// deadline, 40 min, placing the canary again meanwhile (nomad
	// deploymentwatcher: shouldFailEarly); the test fails it through
	// Nomad's API once the canary failed, which takes the same path:
	// auto_revert writes the last stable version back.
	phase("failed canary changes nothing", func(t *testing.T, _ map[string]string) {
		api := nc.API()
		defer func() {
			if !t.Failed() {
				return
			}
			allocs, _, _ := api.Jobs().Allocations(jobIDs[0], true, nil)
			for _, a := range allocs {
				t.Logf("model A's allocation %s: version %d, create index %d, %s/%s, deployment status %+v",
					a.ID, a.JobVersion, a.CreateIndex, a.ClientStatus, a.DesiredStatus, a.DeploymentStatus)
			}
			var models []ModelStatus
			getJSON(t, srv.URL+"/v1/models", &models)
			t.Logf("/v1/models: %+v", models)
		}()
		old := passingInstances(t, coord.consul, crunchName, short(0))
		serving := servingAllocs(t, nc, jobIDs[0])
		if len(old) != 1 || len(serving) != 1 {
			t.Fatalf("model A has %d passing instances and %d running allocations before its new submission, want 1 and 1", len(old), len(serving))
		}
		key := runnerKey(t, old[0])
		// A model that has served a while: its version is stable (its
		// deployment succeeded), the one Nomad reverts to.
		good := stableJob(t, api, jobIDs[0])
		broken, sum3 := serveExampleModelWith(t, map[string][]byte{"SUBMISSION": []byte("3\n")})
		sum3[0] ^= 0xff
		f.SetAccount(t, keys[0], c.Program, authWith(ids[0], callableMemory, broken, sum3))

		var canary *nomadapi.AllocationListStub
		waitFor(t, 2*time.Minute, "model A's canary failing", func() bool {
			allocs, _, err := api.Jobs().Allocations(jobIDs[0], true, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range allocs {
				if a.DeploymentStatus != nil && a.DeploymentStatus.Canary && a.ClientStatus == nomadapi.AllocClientStatusFailed {
					canary = a
				}
			}
			return canary != nil
		})
		failed := failRollout(t, api, jobIDs[0], canary, good)

		// The scheduler: the serving allocation's state, the rollout's
		// failure, no crash-loop hold, no quarantine.
		var ms ModelStatus
		waitFor(t, 30*time.Second, "the failed rollout reported", func() bool {
			ms = modelStatus(t, srv.URL, jobIDs[0])
			return strings.HasPrefix(ms.Rollout, "the new version failed")
		})
		if ms.Allocation != serving[0] || (ms.State != observer.StateRunning && ms.State != observer.StateHealthy) ||
			!ms.BackoffUntil.IsZero() || ms.Quarantine != nil || !strings.Contains(ms.Rollout, nomadapi.TaskArtifactDownloadFailed) {
			t.Errorf("model A: %+v; want its serving allocation %s running, the artifact's failure as the rollout's, no hold", ms, serving[0])
		}
		waitFor(t, 30*time.Second, "the failed rollout counted", func() bool {
			return strings.Contains(metricsText(t, srv.URL), `modelnodes_scheduler_rollouts{state="failed"} 1`)
		})
		// Nor is the failed version written again before --rollout-retry.
		indexes, writes := jobIndexes(t, nc), nomadWrites(t, srv.URL)
		for range len(rs.passes) {
			<-rs.passes
		}
		for range 3 {
			select {
			case r := <-rs.passes:
				if r.Updated != 0 || r.FailedRollouts != 1 {
					t.Errorf("a pass after the revert: %v; want no update, one failed rollout", r)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("no scheduler pass within 15 s")
			}
		}
		sameJobs(t, nc, indexes, "over three passes after the revert")
		if now := nomadWrites(t, srv.URL); now != writes {
			t.Errorf("the scheduler wrote to Nomad after the revert: %v -> %v", writes, now)
		}
		// Counted from the revert, not from when the serving version was
		// submitted (Nomad's revert keeps its SubmitTime).
		line := grepLine(logs.String(), "failed its rollout")
		_, retry, _ := strings.Cut(line, "retry_at=")
		if at, err := time.Parse(time.RFC3339, strings.TrimSpace(retry)); err != nil ||
			at.Before(failed.Add(DefaultRolloutRetry).Truncate(time.Second)) || at.After(time.Now().Add(DefaultRolloutRetry)) {
			t.Errorf("the failed version's retry: %q (%v); want %s after the revert at %s", line, err, DefaultRolloutRetry, failed.UTC().Format(time.RFC3339))
		}

		// Model A, as a coordinator and Nomad see it: the same allocation,
		// at the same address, with the same key; the canary gone.
		if now := servingAllocs(t, nc, jobIDs[0]); !slices.Equal(now, serving) {
			t.Errorf("model A's running allocations: %v -> %v", serving, now)
		}
		if now := passingInstances(t, coord.consul, crunchName, short(0)); !slices.Equal(now, old) {
			t.Errorf("model A's passing instances: %v -> %v", old, now)
		} else if runnerKey(t, now[0]) != key {
			t.Error("model A's runner serves with another key after the failed rollout")
		}
		if ms := modelStatus(t, srv.URL, jobIDs[0]); ms.State == observer.StateBackoff || ms.Allocation != serving[0] {
			t.Errorf("model A after the passes: %+v", ms)
		}
	}, func() { f.SetAccount(t, keys[0], c.Program, auth(ids[0], callableMemory)) }, nil)

	// 8. A and B closed: 2 of 3, held until an operator confirms; then they
	// stop (their calls may fail while they go), and C never misses one.
	phase("two closed, confirmed", func(t *testing.T, before map[string]string) {
		f.CloseAccount(t, keys[0])
		f.CloseAccount(t, keys[1])
		waitStatus(t, srv.URL, "the stops of A and B held", func(st statusBody) bool { return len(st.StopHolds) == 1 && len(st.StopHolds[0].Jobs) == 2 })
		if code := postConfirm(t, srv.URL, "wrong-token"); code != http.StatusUnauthorized {
			t.Fatalf("a confirmation with a wrong token: %d", code)
		}
		time.Sleep(time.Second)
		sameJobs(t, nc, before, "before the confirmation")
		if code := postConfirm(t, srv.URL, token); code != http.StatusOK {
			t.Fatalf("the confirmation: %d", code)
		}
		waitJobs(t, nc, 20*time.Second, "A and B stopped", func(m map[string]nomad.JobStub) bool {
			return m[jobIDs[0]].Stop && m[jobIDs[1]].Stop && !m[jobIDs[2]].Stop
		})
		waitFor(t, 30*time.Second, "the coordinator down to model C", func() bool { return len(cc.Members()) == 1 })
		time.Sleep(2 * time.Second)
	}, nil, func(fail string) bool { return strings.HasPrefix(fail, short(0)) || strings.HasPrefix(fail, short(1)) })
}

// fanOut is the coordinator's loop: every model called every 100 ms,
// what it saw recorded per phase.
type fanOut struct {
	cc     *client.Client
	mu     sync.Mutex
	cur    *phaseRecord
	lastOK int
	last   []string
	done   chan struct{}
	quit   context.CancelFunc
}

type phaseRecord struct {
	rounds, ok int
	fewest     int // fewest models answering a round
	fails      []string
}

// enter starts recording a new phase and returns the one it ends.
func (l *fanOut) enter(string) *phaseRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := l.cur
	l.cur = &phaseRecord{fewest: 1 << 30}
	return prev
}

// round calls every model once, records it in the current phase, and
// returns how many answered.
func (l *fanOut) round(ctx context.Context) {
	res := l.cc.Call(ctx, "echo", client.Request{Args: client.Positional(commonspb.String(probeEcho))})
	ok := 0
	var fails []string
	for _, r := range res {
		if got, _ := r.Value.AsString(); r.OK() && got == probeEcho {
			ok++
			continue
		}
		fails = append(fails, fmt.Sprintf("%s: %s %s %s", r.Model.ID, r.Status, r.Code, r.Message))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if ctx.Err() != nil {
		return
	}
	l.lastOK, l.last = ok, fails
	if p := l.cur; p != nil {
		p.rounds++
		p.ok += ok
		p.fails = append(p.fails, fails...)
		p.fewest = min(p.fewest, ok)
	}
}

// waitAll waits up to d for a round in which n models answered.
func (l *fanOut) waitAll(n int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		ok := l.lastOK
		l.mu.Unlock()
		if ok >= n {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

func (l *fanOut) lastFails() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

func (l *fanOut) run(ctx context.Context) {
	ctx, l.quit = context.WithCancel(ctx)
	l.done = make(chan struct{})
	go func() {
		defer close(l.done)
		for ctx.Err() == nil {
			l.round(ctx)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
}

func (l *fanOut) stop() {
	l.quit()
	<-l.done
}

// statusBody is the part of GET /v1/status the tests read.
type statusBody struct {
	Sources   []SourceStatus `json:"sources"`
	StopHolds []StopHold     `json:"stop_holds"`
}

func schedulerStatus(t testing.TB, base string) statusBody {
	t.Helper()
	var st statusBody
	getJSON(t, base+"/v1/status", &st)
	return st
}

// waitStatus polls GET /v1/status (up to 30 s) until ok holds.
func waitStatus(t *testing.T, base, what string, ok func(statusBody) bool) statusBody {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := schedulerStatus(t, base)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30 s; status: %+v", what, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func metricsText(t testing.TB, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func postConfirm(t testing.TB, base, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/stop-holds/confirm", strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// jobIndexes returns each of our jobs' modify index and whether it is stopped.
func jobIndexes(t testing.TB, nc *nomad.Client) map[string]string {
	t.Helper()
	list, err := nc.ListJobs(context.Background(), names.JobPrefix)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, j := range list {
		out[j.ID] = fmt.Sprintf("index=%d stop=%v", j.JobModifyIndex, j.Stop)
	}
	return out
}

// sameJobs fails the test when a job was written since before.
func sameJobs(t testing.TB, nc *nomad.Client, before map[string]string, when string) {
	t.Helper()
	now := jobIndexes(t, nc)
	for _, id := range slices.Sorted(maps.Keys(before)) {
		if now[id] != before[id] {
			t.Errorf("%s: job %s changed: %s -> %s", when, id, before[id], now[id])
		}
	}
}

// grepLine returns the last line of s that contains sub.
func grepLine(s, sub string) string {
	last := ""
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			last = l
		}
	}
	return last
}

// servingAllocs returns the ids of a job's allocations running and meant
// to run.
func servingAllocs(t testing.TB, nc *nomad.Client, jobID string) []string {
	t.Helper()
	allocs, _, err := nc.API().Jobs().Allocations(jobID, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range allocs {
		if a.ClientStatus == nomadapi.AllocClientStatusRunning && a.DesiredStatus == nomadapi.AllocDesiredStatusRun {
			out = append(out, a.ID)
		}
	}
	slices.Sort(out)
	return out
}

// modelStatus returns a job's entry in the scheduler's GET /v1/models.
func modelStatus(t testing.TB, base, jobID string) ModelStatus {
	t.Helper()
	var models []ModelStatus
	getJSON(t, base+"/v1/models", &models)
	for _, m := range models {
		if m.JobID == jobID {
			return m
		}
	}
	t.Fatalf("job %s is not in /v1/models", jobID)
	return ModelStatus{}
}

// nomadWrites returns the scheduler's modelnodes_scheduler_nomad_writes_total
// lines.
func nomadWrites(t testing.TB, base string) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(metricsText(t, base), "\n") {
		if strings.HasPrefix(l, "modelnodes_scheduler_nomad_writes_total") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "; ")
}

// A model Nomad cannot place (more memory than any node has) is not left
// "pending" without a word: the status API gives Nomad's placement failure,
// and the models gauge counts it pending although it has no allocation.
func TestStatusSaysWhyAModelIsNotPlaced(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	m := fileModel("huge")
	m.MemoryMB = 4 << 20 // 4 TiB
	s := startSchedulerWith(t, func(s *Scheduler) {
		s.Placements = nc
		s.Observer.Metrics = s.Metrics
	}, nc, nc, nil, &yamlfile.Source{Path: modelsFile(t, m)})
	srv := httptest.NewServer(s.s.Handler())
	defer srv.Close()
	id := jobs.JobID(jobs.Named(&m))
	var got ModelStatus
	waitFor(t, 60*time.Second, "a reason for the pending model", func() bool {
		var models []ModelStatus
		getJSON(t, srv.URL+"/v1/models", &models)
		for _, ms := range models {
			if ms.JobID == id {
				got = ms
			}
		}
		return got.Reason != ""
	})
	if got.State != observer.StatePending || !strings.HasPrefix(got.Reason, "not placed by Nomad (nodes evaluated: ") ||
		!(strings.Contains(got.Reason, `dimension "memory" exhausted`) || strings.Contains(got.Reason, "filtered")) {
		t.Fatalf("the unplaced model: %+v", got)
	}
	t.Logf("reported: state=%s reason=%q", got.State, got.Reason)
	waitFor(t, 10*time.Second, "the models gauge counting it pending", func() bool {
		return strings.Contains(metricsText(t, srv.URL), `modelnodes_scheduler_models{state="pending"} 1`)
	})
}

// The feed's fail-static rule on the real Nomad: a feed answering an empty
// list (a restarted indexer) stops nothing; a listing of the crunch that
// lacks a model is evidence, and stops that one.
func TestFeedEmptyListingStopsNothing(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	entry := func(id string) string {
		return `{"crunchName":"feedcrunch","crunchPubKey":"FeedCrunch1111","model":{"id":"` + id + `","submissionId":"s-` + id +
			`","hardwareType":"CPU","artifactSha256":"` + strings.Repeat("ab", 32) + `"},"desiredState":"START"}`
	}
	var mu sync.Mutex
	body := "[" + entry("f1") + "," + entry("f2") + "]"
	feedSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		_, _ = w.Write([]byte(body))
	}))
	defer feedSrv.Close()
	set := func(b string) { mu.Lock(); body = b; mu.Unlock() }
	src := &feed.Source{URL: feedSrv.URL, Crunches: []string{"feedcrunch"}, ArtifactURL: "http://127.0.0.1:1/{model_id}.tar.gz", Interval: 100 * time.Millisecond}
	startScheduler(t, nc, nil, nil, src)
	idOf := func(id string) string {
		m := jobs.Model{Crunch: "feedcrunch", CrunchID: "FeedCrunch1111", ModelID: id}
		return jobs.JobID(jobs.Named(&m))
	}
	waitJobs(t, nc, 20*time.Second, "both feed models registered", func(m map[string]nomad.JobStub) bool {
		return len(m) == 2 && !m[idOf("f1")].Stop && !m[idOf("f2")].Stop
	})
	before := jobIndexes(t, nc)
	set("[]")
	time.Sleep(2 * time.Second) // 20 readings of the empty feed, and passes after each
	sameJobs(t, nc, before, "with the feed answering []")
	set("[" + entry("f1") + "]")
	waitJobs(t, nc, 10*time.Second, "f2 stopped, f1 running", func(m map[string]nomad.JobStub) bool {
		return m[idOf("f2")].Stop && !m[idOf("f1")].Stop
	})
}

// passingInstances returns the addresses of the passing Consul instances of
// a model (its short id) in a crunch's service.
func passingInstances(t testing.TB, cc *consulapi.Client, crunch, model string) []string {
	t.Helper()
	entries, _, err := cc.Health().Service(names.Service(crunch), "", true, nil)
	if err != nil {
		t.Fatalf("consul: %v", err)
	}
	var out []string
	for _, e := range entries {
		if e.Service.Meta[names.MetaModelID] == model {
			out = append(out, net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port)))
		}
	}
	return out
}

// runnerKey returns the SHA-256 of the public key a runner serves with. The
// server's certificate comes before the runner judges the client's (none
// here), so no coordinator certificate is needed to read it.
func runnerKey(t testing.TB, addr string) [32]byte {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // reads the key only
	if err != nil {
		t.Fatalf("TLS to the runner at %s: %v", addr, err)
	}
	defer conn.Close()
	return sha256.Sum256(conn.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
}
