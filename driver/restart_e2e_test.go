//go:build e2e

package driver_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/nomad/plugins/drivers"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
)

// A model that the kernel OOM-kills in its sandbox costs the coordinator the
// call that was running, nothing more: health stays SERVING while the runner
// restarts the worker (CrunchDAO's client reconnects a model whose health
// check fails), and the calls made right after the kill wait for the new
// worker and succeed on it, the model's instance rebuilt before them.
func TestOOMKilledWorkerKeepsTheModelServing(t *testing.T) {
	e := newEnv(t, "testdata/hostile", &drivers.LinuxResources{MemoryLimitBytes: 256 << 20, CPUShares: 100}, nil)
	e.start()
	c := e.client()
	setup(t, c, "base.Base")

	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	seen := map[string][]healthpb.HealthCheckResponse_ServingStatus{}
	for _, svc := range []string{"", "dynamic_subclass.DynamicSubclassService"} {
		stream, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatal(err)
		}
		first, err := stream.Recv()
		if err != nil || first.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health of %q before the kill: %v %v", svc, first, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				res, err := stream.Recv()
				if err != nil {
					return
				}
				mu.Lock()
				seen[svc] = append(seen[svc], res.GetStatus())
				mu.Unlock()
			}
		}()
	}

	res := call(t, c, "balloon", commonspb.Int(400))
	if res.GetStatus().GetCode() != "UNKNOWN" {
		t.Fatalf("balloon(400 MiB) under a 256 MiB task: %v, want the worker killed (UNKNOWN)", res.GetStatus())
	}
	t0 := time.Now()
	if got := call(t, c, "whoami").GetStatus(); got.GetCode() != "SUCCESS" {
		t.Errorf("a call right after the OOM kill: %v, want SUCCESS on the restarted worker", got)
	}
	t.Logf("the call right after the OOM kill was answered in %v", time.Since(t0))
	sctx, scancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer scancel()
	if sres, err := c.Setup(sctx, &dspb.SetupRequest{ClassName: "base.Base"}); err != nil || sres.GetStatus().GetCode() != "SUCCESS" ||
		sres.GetStatus().GetMessage() != "Instance already exists" {
		t.Errorf("Setup after the OOM kill: %v %v, want SUCCESS: Instance already exists (replayed)", sres, err)
	}

	time.Sleep(200 * time.Millisecond) // let any late health update arrive
	cancel()
	wg.Wait()
	for svc, sts := range seen {
		for _, st := range sts {
			if st != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("health of %q went %v around the OOM kill (all: %v)", svc, st, sts)
				break
			}
		}
	}
}
