package fanout_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/client/internal/fanout"
)

// A function that ignores its context does not hold the fan-out past the
// caller's deadline.
func TestReturnsAtDeadlineDespiteHangingFunctions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	release := make(chan struct{})
	defer close(release)
	t0 := time.Now()
	outs := fanout.Run(ctx, 100, fanout.Options{}, func(ctx context.Context, i int) int {
		if i%10 == 0 {
			<-release // hangs, ignoring ctx
		}
		return i * 2
	})
	if took := time.Since(t0); took > 150*time.Millisecond {
		t.Errorf("returned after %v, deadline 100ms", took)
	}
	for i, o := range outs {
		if hung := i%10 == 0; o.Done == hung || !o.Started {
			t.Errorf("outcome %d: %+v (hung: %v)", i, o, hung)
		}
		if !o.Done {
			continue
		}
		if o.Value != i*2 {
			t.Errorf("outcome %d has value %d, want %d", i, o.Value, i*2)
		}
	}
}

func TestConcurrencyBoundAndPerTargetTimeout(t *testing.T) {
	var running, peak atomic.Int32
	outs := fanout.Run(context.Background(), 40, fanout.Options{Concurrency: 4, Timeout: 30 * time.Millisecond}, func(ctx context.Context, i int) bool {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		if i == 7 {
			<-ctx.Done() // only the per-target timeout ends this one
			return false
		}
		time.Sleep(2 * time.Millisecond)
		return true
	})
	if p := peak.Load(); p != 4 {
		t.Errorf("peak concurrency %d, want 4", p)
	}
	for i, o := range outs {
		if !o.Done || o.Value != (i != 7) {
			t.Errorf("outcome %d: %+v", i, o)
		}
	}
}

// Targets still queued behind the bound when the deadline comes are
// reported as never started.
func TestQueuedTargetsAtDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	outs := fanout.Run(ctx, 10, fanout.Options{Concurrency: 2}, func(ctx context.Context, i int) int {
		<-ctx.Done()
		return i
	})
	started := 0
	for _, o := range outs {
		if o.Started {
			started++
		}
	}
	if started != 2 {
		t.Errorf("%d started, want the 2 the bound allows", started)
	}
}
