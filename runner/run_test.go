package runner_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/modelnodes/modelnodes/names"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	tipb "github.com/modelnodes/modelnodes/proto/train_infer"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/launch"
	"github.com/modelnodes/modelnodes/runner/runneropts"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// run serves o through runner.Run in this process, as a program embedding
// the runner does, and returns a harness on o.Listen (plaintext) once the
// runner serves, and stop: it ends Run's context and returns what Run
// returned, or an error when Run did not return within 20 s. When the test
// did not call stop, its cleanup does and reports the error.
func run(t testing.TB, o runneropts.Options) (h *harness, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runner.Run(ctx, o) }()
	var (
		once    sync.Once
		err     error
		stopped bool // by the test, which reports err itself
	)
	end := func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				err = errors.New("runner.Run did not return within 20s of its context ending")
			}
		})
		return err
	}
	t.Cleanup(func() {
		if err := end(); err != nil && !stopped {
			t.Errorf("runner.Run: %v", err)
		}
	})
	h = dialHarness(t, nil, o.Listen, grpc.WithTransportCredentials(insecure.NewCredentials())).ready()
	return h, func() error { stopped = true; return end() }
}

// A program embeds the runner through Run: it serves the model, its health
// port and metrics, and returns once its context ends.
func TestRunServesUntilCanceled(t *testing.T) {
	o := runneropts.Defaults()
	o.ModelDir, o.Runtime, o.Entry, o.Plaintext = t.TempDir(), "executable", exampleModel(t), true
	o.Listen, o.HealthListen, o.MetricsListen = freeAddr(t), freeAddr(t), freeAddr(t)
	o.LogLevel = "warn"
	_, stop := run(t, o)
	dialHarness(t, nil, o.HealthListen, grpc.WithTransportCredentials(insecure.NewCredentials())).ready()
	resp, err := http.Get("http://" + o.MetricsListen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "modelnodes_runner_worker_up 1") {
		t.Errorf("metrics lack the worker's state:\n%s", body)
	}

	if err := stop(); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	if _, err := net.DialTimeout("tcp", o.Listen, time.Second); err == nil {
		t.Error("the model port still accepts connections after Run returned")
	}
}

