package scheduler

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"

	"github.com/modelnodes/modelnodes/internal/testing/devchain"
)

// solanaFront is a real Solana runtime for tests: litesvm 1.4.1 behind the
// project's JSON-RPC + websocket front (internal/testing/devchain,
// deploy/dev/solana/front.js) on a free loopback port.
type solanaFront struct {
	RPC, WS string
	f       *devchain.Front
}

// startFront starts the front, installing its locked npm dependencies first
// when they are missing. It skips (saying why) only when node is absent.
func startFront(t testing.TB) *solanaFront {
	t.Helper()
	if testing.Short() {
		t.Skip("solana front: integration test skipped with -short")
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("solana front: node is not installed (Debian: apt-get install nodejs npm; .ci/run does)")
	}
	dir, err := filepath.Abs(devchain.Dir(".."))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := devchain.Install(ctx, dir); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	f, err := devchain.Start(sctx, devchain.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Stop(5 * time.Second); err != nil {
			t.Log(err)
		}
		if t.Failed() {
			if out := f.Output(); out != "" {
				t.Logf("solana front output:\n%s", out)
			}
		}
	})
	return &solanaFront{RPC: f.RPC, WS: f.WS, f: f}
}

// controlTimeout bounds one control request.
const controlTimeout = 10 * time.Second

func controlCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), controlTimeout)
}

// setAccount plants (or overwrites) an account owned by owner.
func (f *solanaFront) setAccount(t testing.TB, addr, owner solana.PublicKey, data []byte) {
	t.Helper()
	ctx, cancel := controlCtx()
	defer cancel()
	if _, err := f.f.SetAccount(ctx, addr, owner, data); err != nil {
		t.Fatal(err)
	}
}

func (f *solanaFront) closeAccount(t testing.TB, addr solana.PublicKey) {
	t.Helper()
	ctx, cancel := controlCtx()
	defer cancel()
	if _, err := f.f.CloseAccount(ctx, addr); err != nil {
		t.Fatal(err)
	}
}

// outage makes the RPC answer 503 and drops websockets for d.
func (f *solanaFront) outage(t testing.TB, d time.Duration) {
	t.Helper()
	ctx, cancel := controlCtx()
	defer cancel()
	if err := f.f.Outage(ctx, d); err != nil {
		t.Fatal(err)
	}
}

func (f *solanaFront) dropWebsockets(t testing.TB) {
	t.Helper()
	ctx, cancel := controlCtx()
	defer cancel()
	if err := f.f.DropWebsockets(ctx); err != nil {
		t.Fatal(err)
	}
}

func (f *solanaFront) subscriptions(t testing.TB) int {
	t.Helper()
	ctx, cancel := controlCtx()
	defer cancel()
	s, err := f.f.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s.Subscriptions
}
