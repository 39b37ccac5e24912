package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/gomodel"
	"github.com/modelnodes/modelnodes/runner/worker"
)

// The test binary doubles as the model worker of the test runners.
const modelEnv = "MODELNODES_CLIENT_TEST_MODEL"

func TestMain(m *testing.M) {
	if os.Getenv(modelEnv) != "" {
		modelMain()
		return
	}
	if os.Getenv(fleetEnv) != "" {
		fleetMain()
		return
	}
	os.Exit(testcluster.Main(m))
}

// modelMain is a Go model whose methods let a test choose each model's
// behaviour through its arguments:
//   - work(id STRING, seconds DOUBLE) sleeps, then returns id;
//   - fail() raises (MODEL_FAILED);
//   - echo(x) returns x.
func modelMain() {
	gomodel.Main(gomodel.Model{
		Concurrency: 16,
		New:         func(string, gomodel.Args) (gomodel.Instance, error) { return testModel{}, nil },
		Infer:       func(_ bool, v *commonspb.Variant) (*commonspb.Variant, error) { return v, nil },
	})
}

type testModel struct{}

func (testModel) Call(method string, args gomodel.Args) (*commonspb.Variant, error) {
	switch method {
	case "work":
		id, err := args.At(0)
		if err != nil {
			return nil, err
		}
		if len(args.Positional) > 1 {
			s, _ := args.Positional[1].AsDouble()
			time.Sleep(time.Duration(s * float64(time.Second)))
		}
		return id, nil
	case "fail":
		return nil, errors.New("ValueError: the model broke")
	case "echo":
		if len(args.Positional) == 0 {
			return nil, nil
		}
		return args.Positional[0], nil
	}
	return nil, gomodel.ErrNoMethod
}

// testRunner is a real runner (in this process) with a real worker process.
type testRunner struct {
	addr string
	stop context.CancelFunc
	done chan struct{}
}

// startRunner serves the test model on a fresh loopback port. tls may be nil
// (plaintext).
func startRunner(t testing.TB, tls *tlsfiles.Reloader) *testRunner {
	t.Helper()
	return startRunnerAt(t, tls, "127.0.0.1:0")
}

// startRunnerAt is startRunner on a given address (a runner restarted
// where it was).
func startRunnerAt(t testing.TB, tls *tlsfiles.Reloader, addr string) *testRunner {
	t.Helper()
	return startRunnerWith(t, tls, addr, nil)
}

// startRunnerWith starts a runner; more, if set, adjusts its config.
func startRunnerWith(t testing.TB, tls *tlsfiles.Reloader, addr string, more func(*runner.Config)) *testRunner {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg := runner.Config{
		TLS:         tls,
		CallTimeout: 30 * time.Second,
		Logger:      hclog.New(&hclog.LoggerOptions{Name: "runner", Level: hclog.Error, Output: testWriter{t}}),
		Worker: worker.Config{
			Command:    []string{exe},
			Env:        []string{modelEnv + "=1"},
			MinBackoff: 20 * time.Millisecond,
			MaxBackoff: 200 * time.Millisecond,
		},
	}
	if more != nil {
		more(&cfg)
	}
	srv := runner.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	r := &testRunner{addr: lis.Addr().String(), stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		// A short drain: stopping a runner is how tests kill a model.
		_ = srv.Serve(ctx, lis, 20*time.Millisecond)
	}()
	t.Cleanup(func() { r.kill(t) })
	return r
}

// kill stops the runner at once: calls in flight are cut.
func (r *testRunner) kill(t testing.TB) {
	r.stop()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Errorf("runner %s did not stop within 10s", r.addr)
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func modelID(i int) string { return fmt.Sprintf("m%03d", i) }
