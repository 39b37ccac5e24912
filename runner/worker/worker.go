// Package worker runs and supervises the model worker: the process that holds
// the participant's code. The runner never runs model code itself; it talks to
// the worker over a socketpair whose other end the worker inherits as fd 3,
// with the frames of package frame.
//
// The supervisor restarts a worker that exits, hangs or breaks the protocol,
// with exponential backoff, and replays the requests that built the model's
// state (Setup) so a restart is invisible to a coordinator beyond the calls
// that were in flight: calls that arrive while the worker restarts wait for
// the new one, and the worker is reported down only when it crash-loops.
package worker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/runner/frame"
)

// Errors returned by Do. Each says why the worker gave no answer.
var (
	// ErrUnavailable: no worker is running and none is expected soon (the
	// first is starting, the worker crash-loops, or the supervisor stopped).
	ErrUnavailable = errors.New("model worker is not running")
	// ErrBusy: the queue in front of the worker is full.
	ErrBusy = errors.New("model worker queue is full")
	// ErrWorkerDied: the worker exited or was killed while handling the request.
	ErrWorkerDied = errors.New("model worker died during the request")

	// errNotSent: the worker died before the request was sent to it.
	errNotSent = errors.New("model worker died before the request was sent")
)

// Config says how to run the worker.
type Config struct {
	// Command is the worker's argv. The worker finds its socket in fd 3
	// (also named by MODELNODES_WORKER_FD).
	Command []string
	// Env is added to the runner's environment for the worker.
	Env []string
	// Dir is the worker's working directory.
	Dir string
	// StartTimeout bounds the time from start to the worker's hello
	// (loading a large model takes a while). Default 2 minutes.
	StartTimeout time.Duration
	// HangTimeout is the longest a request may run on the worker. A worker
	// that exceeds it is considered hung, killed and restarted. Default 10 minutes.
	HangTimeout time.Duration
	// MaxQueue is how many requests may wait for the worker beyond those it
	// is handling; one more is refused with ErrBusy. Default 128.
	MaxQueue int
	// MaxFrame bounds one frame in either direction. Default frame.DefaultMaxFrame.
	MaxFrame int
	// MinBackoff and MaxBackoff bound the delay between restarts; the delay
	// doubles after each quick failure. Defaults 100 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// MaxHeldRestarts is how many workers in a row may fail (die before
	// they had been ready for a minute, or never get ready) while calls
	// keep waiting for the next one. One more means the worker crash-loops:
	// it is reported down (OnState(nil)) and calls get ErrUnavailable until
	// a worker is ready again. Default 3.
	MaxHeldRestarts int
	// Logger receives the supervisor's events and the worker's output.
	Logger hclog.Logger
	// OnState is called with the worker's hello when it is ready, and with
	// nil when it is down: calls are refused (before the first worker is
	// ready, when it crash-loops, and when the supervisor stops). OnState
	// and OnRestarting are called one at a time, in the order of the
	// changes they report, and must not call the Supervisor back.
	OnState func(*frame.Hello)
	// OnRestarting is called when a ready worker died and its replacement
	// is being started: calls wait for it, so the state reported by
	// OnState still holds for callers.
	OnRestarting func()
	// OnHeld is called for each call that waited for a restarted worker,
	// with how long it waited and why it stopped waiting: nil when the new
	// worker took it, else the error the call returns.
	OnHeld func(waited time.Duration, err error)
	// OnRestart is called each time a worker is started after the first.
	OnRestart func()
	// Starter starts each worker; nil: ExecStarter (the runner's own
	// child).
	Starter Starter
}

const (
	maxConcurrency = 1024
	// stableAfter: a worker that ran this long resets the backoff.
	stableAfter = time.Minute
	stopGrace   = 3 * time.Second
)

// Supervisor runs one worker at a time and routes requests to it.
type Supervisor struct {
	cfg Config
	log hclog.Logger

	cur    atomic.Pointer[conn] // nil while no worker is ready
	queued atomic.Int64         // requests admitted and not yet answered
	limit  atomic.Int64         // most requests admitted at once: the last hello's concurrency + MaxQueue

	// mu guards the restart state. cur is swapped under it too, so a call
	// sees either a worker or the hold, never neither while a restart is
	// coming; and the state callbacks are called under it, so they report
	// the transitions in the order they happened.
	mu       sync.Mutex
	holding  chan struct{} // non-nil while calls wait for a restart; closed when it ends
	upSince  time.Time     // when the current worker got ready; zero before
	failures int           // workers in a row that stopped before being ready for stableAfter

	stickyMu sync.Mutex
	sticky   []stickyReq // replayed in order on every new worker
}

