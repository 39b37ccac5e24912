// Command benchtargets reads the output of `go test -bench` (the files
// scripts/bench writes under bin/bench) and prints, as a Markdown table,
// each figure the project set a target for, beside its baseline from the
// same run: figure | measured | baseline | target | met? | notes. A missed
// target is said to be missed, with why, computed from the same run.
//
// Every number comes from the files; the targets are those of the project's
// issues (the table below). A figure whose benchmark did not run is listed
// as not measured, never skipped.
//
// It is its own module (scripts/benchtargets/go.mod) so that
// golang.org/x/perf (benchfmt, benchmath: the libraries of benchstat) stays
// out of the project's dependencies.
//
//	go run . ../../bin/bench/*.txt
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"

	"golang.org/x/perf/benchfmt"
	"golang.org/x/perf/benchmath"
)

// target is a bound on a figure's median.
type target struct {
	atMost bool // true: median <= limit; false: median >= limit
	limit  float64
	// relative: limit is a factor of the baseline's median in the same run
	// (0.5: at most half of it), for figures whose absolute value is the
	// machine's (downloads from PyPI, a loaded node).
	relative bool
}

func (t target) met(v float64) bool {
	if t.atMost {
		return v <= t.limit
	}
	return v >= t.limit
}

// figure is one row: a benchmark and unit, its baseline, its target.
type figure struct {
	name string
	// bench is the benchmark name without "Benchmark" and the GOMAXPROCS
	// suffix; unit the unit as the benchmark reports it.
	bench, unit string
	// baseline is the benchmark measured beside it (same unit unless
	// baseUnit is set); baseDesc says what it is.
	baseline, baseUnit, baseDesc string
	// show formats a value of unit.
	show func(float64) string
	// target is nil when no numeric target was set (the note says so).
	target *target
	// cause explains, for a missed target, what the project adds over the
	// baseline; note comments a figure without a target. Both get the
	// run's values (base is NaN when the baseline did not run).
	cause func(m, base float64) string
	note  func(r results) string
}

func µs(v float64) string  { return num(v) + " µs" }
func sec(v float64) string { return num(v) + " s" }
func ms(v float64) string  { return num(v) + " ms" }
func mib(v float64) string { return num(v) + " MiB" }
func kib(v float64) string { return num(v) + " KiB" }
func perS(v float64) string {
	return num(v) + " calls/s"
}

// num prints 3 significant digits at least, with thousands separated.
func num(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000:
		s := fmt.Sprintf("%.0f", v)
		var b strings.Builder
		for i, c := range s {
			if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
				b.WriteByte(',')
			}
			b.WriteRune(c)
		}
		return b.String()
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

var cpus = runtime.NumCPU()

// overhead explains a missed target by what the project adds over its
// baseline, and says so when the baseline alone already misses it (then
// the machine, not the project, sets the figure).
func overhead(what string) func(m, base float64) string {
	return func(m, base float64) string {
		if math.IsNaN(base) {
			return what + "; its baseline did not run, so machine load cannot be told apart"
		}
		return fmt.Sprintf("%s: %s over the baseline in the same run", what, num(m-base))
	}
}

