package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/scheduler/source"
)

// A pass that would stop more than the allowed share of a crunch's models
// (and at least two) is held: nothing stopped, the hold reported and
// counted, until it has been wanted for the hold time, or an operator
// confirms; a pass that no longer wants the stops ends the hold. Single
// stops, small shares and crash-loop stops go through.
func TestStopGuardHoldsMassStops(t *testing.T) {
	f := newFakeNomad()
	m := NewMetrics()
	guard := &StopGuard{MaxShare: 0.5, Hold: 10 * time.Minute, Metrics: m}
	r := &Reconciler{Nomad: f, Options: testOptions, Guard: guard}
	now := time.Unix(1_800_000_000, 0)
	r.now = func() time.Time { return now }
	var all []jobs.Model
	for i := range 4 {
		all = append(all, testModel("demo", fmt.Sprintf("m%d", i), true))
	}
	other := testModel("other", "x", true)
	ctx := context.Background()
	if _, err := r.Reconcile(ctx, desiredOf(testOptions, append(all, other)...), nil, true); err != nil {
		t.Fatal(err)
	}
	// One of four: not held. (m3 gone.)
	res, _ := r.Reconcile(ctx, desiredOf(testOptions, all[0], all[1], all[2], other), nil, true)
	if res.Stopped != 1 || res.HeldStops != 0 {
		t.Fatalf("a single stop was held: %v", res)
	}
	// Every model gone (an empty source): demo's 3 of 3 held, other's 1 of 1 too few to hold.
	res, _ = r.Reconcile(ctx, map[string]*Desired{}, nil, true)
	if res.Stopped != 1 || res.HeldStops != 3 || f.count("stop") != 2 {
		t.Fatalf("mass stop not held: %v", res)
	}
	holds := guard.Holds()
	if len(holds) != 1 || holds[0].CrunchName != "demo" || len(holds[0].Jobs) != 3 || holds[0].Running != 3 ||
		!holds[0].Until.Equal(now.Add(10*time.Minute)) {
		t.Fatalf("holds: %+v", holds)
	}
	if g := gauge(t, m, "modelnodes_scheduler_held_stops"); g != 3 {
		t.Fatalf("held_stops gauge %v, want 3", g)
	}
	// The source comes back: the hold ends, nothing was stopped.
	res, _ = r.Reconcile(ctx, desiredOf(testOptions, all[0], all[1], all[2]), nil, true)
	if res.Stopped != 0 || len(guard.Holds()) != 0 || gauge(t, m, "modelnodes_scheduler_held_stops") != 0 {
		t.Fatalf("hold not ended when the stops were no longer wanted: %v %+v", res, guard.Holds())
	}
	// Gone again: held for the whole hold time, then made.
	r.Reconcile(ctx, map[string]*Desired{}, nil, true)
	now = now.Add(9 * time.Minute)
	if res, _ := r.Reconcile(ctx, map[string]*Desired{}, nil, true); res.Stopped != 0 || res.HeldStops != 3 {
		t.Fatalf("stops made before the hold ended: %v", res)
	}
	if next := guard.NextRelease(); !next.Equal(now.Add(time.Minute)) {
		t.Fatalf("next release %v", next)
	}
	now = now.Add(time.Minute)
	if res, _ := r.Reconcile(ctx, map[string]*Desired{}, nil, true); res.Stopped != 3 || res.HeldStops != 0 || len(guard.Holds()) != 0 {
		t.Fatalf("stops not made after the hold: %v", res)
	}
	if c := gauge(t, m, "modelnodes_scheduler_stop_holds_total"); c != 2 {
		t.Fatalf("stop_holds_total %v, want 2", c)
	}
	// Crash-loop stops are the observer's: never held.
	r.Reconcile(ctx, desiredOf(testOptions, all...), nil, true)
	held := map[string]bool{}
	for _, m := range all {
		held[jobs.JobID(jobs.Named(&m))] = true
	}
	if res, _ := r.Reconcile(ctx, desiredOf(testOptions, all...), held, true); res.Stopped != 4 || res.HeldStops != 0 {
		t.Fatalf("crash-loop stops held: %v", res)
	}
}

