//go:build e2e

package crunchdao_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/driver/sandbox"
	"github.com/modelnodes/modelnodes/internal/testing/crunchdao"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/pyhost"
	"github.com/modelnodes/modelnodes/runner/worker"
)

// cmdOurRunner re-executes the test binary as one of our runners in a
// process of its own (so its memory can be read apart from the benchmark's),
// with its worker in the real sandbox: `cmdOurRunner ADDR SPEC -- ARGV`.
const cmdOurRunner = "crunchdao-test-our-runner"

func TestMain(m *testing.M) {
	if sandbox.Main(os.Args[1:]) {
		return
	}
	if len(os.Args) > 4 && os.Args[1] == cmdOurRunner && os.Args[4] == "--" {
		if err := serveOurRunner(os.Args[2], os.Args[3], os.Args[5:]); err != nil {
			fmt.Fprintln(os.Stderr, "our runner:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(m.Run())
}

// serveOurRunner serves a plaintext runner on addr whose worker runs argv in
// the sandbox of specFile, until SIGTERM.
func serveOurRunner(addr, specFile string, argv []string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	runner.LimitProcs(1) // as runner.Run does for a Python model
	srv := runner.New(runner.Config{
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr}),
		Worker: worker.Config{Command: append(sandbox.Command(self, specFile), argv...), MaxQueue: 256},
	})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return srv.Serve(ctx, lis, time.Second)
}

// pymodel is the Python echo model both runners serve: its echo(value)
// returns its argument.
func pymodel(tb testing.TB) string {
	dir, err := filepath.Abs("../../../runner/testdata/pymodel")
	if err != nil {
		tb.Fatal(err)
	}
	return dir
}

// startOurRunner starts one of our runners (plaintext) serving the Python
// echo model with its worker in the real sandbox (namespaces, Landlock,
// seccomp, an unprivileged uid) on /usr/bin/python3, as the modelbox driver
// runs it; it returns when the model is SERVING and stops it when tb ends.
func startOurRunner(tb testing.TB, host, model string) crunchdao.Runner {
	tb.Helper()
	self, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	base := tb.TempDir()
	if err := os.Chmod(base, 0o755); err != nil {
		tb.Fatal(err)
	}
	spec := &sandbox.Spec{
		UID: 64123, GID: 64123, Hostname: "model",
		Root: filepath.Join(base, "root"), TmpDir: filepath.Join(base, "tmp"),
		ReadOnly: []string{"/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", filepath.Dir(host), model},
		Landlock: sandbox.LandlockBestEffort,
		Env:      []string{"LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1"},
	}
	for _, d := range []string{spec.Root, spec.TmpDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			tb.Fatal(err)
		}
	}
	if err := os.Chown(spec.TmpDir, spec.UID, spec.GID); err != nil {
		tb.Fatal(err)
	}
	specFile := filepath.Join(base, "spec.json")
	if err := spec.Write(specFile); err != nil {
		tb.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	var log bytes.Buffer
	cmd := exec.Command(self, cmdOurRunner, addr, specFile, "--", crunchdao.Python, "-B", host, "--model-dir", model)
	cmd.Stdout, cmd.Stderr = &log, &log
	// One more NAME=VALUE for our runner's process alone, to measure a
	// setting beside the default in the same run (GOMAXPROCS=2: the
	// runner before runner.LimitProcs).
	if v := os.Getenv("SIDEBYSIDE_RUNNER_ENV"); v != "" {
		cmd.Env = append(os.Environ(), v)
	}
	exited := crunchdao.Start(tb, cmd)
	if err := crunchdao.WaitServing(addr, exited, time.Minute); err != nil {
		tb.Fatalf("our runner at %s: %v\n%s", addr, err, log.String())
	}
	return crunchdao.Runner{Addr: addr, Pid: cmd.Process.Pid}
}

// callsResult is what the Python client script prints.
type callsResult struct {
	P50    float64 `json:"p50_us"`
	P99    float64 `json:"p99_us"`
	Rate   float64 `json:"calls_s"`
	Failed int     `json:"failed"`
	FanP50 float64 `json:"p50_ms"`
	FanP90 float64 `json:"p90_ms"`
}

// runPython runs testdata/sidebyside.py with CrunchDAO's client.
func runPython(tb testing.TB, envs crunchdao.Envs, args ...string) callsResult {
	tb.Helper()
	script, _ := filepath.Abs("testdata/sidebyside.py")
	var stderr bytes.Buffer
	cmd := exec.Command(envs.ClientPython, append([]string{script}, args...)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("their client (%s): %v\n%s", strings.Join(args[:1], " "), err, stderr.String())
	}
	var res callsResult
	if err := json.Unmarshal(out, &res); err != nil {
		tb.Fatalf("their client's output %q: %v", out, err)
	}
	if res.Failed > 0 {
		tb.Errorf("their client: %d calls failed\n%s", res.Failed, stderr.String())
	}
	return res
}

// echoArg is the benchmark's argument, the same 172-byte JSON object the
// Python script sends.
func echoArg(tb testing.TB) *commonspb.Variant {
	f := make([]float64, 27)
	for i := range f {
		f[i] = float64(i) * 0.5
	}
	// Python's json.dumps spacing, as the script writes it.
	parts := make([]string, len(f))
	for i, v := range f {
		parts[i] = strconv.FormatFloat(v, 'f', 1, 64)
	}
	text := fmt.Sprintf(`{"f": [%s], "id": "%%s"}`, strings.Join(parts, ", "))
	pad := 172 - len(fmt.Sprintf(text, ""))
	v := commonspb.RawJSON([]byte(fmt.Sprintf(text, strings.Repeat("x", pad))))
	if len(v.GetValue()) != 172 {
		tb.Fatalf("argument of %d bytes", len(v.GetValue()))
	}
	return v
}

// goClient connects our coordinator client (plaintext) to the models at
// addrs and sets each up as it joins, as CrunchDAO's ModelCluster does.
func goClient(tb testing.TB, addrs ...string) *client.Client {
	tb.Helper()
	models := make([]discovery.Model, len(addrs))
	for i, a := range addrs {
		models[i] = discovery.Model{ID: fmt.Sprintf("m%03d", i), Target: a}
	}
	c, err := client.New(client.Config{Source: discovery.Static(models), Plaintext: true,
		SetupOnJoin: &client.SetupOnJoin{ClassName: "crunch_base.Tracker"}, Timeout: 10 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	tb.Cleanup(func() { cancel(); <-done; c.Close() })
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ready := 0
		for _, r := range c.Call(ctx, "echo", client.Request{Args: client.Positional(echoArg(tb))}) {
			if r.OK() {
				ready++
			}
		}
		if ready == len(addrs) {
			return c
		}
		if time.Now().After(deadline) {
			tb.Fatalf("only %d of %d models set up and answering", ready, len(addrs))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// warmUps is how many calls each client makes before it measures
// (testdata/sidebyside.py makes as many, after its Setup).
const warmUps = 200

// goCalls makes n echo calls from conc goroutines through c and returns the
// latencies each caller saw and the calls per second.
func goCalls(tb testing.TB, c *client.Client, n, conc int) ([]time.Duration, float64) {
	tb.Helper()
	req := client.Request{Args: client.Positional(echoArg(tb))}
	ctx := context.Background()
	for range warmUps { // as the Python script does
		c.Call(ctx, "echo", req)
	}
	lat := make([][]time.Duration, conc)
	var wg sync.WaitGroup
	start := time.Now()
	for g := range conc {
		k := n / conc
		if g < n%conc {
			k++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, k)
			for range k {
				t0 := time.Now()
				for _, r := range c.Call(ctx, "echo", req) {
					if !r.OK() || len(r.Value.GetValue()) != 172 {
						tb.Errorf("%s: %s %s (%d bytes)", r.Model.ID, r.Code, r.Message, len(r.Value.GetValue()))
						return
					}
				}
				mine = append(mine, time.Since(t0))
			}
			lat[g] = mine
		}()
	}
	wg.Wait()
	rate := float64(n) / time.Since(start).Seconds()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	return all, rate
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()), "p99-µs")
}

// tree returns pid and all its descendants: a runner with its worker (and,
// for ours, the sandbox's first stage between them).
func tree(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := procStat(p); len(f) > 1 {
			if ppid, err := strconv.Atoi(f[1]); err == nil {
				children[ppid] = append(children[ppid], p)
			}
		}
	}
	var out []int
	for queue := []int{pid}; len(queue) > 0; queue = queue[1:] {
		out = append(out, queue[0])
		queue = append(queue, children[queue[0]]...)
	}
	return out
}

// procStat returns the fields of /proc/PID/stat after the command's closing
// parenthesis (state ppid …), or nil.
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	return strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
}