// figures are the project's targets (issues: runner, driver, scheduler,
// client, performance report). Client: fan-out of one Call to 1,000
// in-process runners of a 10 ms model <= 60 ms p50; with 1 % hanging, back
// at the deadline + <= 5 ms; <= 64 KiB per connected model.
var figures = []figure{
	{name: "runner: Go echo Call p50, 1 caller", bench: "Call/runner=go-model/conc=1", unit: "p50-µs",
		baseline: "Call/baseline=grpc-echo/conc=1", baseDesc: "bare grpc-go echo", show: µs,
		target: &target{atMost: true, limit: 250},
		cause:  overhead(fmt.Sprintf("the runner → worker socketpair hop (a third process on %d vCPUs)", cpus))},
	{name: "runner: Go echo Call p99, 1 caller", bench: "Call/runner=go-model/conc=1", unit: "p99-µs",
		baseline: "Call/baseline=grpc-echo/conc=1", baseDesc: "bare grpc-go echo", show: µs,
		target: &target{atMost: true, limit: 1000},
		cause:  overhead("scheduling of three processes (client, runner, worker) on " + fmt.Sprint(cpus) + " vCPUs")},
	{name: "runner: Go echo throughput, 64 callers", bench: "Call/runner=go-model/conc=64", unit: "calls/s",
		baseline: "Call/baseline=grpc-echo/conc=64", baseDesc: "bare grpc-go echo", show: perS,
		target: &target{atMost: false, limit: 8000},
		cause:  overhead("every call crosses the runner → worker seam and the client shares the vCPUs")},
	{name: "runner: Python echo Call p50, 1 caller", bench: "Call/runner=python-model/conc=1", unit: "p50-µs",
		baseline: "Call/baseline=grpc-echo/conc=1", baseDesc: "bare grpc-go echo", show: µs,
		target: &target{atMost: true, limit: 1000},
		cause:  overhead("the Python worker (decode, call, encode in CPython)")},
	{name: "runner: idle RSS (worker excluded)", bench: "IdleRSS/model-runner=go-model", unit: "RSS-MiB",
		baseline: "IdleRSS/baseline=bare-grpc-health-reflection", baseDesc: "grpc-go process with health + reflection", show: mib,
		target: &target{atMost: true, limit: 25},
		cause:  overhead("the runner's own services and buffers")},
	{name: "driver: task start p50 (StartTask → SERVING)", bench: "TaskStart/driver=modelbox", unit: "p50-ms",
		baseline: "TaskStart/baseline=bare-runner", baseDesc: "the runner started by hand", show: ms,
		target: &target{atMost: true, limit: 1500},
		cause:  overhead("the sandbox (namespaces, mounts, cgroups, Landlock) and the plugin's bookkeeping")},
	{name: "driver: task start p50, environment shared (on the node)", bench: "TaskStart/driver=modelbox/env=shared", unit: "p50-ms",
		baseline: "TaskStart/driver=modelbox", baseDesc: "the same model without requirements", show: ms,
		target: &target{atMost: true, limit: 1.10, relative: true},
		cause:  overhead("finding the environment by key, its lock, one more read-only mount and site-packages at Python's start")},
	{name: "driver: task start p50, 1 GiB in the shared environment", bench: "TaskStart/driver=modelbox/env=shared-1GiB", unit: "p50-ms",
		baseline: "TaskStart/driver=modelbox", baseDesc: "the same model without requirements", show: ms,
		target: &target{atMost: true, limit: 1.10, relative: true},
		cause:  overhead("a start that depended on the environment's size (nothing is copied: a bind mount)")},
	{name: "sandbox: Python echo Call p50 with the seccomp filter", bench: "SandboxedCall/model=python/seccomp=on", unit: "p50-µs",
		baseline: "SandboxedCall/model=python/seccomp=off", baseDesc: "the same sandbox without the filter", show: µs,
		target: &target{atMost: true, limit: 1.10, relative: true},
		cause:  overhead("the filter on each of the worker's system calls (about 60–80 ns each here)")},
	{name: "sandbox: Go echo Call p50 with the seccomp filter", bench: "SandboxedCall/model=go/seccomp=on", unit: "p50-µs",
		baseline: "SandboxedCall/model=go/seccomp=off", baseDesc: "the same sandbox without the filter", show: µs,
		target: &target{atMost: true, limit: 1.10, relative: true},
		cause:  overhead("the filter on each of the worker's system calls (about 60–80 ns each here)")},
	{name: "environments: cold build of pandas + scikit-learn", bench: "E2EColdBuild/uv", unit: "s/build",
		baseline: "E2EColdBuild/pip", baseDesc: "python -m venv + pip install -r, as CrunchDAO's image build", show: sec,
		target: &target{atMost: true, limit: 0.5, relative: true},
		cause:  overhead("downloads from PyPI, which both builds make")},
	{name: "driver: plugin RSS with 20 tasks", bench: "PluginRSS/tasks=20", unit: "RSS-MiB",
		baseline: "PluginRSS/tasks=0", baseDesc: "the plugin with no task", show: mib,
		target: &target{atMost: true, limit: 40},
		cause:  overhead("per-task state held by the plugin")},
	{name: "scheduler: one reconcile of 10,000 (CPU per pass)", bench: "Reconcile10k/models=10000/impl=reconcile", unit: "cpu-ms/op",
		baseline: "Reconcile10k/models=10000/impl=list-only", baseDesc: "the one list call alone", show: ms,
		target: &target{atMost: true, limit: 500},
		cause:  overhead("comparing 10,000 desired models with the listing")},
	{name: "scheduler: chain change → job registered, p50", bench: "ChainToJob/path=chain-websocket", unit: "p50-ms",
		baseline: "ChainToJob/path=direct-register", baseDesc: "the same change registered through nomad/api", show: ms,
		target: &target{atMost: true, limit: 500},
		cause:  overhead("the websocket notification, the source's read and a reconcile pass")},
	{name: "authorization → callable (20 models), p50", bench: "AuthorizationToCallable/models=20/path=chain-scheduler", unit: "p50-ms",
		baseline: "AuthorizationToCallable/models=20/path=direct-nomad", baseDesc: "the same jobs registered through nomad/api", show: ms,
		note: callableNote},
	{name: "authorization → callable (20 models), p95", bench: "AuthorizationToCallable/models=20/path=chain-scheduler", unit: "p95-ms",
		baseline: "AuthorizationToCallable/models=20/path=direct-nomad", baseDesc: "the same jobs registered through nomad/api", show: ms,
		note: func(results) string { return "no numeric target set" }},
	{name: "authorization → callable, Python, environment shared, p50", bench: "AuthorizationToCallablePython/models=20/env=shared", unit: "p50-ms",
		baseline: "AuthorizationToCallablePython/models=20/env=none", baseDesc: "the same Python model without requirements", show: ms,
		target: &target{atMost: true, limit: 1.10, relative: true},
		cause:  overhead("the environment found by key at each task's start")},
	{name: "client: fan-out to 1,000 models (10 ms model), p50", bench: "FanOut/models=1000/server=runner/impl=client", unit: "p50-ms",
		baseline: "FanOut/models=1/server=static-windows/impl=raw-grpc", baseDesc: "one direct call", show: ms,
		target: &target{atMost: true, limit: 60},
		cause:  overhead("1,000 concurrent calls (goroutines, TLS records, HTTP/2 frames) on the client's share of the vCPUs")},
	{name: "client: fan-out to 1,000 models vs Python asyncio, p50", bench: "FanOutVsPython/models=1000/impl=go-client", unit: "p50-ms",
		baseline: "FanOutVsPython/models=1000/impl=python-asyncio", baseDesc: "CrunchDAO's design: Python asyncio + grpcio", show: ms,
		note: ratioNote("FanOutVsPython/models=1000/impl=python-asyncio", "FanOutVsPython/models=1000/impl=go-client", "p50-ms", "faster than the Python asyncio client")},
	{name: "client: lateness after a 100 ms deadline, 1 % hanging, p50", bench: "FanOutDeadline/models=1000/hang=10", unit: "late-p50-ms",
		baseline: "FanOutDeadline/models=1000/hang=0", baseUnit: "p50-ms", baseDesc: "the whole fan-out when every model answers", show: ms,
		target: &target{atMost: true, limit: 5},
		cause: func(m, base float64) string {
			return "the answers already in flight at the deadline are still being collected; a loaded machine delays the timer's goroutine"
		}},
	{name: "client: resident memory per connected model", bench: "ClientMemory/models=1000/impl=client", unit: "rss-KiB/model",
		baseline: "ClientMemory/models=1000/impl=grpc-defaults", baseDesc: "grpc-go's default dial options", show: kib,
		target: &target{atMost: true, limit: 64},
		cause:  overhead("per-connection buffers (HTTP/2 windows, TLS state, goroutines)")},
	// Issue 18: beside CrunchDAO's own runner, with their client, at one
	// caller: ours at most theirs, the model in its own sandboxed process.
	{name: "side by side: their client, echo p50, 1 caller (ours sandboxed)", bench: "SideBySide/runner=modelnodes/client=python/conc=1", unit: "p50-µs",
		baseline: "SideBySide/runner=crunchdao/client=python/conc=1", baseDesc: "CrunchDAO's runner, the model in its process", show: µs,
		target: &target{atMost: true, limit: 1, relative: true},
		cause:  overhead("the runner → sandboxed worker hop: one more process to wake on " + fmt.Sprint(cpus) + " vCPUs")},
	{name: "side by side: their client, echo p99, 1 caller (ours sandboxed)", bench: "SideBySide/runner=modelnodes/client=python/conc=1", unit: "p99-µs",
		baseline: "SideBySide/runner=crunchdao/client=python/conc=1", baseDesc: "CrunchDAO's runner, the model in its process", show: µs,
		target: &target{atMost: true, limit: 1, relative: true},
		cause:  overhead("the runner → sandboxed worker hop: one more process to wake on " + fmt.Sprint(cpus) + " vCPUs")},
	{name: "side by side: their client, 64 callers (ours sandboxed)", bench: "SideBySide/runner=modelnodes/client=python/conc=64", unit: "calls/s",
		baseline: "SideBySide/runner=crunchdao/client=python/conc=64", baseDesc: "CrunchDAO's runner", show: perS,
		note: ratioNote("SideBySide/runner=modelnodes/client=python/conc=64", "SideBySide/runner=crunchdao/client=python/conc=64", "calls/s", "CrunchDAO's throughput")},
	{name: "side by side: idle memory per model (ours: runner + sandbox + worker)", bench: "SideBySide/runner=modelnodes/idle-memory", unit: "RSS-MiB",
		baseline: "SideBySide/runner=crunchdao/idle-memory", baseDesc: "CrunchDAO's runner process", show: mib,
		note: ratioNote("SideBySide/runner=crunchdao/idle-memory", "SideBySide/runner=modelnodes/idle-memory", "RSS-MiB", "smaller than CrunchDAO's")},
}

