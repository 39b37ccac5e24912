//go:build e2e

package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
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
	"github.com/modelnodes/modelnodes/scheduler/source"
	solanasrc "github.com/modelnodes/modelnodes/scheduler/source/solana"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// recordedNomad answers GET /v1/jobs with a body in Nomad's format for the
// given jobs (as a dev agent answered /v1/jobs?meta=true, scaled to n jobs)
// and counts every other request: a pass with nothing to change must make
// none.
func recordedNomad(b *testing.B, stubs []*nomadapi.JobListStub) (*httptest.Server, *atomic.Int64) {
	body, err := json.Marshal(stubs)
	if err != nil {
		b.Fatal(err)
	}
	var other atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/v1/jobs" {
			w.Header().Set("X-Nomad-Index", "1000")
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
			return
		}
		other.Add(1)
		http.Error(w, "unexpected call in a no-change pass", http.StatusTeapot)
	}))
	b.Cleanup(srv.Close)
	return srv, &other
}

// One reconcile pass over 10,000 authorized models that all exist
// unchanged in Nomad. Baseline impl=list-only is the one unavoidable call
// (listing the jobs with their meta through nomad/api).
func BenchmarkReconcile10k(b *testing.B) {
	const n = 10000
	opts := testOptions
	w := NewWatcher([]string{"chain"}, opts, nil)
	var models []jobs.Model
	stubs := make([]*nomadapi.JobListStub, 0, n)
	for i := range n {
		m := jobs.Model{Crunch: "mid-one", CrunchID: "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin",
			ModelID: fmt.Sprintf("model-%05d", i), Cruncher: "HN7cABqLq46Es1jh92dQQisAq662SmxELLLsHHe4YWrH",
			ArtifactURL: fmt.Sprintf("https://models.example/%05d.tar.gz", i), ArtifactSHA256: strings.Repeat("ab", 32),
			Hardware: jobs.CPU, Running: true}
		models = append(models, m)
		job, err := jobs.Build(jobs.Named(&m), opts)
		if err != nil {
			b.Fatal(err)
		}
		job.Meta[names.MetaSource] = "chain"
		stubs = append(stubs, &nomadapi.JobListStub{ID: *job.ID, Name: *job.Name, Type: "service", Priority: 50,
			Status: "running", Datacenters: []string{"*"}, CreateIndex: uint64(10 + i), ModifyIndex: uint64(20 + i),
			JobModifyIndex: uint64(20 + i), SubmitTime: time.Now().UnixNano(), Meta: job.Meta,
			JobSummary: &nomadapi.JobSummary{JobID: *job.ID, Namespace: "default",
				Summary: map[string]nomadapi.TaskGroupSummary{"model": {Running: 1}}}})
	}
	w.Report("chain", source.Snapshot{Models: models})
	srv, other := recordedNomad(b, stubs)
	nc, err := nomad.New(nomad.Config{Address: srv.URL})
	if err != nil {
		b.Fatal(err)
	}
	r := &Reconciler{Nomad: nc, Options: opts}
	ctx := context.Background()
	for _, impl := range []string{"list-only", "reconcile"} {
		b.Run("models=10000/impl="+impl, func(b *testing.B) {
			other.Store(0)
			c0 := cpuTime()
			for b.Loop() {
				if impl == "list-only" {
					if _, err := nc.ListJobs(ctx, names.JobPrefix); err != nil {
						b.Fatal(err)
					}
					continue
				}
				desired, complete := w.Desired()
				res, err := r.Reconcile(ctx, desired, nil, complete)
				if err != nil || res.Unchanged != n {
					b.Fatalf("pass: %v %v", res, err)
				}
			}
			b.ReportMetric(float64((cpuTime()-c0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
			b.ReportMetric(float64(other.Load())/float64(b.N), "nomad-calls/op")
			if other.Load() != 0 {
				b.Fatalf("%d per-job Nomad calls in passes with nothing to change", other.Load())
			}
		})
	}
}

// From a confirmed authorization change on chain (litesvm front, seen over
// the websocket) to the job registered in the real Nomad dev agent.
// Baseline path=direct-register: the same job change registered straight
// through nomad/api, until Nomad answers it.
func BenchmarkChainToJob(b *testing.B) {
	cl := testcluster.Shared(b, testcluster.Nomad)
	nc := nomad.Wrap(cl.Nomad.Client)
	b.Cleanup(func() { purgeAll(b, nc) })
	f := solanatest.StartFront(b)
	c := solanatest.NewChain(b, f)
	key := solana.NewWallet().PublicKey()
	f.SetAccount(b, key, c.Program, c.Auth("bench", true, 256).Encode())
	jobID := jobOf(c, "bench")
	startScheduler(b, nc, nil, nil, &solanasrc.Source{RPCURL: f.RPC, WSURL: f.WS, Program: c.Program, Resync: time.Minute})
	waitJobs(b, nc, 30*time.Second, "bench job registered", func(m map[string]nomad.JobStub) bool { _, ok := m[jobID]; return ok })
	f.WaitSubscribed(b, 1)
	time.Sleep(1500 * time.Millisecond) // past the post-subscribe resync

	mem := uint32(256)
	waitMem := func(want int) {
		deadline := time.Now().Add(10 * time.Second)
		var index uint64
		for {
			j, meta, err := cl.Nomad.Client.Jobs().Info(jobID, &nomadapi.QueryOptions{WaitIndex: index, WaitTime: time.Second})
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
	for _, path := range []string{"direct-register", "chain-websocket"} {
		b.Run("path="+path, func(b *testing.B) {
			var lat []time.Duration
			for b.Loop() {
				mem++
				t0 := time.Now()
				if path == "chain-websocket" {
					f.SetAccount(b, key, c.Program, c.Auth("bench", true, mem).Encode())
				} else {
					list, err := nc.ListJobs(context.Background(), jobID)
					if err != nil || len(list) != 1 {
						b.Fatalf("list: %v", err)
					}
					m := jobs.Model{Crunch: "mid-one", CrunchID: c.Crunch.String(), ModelID: "bench", Hardware: jobs.CPU,
						ArtifactURL: "http://127.0.0.1:1/bench.tar.gz", ArtifactSHA256: strings.Repeat("ab", 32), MemoryMB: int(mem), Running: true}
					job, _ := jobs.Build(jobs.Named(&m), testOptions)
					if err := nc.Register(context.Background(), job, list[0].JobModifyIndex); err != nil {
						b.Fatal(err)
					}
				}
				waitMem(int(mem))
				lat = append(lat, time.Since(t0))
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*9/10].Microseconds())/1000, "p90-ms")
		})
	}
}
