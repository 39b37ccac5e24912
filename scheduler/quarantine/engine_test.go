package quarantine

import (
	"context"
	"errors"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
)

// memHolds is an in-memory Holds (the Consul KV store is tested on the real
// Consul by the scheduler's e2e tests).
type memHolds struct {
	mu   sync.Mutex
	recs map[string]Record
}

func (m *memHolds) Cached() (map[string]Record, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.recs), true
}

func (m *memHolds) Create(_ context.Context, r Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.recs[r.JobID]; ok {
		return ErrExists
	}
	m.recs[r.JobID] = r
	return nil
}

type restarts struct {
	mu   sync.Mutex
	jobs []string
	err  error
}

func (r *restarts) RestartAllocations(_ context.Context, jobID string) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	r.jobs = append(r.jobs, jobID)
	return 1, nil
}

type engineTest struct {
	e        *Engine
	holds    *memHolds
	restarts *restarts
	reg      *prometheus.Registry
	now      time.Time
	kicks    int
}

// newEngineTest has crunch "alpha" with models a1 and a2, and crunch
// "beta" with model b1, under the default policies.
func newEngineTest(t *testing.T) *engineTest {
	t.Helper()
	et := &engineTest{holds: &memHolds{recs: map[string]Record{}}, restarts: &restarts{}, reg: prometheus.NewRegistry(),
		now: time.Date(2026, 4, 1, 12, 0, 0, 0, time.UTC)}
	models := map[string]jobs.Model{}
	for _, m := range []jobs.Model{
		{Crunch: "alpha", ModelID: "ModelA1", Name: "a1", SubmissionID: "s1", Running: true},
		{Crunch: "alpha", ModelID: "ModelA2", Name: "a2", SubmissionID: "s1", Running: true},
		{Crunch: "beta", ModelID: "ModelB1", Name: "b1", SubmissionID: "s1", Running: true},
	} {
		models[jobs.JobID(&m)] = m
	}
	e, err := NewEngine(EngineConfig{Store: et.holds, Nomad: et.restarts, Registerer: et.reg,
		Lookup:       func(id string) (jobs.Model, bool) { m, ok := models[id]; return m, ok },
		OnQuarantine: func() { et.kicks++ },
		Now:          func() time.Time { return et.now }})
	if err != nil {
		t.Fatal(err)
	}
	et.e = e
	return et
}

func (et *engineTest) report(crunch, model, code string) string {
	return et.e.Report(context.Background(), Report{Crunch: crunch, Coordinator: "key-of-" + crunch, Peer: "127.0.0.1:5000",
		ModelID: model, Code: code, Reason: "reported by the test"})
}

// BAD_IMPLEMENTATION quarantines at once, with who, what and when; later
// reports of the model change nothing; the other models are not touched.
func TestQuarantineAtOnce(t *testing.T) {
	et := newEngineTest(t)
	if got := et.report("alpha", "a1", "BAD_IMPLEMENTATION"); got != OutcomeQuarantine {
		t.Fatalf("outcome %s, want quarantine", got)
	}
	rec, ok := et.holds.recs[names.Job("a1")]
	m := jobs.Model{Crunch: "alpha", ModelID: "ModelA1", Name: "a1", SubmissionID: "s1"}
	if !ok || rec.Crunch != "alpha" || rec.ModelID != "ModelA1" || rec.Code != "BAD_IMPLEMENTATION" || rec.Coordinator != "key-of-alpha" ||
		rec.Reason != "reported by the test" || !rec.At.Equal(et.now) || rec.Submission != Fingerprint(m) || rec.Reports != 1 {
		t.Fatalf("record %+v", rec)
	}
	if et.kicks != 1 {
		t.Errorf("the scheduler was kicked %d times, want 1", et.kicks)
	}
	for _, code := range []string{"BAD_IMPLEMENTATION", "MULTIPLE_TIMEOUT"} {
		if got := et.report("alpha", "a1", code); got != OutcomeQuarantined {
			t.Errorf("%s of a quarantined model: %s, want already_quarantined", code, got)
		}
	}
	if len(et.holds.recs) != 1 || len(et.restarts.jobs) != 0 {
		t.Errorf("other models were touched: holds %v, restarts %v", et.holds.recs, et.restarts.jobs)
	}
	if n := value(t, et.e.actions.WithLabelValues("alpha", OutcomeQuarantine)); n != 1 {
		t.Errorf("actions{quarantine} = %v", n)
	}
}

