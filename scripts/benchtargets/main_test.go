package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A run where the runner misses its p50 target (and its baseline is fine),
// the reconcile misses with a baseline that misses too, throughput is met,
// and the driver did not run: the table says each, from the numbers.
func TestTable(t *testing.T) {
	out := filepath.Join(t.TempDir(), "runner.txt")
	if err := os.WriteFile(out, []byte(`goos: linux
pkg: github.com/modelnodes/modelnodes/runner
BenchmarkCall/baseline=grpc-echo/conc=1-2 	 3000	 96656 ns/op	 10346 calls/s	 70.00 p50-µs	 333.0 p99-µs
BenchmarkCall/baseline=grpc-echo/conc=1-2 	 3000	 96656 ns/op	 10346 calls/s	 80.00 p50-µs	 333.0 p99-µs
BenchmarkCall/baseline=grpc-echo/conc=1-2 	 3000	 96656 ns/op	 10346 calls/s	 90.00 p50-µs	 333.0 p99-µs
BenchmarkCall/runner=go-model/conc=1-2 	 3000	 211893 ns/op	 4719 calls/s	 300.0 p50-µs	 383.0 p99-µs
BenchmarkCall/runner=go-model/conc=1-2 	 3000	 211893 ns/op	 4719 calls/s	 310.0 p50-µs	 383.0 p99-µs
BenchmarkCall/runner=go-model/conc=1-2 	 3000	 211893 ns/op	 4719 calls/s	 900.0 p50-µs	 383.0 p99-µs
BenchmarkCall/runner=go-model/conc=64-2 	 3000	 45408 ns/op	 22023 calls/s	 2454 p50-µs	 6084 p99-µs
BenchmarkReconcile10k/models=10000/impl=list-only-2 	 20	 111130670 ns/op	 600 cpu-ms/op	 0 nomad-calls/op
BenchmarkReconcile10k/models=10000/impl=reconcile-2 	 20	 132820088 ns/op	 700 cpu-ms/op	 0 nomad-calls/op
BenchmarkAuthorizationToCallable/models=20/path=direct-nomad-2 	 1	 9000000000 ns/op	 4000 p50-ms	 9000 p95-ms	 2 job-p50-ms	 1500 alloc-p50-ms	 5000 consul-p50-ms	 30 call-p50-ms
BenchmarkAuthorizationToCallable/models=20/path=chain-scheduler-2 	 1	 9000000000 ns/op	 4100 p50-ms	 9100 p95-ms	 40 job-p50-ms	 1500 alloc-p50-ms	 5000 consul-p50-ms	 30 call-p50-ms
BenchmarkE2EColdBuild/uv-2 	 1	 6000000000 ns/op	 6.0 s/build
BenchmarkE2EColdBuild/pip-2 	 1	 22000000000 ns/op	 22.0 s/build
BenchmarkAuthorizationToCallablePython/models=20/env=none-2 	 1	 9000000000 ns/op	 5000 p50-ms
BenchmarkAuthorizationToCallablePython/models=20/env=shared-2 	 1	 9000000000 ns/op	 6000 p50-ms
BenchmarkTaskStart/driver=modelbox/env=shared-2 	 10	 1 ns/op	 100 p50-ms
`), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := read([]string{out})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	write(&b, r)
	rows := map[string]string{}
	for _, l := range strings.Split(b.String(), "\n") {
		if cells := strings.Split(l, " | "); len(cells) > 1 {
			rows[strings.TrimPrefix(cells[0], "| ")] = l
		}
	}
	for name, want := range map[string][]string{
		// median of 300, 310, 900 (not the mean), over the median baseline 80
		"runner: Go echo Call p50, 1 caller":                {"| 310 µs", "80.0 µs (bare grpc-go echo)", "≤ 250 µs", "**no**", "missed: the runner → worker socketpair hop", "230 over the baseline"},
		"runner: Go echo throughput, 64 callers":            {"22,023 calls/s", "≥ 8,000 calls/s", "| yes |"},
		"scheduler: one reconcile of 10,000 (CPU per pass)": {"**no**", "the baseline alone (600 ms) misses the target too"},
		"driver: task start p50 (StartTask → SERVING)":      {"| not measured |", "the runner started by hand: not measured", "its benchmark did not run"},
		// Relative targets: against this run's baseline, or not measured without it.
		"environments: cold build of pandas + scikit-learn":         {"| 6.00 s", "22.0 s (python -m venv", "≤ 0.5 × the baseline", "| yes |"},
		"authorization → callable, Python, environment shared, p50": {"6,000 ms", "≤ 1.1 × the baseline", "**no**", "missed: the environment found by key", "1,000 over the baseline"},
		"driver: task start p50, environment shared (on the node)":  {"100 ms", "≤ 1.1 × the baseline", "| not measured |", "its baseline did not run"},
		"authorization → callable (20 models), p50":                 {"4,100 ms", "4,000 ms (the same jobs", "none set", "first stage (40.0 ms; registering directly: 2.00 ms)", "largest stage is Consul's", "random stagger"},
	} {
		row, ok := rows[name]
		if !ok {
			t.Errorf("no row %q in:\n%s", name, b.String())
			continue
		}
		for _, w := range want {
			if !strings.Contains(row, w) {
				t.Errorf("row %q lacks %q:\n%s", name, w, row)
			}
		}
	}
}
