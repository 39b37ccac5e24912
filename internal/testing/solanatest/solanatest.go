// Package solanatest gives tests a real Solana runtime to read from: the
// project's dev chain (litesvm behind deploy/dev/solana/front.js, through
// internal/devchain) on a free loopback port, and a fixture that plants a
// program's Crunch and ModelAuthorization accounts in it. The scheduler's
// tests and the solana source's tests share it.
package solanatest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"

	"github.com/modelnodes/modelnodes/internal/testing/devchain"
	"github.com/modelnodes/modelnodes/scheduler/source/solana/onchain"
)

// Front is a running dev chain: JSON-RPC at RPC, websocket at WS, and a
// control API to plant accounts and simulate faults.
type Front struct {
	RPC, WS string
	f       *devchain.Front
}

// StartFront starts the front, installing its locked npm dependencies first
// when they are missing, and stops it when the test ends. It skips (saying
// why) only with -short or when node is absent.
func StartFront(t testing.TB) *Front {
	t.Helper()
	if testing.Short() {
		t.Skip("solana front: integration test skipped with -short")
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("solana front: node is not installed (Debian: apt-get install nodejs npm; .ci/run does)")
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := devchain.Dir(root)
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
	return &Front{RPC: f.RPC, WS: f.WS, f: f}
}

// repoRoot is the directory of go.mod above the test's working directory
// (a test runs in its package's directory, at any depth).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		up := filepath.Dir(dir)
		if up == dir {
			return "", errors.New("solana front: no go.mod above the working directory")
		}
		dir = up
	}
}

// controlTimeout bounds one control request.
const controlTimeout = 10 * time.Second

// control runs one control request, bounded by controlTimeout, and fails t
// when it fails.
func control(t testing.TB, req func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	if err := req(ctx); err != nil {
		t.Fatal(err)
	}
}

// SetAccount plants (or overwrites) an account owned by owner.
func (f *Front) SetAccount(t testing.TB, addr, owner solana.PublicKey, data []byte) {
	t.Helper()
	control(t, func(ctx context.Context) error {
		_, err := f.f.SetAccount(ctx, addr, owner, data)
		return err
	})
}

// CloseAccount closes an account (a validator announces nothing for it).
func (f *Front) CloseAccount(t testing.TB, addr solana.PublicKey) {
	t.Helper()
	control(t, func(ctx context.Context) error {
		_, err := f.f.CloseAccount(ctx, addr)
		return err
	})
}

// Outage makes the RPC answer 503 and drops websockets for d.
func (f *Front) Outage(t testing.TB, d time.Duration) {
	t.Helper()
	control(t, func(ctx context.Context) error { return f.f.Outage(ctx, d) })
}

// Reset makes the front what a restarted one would be: empty (no account
// at all), its slot back to 1, every websocket dropped.
func (f *Front) Reset(t testing.TB) {
	t.Helper()
	control(t, f.f.Reset)
}

// DropWebsockets closes every websocket connection once.
func (f *Front) DropWebsockets(t testing.TB) {
	t.Helper()
	control(t, f.f.DropWebsockets)
}

// stats reads the front's counters.
func (f *Front) stats(t testing.TB) devchain.Stats {
	t.Helper()
	var s devchain.Stats
	control(t, func(ctx context.Context) (err error) {
		s, err = f.f.Stats(ctx)
		return err
	})
	return s
}

// Slot is the front's current slot.
func (f *Front) Slot(t testing.TB) uint64 {
	t.Helper()
	return f.stats(t).Slot
}

// Subscriptions counts the program subscriptions the front serves.
func (f *Front) Subscriptions(t testing.TB) int {
	t.Helper()
	return f.stats(t).Subscriptions
}

// WaitSubscribed waits up to 10 s for n program subscriptions.
func (f *Front) WaitSubscribed(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for f.Subscriptions(t) < n {
		if time.Now().After(deadline) {
			t.Fatalf("no program subscription registered at the front")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Chain is a program with one crunch ("mid-one", its coordinator Coord,
// certificate hash aa00…) planted in a front.
type Chain struct {
	Front   *Front
	Program solana.PublicKey
	Crunch  solana.PublicKey
	Coord   solana.PublicKey
}

// NewChain plants a new program's crunch in f.
func NewChain(t testing.TB, f *Front) *Chain {
	return NewChainWith(t, f, solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey())
}

// NewChainWith plants the crunch of NewChain at the given addresses (the
// same chain again, in a front that was reset).
func NewChainWith(t testing.TB, f *Front, program, crunch, coord solana.PublicKey) *Chain {
	c := &Chain{Front: f, Program: program, Crunch: crunch, Coord: coord}
	cr := &onchain.Crunch{Name: "mid-one", Bump: 255}
	copy(cr.Coordinator[:], c.Coord[:])
	cr.CertHash[0] = 0xaa
	f.SetAccount(t, c.Crunch, c.Program, cr.Encode())
	return c
}

// Auth returns an authorization of the crunch for modelID, its artifact at
// https://models.example/<modelID>.tar.gz.
func (c *Chain) Auth(modelID string, running bool, memMB uint32) *onchain.ModelAuthorization {
	a := &onchain.ModelAuthorization{ModelID: modelID, SubmissionID: "sub-" + modelID,
		ArtifactURI: "https://models.example/" + modelID + ".tar.gz", MemoryMB: memMB, Bump: 1}
	copy(a.Crunch[:], c.Crunch[:])
	a.Cruncher[0], a.Hotkey[0], a.ArtifactSHA256[0] = 1, 2, 3
	if running {
		a.DesiredState = onchain.DesiredRunning
	}
	return a
}
