package client

import (
	"context"
	"time"

	"github.com/modelnodes/modelnodes/client/discovery"
)

// SetupOnJoin makes the client set up every model as it joins, as
// CrunchDAO's ModelCluster does: a joining model is left out of fan-outs
// (calling it would only answer FAILED_PRECONDITION) until its Setup
// succeeded. A runner whose worker restarts replays the last Setup itself,
// so a model is set up once per connection.
type SetupOnJoin struct {
	// ClassName is Setup's "module.BaseClass".
	ClassName string
	// Args gives each model its constructor arguments; nil sends none.
	Args ArgsFunc
	// Timeout bounds one Setup; default 60 s.
	Timeout time.Duration
	// MaxBackoff bounds the wait between failed attempts; default 30 s
	// (from 200 ms, doubling). Attempts go on while the model is a member:
	// a model that is unreachable now, or faulty until redeployed, may
	// recover.
	MaxBackoff time.Duration
}

// setUp runs Setup on a joining member until it succeeds or the member is
// retired, then marks it ready.
func (c *Client) setUp(ctx context.Context, m *member) {
	spec := c.cfg.SetupOnJoin
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	maxBackoff := spec.MaxBackoff
	if maxBackoff <= 0 {
		maxBackoff = 30 * time.Second
	}
	backoff := 200 * time.Millisecond
	for {
		// Joins are bounded like a fan-out: at most MaxFanoutBytes /
		// MaxReplyBytes Setups in flight, each with the whole per-reply
		// limit (a thousand models joining at once must not each hold
		// MaxReplyBytes).
		select {
		case c.joinSlots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		r := c.setupOne(ctx, m, spec, timeout)
		<-c.joinSlots
		if ctx.Err() != nil {
			return
		}
		if r.OK() {
			c.mu.Lock()
			m.ready.Store(true)
			if p := m.predecessor; p != nil {
				// Make before break: the model's former member served
				// until now.
				m.predecessor = nil
				p.retire()
			}
			c.mu.Unlock()
			c.log.Info("model set up; it joins the next fan-out", "model", r.Model.ID, "latency", r.Latency)
			c.notifyChanged()
			return
		}
		c.log.Warn("setting up a joining model failed; retrying", "model", r.Model.ID, "status", r.Status, "code", r.Code, "message", r.Message, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// setupOne is one Setup attempt through the ordinary fan-out path (so it is
// accounted and timed like any call).
func (c *Client) setupOne(ctx context.Context, m *member, spec *SetupOnJoin, timeout time.Duration) Result {
	c.mu.Lock()
	md := m.model
	c.mu.Unlock()
	m.acquire()
	rs := c.fanTargets(ctx, RPCSetup, []target{{m, md}}, Request{Args: spec.Args, Timeout: timeout}, setupRPC(spec.ClassName))
	return rs[0]
}

// notifyChanged wakes Changed() waiters.
func (c *Client) notifyChanged() {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.changed)
	c.changed = make(chan struct{})
}

// notReady is the result for a model named in Request.Models whose Setup
// on join has not succeeded yet.
func notReady(md discovery.Model) Result {
	return Result{Model: md, Status: Unavailable, Code: "NOT_READY", Message: "the model's Setup on join has not succeeded yet"}
}
