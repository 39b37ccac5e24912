//go:build e2e

package sandbox

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/gomodel"
	"github.com/modelnodes/modelnodes/runner/pyhost"
	"github.com/modelnodes/modelnodes/runner/worker"
)

// goEchoModel is the Go worker of the benchmark: the test binary serving
// echo(x) with runner/gomodel, as cmd/example-model does.
func goEchoModel() {
	gomodel.Main(gomodel.Model{New: func(string, gomodel.Args) (gomodel.Instance, error) { return goEcho{}, nil }})
}

type goEcho struct{}

func (goEcho) Call(method string, args gomodel.Args) (*commonspb.Variant, error) {
	return args.At(0)
}

// BenchmarkSandboxedCall is the runner's Call latency with its worker in
// the real sandbox, with the seccomp filter beside without it, in the same
// run: a Python echo model (CPython behind the filter) and a Go one. The
// pairs differ only in Spec.Seccomp; compare them with
// `benchstat -col /seccomp`.
func BenchmarkSandboxedCall(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("the sandbox needs root (namespaces, mounts, setuid)")
	}
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	host, err := pyhost.Install(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	pymodel, err := filepath.Abs("../../runner/testdata/pymodel")
	if err != nil {
		b.Fatal(err)
	}
	models := []struct {
		name, class string
		argv        []string
		readOnly    []string
	}{
		{"python", "crunch_base.Tracker", []string{"/usr/bin/python3", "-B", host, "--model-dir", pymodel}, []string{filepath.Dir(host), pymodel}},
		{"go", "echo.Echo", []string{self, "gomodel"}, []string{filepath.Dir(self)}},
	}
	arg := []*commonspb.Argument{{Position: 0, Data: commonspb.Double(1.5)}}
	for _, m := range models {
		// Both runners first, then their benchmarks one after the other:
		// the pair shares the machine's state as closely as it can.
		clients := map[string]dspb.DynamicSubclassServiceClient{}
		for _, mode := range []string{SeccompOff, "on"} {
			spec := &Spec{
				UID: 64123, GID: 64123, Hostname: "model",
				ReadOnly: append([]string{"/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache"}, m.readOnly...),
				Landlock: landlockMode(),
				Env:      []string{"LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1", "GOMAXPROCS=1"},
			}
			if mode == SeccompOff {
				spec.Seccomp = SeccompOff
			}
			clients[mode] = startSandboxedRunner(b, spec, m.argv, m.class)
		}
		// Which of the pair runs first alternates between runs (-count):
		// the first one warms caches the second finds warm.
		order := []string{SeccompOff, "on"}
		if sandboxedCallRuns%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, mode := range order {
			b.Run("model="+m.name+"/seccomp="+mode, func(b *testing.B) {
				benchCalls(b, clients[mode], arg)
			})
		}
	}
	sandboxedCallRuns++
}

// sandboxedCallRuns counts BenchmarkSandboxedCall's runs in this process.
var sandboxedCallRuns int

// startSandboxedRunner serves a runner on loopback whose worker runs argv in
// a sandbox of spec, and returns a client with the model set up.
func startSandboxedRunner(b *testing.B, spec *Spec, argv []string, class string) dspb.DynamicSubclassServiceClient {
	self, _ := os.Executable()
	base := b.TempDir()
	if err := os.Chmod(base, 0o755); err != nil {
		b.Fatal(err)
	}
	spec.Root = filepath.Join(base, "root")
	spec.TmpDir = filepath.Join(base, "tmp")
	for _, d := range []string{spec.Root, spec.TmpDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.Chown(spec.TmpDir, spec.UID, spec.GID); err != nil {
		b.Fatal(err)
	}
	specFile := filepath.Join(base, "spec.json")
	if err := spec.Write(specFile); err != nil {
		b.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := runner.New(runner.Config{
		Logger: hclog.NewNullLogger(),
		Worker: worker.Config{Command: append(Command(self, specFile), argv...), MaxQueue: 256},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, lis, time.Second) }()
	b.Cleanup(func() { cancel(); <-done })
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	wait, stop := context.WithTimeout(ctx, 30*time.Second)
	defer stop()
	for {
		res, err := healthpb.NewHealthClient(conn).Check(wait, &healthpb.HealthCheckRequest{Service: "dynamic_subclass.DynamicSubclassService"})
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if wait.Err() != nil {
			b.Fatalf("the sandboxed worker never became SERVING: %v %v", res, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	client := dspb.NewDynamicSubclassServiceClient(conn)
	if res, err := client.Setup(wait, &dspb.SetupRequest{ClassName: class}); err != nil || res.GetStatus().GetCode() != "SUCCESS" {
		b.Fatalf("Setup(%s): %v %v", class, res, err)
	}
	return client
}

// benchCalls makes b.N echo calls one after another and reports the
// latency percentiles a caller sees.
func benchCalls(b *testing.B, client dspb.DynamicSubclassServiceClient, arg []*commonspb.Argument) {
	ctx := context.Background()
	req := &dspb.CallRequest{MethodName: "echo", MethodArguments: arg}
	for i := 0; i < 50; i++ { // warm the connection and the worker
		if _, err := client.Call(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		res, err := client.Call(ctx, req)
		if err != nil || res.GetStatus().GetCode() != "SUCCESS" {
			b.Fatalf("call: %v %v", res.GetStatus(), err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