type stickyReq struct {
	key string
	req frame.Request
}

// New returns a supervisor; Run starts the worker.
func New(cfg Config) *Supervisor {
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 2 * time.Minute
	}
	if cfg.HangTimeout <= 0 {
		cfg.HangTimeout = 10 * time.Minute
	}
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = 128
	}
	if cfg.MaxFrame <= 0 {
		cfg.MaxFrame = frame.DefaultMaxFrame
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(30*time.Second, cfg.MinBackoff)
	}
	if cfg.MaxHeldRestarts <= 0 {
		cfg.MaxHeldRestarts = 3
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	return &Supervisor{cfg: cfg, log: cfg.Logger}
}

// Hello returns the running worker's hello, or nil when none is ready.
func (s *Supervisor) Hello() *frame.Hello {
	if c := s.cur.Load(); c != nil {
		return c.hello
	}
	return nil
}

// Remember marks req as part of the model's state under key: every worker
// started from now on gets it replayed before it takes calls. A later
// Remember with the same key replaces it.
func (s *Supervisor) Remember(key string, req *frame.Request) {
	s.stickyMu.Lock()
	defer s.stickyMu.Unlock()
	s.forgetLocked(key)
	s.sticky = append(s.sticky, stickyReq{key: key, req: *req})
}

// Forget drops what Remember stored under key.
func (s *Supervisor) Forget(key string) {
	s.stickyMu.Lock()
	defer s.stickyMu.Unlock()
	s.forgetLocked(key)
}

func (s *Supervisor) forgetLocked(key string) {
	kept := s.sticky[:0]
	for _, r := range s.sticky {
		if r.key != key {
			kept = append(kept, r)
		}
	}
	s.sticky = kept
}

