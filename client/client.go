// Package client is the coordinator's side of Model Nodes: it keeps one
// long-lived gRPC connection to every model of a crunch as models join and
// leave (package discovery), and fans one call out to all of them at once,
// returning one Result per model by the deadline whatever the models do.
//
//	c, err := client.New(client.Config{Source: src, TLS: material})
//	go c.Run(ctx)
//	c.WaitMembership(ctx)
//	results := c.Call(ctx, "predict", client.Request{Args: client.Same(args)})
//
// Membership changes are safe during calls: a fan-out calls the models known
// when it starts; a new model joins the next fan-out; a removed model's
// connection is closed once the calls using it have finished.
package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/modelnodes/modelnodes/client/credentials"
	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/client/failures"
)

// Config configures a Client.
type Config struct {
	// Source says which models exist; required.
	Source discovery.Source
	// TLS is the coordinator's certificate and CA; required unless
	// Plaintext.
	TLS credentials.Material
	// Plaintext allows calling runners without TLS (laptops, tests).
	Plaintext bool
	// Concurrency bounds calls in flight per fan-out; default 1024.
	Concurrency int
	// MaxReplyBytes caps one model's reply (one gRPC message as it comes
	// off the wire, and after decompression); default DefaultMaxReplyBytes.
	// A bigger reply is refused from its 5-byte length prefix, before its
	// bytes are buffered: the model's result is TooLarge.
	MaxReplyBytes int
	// MaxFanoutBytes caps the replies of one fan-out together: of n models
	// called, each may send min(MaxReplyBytes, MaxFanoutBytes/n); default
	// DefaultMaxFanoutBytes. It also sizes the HTTP/2 windows
	// (MaxFanoutBytes/Concurrency, 64 KiB to 1 MiB), so that one fan-out
	// holds at most about 2 × MaxFanoutBytes of replies (docs/client.md).
	MaxFanoutBytes int64
	// Timeout is each model's deadline when a Request sets none; 0 leaves
	// only the caller's context deadline.
	Timeout time.Duration
	// FailureThreshold and OnFailing: see failures.Config.
	FailureThreshold int
	OnFailing        func(model string, s failures.Stats)
	// Registerer receives the metrics; nil keeps them private.
	Registerer prometheus.Registerer
	// Logger receives membership changes.
	Logger hclog.Logger
	// DialOptions are appended to the client's own (tests, tuning).
	DialOptions []grpc.DialOption
	// SetupOnJoin, if set, sets up every model as it joins; fan-outs
	// call only models whose Setup succeeded.
	SetupOnJoin *SetupOnJoin
	// Delegation, if set, checks on every model call that the runner
	// presents the cruncher's wallet delegation for the key of the TLS
	// connection (CrunchDAO's secure mode); a failed check makes the
	// result Unauthenticated.
	Delegation DelegationCheck
}

// The reply limits' defaults. Predictions are small: 4 MiB is what
// CrunchDAO's Python client (grpcio) accepts by default, and a fan-out's
// replies together stay within 256 MiB: 4 MiB each up to 64 models,
// 256 KiB each at 1,024.
const (
	DefaultMaxReplyBytes        = 4 << 20
	DefaultMaxFanoutBytes int64 = 256 << 20
)

// Client is a coordinator client. Its methods are safe for concurrent use.
type Client struct {
	cfg      Config
	log      hclog.Logger
	failures *failures.Tracker
	models   prometheus.Gauge

	// joinSlots bounds the Setups on join in flight, so that joining
	// models' replies stay within MaxFanoutBytes too.
	joinSlots chan struct{}

	mu      sync.Mutex
	members map[string]*member
	known   chan struct{} // closed at the first membership
	gotOne  bool
	changed chan struct{} // closed and replaced at every membership change
	closed  bool
}

