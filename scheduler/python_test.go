package scheduler

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/scheduler/inspect"
	"github.com/modelnodes/modelnodes/scheduler/observer"
	"github.com/modelnodes/modelnodes/scheduler/source"
)

// staticSource reports one snapshot and waits.
type staticSource []jobs.Model

func (s staticSource) Name() string { return "static" }
func (s staticSource) Run(ctx context.Context, report func(source.Snapshot)) error {
	report(source.Snapshot{Models: s})
	<-ctx.Done()
	return nil
}

// fakePlacements answers for each job the failed evaluation's metrics.
type fakePlacements map[string]*nomadapi.AllocationMetric

func (f fakePlacements) PlacementFailure(_ context.Context, jobID string) (*nomadapi.AllocationMetric, error) {
	return f[jobID], nil
}

// noAllocations is a Nomad where nothing was placed yet.
type noAllocations struct{}

func (noAllocations) Allocations(context.Context, string) ([]*nomadapi.AllocationListStub, uint64, error) {
	return nil, 1, nil
}

func (noAllocations) Events(ctx context.Context, _ uint64) (<-chan *nomadapi.Events, error) {
	ch := make(chan *nomadapi.Events)
	go func() { <-ctx.Done(); close(ch) }()
	return ch, nil
}

// codeArchive is a .tar.gz holding files, and its digest.
func codeArchive(t *testing.T, files map[string]string) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		_, _ = tw.Write([]byte(body))
	}
	_ = tw.Close()
	_ = zw.Close()
	sum := sha256.Sum256(buf.Bytes())
	return buf.Bytes(), hex.EncodeToString(sum[:])
}

