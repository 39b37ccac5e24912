//go:build e2e

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"
	"github.com/gagliardetto/solana-go/rpc"

	"github.com/modelnodes/modelnodes/internal/testing/leftovers"
	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
)

// The demo as a new user runs it (make demo), each run on ports and in a
// state dir of its own so that it meets neither a developer's dev cluster
// nor other tests. These tests need what `make test` provides: root, the
// agents (NOMAD_BIN, CONSUL_BIN, VAULT_BIN), the project's binaries
// (MODELNODES_BIN or bin/), node and python3.

var (
	demoBin     string
	demoBinErr  error
	demoBinOnce sync.Once
	demoBinDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if demoBinDir != "" {
		os.RemoveAll(demoBinDir)
	}
	os.Exit(code)
}

// demoBasePorts are deploy/dev/up's ports before DEV_PORT_OFFSET, then the
// demo's own.
var demoBasePorts = []int{18500, 18600, 18502, 18301, 18302, 18300, 18200, 18201, 14646, 14647, 14648,
	baseSolanaPort, baseArtifactPort, baseSchedulerPort}

type demoRun struct {
	t       testing.TB
	state   string
	bin     string
	offset  int
	ports   []int
	args    []string
	cmd     *exec.Cmd
	stdout  bytes.Buffer
	stderr  *lineBuffer
	elapsed time.Duration
}