// New checks cfg and returns a Client; Run starts following membership.
func New(cfg Config) (*Client, error) {
	if cfg.Source == nil {
		return nil, errors.New("client: a discovery source is needed")
	}
	if cfg.TLS == nil && !cfg.Plaintext {
		return nil, errors.New("client: TLS material is needed (or Plaintext, explicitly)")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1024
	}
	if cfg.MaxReplyBytes <= 0 {
		cfg.MaxReplyBytes = DefaultMaxReplyBytes
	}
	if cfg.MaxFanoutBytes <= 0 {
		cfg.MaxFanoutBytes = DefaultMaxFanoutBytes
	}
	if cfg.MaxFanoutBytes < int64(cfg.MaxReplyBytes) {
		return nil, fmt.Errorf("client: the fan-out reply budget (%d bytes) must hold at least one whole reply (%d bytes)", cfg.MaxFanoutBytes, cfg.MaxReplyBytes)
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	c := &Client{
		cfg: cfg,
		log: cfg.Logger,
		failures: failures.New(failures.Config{
			Threshold: cfg.FailureThreshold, OnFailing: cfg.OnFailing, Registerer: cfg.Registerer,
		}),
		models: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "modelnodes_client_models",
			Help: "Models in the current membership.",
		}),
		joinSlots: make(chan struct{}, max(1, cfg.MaxFanoutBytes/int64(cfg.MaxReplyBytes))),
		members:   map[string]*member{},
		known:     make(chan struct{}),
		changed:   make(chan struct{}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(c.models)
	}
	return c, nil
}

// Run follows the source until ctx ends, then closes every connection.
func (c *Client) Run(ctx context.Context) error {
	err := c.cfg.Source.Watch(ctx, c.update)
	c.Close()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// WaitMembership returns once the source reported a first membership.
func (c *Client) WaitMembership(ctx context.Context) error {
	select {
	case <-c.known:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("client: no membership yet: %w", ctx.Err())
	}
}

// Changed returns a channel closed at the next membership change.
func (c *Client) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// Member is one model of the current membership.
type Member struct {
	discovery.Model
	// State is the connection's state (READY, CONNECTING,
	// TRANSIENT_FAILURE, IDLE).
	State connectivity.State
	// Ready is false while a joining model's Setup (SetupOnJoin) has not
	// succeeded: fan-outs leave it out.
	Ready bool
	// Stats is the model's call accounting.
	Stats failures.Stats
}

// Members returns the current membership, sorted by model id.
func (c *Client) Members() []Member {
	c.mu.Lock()
	ms := make([]Member, 0, len(c.members))
	for _, m := range c.members {
		ms = append(ms, Member{Model: m.model, State: m.cc.GetState(), Ready: m.ready.Load()})
	}
	c.mu.Unlock()
	for i := range ms {
		ms[i].Stats = c.failures.Stats(ms[i].ID)
	}
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return ms
}

// Stats returns one model's call accounting.
func (c *Client) Stats(model string) failures.Stats { return c.failures.Stats(model) }

// Close closes every connection (after the calls using them finish).
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	for id, m := range c.members {
		m.retireAll()
		delete(c.members, id)
	}
	c.models.Set(0)
}

// succeed makes m the member of old's model. Without Setup on join m is
// callable at once and old is retired; with it, the member that is
// callable now (old, or old's own predecessor while old is still being set
// up) stays m's predecessor until m is ready. c.mu held.
func (c *Client) succeed(old, m *member) {
	if m.ready.Load() {
		old.retireAll()
		return
	}
	if old.ready.Load() {
		m.predecessor = old
		return
	}
	m.predecessor, old.predecessor = old.predecessor, nil
	old.retire()
}

// update applies a membership: dial new models, retire removed ones, and
// replace a model whose address or name changed.
func (c *Client) update(models []discovery.Model) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	seen := make(map[string]bool, len(models))
	var added, removed int
	for _, md := range models {
		seen[md.ID] = true
		old := c.members[md.ID]
		if old != nil && old.model.Equal(md) {
			old.model.Meta = md.Meta
			continue
		}
		m, err := c.dial(md)
		if err != nil {
			c.log.Error("cannot dial model; leaving it out", "model", md.ID, "target", md.Target, "error", err)
			continue
		}
		if old != nil {
			c.succeed(old, m)
		}
		c.members[md.ID] = m
		added++
	}
	for id, m := range c.members {
		if !seen[id] {
			m.retireAll()
			delete(c.members, id)
			c.failures.Forget(id)
			removed++
		}
	}
	c.models.Set(float64(len(c.members)))
	if added+removed > 0 || !c.gotOne {
		c.log.Info("membership", "models", len(c.members), "added", added, "removed", removed)
		close(c.changed)
		c.changed = make(chan struct{})
	}
	if !c.gotOne {
		c.gotOne = true
		close(c.known)
	}
}

