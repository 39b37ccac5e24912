package driver_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Helpers of both the rootless tests and the root ones.

var (
	runnerOnce sync.Once
	runnerPath string
	runnerErr  error
)

// modelRunner returns the model-runner binary: `make build`'s, or a fresh one.
func modelRunner(t *testing.T) string {
	runnerOnce.Do(func() {
		if dir := os.Getenv("MODELNODES_BIN"); dir != "" {
			if p := filepath.Join(dir, "model-runner"); fileExists(p) {
				runnerPath = p
				return
			}
		}
		dir, err := os.MkdirTemp("", "modelbox-test-")
		if err != nil {
			runnerErr = err
			return
		}
		runnerPath = filepath.Join(dir, "model-runner")
		if out, err := exec.Command("go", "build", "-o", runnerPath, "../cmd/model-runner").CombinedOutput(); err != nil {
			runnerErr = errors.New(string(out))
		}
	})
	if runnerErr != nil {
		t.Fatalf("building model-runner: %v", runnerErr)
	}
	return runnerPath
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// serviceDynamicSubclass is the health service of a loaded model that
// answers Setup and Call.
const serviceDynamicSubclass = "dynamic_subclass.DynamicSubclassService"

// awaitServing polls the plaintext gRPC health service at addr (a runner's
// port, or its health-only port) until service is SERVING ("" is the runner
// as a whole: a worker takes calls), for at most timeout. A runner listens
// before its worker is up, so a port that accepts connections, which is all
// a TCP check sees, is not yet a model that answers.
func awaitServing(addr, service string, timeout time.Duration) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	health := healthpb.NewHealthClient(conn)
	for {
		res, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if ctx.Err() != nil {
			last := res.GetStatus().String()
			if err != nil {
				last = err.Error()
			}
			return fmt.Errorf("%s: health of %q not SERVING within %s (last: %s)", addr, service, timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