// Run starts the worker and keeps one running until ctx ends; then it stops
// the worker (closing its socket, then SIGKILL after a grace period) and
// returns.
func (s *Supervisor) Run(ctx context.Context) {
	// Calls still waiting for a worker when the runner stops get ErrUnavailable.
	defer s.endHold()
	backoff := s.cfg.MinBackoff
	for first := true; ; first = false {
		if !first && s.cfg.OnRestart != nil {
			s.cfg.OnRestart()
		}
		started := time.Now()
		err := s.runOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if n := s.stopped(); n > s.cfg.MaxHeldRestarts {
			s.endHold()
			if n == s.cfg.MaxHeldRestarts+1 {
				s.log.Warn("model worker keeps failing; calls are refused until one is ready", "failures_in_a_row", n)
			}
		}
		if time.Since(started) > stableAfter {
			backoff = s.cfg.MinBackoff
		}
		s.log.Warn("model worker stopped; restarting", "error", CapField(exitReason(err)), "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, s.cfg.MaxBackoff)
	}
}

// runOnce starts one worker, serves it until it dies, and reports why.
func (s *Supervisor) runOnce(ctx context.Context) error {
	if len(s.cfg.Command) == 0 {
		return errors.New("no worker command configured")
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socketpair: %w", err)
	}
	local := os.NewFile(uintptr(fds[0]), "worker-socket")
	remote := os.NewFile(uintptr(fds[1]), "worker-socket-remote")
	nc, err := net.FileConn(local)
	_ = local.Close()
	if err != nil {
		_ = remote.Close()
		return fmt.Errorf("worker socket: %w", err)
	}

	proc, stdout, stderr, err := s.start(remote)
	_ = remote.Close()
	if err != nil {
		_ = nc.Close()
		return err
	}
	pid := proc.Pid()
	log := s.log.With("worker_pid", pid)
	log.Info("model worker started", "command", s.cfg.Command)

	var outputs sync.WaitGroup
	outputs.Add(2)
	go s.forward(&outputs, log, "stdout", stdout)
	go s.forward(&outputs, log, "stderr", stderr)
	exited := make(chan error, 1)
	go func() {
		outputs.Wait() // read the output to its end first
		_ = stdout.Close()
		_ = stderr.Close()
		exited <- proc.Wait()
	}()

	c := newConn(nc, s.cfg.MaxFrame, proc.Kill)
	defer c.close(ErrWorkerDied)
	// When the worker dies, stop routing calls to it and report it down
	// before the calls in flight learn of it.
	c.onDead = func() { s.down(ctx, c) }

	// Hello, then the replay, before any call may reach the worker.
	helloErr := make(chan error, 1)
	go func() { helloErr <- c.readHello() }()
	timer := time.NewTimer(s.cfg.StartTimeout)
	defer timer.Stop()
	select {
	case err = <-helloErr:
	case <-timer.C:
		err = fmt.Errorf("no hello within %s", s.cfg.StartTimeout)
	case err = <-exited:
		err = fmt.Errorf("exited before its hello: %s", exitReason(err))
		return err
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		proc.Kill()
		<-exited
		return err
	}
	go c.readLoop()
	// Every string of the hello is the model's: capped before it is logged.
	log.Info("model worker ready", "runtime", CapField(c.hello.Runtime), "concurrency", c.hello.Concurrency,
		"services", CapField(strings.Join(c.hello.Services, ",")), "load_error", CapField(c.hello.LoadError))
	if err := s.replay(ctx, c); err != nil {
		log.Warn("replaying the model's setup failed", "error", CapField(err.Error()))
	}
	s.ready(ctx, c)
	defer s.down(ctx, c)

	select {
	case err := <-exited:
		if c.close(fmt.Errorf("%w: %s", ErrWorkerDied, exitReason(err))) {
			return fmt.Errorf("exited: %s", exitReason(err))
		}
		// The conn gave up on the worker first: its reason says why.
		return fmt.Errorf("%w (exited: %s)", c.err(), exitReason(err))
	case <-c.dead:
		// Protocol error or hang: the conn already killed the group.
		reason := c.err()
		return fmt.Errorf("%w (exited: %s)", reason, exitReason(<-exited))
	case <-ctx.Done():
		s.down(ctx, c)
		_ = c.nc.(*net.UnixConn).CloseWrite() // EOF: a polite worker exits
		select {
		case <-exited:
		case <-time.After(stopGrace):
			proc.Kill()
			<-exited
		}
		return ctx.Err()
	}
}

// ready routes calls to c, the new worker, and lets the calls held for it
// go on; then it reports the worker's hello.
func (s *Supervisor) ready(ctx context.Context, c *conn) {
	s.limit.Store(int64(c.hello.Concurrency + s.cfg.MaxQueue))
	s.mu.Lock()
	s.cur.Store(c)
	s.upSince = time.Now()
	if s.holding != nil {
		close(s.holding)
		s.holding = nil
	}
	if s.cfg.OnState != nil {
		s.cfg.OnState(c.hello)
	}
	s.mu.Unlock()
	// A worker that died before it was routed calls is not reported down by
	// its conn (see down): do it here, so that no call keeps finding it.
	if c.err() != nil {
		s.down(ctx, c)
	}
}

// down stops routing calls to c; the first call for a conn reports it. A
// worker that died while the supervisor runs is restarted: unless it
// crash-loops, calls wait for the next one and nothing is reported down.
func (s *Supervisor) down(ctx context.Context, c *conn) {
	s.mu.Lock()
	if !s.cur.CompareAndSwap(c, nil) {
		s.mu.Unlock()
		return
	}
	defer s.mu.Unlock()
	hold := ctx.Err() == nil && s.failuresAfterThis() <= s.cfg.MaxHeldRestarts
	if hold && s.holding == nil {
		s.holding = make(chan struct{})
	}
	switch {
	case hold && s.cfg.OnRestarting != nil:
		s.cfg.OnRestarting()
	case !hold && s.cfg.OnState != nil:
		s.cfg.OnState(nil)
	}
}

// failuresAfterThis is failures once the current worker has stopped now:
// one more, unless the worker had been ready for stableAfter. The caller
// holds mu.
func (s *Supervisor) failuresAfterThis() int {
	if !s.upSince.IsZero() && time.Since(s.upSince) > stableAfter {
		return 0
	}
	return s.failures + 1
}

// stopped counts the current worker's stop and returns the failures in a
// row, this one included.
func (s *Supervisor) stopped() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = s.failuresAfterThis()
	s.upSince = time.Time{}
	return s.failures
}

// endHold refuses the calls waiting for a restart and reports the worker
// down; false if none was held.
func (s *Supervisor) endHold() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	held := s.holding != nil
	if held {
		close(s.holding)
		s.holding = nil
		if s.cfg.OnState != nil {
			s.cfg.OnState(nil)
		}
	}
	return held
}

