package runner_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/modelnodes/modelnodes/runner"
)

// CrunchDAO's client reconnects a model (closing its channel and setting it
// up again) when a call failed and the health check then reads anything but
// SERVING; a Setup that fails with UNAVAILABLE costs it a retry 2 s later.
// So a worker killed from outside (the OOM killer, kill -9) must cost the
// coordinator nothing but the call it was running: health stays SERVING,
// and a Setup or Call made right after the kill waits for the new worker
// and succeeds on it, the model's instance rebuilt before it.
func TestWorkerKilledCallsWaitAndHealthStaysServing(t *testing.T) {
	for _, tc := range []struct {
		name   string
		worker func(t testing.TB) []string
	}{
		{"go worker", hostileWorker},
		{"python worker", func(t testing.TB) []string { return pythonWorker(t, "pymodel") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			h := start(t, tc.worker(t), func(c *runner.Config) {
				c.Registerer = reg
				// A restart slow enough that the calls below surely come
				// while it is under way.
				c.Worker.MinBackoff = 300 * time.Millisecond
			}).ready()
			wantCode(t, "setup", h.setup("crunch_base.Tracker", nil), "SUCCESS", "")
			watch := h.watchHealth("", runner.ServiceDynamicSubclass)

			first := h.pid()
			killWorker(t, first)
			second := h.pid() // the instance is there: the Setup was replayed first
			if second == first {
				t.Fatalf("pid() after the kill answered from the killed worker %d", first)
			}
			killWorker(t, second)
			wantCode(t, "Setup right after a kill", h.setup("crunch_base.Tracker", nil), "SUCCESS", "Instance already exists")
			if third := h.pid(); third == second {
				t.Errorf("worker %d was not replaced", second)
			}

			for svc, seen := range watch() {
				for _, st := range seen {
					if st != healthpb.HealthCheckResponse_SERVING {
						t.Errorf("health of %q went %v during the restarts (all: %v)", svc, st, seen)
						break
					}
				}
			}
			if n := restartHeld(t, reg, "resumed"); n != 2 {
				t.Errorf("modelnodes_runner_restart_held_calls_total{result=\"resumed\"} = %v, want 2", n)
			}
		})
	}
}

// restartHeld reads modelnodes_runner_restart_held_calls_total{result}.
func restartHeld(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "modelnodes_runner_restart_held_calls_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// watchHealth watches the health of each service from now on, after its
// first answer; the returned func ends the watches and returns what each saw.
func (h *harness) watchHealth(services ...string) func() map[string][]healthpb.HealthCheckResponse_ServingStatus {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var wg sync.WaitGroup
	seen := map[string][]healthpb.HealthCheckResponse_ServingStatus{}
	for _, svc := range services {
		stream, err := h.health.Watch(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			h.t.Fatal(err)
		}
		res, err := stream.Recv()
		if err != nil {
			h.t.Fatalf("watching the health of %q: %v", svc, err)
		}
		seen[svc] = append(seen[svc], res.GetStatus())
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				res, err := stream.Recv()
				if err != nil {
					return
				}
				mu.Lock()
				seen[svc] = append(seen[svc], res.GetStatus())
				mu.Unlock()
			}
		}()
	}
	return func() map[string][]healthpb.HealthCheckResponse_ServingStatus {
		time.Sleep(100 * time.Millisecond) // let the last updates arrive
		cancel()
		wg.Wait()
		return seen
	}
}

// killWorker kills the worker process pid from outside, as the OOM killer
// does, and returns once all its threads are gone (and with them its end of
// the runner's socket), so that the next call cannot reach it.
func killWorker(t *testing.T, pid int64) {
	t.Helper()
	if err := syscall.Kill(int(pid), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Reaped, or a zombie whose threads have all exited (stat field 20).
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		_, after, _ := strings.Cut(string(stat), ") ")
		if f := strings.Fields(after); len(f) > 17 && f[0] == "Z" && f[17] == "1" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %d outlived SIGKILL by 5s", pid)
		}
		time.Sleep(time.Millisecond)
	}
}
