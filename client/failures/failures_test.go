package failures_test

import (
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelnodes/modelnodes/client/failures"
)

func TestHookFiresOncePerFailingStreak(t *testing.T) {
	var mu sync.Mutex
	var calls []failures.Stats
	done := make(chan struct{}, 4)
	reg := prometheus.NewRegistry()
	tr := failures.New(failures.Config{Threshold: 3, Registerer: reg, OnFailing: func(model string, s failures.Stats) {
		mu.Lock()
		calls = append(calls, s)
		mu.Unlock()
		done <- struct{}{}
	}})
	rec := func(o failures.Outcome) { tr.Record("m1", "call", "x", o, time.Millisecond, "err") }
	rec(failures.Timeout)
	rec(failures.Failure)
	if tr.Failing("m1") {
		t.Error("failing after 2 failures, threshold 3")
	}
	rec(failures.Timeout) // third: hook
	rec(failures.Timeout) // fourth: no second hook
	<-done
	if !tr.Failing("m1") {
		t.Error("not failing after 4 failures")
	}
	s := tr.Stats("m1")
	if s.ConsecutiveFailures != 4 || s.ConsecutiveTimeouts != 2 || s.Timeouts != 3 || s.Calls != 4 {
		t.Errorf("stats %+v", s)
	}
	if v := failingGauge(t, reg); v != 1 {
		t.Errorf("failing models gauge %v, want 1", v)
	}
	rec(failures.Success) // streak over
	rec(failures.Failure)
	rec(failures.Failure)
	rec(failures.Failure) // new streak: hook again
	<-done
	mu.Lock()
	n := len(calls)
	first := calls[0]
	mu.Unlock()
	if n != 2 {
		t.Errorf("hook called %d times, want 2 (once per streak)", n)
	}
	if first.ConsecutiveFailures != 3 {
		t.Errorf("hook saw %+v, want 3 consecutive failures", first)
	}
	tr.Forget("m1")
	if s := tr.Stats("m1"); s.Calls != 0 {
		t.Errorf("forgotten model still has stats %+v", s)
	}
	if v := failingGauge(t, reg); v != 0 {
		t.Errorf("failing models gauge %v after Forget, want 0", v)
	}
}

// failingGauge reads modelnodes_client_failing_models from reg.
func failingGauge(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "modelnodes_client_failing_models" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("modelnodes_client_failing_models not registered")
	return 0
}

// A model's error text is kept as long as the model is a member: a
// megabyte-long status message must not be, nor the reply it came from.
func TestLastErrorIsBounded(t *testing.T) {
	tr := failures.New(failures.Config{})
	huge := strings.Repeat("é", 1<<19) // 1 MiB of two-byte runes
	tr.Record("m1", "call", "model_error", failures.Failure, time.Millisecond, huge)
	got := tr.Stats("m1").LastError
	if len(got) > failures.MaxErrorLen+len("…") || !strings.HasPrefix(huge, strings.TrimSuffix(got, "…")) || !utf8.ValidString(got) {
		t.Errorf("LastError kept %d bytes (valid UTF-8: %v), want at most %d bytes of the message's start", len(got), utf8.ValidString(got), failures.MaxErrorLen)
	}
}