// A submission's Python request reaches its job (meta and spec; the
// constraint itself is jobs.ConstrainPython's, tested against Nomad in the
// e2e suite); one no node meets is registered and reported; a refused one
// is not registered and reported as failed; a submission without a request
// gets the job it always had.
func TestSchedulerConstrainsToThePythonTheCodeAsksFor(t *testing.T) {
	archives := map[string][]byte{}
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		b, ok := archives[r.URL.Path]
		mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(b)
	}))
	defer srv.Close()
	model := func(id string, files map[string]string) jobs.Model {
		b, sum := codeArchive(t, files)
		mu.Lock()
		archives["/"+id+".tar.gz"] = b
		mu.Unlock()
		return jobs.Model{Crunch: "demo", ModelID: id, Hardware: jobs.CPU, Running: true,
			ArtifactURL: srv.URL + "/" + id + ".tar.gz", ArtifactSHA256: sum}
	}
	m313 := model("wants-313", map[string]string{".python-version": "3.13\n", "main.py": ""})
	m399 := model("wants-399", map[string]string{"pyproject.toml": "[project]\nrequires-python = \">=3.99\"\n"})
	pypy := model("wants-pypy", map[string]string{".python-version": "pypy3.10\n"})
	plain := model("plain", map[string]string{"main.py": ""})

	fake := newFakeNomad()
	passes := make(chan Result, 100)
	s := &Scheduler{
		Sources:    []source.Source{staticSource{m313, m399, pypy, plain}},
		Reconciler: &Reconciler{Nomad: fake, Options: testOptions},
		Inspector:  &inspect.Inspector{Options: testOptions, TempDir: t.TempDir()},
		Observer:   &observer.Observer{Nomad: noAllocations{}},
		Placements: fakePlacements{jobs.JobID(jobs.Named(&m399)): {NodesEvaluated: 2, NodesFiltered: 2,
			ConstraintFiltered: map[string]int{"${attr.driver.modelbox.python.versions} regexp (...)": 1}, ClassFiltered: map[string]int{"v1:123": 1}},
			// Nomad's answer for a job it could place: the status says nothing more.
			jobs.JobID(jobs.Named(&m313)): nil},
		Debounce: time.Millisecond,
		Resync:   100 * time.Millisecond,
		OnReconcile: func(r Result, _ error) {
			select {
			case passes <- r:
			default:
			}
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		fake.mu.Lock()
		n := len(fake.jobs)
		fake.mu.Unlock()
		if n == 3 && strings.Contains(fmt.Sprint(s.Models()), "no node has") {
			break // the refused one waits, and Nomad's verdict was read
		}
		if time.Now().After(deadline) {
			t.Fatalf("not settled: jobs %d, models %+v", n, s.Models())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Passes go on, leaving the refused model waiting.
	for r := range passes {
		if r.Waiting == 1 && r.Registered+r.Updated == 0 {
			break
		}
	}
	fake.mu.Lock()
	j313 := fake.jobs[jobs.JobID(jobs.Named(&m313))]
	j399 := fake.jobs[jobs.JobID(jobs.Named(&m399))]
	jplain := fake.jobs[jobs.JobID(jobs.Named(&plain))]
	jpypy := fake.jobs[jobs.JobID(jobs.Named(&pypy))]
	fake.mu.Unlock()
	if jpypy != nil {
		t.Errorf("the refused submission got a job")
	}
	if got := j313.Meta[names.MetaPython]; got != "3.13 (.python-version)" {
		t.Errorf("job meta python = %q", got)
	}
	if j313.Meta[names.MetaSpec] == jobs.SpecHash(jobs.Named(&m313), testOptions) {
		t.Errorf("the spec does not cover the python constraint")
	}
	if _, ok := jplain.Meta[names.MetaPython]; ok || jplain.Meta[names.MetaSpec] != jobs.SpecHash(jobs.Named(&plain), testOptions) {
		t.Errorf("a submission without a request got another job than before: %v", jplain.Meta)
	}
	if j399 == nil {
		t.Fatal("the model no node can run yet has no job: it could not be placed when a node comes")
	}
	byID := map[string]ModelStatus{}
	for _, ms := range s.Models() {
		byID[ms.ModelID] = ms
	}
	for id, want := range map[string]struct{ state, python, reason string }{
		"wants-313": {observer.StatePending, "3.13 (.python-version)", ""},
		"wants-399": {observer.StatePending, ">=3.99 (requires-python in pyproject.toml)",
			"no node has a python matching >=3.99 (requires-python in pyproject.toml) (nodes evaluated: 2)"},
		"wants-pypy": {observer.StateFailed, "", "the submission's python request is refused: .python-version: \"pypy3.10\" asks for pypy; nodes offer CPython only"},
		"plain":      {observer.StatePending, "", ""},
	} {
		got := byID[id]
		if got.State != want.state || got.Python != want.python || got.Reason != want.reason {
			t.Errorf("%s: status %q python %q reason %q\nwant %q python %q reason %q", id, got.State, got.Python, got.Reason, want.state, want.python, want.reason)
		}
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/models", nil))
	if !strings.Contains(rec.Body.String(), `"reason": "no node has a python matching \u003e=3.99`) {
		t.Errorf("/v1/models does not say why:\n%s", rec.Body.String())
	}
}

func TestPythonBlocked(t *testing.T) {
	const py = "${attr.driver.modelbox.python.versions} regexp (x)"
	for _, tc := range []struct {
		m    *nomadapi.AllocationMetric
		want string
	}{
		{nil, ""},
		{&nomadapi.AllocationMetric{NodesEvaluated: 3, NodesFiltered: 3, ConstraintFiltered: map[string]int{py: 1}, ClassFiltered: map[string]int{"v1:1": 2}},
			"no node has a python matching 3.13 (.python-version) (nodes evaluated: 3)"},
		{&nomadapi.AllocationMetric{NodesEvaluated: 3, NodesFiltered: 3, ConstraintFiltered: map[string]int{py: 1, "${node.class} = gpu": 2}},
			"not placed: nodes without a python matching 3.13 (.python-version): 1 of 3 evaluated"},
		{&nomadapi.AllocationMetric{NodesEvaluated: 2, NodesFiltered: 1, ConstraintFiltered: map[string]int{py: 1}, NodesExhausted: 1},
			"not placed: nodes without a python matching 3.13 (.python-version): 1 of 2 evaluated"},
		{&nomadapi.AllocationMetric{NodesEvaluated: 2, NodesExhausted: 2}, ""}, // not the python's doing
	} {
		if got := pythonBlocked(tc.m, "3.13 (.python-version)"); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.m, got, tc.want)
		}
	}
}