// A timeout restarts the model's allocations, at most once per
// restart_interval; the third report within the window quarantines it.
// Reports older than the window are forgotten.
func TestRestartThenQuarantine(t *testing.T) {
	et := newEngineTest(t)
	job := names.Job("a2")
	steps := []struct {
		after time.Duration
		want  string
	}{
		{0, OutcomeRestart},
		{30 * time.Second, OutcomeRestartSkipped}, // within restart_interval (1m)
		{11 * time.Minute, OutcomeRestart},        // the window (10m) forgot both
		{2 * time.Minute, OutcomeRestart},
		{2 * time.Minute, OutcomeQuarantine}, // the third within 10m
	}
	for i, s := range steps {
		et.now = et.now.Add(s.after)
		if got := et.report("alpha", "a2", "CONNECTION_FAILED"); got != s.want {
			t.Fatalf("report %d: %s, want %s", i+1, got, s.want)
		}
	}
	if len(et.restarts.jobs) != 3 || et.restarts.jobs[0] != job {
		t.Errorf("restarts: %v, want 3 of %s", et.restarts.jobs, job)
	}
	rec := et.holds.recs[job]
	if rec.Reports != 3 || rec.Code != "CONNECTION_FAILED" || !strings.Contains(rec.Reason, "3 reports within 10m0s") {
		t.Errorf("record %+v", rec)
	}
}

// Only the reporting crunch's own models are acted on: another crunch's
// model, a model nobody authorized and an id that is no label are refused
// and change nothing. Codes the policy does not name are counted only; a
// failed restart is an error, not a quarantine.
func TestOnlyTheCrunchsModels(t *testing.T) {
	et := newEngineTest(t)
	for _, model := range []string{"b1", "zz", "A1", "a1/../b1", strings.Repeat("a", 64)} {
		if got := et.report("alpha", model, "BAD_IMPLEMENTATION"); got != OutcomeRefused {
			t.Errorf("model %q: %s, want refused", model, got)
		}
	}
	if got := et.report("alpha", "a1", "MULTIPLE_FAILED"); got != OutcomeCount {
		t.Errorf("a code the policy does not name: %s, want count", got)
	}
	et.restarts.err = errors.New("nomad: 403 permission denied")
	if got := et.report("alpha", "a1", "MULTIPLE_TIMEOUT"); got != OutcomeError {
		t.Errorf("a failed restart: %s, want error", got)
	}
	if len(et.holds.recs) != 0 || len(et.restarts.jobs) != 0 {
		t.Errorf("refused reports acted: holds %v, restarts %v", et.holds.recs, et.restarts.jobs)
	}
	if n := value(t, et.e.actions.WithLabelValues("alpha", OutcomeRefused)); n != 5 {
		t.Errorf("actions{refused} = %v, want 5", n)
	}
}

// The fingerprint ends a quarantine when the submission changes, not when
// the model is paused or its crunch's coordinator rotates its key.
func TestFingerprint(t *testing.T) {
	m := jobs.Model{Crunch: "alpha", ModelID: "M", SubmissionID: "s1", ArtifactSHA256: "aa", CertHash: "11", Running: true}
	same := m
	same.Running, same.CertHash, same.CertHashSecondary, same.Coordinator = false, "22", "33", "W"
	if Fingerprint(m) != Fingerprint(same) {
		t.Error("pausing the model or rotating the coordinator's key changed the fingerprint")
	}
	for _, change := range []func(*jobs.Model){
		func(m *jobs.Model) { m.SubmissionID = "s2" },
		func(m *jobs.Model) { m.ArtifactSHA256 = "bb" },
		func(m *jobs.Model) { m.ResourcesSHA256 = "cc" },
	} {
		n := m
		change(&n)
		if Fingerprint(n) == Fingerprint(m) {
			t.Errorf("a new submission kept the fingerprint: %+v", n)
		}
	}
}

func value(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