// current returns the ready worker, or else the channel closed when the
// restart in progress ends; both nil when calls are refused.
func (s *Supervisor) current() (*conn, <-chan struct{}) {
	if c := s.cur.Load(); c != nil {
		return c, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.Load(), s.holding
}

// replay sends the remembered requests to a fresh worker, dropping those that
// fail (the coordinator will see FAILED_PRECONDITION and set up again).
func (s *Supervisor) replay(ctx context.Context, c *conn) error {
	s.stickyMu.Lock()
	reqs := append([]stickyReq(nil), s.sticky...)
	s.stickyMu.Unlock()
	var errs []error
	for _, r := range reqs {
		req := r.req
		rctx, cancel := context.WithTimeout(ctx, s.cfg.HangTimeout)
		res, err := c.do(rctx, &req, s.cfg.HangTimeout)
		cancel()
		if err == nil && res.Code != frame.CodeSuccess {
			err = fmt.Errorf("%s: %s", res.Code, res.Message)
		}
		if err != nil {
			s.Forget(r.key)
			errs = append(errs, fmt.Errorf("%s: %w", r.key, err))
		}
	}
	return errors.Join(errs...)
}

// Do sends req to the worker and waits for its result, ctx's end, or the
// worker's death. A request whose caller gave up still occupies the worker
// until the worker answers it: the model is busy either way.
//
// While a worker that died is being restarted, Do waits for the new one
// (after the model's setup is replayed into it), within ctx and the queue's
// bound; so does a request that was queued for the dead worker and never
// sent to it. A request the worker had received when it died fails with
// ErrWorkerDied: it may have had effects.
func (s *Supervisor) Do(ctx context.Context, req *frame.Request) (*frame.Result, error) {
	c, wait := s.current()
	if c == nil && wait == nil {
		return nil, ErrUnavailable
	}
	if s.queued.Add(1) > s.limit.Load() {
		s.queued.Add(-1)
		return nil, ErrBusy
	}
	defer s.queued.Add(-1)
	for {
		if c == nil {
			var err error
			if c, err = s.await(ctx, wait); err != nil {
				return nil, err
			}
		}
		res, err := c.do(ctx, req, s.cfg.HangTimeout)
		if !errors.Is(err, errNotSent) {
			return res, err
		}
		if c, wait = s.current(); c == nil && wait == nil {
			return nil, ErrUnavailable
		}
	}
}

// await waits for the worker being restarted; wait is closed when the
// restart ends, with a new worker or without one.
func (s *Supervisor) await(ctx context.Context, wait <-chan struct{}) (*conn, error) {
	t0 := time.Now()
	c, err := func() (*conn, error) {
		for {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-wait:
			}
			var c *conn
			if c, wait = s.current(); c != nil {
				return c, nil
			} else if wait == nil {
				return nil, ErrUnavailable
			}
		}
	}()
	if s.cfg.OnHeld != nil {
		s.cfg.OnHeld(time.Since(t0), err)
	}
	return c, err
}

// MaxLogField bounds each string from the worker (an output line, a hello
// field, an error quoting the worker) that goes into the runner's log.
const MaxLogField = 4 << 10

// CapField returns s cut to MaxLogField bytes (at a UTF-8 boundary) with a
// marker saying how much was dropped, so that a model cannot fill the node's
// logs, or the runner's memory through them, with one string.
func CapField(s string) string {
	if len(s) <= MaxLogField {
		return s
	}
	cut := MaxLogField
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return truncated(s[:cut], len(s)-cut)
}

func truncated(head string, dropped int) string {
	return fmt.Sprintf("%s…(%d bytes truncated)", head, dropped)
}

// forward copies the worker's output into the log, one entry per line. A
// line longer than MaxLogField becomes one entry with its head and the
// number of bytes dropped; the rest of it is read and discarded, never held.
func (s *Supervisor) forward(wg *sync.WaitGroup, log hclog.Logger, stream string, r io.Reader) {
	defer wg.Done()
	br := bufio.NewReaderSize(r, MaxLogField)
	for {
		line, err := br.ReadSlice('\n')
		text := string(bytes.TrimSuffix(line, []byte("\n")))
		if errors.Is(err, bufio.ErrBufferFull) {
			dropped := 0
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				dropped += len(bytes.TrimSuffix(line, []byte("\n")))
			}
			// Don't split the last rune of the head.
			cut := len(text)
			for i := len(text) - 1; i >= max(0, len(text)-utf8.UTFMax); i-- {
				if utf8.RuneStart(text[i]) {
					if !utf8.FullRuneInString(text[i:]) {
						cut = i
					}
					break
				}
			}
			if dropped += len(text) - cut; dropped > 0 {
				text = truncated(text[:cut], dropped)
			}
			log.Info("model output", "stream", stream, "line", text)
		} else if len(line) > 0 {
			log.Info("model output", "stream", stream, "line", text)
		}
		if err != nil {
			return
		}
	}
}

func killGroup(pid int) { _ = syscall.Kill(-pid, syscall.SIGKILL) }

