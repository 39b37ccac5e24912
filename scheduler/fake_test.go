package scheduler

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
)

// fakeNomad keeps jobs in memory with Nomad's check-and-set rules.
type fakeNomad struct {
	mu    sync.Mutex
	index uint64
	jobs  map[string]*nomad.JobStub
	calls map[string]int
	fail  error // every call fails with it when set
	// written is the last job registered under each id.
	written map[string]*nomadapi.Job
}

func newFakeNomad() *fakeNomad {
	return &fakeNomad{jobs: map[string]*nomad.JobStub{}, calls: map[string]int{}, written: map[string]*nomadapi.Job{}}
}

func (f *fakeNomad) ListJobs(_ context.Context, prefix string) ([]nomad.JobStub, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// "list" counts the listings of every job (a full pass's), "list-some"
	// the others (a pass over some models).
	if prefix == names.JobPrefix {
		f.calls["list"]++
	} else {
		f.calls["list-some"]++
	}
	if f.fail != nil {
		return nil, f.fail
	}
	var out []nomad.JobStub
	for _, j := range f.jobs {
		if strings.HasPrefix(j.ID, prefix) {
			out = append(out, *j)
		}
	}
	return out, nil
}

func (f *fakeNomad) Register(_ context.Context, job *nomadapi.Job, modifyIndex uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["register"]++
	if f.fail != nil {
		return f.fail
	}
	cur := f.jobs[*job.ID]
	if (cur == nil && modifyIndex != 0) || (cur != nil && cur.JobModifyIndex != modifyIndex) {
		return fmt.Errorf("register %s: %w", *job.ID, nomad.ErrConflict)
	}
	f.index++
	meta := map[string]string{}
	for k, v := range job.Meta {
		meta[k] = v
	}
	st := &nomad.JobStub{ID: *job.ID, Status: "running", JobModifyIndex: f.index, SubmitTime: time.Now(), Meta: meta}
	if job.Stop != nil && *job.Stop {
		st.Stop, st.Status = true, "dead"
	}
	f.jobs[*job.ID] = st
	f.written[*job.ID] = job
	return nil
}

func (f *fakeNomad) Stop(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["stop"]++
	if j := f.jobs[id]; j != nil {
		f.index++
		j.Stop, j.Status, j.JobModifyIndex, j.SubmitTime = true, "dead", f.index, time.Now()
	}
	return f.fail
}

func (f *fakeNomad) Purge(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["purge"]++
	delete(f.jobs, id)
	return f.fail
}

func (f *fakeNomad) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

func testModel(crunch, id string, running bool) jobs.Model {
	return jobs.Model{Crunch: crunch, ModelID: id, ModelDir: "/srv/models/" + id, Hardware: jobs.CPU, Running: running}
}

func desiredOf(opts *jobs.Options, ms ...jobs.Model) map[string]*Desired {
	out := map[string]*Desired{}
	for _, m := range ms {
		m = *jobs.Named(&m)
		out[jobs.JobID(&m)] = &Desired{Model: m, JobID: jobs.JobID(&m), Spec: jobs.SpecHash(&m, opts), Source: "test"}
	}
	return out
}

// testOptions are the production job options (secure runners) with the
// development allowances the fixtures need: artifacts from models.example
// and, over plain http, from loopback servers; host model dirs. The
// revocation list's URL is a placeholder: TestScheduledModelTurnsHealthy,
// the one test whose runner starts, sets the test Vault's.
var testOptions = &jobs.Options{ArtifactHosts: []string{"models.example", "127.0.0.1"}, AllowHTTPArtifacts: true,
	AllowHostModelDirs: true, CRLURL: "https://vault.example:8200/v1/pki_int/issuers"}
