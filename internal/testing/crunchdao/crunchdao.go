// Package crunchdao gives tests and benchmarks CrunchDAO's own Python
// packages from PyPI, unchanged: their coordinator client
// (model-runner-client) and their model runner (crunch-model-runner), each
// in a virtual environment of its own (their pins conflict: the client needs
// protobuf 6+, the runner protobuf 5 and pyarrow 18), built once with uv and
// cached by version. It is a test rig: production code never imports it.
package crunchdao

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/modelnodes/modelnodes/driver/pyenv/pyenvtest"
)

// The pinned releases: the newest of each on PyPI when this was written.
const (
	ClientVersion = "0.14.0" // model-runner-client
	RunnerVersion = "0.4.2"  // crunch-model-runner
)

// Python is the interpreter both environments are built on: the system's,
// which the model runner's Python host also runs on in the benchmarks, so
// the two runners' models run on the same CPython.
const Python = "/usr/bin/python3"

// Envs are the two environments.
type Envs struct {
	// ClientPython is the interpreter of model-runner-client's environment.
	ClientPython string
	// RunnerBin is crunch-model-runner's entry point, `model-runner`.
	RunnerBin string
}

// Install returns the two environments, building what the cache lacks
// (under the user's cache dir, keyed by version). It skips tb, saying why, when there is no uv, no interpreter,
// or PyPI cannot be reached for a missing environment.
func Install(tb testing.TB) Envs {
	tb.Helper()
	return Envs{ClientPython: ClientPython(tb), RunnerBin: RunnerCommand(tb)}
}

// ClientPython returns the interpreter of model-runner-client's
// environment, building it if the cache lacks it (Install's rules).
func ClientPython(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(venv(tb, cacheDir(tb), "model-runner-client=="+ClientVersion), "bin", "python")
}

// RunnerCommand returns crunch-model-runner's entry point, building its
// environment if the cache lacks it (Install's rules).
func RunnerCommand(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(venv(tb, cacheDir(tb), "crunch-model-runner=="+RunnerVersion), "bin", "model-runner")
}

// cacheDir is where the environments are kept, or skips tb saying why
// there is none.
func cacheDir(tb testing.TB) string {
	tb.Helper()
	if _, err := os.Stat(Python); err != nil {
		tb.Skipf("no %s for CrunchDAO's packages: %v", Python, err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		tb.Skipf("no cache dir for CrunchDAO's environments: %v", err)
	}
	return filepath.Join(cache, "modelnodes", "crunchdao")
}

// venv returns the cached environment holding requirement, built with uv if
// it is missing. Builds hold a lock on the cache, so concurrent test
// processes build each environment once; an environment is used only once
// its marker file is written, and an unfinished one is built again.
func venv(tb testing.TB, cache, requirement string) string {
	tb.Helper()
	dir := filepath.Join(cache, strings.ReplaceAll(requirement, "==", "-"))
	marker := filepath.Join(dir, ".complete")
	if _, err := os.Stat(marker); err == nil {
		return dir
	}
	uv := pyenvtest.UV(tb)
	pyenvtest.PyPIReachable(tb, uv)
	if err := os.MkdirAll(cache, 0o755); err != nil {
		tb.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(cache, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		tb.Fatal(err)
	}
	if _, err := os.Stat(marker); err == nil {
		return dir // built while this process waited
	}
	if err := os.RemoveAll(dir); err != nil {
		tb.Fatal(err)
	}
	run := func(args ...string) {
		tb.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, uv, args...)
		cmd.Env = append(os.Environ(), "UV_PYTHON_DOWNLOADS=never", "VIRTUAL_ENV="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Skipf("cannot install %s from PyPI with uv: %v\n%s", requirement, err, out)
		}
	}
	run("venv", "-q", "--python", Python, dir)
	run("pip", "install", "-q", requirement)
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// Runner is one of CrunchDAO's runners, started by StartRunner.
type Runner struct {
	// Addr is where it listens (plaintext gRPC), HOST:PORT.
	Addr string
	// Pid is its process.
	Pid int
}

// StartRunner starts CrunchDAO's runner serving the submission in codeDir
// on a free loopback port, waits until its health service answers SERVING,
// and stops it when tb ends. Its log goes to tb's log when it fails to come
// up.
func StartRunner(tb testing.TB, e Envs, codeDir string) Runner {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	logf, err := os.CreateTemp(tb.TempDir(), "crunchdao-runner-*.log")
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(e.RunnerBin, "--address", addr, "--code-directory", codeDir, "--log-level", "warning")
	cmd.Stdout, cmd.Stderr = logf, logf
	exited := Start(tb, cmd)
	tb.Cleanup(func() { _ = logf.Close() })
	if err := WaitServing(addr, exited, time.Minute); err != nil {
		out, _ := os.ReadFile(logf.Name())
		tb.Fatalf("CrunchDAO's runner at %s: %v\n%s", addr, err, out)
	}
	return Runner{Addr: addr, Pid: cmd.Process.Pid}
}

// Start starts cmd (killed if the test process dies), stops it when tb ends
// (SIGTERM, SIGKILL after 10 s) and returns a channel closed when it exits.
func Start(tb testing.TB, cmd *exec.Cmd) <-chan struct{} {
	tb.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", cmd.Path, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	return exited
}

// WaitServing waits until the gRPC health service at addr answers SERVING
// for "", the process behind it exits (exited closed), or timeout passes.
func WaitServing(addr string, exited <-chan struct{}, timeout time.Duration) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("exited before serving (last check: %v)", err)
		case <-ctx.Done():
			return fmt.Errorf("not SERVING within %s (last check: %v %v)", timeout, res.GetStatus(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