func exitReason(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// conn is the runner's end of one worker's socket.
type conn struct {
	nc    net.Conn
	rd    *frame.Reader
	kill  func()
	hello *frame.Hello
	slots chan struct{} // one per request the worker takes at once

	wmu  sync.Mutex
	wbuf []byte

	mu      sync.Mutex
	pending map[uint32]chan *frame.Result
	nextID  uint32
	reason  error
	dead    chan struct{}
	onDead  func() // called once, before pending requests are failed
}

func newConn(nc net.Conn, maxFrame int, kill func()) *conn {
	return &conn{
		nc:      nc,
		rd:      frame.NewReader(nc, maxFrame),
		kill:    kill,
		pending: map[uint32]chan *frame.Result{},
		dead:    make(chan struct{}),
	}
}

func (c *conn) readHello() error {
	k, _, body, err := c.rd.Next()
	if err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	if k != frame.KindHello {
		return fmt.Errorf("%w: first frame is %s, want hello", frame.ErrProtocol, k)
	}
	var h frame.Hello
	if err := json.Unmarshal(body, &h); err != nil {
		return fmt.Errorf("%w: hello: %v", frame.ErrProtocol, err)
	}
	if h.Protocol != frame.ProtocolVersion {
		return fmt.Errorf("%w: worker speaks protocol %d, runner %d", frame.ErrProtocol, h.Protocol, frame.ProtocolVersion)
	}
	h.Concurrency = min(max(h.Concurrency, 1), maxConcurrency)
	c.hello = &h
	c.slots = make(chan struct{}, h.Concurrency)
	return nil
}

func (c *conn) readLoop() {
	for {
		k, id, body, err := c.rd.Next()
		if err != nil {
			c.fail(fmt.Errorf("read from worker: %w", err))
			return
		}
		if k != frame.KindResult {
			c.fail(fmt.Errorf("%w: unexpected %s frame from worker", frame.ErrProtocol, k))
			return
		}
		res, err := frame.DecodeResult(id, body)
		if err != nil {
			c.fail(err)
			return
		}
		c.mu.Lock()
		ch, ok := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if !ok {
			c.fail(fmt.Errorf("%w: result for unknown request %d", frame.ErrProtocol, id))
			return
		}
		<-c.slots
		ch <- res
	}
}

// fail kills the worker because of err and fails every pending request.
// The reason is recorded before the kill, so that the requests and the
// supervisor learn it rather than the kill's "signal: killed".
func (c *conn) fail(err error) {
	if c.close(fmt.Errorf("%w: %v", ErrWorkerDied, err)) { // never signal a process group that may already be gone
		c.kill()
	}
}

// close fails the conn with reason and reports whether this was its first
// failure (later reasons are dropped).
func (c *conn) close(reason error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reason != nil {
		return false
	}
	c.reason = reason
	if c.onDead != nil {
		c.onDead()
	}
	for id, ch := range c.pending {
		delete(c.pending, id)
		close(ch)
	}
	close(c.dead)
	_ = c.nc.Close()
	return true
}

func (c *conn) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reason
}

func (c *conn) do(ctx context.Context, req *frame.Request, hang time.Duration) (*frame.Result, error) {
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.dead:
		return nil, errNotSent
	}
	ch := make(chan *frame.Result, 1)
	c.mu.Lock()
	if c.reason != nil {
		c.mu.Unlock()
		<-c.slots
		return nil, errNotSent
	}
	c.nextID++
	r := *req
	r.ID = c.nextID
	c.pending[r.ID] = ch
	c.mu.Unlock()

	c.wmu.Lock()
	c.wbuf = frame.AppendRequest(c.wbuf[:0], &r)
	_, err := c.nc.Write(c.wbuf)
	if cap(c.wbuf) > 1<<20 {
		c.wbuf = nil // don't pin a large request's buffer
	}
	c.wmu.Unlock()
	if err != nil {
		// A write that failed did not deliver the whole frame: the worker
		// cannot have acted on the request, so the next worker may take it.
		c.fail(fmt.Errorf("write to worker: %w", err))
		return nil, errNotSent
	}

	hung := time.AfterFunc(hang, func() {
		c.fail(fmt.Errorf("request %s ran longer than %s: worker hung", req.Kind, hang))
	})
	select {
	case res, ok := <-ch:
		hung.Stop()
		if !ok {
			return nil, c.err()
		}
		return res, nil
	case <-ctx.Done():
		// The worker still owns the slot; the hang timer still watches it.
		go func() {
			if _, ok := <-ch; ok {
				hung.Stop()
			}
		}()
		return nil, ctx.Err()
	}
}