// dialOptions are the options of every model connection.
func (c *Client) dialOptions(md discovery.Model) []grpc.DialOption {
	creds := insecure.NewCredentials()
	if c.cfg.TLS != nil {
		creds = credentials.Transport(c.cfg.TLS, md.TLSName())
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		// The runner enforces grpc-go's default minimum ping interval
		// (5 minutes, which CrunchDAO's client also uses): pinging more
		// often would get the connection closed with too_many_pings.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 5 * time.Minute, Timeout: 20 * time.Second, PermitWithoutStream: true}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 30 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		// Static HTTP/2 windows: no BDP probing pings on every quiet
		// connection (measured: fan-out p50 −25 % at 1,000 models). A
		// runner may fill a window before we read its reply's length, so
		// the windows of a full fan-out together stay within its budget.
		grpc.WithInitialWindowSize(c.window()),
		grpc.WithInitialConnWindowSize(c.window()),
		// No idle per-connection buffers: most connections are idle
		// between fan-outs, and memory per model counts at 1,000 models.
		// Reads need no bufio (crypto/tls already holds a decrypted
		// record); the write buffer comes from a pool for each flush
		// (grpc-go's default since 1.7x).
		grpc.WithReadBufferSize(readBufferSize(c.cfg.TLS != nil)),
		grpc.WithWriteBufferSize(32 << 10),
		// Keep connections up between fan-outs (grpc-go would go idle
		// after 30 minutes and pay a handshake on the next call).
		grpc.WithIdleTimeout(0),
		// Each fan-out sets its own receive limit per call (replyLimit);
		// this default covers any other call on the connection.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(c.cfg.MaxReplyBytes), grpc.MaxCallSendMsgSize(64<<20)),
	}
	if c.cfg.Delegation != nil {
		opts = append(opts, grpc.WithChainUnaryInterceptor(delegationInterceptor(md, c.cfg.Delegation)))
	}
	return append(opts, c.cfg.DialOptions...)
}

// window is the HTTP/2 stream and connection window: MaxFanoutBytes /
// Concurrency, within [64 KiB, 1 MiB] (grpc-go ignores windows under
// 64 KiB; 1 MiB is what was measured to need no BDP probing).
func (c *Client) window() int32 {
	return int32(min(max(c.cfg.MaxFanoutBytes/int64(c.cfg.Concurrency), 64<<10), 1<<20))
}

// replyLimit is the most one model may send in a fan-out of n models:
// MaxReplyBytes, or the fan-out budget's share when that is smaller.
func (c *Client) replyLimit(n int) int {
	return int(min(int64(c.cfg.MaxReplyBytes), c.cfg.MaxFanoutBytes/int64(max(n, 1))))
}

// readBufferSize: 0 (unbuffered) over TLS; plaintext reads would become
// one syscall per frame header, so they keep a small buffer.
func readBufferSize(tls bool) int {
	if tls {
		return 0
	}
	return 4 << 10
}

func (c *Client) dial(md discovery.Model) (*member, error) {
	cc, err := grpc.NewClient(md.Target, c.dialOptions(md)...)
	if err != nil {
		return nil, err
	}
	cc.Connect() // pre-dial: the first fan-out should not pay handshakes
	m := newMember(md, cc)
	if c.cfg.SetupOnJoin == nil {
		m.ready.Store(true)
	} else {
		go c.setUp(m.ctx, m)
	}
	return m, nil
}

// target is a member as a fan-out sees it: the model as it was when the
// fan-out started (update may change member.model's meta under c.mu).
type target struct {
	*member
	model discovery.Model
}

// snapshot takes a reference on the members to call (all ready ones, or
// those named), in model id order; release each with release. Named models
// that cannot be called get their result now: not in the membership, or
// not set up yet (SetupOnJoin).
func (c *Client) snapshot(only []string) ([]target, []Result) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ts []target
	var missing []Result
	if only == nil {
		ts = make([]target, 0, len(c.members))
		for _, m := range c.members {
			if cm := m.callable(); cm != nil {
				ts = append(ts, target{cm, cm.model})
			}
		}
	} else {
		seen := map[string]bool{}
		for _, id := range only {
			if seen[id] {
				continue
			}
			seen[id] = true
			switch m := c.members[id]; {
			case m == nil:
				missing = append(missing, Result{Model: discovery.Model{ID: id}, Status: Unavailable, Code: "NOT_FOUND", Message: "no such model in the membership"})
			case m.callable() == nil:
				missing = append(missing, notReady(m.model))
			default:
				cm := m.callable()
				ts = append(ts, target{cm, cm.model})
			}
		}
	}
	slices.SortFunc(ts, func(a, b target) int { return strings.Compare(a.model.ID, b.model.ID) })
	for _, t := range ts {
		t.acquire()
	}
	return ts, missing
}
