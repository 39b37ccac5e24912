// Package consulwatch follows a Consul service's passing instances with
// blocking queries on the health API: the loop that the coordinator's
// discovery and the runner's supersession watch share.
package consulwatch

import (
	"context"
	"time"

	consulapi "github.com/hashicorp/consul/api"
)

// Health describes one watch.
type Health struct {
	Client  *consulapi.Client
	Service string
	// Tag, if set, keeps only instances carrying it.
	Tag string
	// Wait returns the bound of the next blocking query (Consul caps it at
	// 10 minutes); nil or a result of 0: 5 minutes.
	Wait func() time.Duration
	// MaxBackoff bounds the wait between failed queries; default 30 s.
	MaxBackoff time.Duration
	// OnError hears of each failed query and how long until the next.
	OnError func(err error, retryIn time.Duration)
}

// Run calls fn with the passing instances at every answer, changed telling
// whether the answer may differ from the previous one (the first answer,
// and every one after Consul's index moved), until ctx ends (it returns
// ctx.Err()) or fn returns false (it returns nil). A failed query keeps
// what fn last saw (fail static) and is retried with a backoff that
// doubles from 100 ms.
func (h *Health) Run(ctx context.Context, fn func(entries []*consulapi.ServiceEntry, changed bool) bool) error {
	maxBackoff := h.MaxBackoff
	if maxBackoff <= 0 {
		maxBackoff = 30 * time.Second
	}
	var (
		index    uint64
		backoff  time.Duration
		answered bool
	)
	for {
		wait := 5 * time.Minute
		if h.Wait != nil {
			if w := h.Wait(); w > 0 {
				wait = w
			}
		}
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
		entries, meta, err := h.Client.Health().Service(h.Service, h.Tag, true, q)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			backoff = min(max(2*backoff, 100*time.Millisecond), maxBackoff)
			if h.OnError != nil {
				h.OnError(err, backoff)
			}
			index = 0
			if !sleep(ctx, backoff) {
				return ctx.Err()
			}
			continue
		}
		backoff = 0
		changed := true
		switch {
		case meta.LastIndex < index:
			// The index went backwards (a Consul restore or leader
			// change): start over rather than block on a future index.
			index = 0
		case meta.LastIndex == index && answered:
			changed = false // the wait elapsed without a change
		default:
			index = meta.LastIndex
		}
		if !fn(entries, changed) {
			return nil
		}
		// Consul may answer a blocking query early with index 0 or 1:
		// never spin on it.
		if index <= 1 {
			index = 0
			if answered && !sleep(ctx, time.Second) {
				return ctx.Err()
			}
		}
		answered = true
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
