package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/runner/frame"
)

// failFileEnv names a file whose existence makes the serve role exit before
// its hello: a worker that cannot come back.
const failFileEnv = "WORKER_TEST_FAIL_FILE"

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// kill9 kills the fake worker of hello h from outside, as the OOM killer
// does, and returns once all its threads are gone (and with them its end of
// the socket).
func kill9(t *testing.T, h *frame.Hello) {
	t.Helper()
	_, p, _ := strings.Cut(h.Runtime, "pid=")
	pid, err := strconv.Atoi(strings.Fields(p)[0])
	if err != nil {
		t.Fatalf("no pid in the hello's runtime %q", h.Runtime)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("worker %d outlived SIGKILL by 5s", pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// gone reports whether pid has exited with all its threads: reaped, or a
// zombie with no thread left. A thread-group leader is a zombie as soon as it
// exits, while its other threads may still hold its files.
func gone(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, after, _ := strings.Cut(string(stat), ") ")
	f := strings.Fields(after) // state is field 3 of stat, num_threads field 20
	return len(f) > 17 && f[0] == "Z" && f[17] == "1"
}

// waitOutput waits for the worker to print line.
func (r *running) waitOutput(t *testing.T, line string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, e := range r.logs.entries() {
			if e["@message"] == "model output" && e["line"] == line {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker never printed %q", line)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A worker killed from outside (the OOM killer, kill -9) while it handles a
// call: that call fails with ErrWorkerDied (it may have had effects), but a
// call made right after the kill waits for the new worker and succeeds on
// it, after the model's setup was replayed. The worker is never reported
// down, so health stays SERVING for the coordinator.
func TestCallDuringRestartWaitsForTheNextWorker(t *testing.T) {
	t.Parallel()
	// The backoff keeps the worker away long enough that the call surely
	// arrives while it restarts.
	const backoff = 300 * time.Millisecond
	r := start(t, "serve", Config{MinBackoff: backoff}, func(s *Supervisor) {
		s.Remember("model", &frame.Request{Kind: frame.KindSetup, Name: "Model"})
	})
	first := r.ready(t, "")
	inflight := make(chan error, 1)
	go func() {
		_, err := call(t, r.s, "block")
		inflight <- err
	}()
	r.waitOutput(t, "blocked")
	kill9(t, first)

	t0 := time.Now()
	res, err := call(t, r.s, "history")
	took := time.Since(t0)
	if err != nil || res.Code != frame.CodeSuccess || res.Message != "setup:Model,call:history" {
		t.Fatalf("a call right after the kill: %+v %v, want SUCCESS on a new worker with only the setup replayed before it", res, err)
	}
	t.Logf("the call made right after the kill was answered in %v", took)
	if err := <-inflight; !errors.Is(err, ErrWorkerDied) {
		t.Errorf("the call in flight at the kill: %v, want ErrWorkerDied", err)
	}
	second := r.s.Hello()
	if got, want := r.statesNow(), []string{first.Runtime, "restarting", second.Runtime}; !slices.Equal(got, want) {
		t.Errorf("states %q, want %q: never down", got, want)
	}
	if got := r.heldNow(); len(got) != 1 || got[0] != nil {
		t.Errorf("held calls %v, want one that went on to the new worker", got)
	}
}

// A worker that cannot come back (every start fails) ends the wait after
// MaxHeldRestarts failures: the held call gets ErrUnavailable, the worker is
// reported down (health NOT_SERVING), and later calls are refused at once.
// Once a worker starts again it is served; one that dies again soon after
// is reported down at once, with no calls held.
func TestCrashLoopEndsTheHold(t *testing.T) {
	t.Parallel()
	fail := filepath.Join(t.TempDir(), "fail")
	r := start(t, "serve", Config{MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		MaxHeldRestarts: 2, Env: []string{failFileEnv + "=" + fail}})
	first := r.ready(t, "")
	if err := os.WriteFile(fail, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	kill9(t, first)
	if _, err := call(t, r.s, "history"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a call while the worker crash-loops: %v, want ErrUnavailable", err)
	}
	if n := len(r.restartsNow()); n < 2 {
		t.Errorf("the hold ended after %d restarts, want 2 failed ones (MaxHeldRestarts) first", n)
	}
	if got, want := r.statesNow(), []string{first.Runtime, "restarting", "down"}; !slices.Equal(got, want) {
		t.Errorf("states %q, want %q", got, want)
	}
	if got := r.heldNow(); len(got) != 1 || !errors.Is(got[0], ErrUnavailable) {
		t.Errorf("held calls %v, want one refused with ErrUnavailable", got)
	}
	t0 := time.Now()
	if _, err := call(t, r.s, "history"); !errors.Is(err, ErrUnavailable) || time.Since(t0) > time.Second {
		t.Errorf("a call after the hold ended: %v after %v, want ErrUnavailable at once", err, time.Since(t0))
	}

	if err := os.Remove(fail); err != nil {
		t.Fatal(err)
	}
	third := r.ready(t, first.Runtime)
	if res, err := call(t, r.s, "history"); err != nil || res.Message != "call:history" {
		t.Errorf("the worker that started again: %+v %v", res, err)
	}
	kill9(t, third)
	deadline := time.Now().Add(20 * time.Second)
	for len(r.statesNow()) < 5 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := r.statesNow(); len(got) < 5 || got[4] != "down" {
		t.Errorf("states %q: the worker that died a second after a crash loop should be down at once", got)
	}
}

// Held calls count against the queue, end at their own deadline, and get
// ErrUnavailable when the supervisor stops.
func TestHeldCallsAreBounded(t *testing.T) {
	t.Parallel()
	fail := filepath.Join(t.TempDir(), "fail")
	r := start(t, "serve", Config{MinBackoff: 200 * time.Millisecond, MaxHeldRestarts: 1000, MaxQueue: 1,
		Env: []string{failFileEnv + "=" + fail}})
	first := r.ready(t, "")
	if err := os.WriteFile(fail, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	kill9(t, first)

	// Concurrency 1 + MaxQueue 1: two calls may wait.
	long := make(chan error, 1)
	go func() { _, err := call(t, r.s, "history"); long <- err }()
	short := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		_, err := r.s.Do(ctx, &frame.Request{Kind: frame.KindCall, Name: "history"})
		short <- err
	}()
	time.Sleep(100 * time.Millisecond)
	if _, err := call(t, r.s, "history"); !errors.Is(err, ErrBusy) {
		t.Errorf("a third call while two wait: %v, want ErrBusy", err)
	}
	if err := <-short; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a held call with a 500ms deadline: %v, want DeadlineExceeded", err)
	}
	select {
	case err := <-long:
		t.Fatalf("a held call returned %v before the supervisor stopped", err)
	default:
	}
	r.stop(t)
	select {
	case err := <-long:
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("a held call when the supervisor stopped: %v, want ErrUnavailable", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a held call still waits 5s after the supervisor stopped")
	}
	if got, want := r.statesNow(), []string{first.Runtime, "restarting", "down"}; !slices.Equal(got, want) {
		t.Errorf("states %q, want %q", got, want)
	}
}
