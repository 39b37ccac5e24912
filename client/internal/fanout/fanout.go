// Package fanout runs one function per target concurrently, with a bound on
// how many run at once, and returns by the caller's deadline whatever the
// functions do: a function that hangs past it is abandoned (its context is
// cancelled) and reported as unfinished, never waited for.
package fanout

import (
	"context"
	"time"
)

// Options bound a fan-out.
type Options struct {
	// Concurrency is the most functions running at once; 0 or less runs
	// all at once.
	Concurrency int
	// Timeout, if positive, is each function's own deadline (within the
	// caller's).
	Timeout time.Duration
}

// Outcome is one target's result.
type Outcome[R any] struct {
	// Value is what the function returned; the zero value if not Done.
	Value R
	// Done is false when the caller's context ended first (the function
	// was still running or never started).
	Done bool
	// Started is false when the context ended before the function could
	// start (all concurrency slots were busy).
	Started bool
}

type item[R any] struct {
	i int
	v R
}

// Run calls fn(ctx, i) for i in [0, n) and returns the n outcomes once all
// are done or ctx ends, whichever comes first. fn must honour its context;
// if it does not, it keeps running after Run returned and its value is
// dropped. Run never blocks on a function after ctx ended.
func Run[R any](ctx context.Context, n int, opt Options, fn func(ctx context.Context, i int) R) []Outcome[R] {
	out := make([]Outcome[R], n)
	if n == 0 {
		return out
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // abandon whatever still runs
	// Buffered for all n, so a late function never blocks on a send.
	results := make(chan item[R], n)
	started := make([]bool, n) // written by the dispatcher only, read after it stops
	dispatched := make(chan struct{})

	call := func(i int) {
		cctx := ctx
		if opt.Timeout > 0 {
			var c context.CancelFunc
			cctx, c = context.WithTimeout(ctx, opt.Timeout)
			defer c()
		}
		results <- item[R]{i, fn(cctx, i)}
	}

	if opt.Concurrency <= 0 || opt.Concurrency >= n {
		for i := range n {
			started[i] = true
			go call(i)
		}
		close(dispatched)
	} else {
		slots := make(chan struct{}, opt.Concurrency)
		go func() {
			defer close(dispatched)
			for i := range n {
				select {
				case slots <- struct{}{}:
				case <-ctx.Done():
					return
				}
				started[i] = true
				go func() {
					defer func() { <-slots }()
					call(i)
				}()
			}
		}()
	}

	for got := 0; got < n; got++ {
		select {
		case r := <-results:
			out[r.i].Value, out[r.i].Done = r.v, true
		case <-ctx.Done():
			cancel()
			<-dispatched // returns at once: the dispatcher watches ctx
			for i := range out {
				out[i].Started = started[i]
			}
			// Take what arrived in the meantime.
			for {
				select {
				case r := <-results:
					out[r.i].Value, out[r.i].Done = r.v, true
				default:
					return out
				}
			}
		}
	}
	<-dispatched
	for i := range out {
		out[i].Started = started[i]
	}
	return out
}
