package runner_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/modelnodes/modelnodes/internal/testing/testbin"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	tipb "github.com/modelnodes/modelnodes/proto/train_infer"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/pyhost"
	"github.com/modelnodes/modelnodes/runner/worker"
)

// The test binary doubles as a hostile model worker (see hostile_test.go).
const workerRoleEnv = "MODELNODES_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerRoleEnv) == "hostile" {
		hostileMain()
		return
	}
	os.Exit(m.Run())
}

// exampleModel returns the path of cmd/example-model: the one `make build`
// left in $MODELNODES_BIN, or a fresh build.
func exampleModel(t testing.TB) string { return testbin.Path(t, "example-model") }

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// pythonWorker returns the argv that runs the embedded host on a testdata model.
func pythonWorker(t testing.TB, model string) []string {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed: the Python runtime cannot be tested here")
	}
	host, err := pyhost.Install(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir, err := filepath.Abs(filepath.Join("testdata", model))
	if err != nil {
		t.Fatal(err)
	}
	return []string{py, "-B", host, "--model-dir", dir}
}

func hostileWorker(t testing.TB) []string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{exe}
}

type harness struct {
	t      testing.TB
	addr   string
	srv    *runner.Server
	conn   *grpc.ClientConn
	ds     dspb.DynamicSubclassServiceClient
	ti     tipb.TrainInferServiceClient
	ts     tipb.TrainInferStreamServiceClient
	health healthpb.HealthClient
}

type option func(*runner.Config)

func withCallTimeout(d time.Duration) option { return func(c *runner.Config) { c.CallTimeout = d } }
func withMaxQueue(n int) option              { return func(c *runner.Config) { c.Worker.MaxQueue = n } }

// start runs a runner in this process on a loopback port, with the worker
// command given, and waits until its worker is ready (unless the worker is
// expected never to be).
func start(t testing.TB, command []string, opts ...option) *harness {
	t.Helper()
	cfg := runner.Config{
		Logger: hclog.New(&hclog.LoggerOptions{Name: "runner", Level: hclog.Warn, Output: testWriter{t}}),
		Worker: worker.Config{
			Command:    command,
			Env:        []string{workerRoleEnv + "=hostile"},
			MinBackoff: 20 * time.Millisecond,
			MaxBackoff: 200 * time.Millisecond,
		},
	}
	for _, o := range opts {
		o(&cfg)
	}
	return startConfig(t, cfg, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func startConfig(t testing.TB, cfg runner.Config, dial ...grpc.DialOption) *harness {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := runner.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx, lis, time.Second)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("runner did not stop within 10s")
		}
	})
	return dialHarness(t, srv, lis.Addr().String(), dial...)
}

func dialHarness(t testing.TB, srv *runner.Server, addr string, dial ...grpc.DialOption) *harness {
	t.Helper()
	dial = append(dial, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20), grpc.MaxCallSendMsgSize(256<<20)))
	conn, err := grpc.NewClient(addr, dial...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &harness{
		t: t, addr: addr, srv: srv, conn: conn,
		ds:     dspb.NewDynamicSubclassServiceClient(conn),
		ti:     tipb.NewTrainInferServiceClient(conn),
		ts:     tipb.NewTrainInferStreamServiceClient(conn),
		health: healthpb.NewHealthClient(conn),
	}
}

// waitHealth polls the health service until service reports want.
func (h *harness) waitHealth(service string, want healthpb.HealthCheckResponse_ServingStatus) {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		res, err := h.health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		cancel()
		if err == nil && res.GetStatus() == want {
			return
		}
		last = res.GetStatus().String()
		if err != nil {
			last = err.Error()
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatalf("health of %q never became %s (last: %s)", service, want, last)
}

func (h *harness) ready() *harness {
	h.t.Helper()
	h.waitHealth("", healthpb.HealthCheckResponse_SERVING)
	return h
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// testWriter sends the runner's logs to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