// treeCPU returns the CPU time (user + system) the processes of pid's tree
// have used so far.
func treeCPU(pid int) time.Duration {
	var ticks int64
	for _, p := range tree(pid) {
		if f := procStat(p); len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			s, _ := strconv.ParseInt(f[12], 10, 64)
			ticks += u + s
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on Linux.
const clockTicks = 100

// treeMemory returns the resident and proportional memory (MiB) of pid's
// tree.
func treeMemory(pid int) (rss, pss float64) {
	var kib [2]float64
	for _, p := range tree(pid) {
		f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", p))
		if err != nil {
			continue
		}
		s := bufio.NewScanner(f)
		for s.Scan() {
			fields := strings.Fields(s.Text())
			if len(fields) < 2 {
				continue
			}
			v, _ := strconv.ParseFloat(fields[1], 64)
			switch fields[0] {
			case "Rss:":
				kib[0] += v
			case "Pss:":
				kib[1] += v
			}
		}
		_ = f.Close()
	}
	return kib[0] / 1024, kib[1] / 1024
}

// reportCPU reports the runner tree's CPU per call since before (calls made
// since then, warm-ups included).
func reportCPU(b *testing.B, pid int, before time.Duration, calls int) {
	b.ReportMetric(float64((treeCPU(pid)-before).Microseconds())/float64(calls), "runner-cpu-µs/call")
}

// BenchmarkSideBySide: CrunchDAO's runner (crunch-model-runner, the model
// in its process) beside ours (runner=modelnodes: the runner process and the
// model's worker in the real sandbox), serving the same Python echo model on
// the same interpreter, plaintext; each called with a 172-byte JSON
// argument by CrunchDAO's Python client (client=python, model-runner-client)
// and by our Go client (client=go, package client).
//
//   - conc=1: one caller, latency percentiles; conc=64: 64 callers on one
//     connection, calls/s.
//   - runner-cpu-µs/call: the CPU (user + system) the runner's process tree
//     used per call, warm-ups included (for ours: runner, the sandbox's
//     first stage and the worker).
//   - idle-memory: RSS and PSS of the runner's process tree after the calls,
//     and its CPU over 3 s without calls.
func BenchmarkSideBySide(b *testing.B) {
	envs, runners := runnerKinds(b)
	for _, r := range runners {
		srv := r.start(b)
		for _, conc := range []int{1, 64} {
			b.Run(fmt.Sprintf("runner=%s/client=python/conc=%d", r.name, conc), func(b *testing.B) {
				cpu := treeCPU(srv.Pid)
				res := runPython(b, envs, "calls", srv.Addr, strconv.Itoa(b.N), strconv.Itoa(conc))
				reportCPU(b, srv.Pid, cpu, b.N+warmUps+1)
				b.ReportMetric(res.P50, "p50-µs")
				b.ReportMetric(res.P99, "p99-µs")
				b.ReportMetric(res.Rate, "calls/s")
			})
		}
		c := goClient(b, srv.Addr)
		for _, conc := range []int{1, 64} {
			b.Run(fmt.Sprintf("runner=%s/client=go/conc=%d", r.name, conc), func(b *testing.B) {
				cpu := treeCPU(srv.Pid)
				lat, rate := goCalls(b, c, b.N, conc)
				reportCPU(b, srv.Pid, cpu, b.N+warmUps)
				reportLatency(b, lat)
				b.ReportMetric(rate, "calls/s")
			})
		}
		b.Run(fmt.Sprintf("runner=%s/idle-memory", r.name), func(b *testing.B) {
			time.Sleep(time.Second)
			rss, pss := treeMemory(srv.Pid)
			b.ReportMetric(rss, "RSS-MiB")
			b.ReportMetric(pss, "PSS-MiB")
			// CPU while nobody calls: what the processes burn on their own.
			cpu := treeCPU(srv.Pid)
			time.Sleep(3 * time.Second)
			b.ReportMetric(float64((treeCPU(srv.Pid)-cpu).Microseconds())/3/1000, "idle-cpu-ms/s")
		})
	}
}

// BenchmarkSideBySideFanOut: one echo call fanned out to N models of each
// kind (SIDEBYSIDE_MODELS, default 100) by CrunchDAO's concurrent runner
// (their ModelCluster fed the init event their orchestrator sends,
// client=python) and by our client (client=go); p50-ms/p90-ms over the
// rounds (b.N). Skipped when the machine lacks the memory for N runners of
// each kind. Apart from BenchmarkSideBySide so that its 2 × N runners start
// once per -count round, not once per sub-benchmark.
func BenchmarkSideBySideFanOut(b *testing.B) {
	envs, runners := runnerKinds(b)
	n := 100
	if v, err := strconv.Atoi(os.Getenv("SIDEBYSIDE_MODELS")); err == nil && v > 0 {
		n = v
	}
	// CrunchDAO's runner holds about 150 MiB (numpy, pandas and pyarrow
	// imported), ours about 40 MiB with its worker.
	if need, avail := float64(n)*190+2048, memAvailableMiB(b); avail < need {
		b.Skipf("%d runners of each kind need about %.0f MiB; the machine has %.0f MiB available (set SIDEBYSIDE_MODELS lower)", n, need, avail)
	}
	for _, r := range runners {
		fleet := startFleet(b, n, r.start)
		b.Run(fmt.Sprintf("runner=%s/models=%d/client=python", r.name, n), func(b *testing.B) {
			res := runPython(b, envs, "fanout", strconv.Itoa(b.N), strings.Join(fleet, ","))
			b.ReportMetric(res.FanP50, "p50-ms")
			b.ReportMetric(res.FanP90, "p90-ms")
		})
		b.Run(fmt.Sprintf("runner=%s/models=%d/client=go", r.name, n), func(b *testing.B) {
			c := goClient(b, fleet...)
			req := client.Request{Args: client.Positional(echoArg(b))}
			for range 3 {
				c.Call(context.Background(), "echo", req)
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				for _, res := range c.Call(context.Background(), "echo", req) {
					if !res.OK() {
						b.Fatalf("%s: %s %s", res.Model.ID, res.Code, res.Message)
					}
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*9/10].Microseconds())/1000, "p90-ms")
		})
	}
}

// runnerKind is one of the two runners, started by start.
type runnerKind struct {
	name  string
	start func(tb testing.TB) crunchdao.Runner
}

// runnerKinds returns CrunchDAO's environments and the two runners, both
// serving the Python echo model: theirs and ours (sandboxed).
func runnerKinds(b *testing.B) (crunchdao.Envs, []runnerKind) {
	if os.Geteuid() != 0 {
		b.Skip("our runner's sandbox needs root (namespaces, mounts, setuid)")
	}
	envs := crunchdao.Install(b)
	host, err := pyhost.Install(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	model := pymodel(b)
	return envs, []runnerKind{
		{"crunchdao", func(tb testing.TB) crunchdao.Runner { return crunchdao.StartRunner(tb, envs, model) }},
		{"modelnodes", func(tb testing.TB) crunchdao.Runner { return startOurRunner(tb, host, model) }},
	}
}

// startFleet starts n runners with start, a few at a time, and returns
// their addresses; they stop when tb ends.
func startFleet(tb testing.TB, n int, start func(testing.TB) crunchdao.Runner) []string {
	tb.Helper()
	addrs := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			addrs[i] = start(tb).Addr
		}()
	}
	wg.Wait()
	if tb.Failed() {
		tb.FailNow()
	}
	return addrs
}

func memAvailableMiB(tb testing.TB) float64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemAvailable:" {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v / 1024
		}
	}
	return 0
}