// callableNote says where the time goes from authorization to callable.
func callableNote(r results) string {
	const chain, direct = "AuthorizationToCallable/models=20/path=chain-scheduler", "AuthorizationToCallable/models=20/path=direct-nomad"
	if math.IsNaN(r.median(chain, "p50-ms")) {
		return "no numeric target set"
	}
	stages := []struct{ unit, what string }{
		{"job-p50-ms", "to the job registered"},
		{"alloc-p50-ms", "job → allocation running (placement, artifact, Vault certificate, driver start)"},
		{"consul-p50-ms", "running → Consul check passing"},
		{"call-p50-ms", "passing → first Call OK (discovery, mTLS dial, Setup, Call)"},
	}
	var parts []string
	big, bigV := "", -1.0
	for _, s := range stages {
		v := r.median(chain, s.unit)
		if math.IsNaN(v) {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s", s.what, ms(v)))
		if v > bigV {
			big, bigV = s.unit, v
		}
	}
	out := "no numeric target set. Stage p50s: " + strings.Join(parts, "; ") + "."
	if m, base := r.median(chain, "job-p50-ms"), r.median(direct, "job-p50-ms"); !math.IsNaN(m) && !math.IsNaN(base) {
		out += fmt.Sprintf(" The chain and the scheduler's share is the first stage (%s; registering directly: %s): from the"+
			" registration on, both paths run the same jobs, so their totals differ only by the noise of the later stages.", ms(m), ms(base))
	}
	switch big {
	case "alloc-p50-ms":
		out += fmt.Sprintf(" The largest stage is the allocations' start: %d allocations at once on %d vCPUs, each fetching its artifact"+
			" in Nomad's sandboxed getter, logging in to Vault for an RSA certificate, and starting a runner and a sandboxed worker.", 20, cpus)
	case "consul-p50-ms":
		out += " The largest stage is Consul's."
	}
	if v := r.median(chain, "consul-p50-ms"); v > 1000 {
		out += " Consul runs a new check's first probe after a random stagger of up to its interval (jobs.CheckInterval):" +
			" about half the interval on average, the floor of the Consul stage."
	}
	return out
}

func ratioNote(slow, fast, unit, what string) func(results) string {
	return func(r results) string {
		s, f := r.median(slow, unit), r.median(fast, unit)
		out := "a comparison, no target"
		if !math.IsNaN(s) && !math.IsNaN(f) && f > 0 {
			out += fmt.Sprintf(": %.1f× %s", s/f, what)
		}
		return out
	}
}

// results holds every value read, by benchmark and unit.
type results map[string][]float64

func key(bench, unit string) string { return bench + "\x00" + unit }

func (r results) summary(bench, unit string) (benchmath.Summary, bool) {
	vals := r[key(bench, unit)]
	if len(vals) == 0 {
		return benchmath.Summary{}, false
	}
	s := benchmath.NewSample(vals, &benchmath.DefaultThresholds)
	return benchmath.AssumeNothing.Summary(s, 0.95), true
}

// median is the median of the runs (benchstat's center), NaN if none.
func (r results) median(bench, unit string) float64 {
	s, ok := r.summary(bench, unit)
	if !ok {
		return math.NaN()
	}
	return s.Center
}

// read parses benchmark output files with benchfmt.
func read(paths []string) (results, error) {
	r := results{}
	files := &benchfmt.Files{Paths: paths}
	var errs []error
	for files.Scan() {
		switch rec := files.Result().(type) {
		case *benchfmt.Result:
			name := benchName(rec.Name)
			for _, v := range rec.Values {
				unit, val := v.OrigUnit, v.OrigValue
				if unit == "" {
					unit, val = v.Unit, v.Value
				}
				r[key(name, unit)] = append(r[key(name, unit)], val)
			}
		case *benchfmt.SyntaxError:
			errs = append(errs, rec)
		}
	}
	if err := files.Err(); err != nil {
		errs = append(errs, err)
	}
	return r, errors.Join(errs...)
}

// benchName drops the GOMAXPROCS suffix ("-2").
func benchName(n benchfmt.Name) string {
	base, parts := n.Parts()
	var b bytes.Buffer
	b.Write(base)
	for _, p := range parts {
		if len(p) > 0 && p[0] == '-' {
			continue
		}
		b.Write(p)
	}
	return b.String()
}

// noise marks a verdict that the run's confidence interval [lo, hi]
// (infinite with too few runs) does not settle.
func noise(t *target, lo, hi float64) string {
	if math.IsInf(lo, 0) || math.IsInf(hi, 0) || t.met(lo) == t.met(hi) {
		return ""
	}
	return " (within noise)"
}

// write prints the table.
func write(w io.Writer, r results) {
	fmt.Fprintln(w, "| figure | measured | baseline | target | met? | notes |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, f := range figures {
		measured, met, notes := "not measured", "—", ""
		m, lo, hi := math.NaN(), math.Inf(-1), math.Inf(1)
		if s, ok := r.summary(f.bench, f.unit); ok {
			m = s.Center
			measured = f.show(m)
			if !math.IsInf(s.Lo, 0) && !math.IsInf(s.Hi, 0) {
				measured += " ±" + s.PctRangeString()
			}
			lo, hi = s.Lo, s.Hi
		}
		baseUnit := f.unit
		if f.baseUnit != "" {
			baseUnit = f.baseUnit
		}
		base := r.median(f.baseline, baseUnit)
		baseline := f.baseDesc + ": not measured"
		if !math.IsNaN(base) {
			baseline = fmt.Sprintf("%s (%s)", f.show(base), f.baseDesc)
		}
		goal := "none set"
		if t := f.target; t != nil {
			op := "≤"
			if !t.atMost {
				op = "≥"
			}
			goal = op + " " + f.show(t.limit)
			if t.relative {
				goal = fmt.Sprintf("%s %s × the baseline", op, strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", t.limit), "0"), "."))
				// The bound in the figure's unit, from this run's baseline.
				t = &target{atMost: t.atMost, limit: t.limit * base}
			}
			switch {
			case f.target.relative && math.IsNaN(base) && !math.IsNaN(m):
				met, notes = "not measured", "its baseline did not run, and the target is relative to it"
			case math.IsNaN(m):
				met, notes = "not measured", "its benchmark did not run or failed: see the step's output"
			case t.met(m):
				met = "yes" + noise(t, lo, hi)
			default:
				met = "**no**" + noise(t, lo, hi)
				notes = "missed: " + f.cause(m, base)
				if !math.IsNaN(base) && !t.met(base) {
					notes += fmt.Sprintf("; the baseline alone (%s) misses the target too, so this machine (%d shared vCPUs) sets the figure", f.show(base), cpus)
				}
			}
		}
		if f.note != nil {
			notes = f.note(r)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", f.name, measured, baseline, goal, met, notes)
	}
}

func main() {
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), `Usage: benchtargets FILE...

Reads go test -bench output (as scripts/bench writes it under bin/bench) and
prints a Markdown table comparing each figure with its target and with its
baseline from the same run. Several runs of a benchmark (-count) are
summarised by their median, with benchstat's 95 %% confidence interval.
`)
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	r, err := read(flag.Args())
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchtargets: %v\n", err)
		os.Exit(1)
	}
	write(os.Stdout, r)
}
