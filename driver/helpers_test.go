package driver_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/modelnodes/modelnodes/internal/testing/testbin"
)

// Helpers of both the rootless tests and the root ones.

// modelRunner returns the model-runner binary: `make build`'s, or a fresh one.
func modelRunner(t *testing.T) string { return testbin.Path(t, "model-runner") }

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
