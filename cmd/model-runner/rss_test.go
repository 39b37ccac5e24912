package main_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/modelnodes/modelnodes/internal/procfs"
	"github.com/modelnodes/modelnodes/internal/testing/testbin"
)

// The test binary doubles as the RSS baseline: an idle grpc-go server with
// health and reflection, nothing else.
func TestMain(m *testing.M) {
	if addr := os.Getenv("BARE_GRPC_LISTEN"); addr != "" {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			panic(err)
		}
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		reflection.Register(srv)
		_ = srv.Serve(lis)
		return
	}
	os.Exit(m.Run())
}

// BenchmarkIdleRSS reports the resident memory of an idle model-runner (its
// worker excluded) beside that of a bare grpc-go server in the same run.
func BenchmarkIdleRSS(b *testing.B) {
	example := exampleModelBinary(b)
	self, _ := os.Executable()
	for _, tc := range []struct {
		name string
		cmd  func(addr string) *exec.Cmd
	}{
		{"baseline=bare-grpc-health-reflection", func(addr string) *exec.Cmd {
			c := exec.Command(self)
			c.Env = append(os.Environ(), "BARE_GRPC_LISTEN="+addr)
			return c
		}},
		{"model-runner=go-model", func(addr string) *exec.Cmd {
			return exec.Command(binary(b), "serve", "--plaintext", "--listen", addr, "--runtime", "executable",
				"--model-dir", os.TempDir(), "--entry", example)
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var rss float64
			for i := 0; i < b.N; i++ {
				rss = idleRSS(b, tc.cmd)
			}
			b.ReportMetric(rss, "RSS-MiB")
		})
	}
}

func idleRSS(b *testing.B, mk func(addr string) *exec.Cmd) float64 {
	addr := freePort(b)
	cmd := mk(addr)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if ctx.Err() != nil {
			b.Fatalf("never SERVING: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // let start-up garbage settle
	rss, err := procfs.RSSMiB(cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	return rss
}

// exampleModelBinary returns the example-model binary: `make build`'s, or a
// fresh one.
func exampleModelBinary(b testing.TB) string { return testbin.Path(b, "example-model") }
