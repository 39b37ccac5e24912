// Package leader elects the one scheduler instance that reconciles, with a
// Consul lock: the others keep reading their sources and serving their
// status API, ready to take over.
package leader

import (
	"context"
	"fmt"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/redact"
)

// ConsulLock elects a leader with a Consul lock (a KV key held by a
// session with a TTL). When the leader dies without releasing it, the
// session expires after at most 2×SessionTTL and another instance takes
// over after LockDelay.
type ConsulLock struct {
	Client     *consulapi.Client
	Key        string        // e.g. "modelnodes/scheduler/leader"
	Instance   string        // stored in the key, for operators
	SessionTTL time.Duration // default 15 s
	LockDelay  time.Duration // default 5 s
	Logger     hclog.Logger
}

// Lead blocks until this instance holds the lock (or ctx ends), then
// returns a context cancelled when the lock is lost or ctx ends, and a
// function that releases the lock. It implements scheduler.Elector.
func (l *ConsulLock) Lead(ctx context.Context) (context.Context, func(), error) {
	ttl := l.SessionTTL
	if ttl <= 0 {
		ttl = 15 * time.Second
	}
	delay := l.LockDelay
	if delay <= 0 {
		delay = 5 * time.Second
	}
	lock, err := l.Client.LockOpts(&consulapi.LockOptions{
		Key:   l.Key,
		Value: []byte(l.Instance),
		SessionOpts: &consulapi.SessionEntry{
			Name: "modelnodes-scheduler " + l.Instance, TTL: ttl.String(), LockDelay: delay,
			Behavior: consulapi.SessionBehaviorDelete,
		},
		MonitorRetries: 5, MonitorRetryTime: time.Second,
		LockWaitTime: 5 * time.Second,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("consul lock %s: %w", l.Key, err)
	}
	for {
		lost, err := lock.Lock(ctx.Done())
		if ctx.Err() != nil {
			if lost != nil {
				_ = lock.Unlock()
			}
			return nil, nil, ctx.Err()
		}
		if err != nil || lost == nil {
			if l.Logger != nil {
				l.Logger.Warn("consul lock not acquired; retrying", "key", l.Key, "error", redact.Error(err))
			}
			select {
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			case <-time.After(time.Second):
			}
			continue
		}
		lctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-lost:
			case <-lctx.Done():
			}
			cancel()
		}()
		release := func() {
			cancel()
			_ = lock.Unlock()
		}
		return lctx, release, nil
	}
}