// An operator confirms held stops through the status API, with the admin
// token: without it, or on an instance that does not lead, nothing is
// confirmed; once confirmed, the next pass makes the stops.
func TestConfirmHeldStops(t *testing.T) {
	f := newFakeNomad()
	guard := &StopGuard{MaxShare: 0.5} // no hold time: only a confirmation
	var all []jobs.Model
	for i := range 3 {
		all = append(all, testModel("demo", fmt.Sprintf("m%d", i), true))
	}
	want := make(chan []jobs.Model, 1)
	want <- all
	src := &chanSource{ch: want}
	s := &Scheduler{Sources: []source.Source{src}, Reconciler: &Reconciler{Nomad: f, Options: testOptions, Guard: guard},
		AdminToken: "s3cret", Resync: 50 * time.Millisecond, Metrics: NewMetrics()}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	confirm := func(token, body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/stop-holds/confirm", strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	if code, _ := confirm("s3cret", ""); code != http.StatusConflict {
		t.Fatalf("a confirmation on an instance that does not lead: %d", code)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 5*time.Second, "registered", func() bool { return f.count("register") == 3 })
	want <- nil
	waitFor(t, 5*time.Second, "held", func() bool { return len(guard.Holds()) == 1 })
	var status struct {
		StopHolds []StopHold `json:"stop_holds"`
	}
	resp, err := http.Get(srv.URL + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&status)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(status.StopHolds) != 1 || len(status.StopHolds[0].Jobs) != 3 || !status.StopHolds[0].Until.IsZero() {
		t.Fatalf("/v1/status stop_holds: %+v", status.StopHolds)
	}
	for _, token := range []string{"", "wrong"} {
		if code, body := confirm(token, ""); code != http.StatusUnauthorized {
			t.Fatalf("confirmation with token %q: %d %s", token, code, body)
		}
	}
	if code, _ := confirm("s3cret", `{"crunch":"nope"}`); code != http.StatusNotFound {
		t.Fatalf("confirmation of an unknown crunch: %d", code)
	}
	time.Sleep(200 * time.Millisecond)
	if f.count("stop") != 0 {
		t.Fatal("stops made before the confirmation")
	}
	code, body := confirm("s3cret", `{"crunch":"demo"}`)
	var out struct{ Confirmed []StopHold }
	if err := json.Unmarshal([]byte(body), &out); code != http.StatusOK || err != nil || len(out.Confirmed) != 1 {
		t.Fatalf("confirmation: %d %s", code, body)
	}
	waitFor(t, 5*time.Second, "stops made", func() bool { return f.count("stop") == 3 })
	if len(guard.Holds()) != 0 {
		t.Fatalf("hold left after its stops: %+v", guard.Holds())
	}
	s.AdminToken = ""
	if code, _ := confirm("s3cret", ""); code != http.StatusForbidden {
		t.Fatalf("write endpoint without an admin token configured: %d", code)
	}
	if _, err := guard.Confirm(""); !errors.Is(err, ErrNoHold) {
		t.Fatalf("confirm without holds: %v", err)
	}
}

// chanSource reports the models it receives.
type chanSource struct{ ch chan []jobs.Model }

func (c *chanSource) Name() string { return "chan" }
func (c *chanSource) Run(ctx context.Context, report func(source.Snapshot)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case ms := <-c.ch:
			report(source.Snapshot{Models: ms})
		}
	}
}

// waitFor polls ok until it holds, for up to d.
func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A model two entries name keeps its running job, whatever the spec of the
// entry chosen: a duplicate never replaces a healthy job. A stopped (or
// absent) job gets the chosen entry's.
func TestPlanNeverReplacesARunningJobForADuplicate(t *testing.T) {
	a := testModel("demo", "a", true)
	d := desiredOf(testOptions, a)[jobs.JobID(jobs.Named(&a))]
	dup := *d
	dup.Spec, dup.Duplicate = "other-spec", "account X names model \"a\" of crunch \"demo\", as account Y does: account Y is used"
	want := Want{Models: map[string]*Desired{d.JobID: &dup}, Complete: true}
	actions, res := Plan(want, Actual{Jobs: []nomad.JobStub{ours(d, "", false, time.Time{})}}, time.Hour)
	if len(actions) != 0 || res.Duplicates != 1 {
		t.Fatalf("a duplicate replaced a running job: %v %v", describe(actions), res)
	}
	actions, _ = Plan(want, Actual{Jobs: []nomad.JobStub{ours(d, "", true, time.Time{})}}, time.Hour)
	if len(actions) != 1 || actions[0].Op != OpUpdate {
		t.Fatalf("a stopped job of a duplicate model: %v", describe(actions))
	}
	actions, _ = Plan(want, Actual{}, time.Hour)
	if len(actions) != 1 || actions[0].Op != OpRegister {
		t.Fatalf("an absent job of a duplicate model: %v", describe(actions))
	}
}

// gauge reads a metric without labels (a gauge or counter) from m's registry.
func gauge(t *testing.T, m *Metrics, name string) float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name || len(f.GetMetric()) != 1 {
			continue
		}
		if g := f.GetMetric()[0].GetGauge(); g != nil {
			return g.GetValue()
		}
		return f.GetMetric()[0].GetCounter().GetValue()
	}
	t.Fatalf("no metric %s", name)
	return 0
}