// Run refuses what the command would refuse, before it starts anything.
func TestRunRefusesBadOptions(t *testing.T) {
	for name, c := range map[string]struct {
		edit func(o *runneropts.Options)
		want string
	}{
		"no model dir": {func(o *runneropts.Options) {}, "--model-dir is required"},
		"no tls":       {func(o *runneropts.Options) { o.ModelDir = t.TempDir() }, "refusing to serve without TLS"},
		"missing dir":  {func(o *runneropts.Options) { o.ModelDir, o.Plaintext = "/does/not/exist", true }, "/does/not/exist is not a directory"},
		"not a program": {func(o *runneropts.Options) {
			o.ModelDir, o.Plaintext, o.Runtime, o.Entry = t.TempDir(), true, "executable", "missing"
		}, "is not an executable file"},
		// Told to start workers through a launcher it was not given: it
		// refuses rather than run the model unsandboxed.
		"no launcher": {func(o *runneropts.Options) {
			o.ModelDir, o.Plaintext, o.Runtime, o.Entry, o.WorkerLauncher = t.TempDir(), true, "executable", exampleModel(t), true
		}, "MODELNODES_LAUNCHER_FD is not set"},
	} {
		o := runneropts.Defaults()
		c.edit(&o)
		o.Listen = freeAddr(t)
		if err := runner.Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

// A runner started by the driver's launcher has it start the worker: the
// worker runs behind the launcher's prefix, with the launcher's environment
// (not the runner's), and the model serves.
func TestRunStartsTheWorkerThroughItsLauncher(t *testing.T) {
	lf, rf, err := launch.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	// The runner takes over a bare descriptor, as one it inherited (an
	// *os.File's finalizer would close the number under it).
	fd, err := syscall.Dup(int(rf.Fd()))
	_ = rf.Close()
	if err != nil {
		t.Fatal(err)
	}
	seen := filepath.Join(t.TempDir(), "argv")
	srv := &launch.Server{
		// The prefix records that it ran, then runs the worker: the sandbox's place.
		Prefix: []string{"/bin/sh", "-c", `echo "$0 $*" > ` + seen + `; exec "$0" "$@"`},
		Env:    []string{"MODELNODES_WORKER_FD=3"},
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lf) }()
	t.Setenv(launch.EnvFD, strconv.Itoa(fd))

	o := runneropts.Defaults()
	o.ModelDir, o.Runtime, o.Entry, o.Plaintext, o.WorkerLauncher = t.TempDir(), "executable", exampleModel(t), true, true
	o.Listen, o.LogLevel = freeAddr(t), "warn"
	h, stop := run(t, o)
	h.waitHealth(runner.ServiceDynamicSubclass, healthpb.HealthCheckResponse_SERVING)
	if b, err := os.ReadFile(seen); err != nil || !strings.Contains(string(b), o.Entry) {
		t.Fatalf("the launcher's prefix did not run the worker: %q %v", b, err)
	}
	if _, ok := os.LookupEnv(launch.EnvFD); ok {
		t.Errorf("%s is still in the runner's environment, for whatever it starts to inherit", launch.EnvFD)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	// The runner closed its end: the launcher's Serve returns.
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the launcher kept serving after the runner returned")
	}
}

// A model whose environment failed to build: the runner serves, healthy, so
// the coordinator finds it; its model services are NOT_SERVING; every model
// call answers BAD_IMPLEMENTATION with the end of the resolver's message
// (CrunchDAO's client then reports the model faulty); no worker starts, even
// with a worker command that could not run.
func TestRunAnswersBadImplementationWhenTheModelCannotRun(t *testing.T) {
	dir := t.TempDir()
	resolver := strings.Repeat("noise from the resolver\n", 1000) +
		"  × No solution found when resolving dependencies:\n  ╰─▶ Because there is no version of pandas==0.0.1 and you require pandas==0.0.1, we can conclude that your requirements are unsatisfiable.\n"
	errFile := filepath.Join(dir, "model-error")
	if err := os.WriteFile(errFile, []byte(resolver), 0o600); err != nil {
		t.Fatal(err)
	}
	o := runneropts.Defaults()
	o.ModelDir, o.Runtime, o.Plaintext, o.LogLevel = t.TempDir(), "python", true, "warn"
	o.Python = "/does/not/exist/python" // nothing may try to start it
	o.ModelErrorFile = errFile
	o.Listen = freeAddr(t)
	h, stop := run(t, o)
	h.waitHealth(runner.ServiceDynamicSubclass, healthpb.HealthCheckResponse_NOT_SERVING)
	h.waitHealth("", healthpb.HealthCheckResponse_SERVING)
	h.waitHealth(names.HealthLoaded, healthpb.HealthCheckResponse_NOT_SERVING)

	res, err := h.ds.Setup(ctxTimeout(t, 10*time.Second), &dspb.SetupRequest{ClassName: "Model"})
	if err != nil {
		t.Fatal(err)
	}
	st := res.GetStatus()
	if st.GetCode() != "BAD_IMPLEMENTATION" || !strings.Contains(st.GetMessage(), "your requirements are unsatisfiable") {
		t.Fatalf("Setup answered %s %q, want BAD_IMPLEMENTATION with the resolver's conclusion", st.GetCode(), st.GetMessage())
	}
	if len(st.GetMessage()) > 9<<10 {
		t.Errorf("the answer carries %d bytes of the resolver's output; want its tail only", len(st.GetMessage()))
	}
	// TrainInfer carries no status: the code travels in the gRPC error.
	_, err = h.ti.Infer(ctxTimeout(t, 10*time.Second), &tipb.InferRequest{})
	if err == nil || !strings.Contains(err.Error(), "BAD_IMPLEMENTATION: ") || !strings.Contains(err.Error(), "unsatisfiable") {
		t.Errorf("Infer: %v, want BAD_IMPLEMENTATION with the resolver's conclusion", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}