// newDemoRun prepares a run: the demo built from this package, a free set
// of ports, a state dir. It skips (saying why) when the machine lacks what
// the demo needs.
func newDemoRun(t testing.TB) *demoRun {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the whole demo on the real agents; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("the modelbox driver needs root")
	}
	for _, v := range []string{"NOMAD_BIN", "CONSUL_BIN", "VAULT_BIN"} {
		if os.Getenv(v) == "" {
			t.Skipf("%s is not set (make test sets the agents' paths; a cold deploy/hashistack/install takes ~25 min)", v)
		}
	}
	for _, tool := range []string{"node", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (.ci/run installs it)", tool)
		}
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := os.Getenv("MODELNODES_BIN")
	if bin == "" {
		bin = filepath.Join(repo, "bin")
	}
	for _, b := range needBinaries {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Skipf("%s/%s is missing: run `make build` first (make test does)", bin, b)
		}
	}
	demoBinOnce.Do(func() {
		if demoBinDir, demoBinErr = os.MkdirTemp("", "modelnodes-demo-"); demoBinErr != nil {
			return
		}
		demoBin = filepath.Join(demoBinDir, "modelnodes-demo")
		out, err := exec.Command("go", "build", "-o", demoBin, ".").CombinedOutput()
		if err != nil {
			demoBinErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if demoBinErr != nil {
		t.Fatal(demoBinErr)
	}
	r := &demoRun{t: t, state: filepath.Join(t.TempDir(), "demo"), bin: bin, stderr: &lineBuffer{}}
	t.Cleanup(r.logTranscriptOnFailure)
	for range 20 {
		r.offset = -9000 + rand.IntN(5000)
		r.ports = r.ports[:0]
		for _, p := range demoBasePorts {
			r.ports = append(r.ports, p+r.offset)
		}
		if len(leftovers.Listening(r.ports)) == 0 {
			r.args = []string{"--repo", repo, "--bin", bin, "--state", r.state, "--port-offset", strconv.Itoa(r.offset)}
			return r
		}
	}
	t.Skip("found no free set of ports for the demo")
	return nil
}

// logTranscriptOnFailure logs the last lines of the demo's progress
// (stderr) and output (stdout) when the test failed and go test ran
// without -v (with -v they streamed into the log already).
func (r *demoRun) logTranscriptOnFailure() {
	if !r.t.Failed() || testing.Verbose() {
		return
	}
	const n = 60
	for _, x := range []struct{ name, text string }{{"progress (stderr)", r.stderr.String()}, {"output (stdout)", r.stdout.String()}} {
		lines := strings.Split(strings.TrimRight(x.text, "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		r.t.Logf("the demo's %s, last %d lines:\n%s", x.name, len(lines), strings.Join(lines, "\n"))
	}
}

// start starts `modelnodes-demo [sub] ARGS… extra…`.
func (r *demoRun) start(sub string, extra ...string) {
	r.t.Helper()
	r.cmd = exec.Command(demoBin, append(append([]string{sub}, r.args...), extra...)...)
	// The progress streams into the log only with go test -v; otherwise a
	// failure prints the test's own errors first and the transcript's tail
	// after them (CI shows a failed test's first lines).
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, r.stderr
	if _, bench := r.t.(*testing.B); !bench && testing.Verbose() {
		r.cmd.Stderr = io.MultiWriter(r.stderr, &testLog{t: r.t})
	}
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() {
		// Whatever happened, leave nothing behind.
		if r.cmd.ProcessState == nil {
			_ = r.cmd.Process.Kill()
			_ = r.cmd.Wait()
		}
		out, err := exec.Command(demoBin, append([]string{"down"}, r.args...)...).CombinedOutput()
		if err != nil {
			r.t.Errorf("modelnodes-demo down (cleanup): %v\n%s", err, out)
		}
	})
}

// wait waits for the demo to exit and returns its exit status.
func (r *demoRun) wait(timeout time.Duration) int {
	r.t.Helper()
	t0 := time.Now()
	done := make(chan error, 1)
	go func() { done <- r.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(timeout):
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		<-done
		r.t.Fatalf("the demo did not finish within %s", timeout)
	}
	r.elapsed += time.Since(t0)
	return r.cmd.ProcessState.ExitCode()
}

// models reads the demo's record: model id → Consul member id.
func (r *demoRun) models() map[string]*model {
	r.t.Helper()
	b, err := os.ReadFile(filepath.Join(r.state, "state.json"))
	if err != nil {
		r.t.Fatal(err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		r.t.Fatal(err)
	}
	out := map[string]*model{}
	for _, m := range rec.Models {
		out[m.ID] = m
	}
	if len(out) != 4 {
		r.t.Fatalf("state.json names %d models, want 4", len(out))
	}
	return out
}

// assertClean checks that nothing of the run is left: no listening port,
// no process in its state dir, no modelbox cgroup of its allocations.
func (r *demoRun) assertClean() {
	r.t.Helper()
	if busy := leftovers.Listening(r.ports); len(busy) > 0 {
		r.t.Errorf("still listening after the demo: %v", busy)
	}
	if pids := leftovers.Processes(r.state); len(pids) > 0 {
		r.t.Errorf("processes left in %s: %v", r.state, pids)
	}
	for _, f := range []string{"scheduler/scheduler.pid", "solana/front.pid", "artifacts/artifacts.pid", "demo.pid"} {
		if pid := livePid(filepath.Join(r.state, f)); pid != 0 {
			r.t.Errorf("%s: pid %d still runs", f, pid)
		}
	}
	allocs := append(leftovers.AllocIDs(filepath.Join(r.state, "cluster")), rememberedAllocs(filepath.Join(r.state, "allocs"))...)
	if len(allocs) == 0 {
		r.t.Error("the demo recorded no allocation: the cgroup check would prove nothing")
	}
	if left := leftovers.ModelboxCgroups(allocs); len(left) > 0 {
		r.t.Errorf("modelbox cgroups left: %v", left)
	}
}

// callTables returns the tables printed after each `coordinator call
// METHOD` line.
func callTables(stdout, method string) []string {
	parts := strings.Split(stdout, "\n$ ")
	var tables []string
	for _, p := range parts {
		if strings.Contains(strings.SplitN(p, "\n", 2)[0], "coordinator call "+method+" ") {
			tables = append(tables, p)
		}
	}
	return tables
}

// The whole story, as `make demo` runs it: the healthy models answer, the
// scikit-learn one after the node built its environment (the wait shows the
// build's stages and how long it took: the cluster is new, so the build is
// cold) and predicts on a DataFrame; the broken one's requirements cannot be
// met, and both the call and the status API say so; a key that is not on
// chain is refused, the revoked model leaves the fan-out, and the end
// leaves nothing.
func TestDemo(t *testing.T) {
	r := newDemoRun(t)
	r.start("run")
	if code := r.wait(10 * time.Minute); code != 0 {
		t.Fatalf("make demo exited %d", code)
	}
	t.Logf("the demo took %s end to end (teardown included)", r.elapsed.Round(100*time.Millisecond))
	stdout, stderr := r.stdout.String(), r.stderr.String()
	for i := 1; i <= 12; i++ {
		if !strings.Contains(stderr, fmt.Sprintf("step %d/12: ", i)) {
			t.Errorf("progress lacks step %d/12", i)
		}
	}
	if !regexp.MustCompile(`(?m)^\[demo +[0-9.]+s\] done: the demo ran end to end and left nothing running`).MatchString(stderr) {
		t.Error("the demo did not say it finished cleanly")
	}
	m := r.models()
	py, sk, goM, broken := m["py-tracker"], m["py-sklearn"], m["go-echo"], m["py-broken"]
	tables := callTables(stdout, "add")
	if len(tables) != 4 {
		t.Fatalf("want 4 `coordinator call` runs (fan-out, impostor, with delegations checked, after revocation), got %d", len(tables))
	}
	row := func(table, id string) []string {
		table, _, _ = strings.Cut(table, " succeeded\n") // the table ends with "N/M succeeded"
		for _, l := range strings.Split(table, "\n") {
			if f := strings.Fields(l); len(f) > 0 && f[0] == id {
				return f
			}
		}
		return nil
	}
	// 1. The healthy models compute 2 + 40; the broken one is not callable.
	for _, x := range []*model{py, sk, goM} {
		if f := row(tables[0], x.ShortID); len(f) < 6 || f[1] != "success" || f[4] != "INT" || f[5] != "42" {
			t.Errorf("first fan-out: %s (%s) row %q, want success INT 42\n%s", x.ID, x.ShortID, f, tables[0])
		}
	}
	if f := row(tables[0], broken.ShortID); f != nil && (f[1] == "success" || f[2] != "BAD_IMPLEMENTATION") {
		t.Errorf("first fan-out: the broken model's row %q, want absent or BAD_IMPLEMENTATION", f)
	}
	// 1b. The environment: built while the demo waited, then the
	// scikit-learn model predicts on the DataFrame it is sent.
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`py-sklearn +its environment is being built from requirements.txt \(pandas==2.2.3, pyarrow==18.1.0, scikit-learn==1.6.1`),
		regexp.MustCompile(`py-sklearn +Environment: (resolving|downloading|installing)`),
		regexp.MustCompile(`py-sklearn's environment took [0-9.]+ s to build on this node`),
	} {
		if !want.MatchString(stderr) {
			t.Errorf("the wait for the models does not show the environment's build (%s)", want)
		}
	}
	predict := callTables(stdout, "predict")
	if len(predict) != 1 {
		t.Fatalf("want 1 `coordinator call predict` run, got %d", len(predict))
	}
	if !strings.Contains(strings.SplitN(predict[0], "\n", 2)[0], "--model "+sk.ShortID) {
		t.Errorf("the predict call is not py-sklearn's alone: %q", strings.SplitN(predict[0], "\n", 2)[0])
	}
	f := row(predict[0], sk.ShortID)
	if len(f) < 5 || f[1] != "success" || !strings.HasPrefix(strings.Join(f[4:], " "), "PARQUET 2 rows ") {
		t.Errorf("py-sklearn's predict row %q, want success, a PARQUET table of 2 rows\n%s", f, predict[0])
	} else if got, err := predictions(strings.Join(f[4:], " ")); err != nil || !slices.Equal(got, []float64{0.5, 6.5}) {
		t.Errorf("py-sklearn predicted %v (%v), want [0.5 6.5] (y = 2a - b + 0.5 on a = [1 3], b = [2 0])", got, err)
	}
	// 1c. The broken model: faulty in the status API, with uv's reason.
	if !regexp.MustCompile(`the status API \(GET http://[0-9.:]+/v1/models\) says py-broken is faulty: environment failed: .*pandas==0\.0\.1`).MatchString(stderr) {
		t.Errorf("the demo does not show the status API's reason for the broken model")
	}
	// 2. A key that is not on chain is refused everywhere.
	for _, x := range []*model{py, goM, broken} {
		if f := row(tables[1], x.ShortID); len(f) < 3 || f[1] != "unauthenticated" {
			t.Errorf("impostor call: %s row %q, want unauthenticated", x.ID, f)
		}
	}
	// 3. The cruncher vouched for py-tracker's runner only: with delegations
	// checked, py-tracker is believed and go-echo refused.
	if f := row(tables[2], py.ShortID); len(f) < 6 || f[1] != "success" || f[5] != "42" {
		t.Errorf("--verify-delegation: py-tracker row %q, want success 42", f)
	}
	if f := row(tables[2], goM.ShortID); len(f) < 3 || f[1] != "unauthenticated" {
		t.Errorf("--verify-delegation: go-echo (no delegation) row %q, want unauthenticated", f)
	}
	if !strings.Contains(stdout, "delegation key --runner-addr") || !strings.Contains(stdout, "nomad var put nomad/jobs/"+py.JobID) {
		t.Errorf("the output does not show how the delegation was made and installed")
	}
	// 4. Revoked: the job is stopped and the model is gone from the fan-out.
	if !strings.Contains(stdout, "$ nomad job status "+goM.JobID) || !regexp.MustCompile(`Status += dead \(stopped\)`).MatchString(stdout) {
		t.Errorf("the output does not show the revoked model's job stopped")
	}
	if f := row(tables[3], goM.ShortID); f != nil {
		t.Errorf("after revocation go-echo is still called: %q", f)
	}
	if f := row(tables[3], py.ShortID); len(f) < 2 || f[1] != "success" {
		t.Errorf("after revocation py-tracker row %q, want success", f)
	}
	r.assertClean()
}

// Ctrl-C in the middle: the demo stops, tears everything down and exits
// non-zero.
func TestDemoInterrupted(t *testing.T) {
	r := newDemoRun(t)
	r.start("run")
	// Once a model runs: its allocation must be stopped too.
	if !r.stderr.waitFor(regexp.MustCompile(`step 7/12(.|\n)*py-tracker +(running|callable)`), 3*time.Minute) {
		t.Fatalf("the demo never got a model running:\n%s", r.stderr.String())
	}
	_ = r.cmd.Process.Signal(os.Interrupt)
	if code := r.wait(3 * time.Minute); code != exitInterrupted {
		t.Errorf("interrupted demo exited %d, want %d", code, exitInterrupted)
	}
	if s := r.stderr.String(); !strings.Contains(s, "interrupted at step 7") || !strings.Contains(s, "interrupted; everything is stopped") {
		t.Errorf("the demo did not say where it was interrupted and that it cleaned up:\n%s", s)
	}
	r.assertClean()
}

// --keep leaves everything running and says how to use and stop it; `down`
// from another shell (make demo-down) then stops everything.
func TestDemoKeepThenDown(t *testing.T) {
	r := newDemoRun(t)
	r.start("run", "--keep")
	if code := r.wait(10 * time.Minute); code != 0 {
		t.Fatalf("make demo DEMO_KEEP=1 exited %d", code)
	}
	if s := r.stdout.String(); !strings.Contains(s, "Stop everything: make demo-down") || !strings.Contains(s, "coordinator/env") {
		t.Errorf("--keep does not say how to explore and stop:\n%s", s)
	}
	if busy := leftovers.Listening(r.ports); len(busy) < 10 {
		t.Fatalf("after --keep only ports %v listen; want the cluster, the front, the artifact server and the scheduler", busy)
	}
	// The kept cluster serves the coordinator as printed.
	env := append(os.Environ(), coordinatorEnv(t, filepath.Join(r.state, "coordinator", "env"))...)
	cmd := exec.Command(filepath.Join(r.bin, "coordinator"), callArgs...)
	cmd.Env = env
	out, _ := cmd.Output()
	if n := strings.Count(string(out), "INT 42"); n != 2 {
		t.Errorf("the kept cluster's fan-out: %d models answered 42, want 2 (py-tracker, py-sklearn; go-echo was revoked)\n%s", n, out)
	}
	// The front and Nomad restart with their state: the same chain, the
	// same models, still answering.
	accounts := programAccounts(t, r.state)
	restart := exec.Command(demoBin, append([]string{"restart", "front", "nomad"}, r.args...)...)
	if out, err := restart.CombinedOutput(); err != nil {
		t.Fatalf("modelnodes-demo restart front nomad: %v\n%s", err, out)
	}
	if after := programAccounts(t, r.state); after != accounts {
		t.Errorf("the restarted front serves %d program accounts, want the %d it had", after, accounts)
	}
	time.Sleep(6 * time.Second) // past the scheduler's next listing (--solana-resync 5s)
	cmd = exec.Command(filepath.Join(r.bin, "coordinator"), callArgs...)
	cmd.Env = env
	out, _ = cmd.Output()
	if n := strings.Count(string(out), "INT 42"); n != 2 {
		t.Errorf("after restarting the front and Nomad: %d models answered 42, want 2\n%s", n, out)
	}
	down := exec.Command(demoBin, append([]string{"down"}, r.args...)...)
	var downErr bytes.Buffer
	down.Stderr = &downErr
	if err := down.Run(); err != nil {
		t.Fatalf("modelnodes-demo down: %v\n%s", err, downErr.String())
	}
	if !strings.Contains(downErr.String(), "nothing left") {
		t.Errorf("down did not confirm the cleanup:\n%s", downErr.String())
	}
	r.assertClean()
}

// coordinatorEnv reads the export lines of the demo's coordinator env file.
func coordinatorEnv(t *testing.T, path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, l := range strings.Split(string(b), "\n") {
		if kv, ok := strings.CutPrefix(l, "export "); ok {
			env = append(env, kv)
		}
	}
	return env
}

// lineBuffer collects output and lets a test wait for a line.
type lineBuffer struct{ syncbuf.Buffer }

func (l *lineBuffer) waitFor(re *regexp.Regexp, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if re.MatchString(l.String()) {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// testLog copies the demo's progress lines to the test log (go test -v).
type testLog struct {
	t    testing.TB
	mu   sync.Mutex
	part []byte
}

func (w *testLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.part = append(w.part, p...)
	last := bytes.LastIndexByte(w.part, '\n')
	if last < 0 {
		return len(p), nil
	}
	sc := bufio.NewScanner(bytes.NewReader(w.part[:last+1]))
	for sc.Scan() {
		w.t.Log(sc.Text())
	}
	w.part = append([]byte{}, w.part[last+1:]...)
	return len(p), nil
}

// How long `make demo` takes warm, and where the time goes, beside the
// start of the dev cluster alone (its first step) in the same run:
//
//	go test ./cmd/modelnodes-demo -run '^$' -bench Demo -benchtime 1x -count 3
func BenchmarkDemo(b *testing.B) {
	var total, cluster, callable, revoke, teardown float64
	for range b.N {
		r := newDemoRun(b)
		r.start("run")
		if code := r.wait(10 * time.Minute); code != 0 {
			b.Fatalf("the demo exited %d:\n%s", code, r.stderr.String())
		}
		at := stepTimes(b, r.stderr.String())
		total += r.elapsed.Seconds()
		cluster += at[2] - at[1]
		callable += at[8] - at[6]
		revoke += at[11] - at[10]
		teardown += at[0] - at[12]
	}
	n := float64(b.N)
	b.ReportMetric(total/n, "demo_s")
	b.ReportMetric(cluster/n, "baseline_cluster_up_s")
	b.ReportMetric(callable/n, "scheduler_to_callable_s")
	b.ReportMetric(revoke/n, "revoke_to_gone_s")
	b.ReportMetric(teardown/n, "teardown_s")
	b.ReportMetric(0, "ns/op")
}

// stepTimes reads the progress lines: step number → seconds at its start;
// 0 → the final "done" line.
func stepTimes(tb testing.TB, stderr string) map[int]float64 {
	at := map[int]float64{}
	re := regexp.MustCompile(`(?m)^\[demo +([0-9.]+)s\] (?:step ([0-9]+)/12|done: )`)
	for _, m := range re.FindAllStringSubmatch(stderr, -1) {
		sec, _ := strconv.ParseFloat(m[1], 64)
		n := 0
		if m[2] != "" {
			n, _ = strconv.Atoi(m[2])
		}
		at[n] = sec
	}
	if len(at) != 13 {
		tb.Fatalf("progress lines: found %d of 13 timestamps:\n%s", len(at), stderr)
	}
	return at
}

// programAccounts counts the accounts of the demo's program that its
// Solana front serves (state.json names both).
func programAccounts(t *testing.T, state string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(state, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accts, err := rpc.New(rec.SolanaRPC).GetProgramAccounts(ctx, solana.MustPublicKeyFromBase58(rec.Program))
	if err != nil {
		t.Fatalf("listing the demo's program accounts: %v", err)
	}
	return len(accts)
}
