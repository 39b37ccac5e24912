package worker

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/runner/frame"
)

// fakeWorker is the test binary run as a model worker that speaks the
// protocol as role says; it reports false for a role it does not know.
//
// Roles that never get ready: exit-before-hello, no-hello, bad-protocol
// (a hello for protocol 99), result-first (a result before any hello).
// Roles that serve, one request at a time, each request's Name choosing the
// answer (see serve): serve (exits at EOF on its socket, as a polite worker
// does; exits before its hello while the file named by failFileEnv exists)
// and stubborn (ignores that EOF, and has started a child process in
// its process group that the runner must kill with it). sleep is that child.
func fakeWorker(role string) bool {
	switch role {
	case "sleep":
		time.Sleep(time.Hour)
		return true
	case "exit-before-hello", "no-hello", "bad-protocol", "result-first", "serve", "stubborn":
	default:
		return false
	}
	sock := os.NewFile(3, "worker-socket")
	hello := frame.Hello{Protocol: frame.ProtocolVersion, Runtime: fmt.Sprintf("fake pid=%d", os.Getpid()), Services: []string{"dynamic_subclass"}}
	if f := os.Getenv(failFileEnv); f != "" && fileExists(f) {
		os.Exit(1)
	}
	switch role {
	case "exit-before-hello":
		os.Exit(1)
	case "no-hello":
		time.Sleep(time.Hour)
	case "bad-protocol":
		hello.Protocol = 99
	case "result-first":
		_, _ = sock.Write(frame.AppendResult(nil, &frame.Result{Code: frame.CodeSuccess}))
		time.Sleep(time.Hour)
	case "stubborn":
		child := exec.Command(os.Args[0])
		child.Env = append(os.Environ(), roleEnv+"=sleep")
		if err := child.Start(); err != nil {
			os.Exit(5)
		}
		hello.Runtime += fmt.Sprintf(" child=%d", child.Process.Pid)
	}
	b, _ := json.Marshal(hello)
	if _, err := sock.Write(frame.AppendHello(nil, b)); err != nil {
		os.Exit(2)
	}
	if role == "bad-protocol" {
		time.Sleep(time.Hour)
	}
	serve(sock, role == "stubborn")
	return true
}

// serve answers requests by their Name: history (every request this worker
// got, in order, as kind:name), fail (SETUP_FAILED), crash (exits without
// answering), hang (never answers), block (prints "blocked" and never
// answers), unknown-id (answers another request id),
// bad-kind (sends a request frame back), corrupt (a result frame whose body
// cannot be decoded); anything else succeeds.
func serve(sock *os.File, stubborn bool) {
	rd := frame.NewReader(sock, 0)
	var history []string
	for {
		k, id, body, err := rd.Next()
		if err != nil {
			if stubborn {
				time.Sleep(time.Hour)
			}
			os.Exit(0)
		}
		req, err := frame.DecodeRequest(k, id, body)
		if err != nil {
			os.Exit(4)
		}
		history = append(history, k.String()+":"+req.Name)
		res := &frame.Result{ID: id, Code: frame.CodeSuccess}
		switch req.Name {
		case "history":
			res.Message = strings.Join(history, ",")
		case "fail":
			res.Code, res.Message = frame.CodeSetupFailed, "refused on purpose"
		case "crash":
			os.Exit(3)
		case "hang":
			continue
		case "block":
			fmt.Println("blocked")
			continue
		case "unknown-id":
			res.ID = id + 1000
		case "bad-kind":
			_, _ = sock.Write(frame.AppendRequest(nil, &frame.Request{Kind: frame.KindSetup, ID: id, Name: "x"}))
			continue
		case "corrupt":
			var f [10]byte
			binary.BigEndian.PutUint32(f[:], 6) // kind, id and a 1-byte body
			f[4] = byte(frame.KindResult)
			binary.BigEndian.PutUint32(f[5:], id)
			_, _ = sock.Write(f[:])
			continue
		}
		_, _ = sock.Write(frame.AppendResult(nil, res))
	}
}

// running is a supervisor whose Run goroutine the test controls, with what
// it reported: its log, the states (a hello's Runtime, "down", or
// "restarting"), the times of its restarts, the outcome of each held call.
type running struct {
	s      *Supervisor
	logs   *logBuffer
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	states   []string
	restarts []time.Time
	held     []error
}

// start runs a supervisor of a fake worker playing role; cfg may set
// timeouts, backoff and more environment (Command, Logger and the callbacks
// are the test's). prep runs before the first worker starts.
func start(t *testing.T, role string, cfg Config, prep ...func(*Supervisor)) *running {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r := &running{logs: &logBuffer{}, done: make(chan struct{})}
	cfg.Command = []string{self}
	cfg.Env = append([]string{roleEnv + "=" + role}, cfg.Env...)
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: r.logs, JSONFormat: true})
	cfg.OnState = func(h *frame.Hello) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if h == nil {
			r.states = append(r.states, "down")
		} else {
			r.states = append(r.states, h.Runtime)
		}
	}
	cfg.OnRestarting = func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.states = append(r.states, "restarting")
	}
	cfg.OnHeld = func(_ time.Duration, err error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.held = append(r.held, err)
	}
	cfg.OnRestart = func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.restarts = append(r.restarts, time.Now())
	}
	r.s = New(cfg)
	for _, p := range prep {
		p(r.s)
	}
	var ctx context.Context
	ctx, r.cancel = context.WithCancel(context.Background())
	go func() { defer close(r.done); r.s.Run(ctx) }()
	t.Cleanup(func() {
		r.cancel()
		<-r.done
		if t.Failed() {
			t.Logf("supervisor log:\n%s", r.logs.String())
		}
	})
	return r
}

// stop ends Run and returns how long that took.
func (r *running) stop(t *testing.T) time.Duration {
	t.Helper()
	t0 := time.Now()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(stopGrace + 10*time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	return time.Since(t0)
}

func (r *running) statesNow() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.states...)
}

func (r *running) heldNow() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.held...)
}

func (r *running) restartsNow() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.restarts...)
}

// ready waits for a worker other than the one whose Runtime was prev and
// returns its hello.
func (r *running) ready(t *testing.T, prev string) *frame.Hello {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if h := r.s.Hello(); h != nil && h.Runtime != prev {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new worker became ready (states %q)", r.statesNow())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitLog waits for a log entry with message msg whose error contains one
// of subs.
func (r *running) waitLog(t *testing.T, msg string, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, e := range r.logs.entries() {
			for _, sub := range subs {
				if e["@message"] == msg && strings.Contains(fmt.Sprint(e["error"]), sub) {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q log entry with an error containing one of %q", msg, subs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func call(t *testing.T, s *Supervisor, name string) (*frame.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return s.Do(ctx, &frame.Request{Kind: frame.KindCall, Name: name})
}

// A worker comes up, answers, and goes down politely when the runner stops:
// the states say ready then down, and Run returns without waiting out the
// kill grace period. No restart happened.
func TestWorkerStartsServesAndStops(t *testing.T) {
	t.Parallel()
	r := start(t, "serve", Config{})
	h := r.ready(t, "")
	if h.Protocol != frame.ProtocolVersion || h.Concurrency != 1 {
		t.Errorf("hello %+v: want protocol %d and the concurrency 0 raised to 1", h, frame.ProtocolVersion)
	}
	res, err := call(t, r.s, "history")
	if err != nil || res.Code != frame.CodeSuccess || res.Message != "call:history" {
		t.Fatalf("call: %+v %v", res, err)
	}
	if took := r.stop(t); took >= stopGrace {
		t.Errorf("stopping a worker that exits at EOF took %v: the runner waited for the kill", took)
	}
	if got := r.statesNow(); len(got) != 2 || got[0] != h.Runtime || got[1] != "down" {
		t.Errorf("states %q, want [%q down]", got, h.Runtime)
	}
	if n := len(r.restartsNow()); n != 0 {
		t.Errorf("%d restarts, want none", n)
	}
	if _, err := call(t, r.s, "history"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("a call after the stop: %v, want ErrUnavailable", err)
	}
}

// A worker that ignores the end of its socket is killed after the grace
// period, with everything in its process group: a model cannot keep the
// node busy after its runner stopped.
func TestStubbornWorkerIsKilledWithItsChildren(t *testing.T) {
	t.Parallel()
	r := start(t, "stubborn", Config{})
	h := r.ready(t, "")
	_, c, ok := strings.Cut(h.Runtime, "child=")
	child, err := strconv.Atoi(c)
	if !ok || err != nil {
		t.Fatalf("the stubborn worker named no child: %q", h.Runtime)
	}
	if syscall.Kill(child, 0) != nil {
		t.Fatalf("the worker's child %d is not running", child)
	}
	took := r.stop(t)
	if took < stopGrace {
		t.Errorf("Run returned after %v, before the grace period (%v) a worker gets to exit", took, stopGrace)
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(child) {
		if time.Now().After(deadline) {
			t.Fatalf("the worker's child %d outlived the stop by 5s", child)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid runs (a zombie waiting for init does not).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, after, _ := strings.Cut(string(stat), ") ")
	return !strings.HasPrefix(after, "Z")
}

// A worker that dies during a call fails that call with ErrWorkerDied; a new
// worker takes over, the model's remembered setup replayed into it before
// any call: the latest request under each key, in the order remembered, and
// not one that failed on an earlier replay. The states say ready,
// restarting, ready: never down.
func TestCrashedWorkerIsReplacedWithItsSetup(t *testing.T) {
	t.Parallel()
	r := start(t, "serve", Config{MinBackoff: 10 * time.Millisecond}, func(s *Supervisor) {
		s.Remember("model", &frame.Request{Kind: frame.KindSetup, Name: "Model"})
		s.Remember("broken", &frame.Request{Kind: frame.KindSetup, Name: "fail"})
	})
	first := r.ready(t, "")
	if res, err := call(t, r.s, "history"); err != nil || res.Message != "setup:Model,setup:fail,call:history" {
		t.Fatalf("first worker: %+v %v, want both setups replayed before the call", res, err)
	}
	r.waitLog(t, "replaying the model's setup failed", "broken: SETUP_FAILED: refused on purpose")
	r.s.Remember("model", &frame.Request{Kind: frame.KindSetup, Name: "Model2"})
	if _, err := call(t, r.s, "crash"); !errors.Is(err, ErrWorkerDied) {
		t.Fatalf("a call whose worker exited: %v, want ErrWorkerDied", err)
	}
	second := r.ready(t, first.Runtime)
	if res, err := call(t, r.s, "history"); err != nil || res.Message != "setup:Model2,call:history" {
		t.Errorf("second worker: %+v %v, want only setup:Model2 replayed (the latest under its key; the failed one forgotten)", res, err)
	}
	if got, want := r.statesNow(), []string{first.Runtime, "restarting", second.Runtime}; !slices.Equal(got, want) {
		t.Errorf("states %q, want %q", got, want)
	}
	if n := len(r.restartsNow()); n != 1 {
		t.Errorf("%d restarts, want 1", n)
	}
}

// A worker that keeps failing is restarted with a delay that doubles from
// MinBackoff up to MaxBackoff: a broken submission costs the node a few
// process starts a second, not a busy loop.
func TestFailingWorkerBacksOff(t *testing.T) {
	t.Parallel()
	const minB, maxB = 100 * time.Millisecond, 200 * time.Millisecond
	r := start(t, "exit-before-hello", Config{MinBackoff: minB, MaxBackoff: maxB})
	deadline := time.Now().Add(20 * time.Second)
	var restarts []time.Time
	for restarts = r.restartsNow(); len(restarts) < 4; restarts = r.restartsNow() {
		if time.Now().After(deadline) {
			t.Fatalf("%d restarts in 20s, want 4", len(restarts))
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.stop(t)
	// Between two restarts: the worker's start and exit, then the backoff.
	// Load can only stretch the first part, so the backoff is a lower bound;
	// an uncapped backoff (400 ms, then 800 ms) would exceed the upper one.
	for i, want := range []time.Duration{2 * minB, maxB, maxB} {
		gap := restarts[i+1].Sub(restarts[i])
		if gap < want {
			t.Errorf("restart %d came %v after the previous one, want at least the backoff %v", i+2, gap, want)
		}
		if i == 2 && gap >= 4*maxB {
			t.Errorf("restart %d came %v after the previous one: the backoff is not capped at %v", i+2, gap, maxB)
		}
	}
	if h := r.s.Hello(); h != nil {
		t.Errorf("a worker that never said hello is reported ready: %+v", h)
	}
	if got := r.statesNow(); len(got) != 0 {
		t.Errorf("states %q, want none: no worker was ever ready", got)
	}
}

// A worker that does not get ready is never routed a call; the log says
// why, and it is replaced.
func TestWorkerThatNeverGetsReady(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		role string
		why  []string // one of
	}{
		// The exit and the end of the socket race: either is the reason.
		{"exit-before-hello", []string{"exited before its hello: exit status 1", "read hello: EOF"}},
		{"no-hello", []string{"no hello within 300ms"}},
		{"bad-protocol", []string{"worker speaks protocol 99, runner 1"}},
		{"result-first", []string{"first frame is result, want hello"}},
	} {
		t.Run(tc.role, func(t *testing.T) {
			r := start(t, tc.role, Config{StartTimeout: 300 * time.Millisecond, MinBackoff: 10 * time.Millisecond})
			r.waitLog(t, "model worker stopped; restarting", tc.why...)
			if _, err := call(t, r.s, "history"); !errors.Is(err, ErrUnavailable) {
				t.Errorf("a call: %v, want ErrUnavailable", err)
			}
			deadline := time.Now().Add(20 * time.Second)
			for len(r.restartsNow()) == 0 {
				if time.Now().After(deadline) {
					t.Fatal("the worker was not restarted")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if got := r.statesNow(); len(got) != 0 {
				t.Errorf("states %q, want none", got)
			}
		})
	}
}

// A worker that breaks the protocol or hangs during a call is killed: the
// call fails with ErrWorkerDied naming the fault, the log says it, and a
// new worker answers the next call.
func TestWorkerFaultsFailTheCallAndRestart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		request string
		why     string // in the call's error
		log     string // in the restart's log entry
	}{
		// The call learns whichever the runner saw first, the end of the
		// socket or the exit; the log has the exit status either way.
		{"crash", "", "exit status 3"},
		{"unknown-id", "result for unknown request", ""},
		{"bad-kind", "unexpected setup frame from worker", ""},
		{"corrupt", frame.ErrProtocol.Error(), ""},
		{"hang", "ran longer than 300ms: worker hung", ""},
	} {
		t.Run(tc.request, func(t *testing.T) {
			r := start(t, "serve", Config{HangTimeout: 300 * time.Millisecond, MinBackoff: 10 * time.Millisecond})
			first := r.ready(t, "")
			_, err := call(t, r.s, tc.request)
			if !errors.Is(err, ErrWorkerDied) {
				t.Fatalf("call %s: %v, want ErrWorkerDied", tc.request, err)
			}
			// The call's error and the restart's log entry name the fault,
			// not the kill that followed it.
			if !strings.Contains(err.Error(), tc.why) {
				t.Errorf("call %s: %v, want the reason %q", tc.request, err, tc.why)
			}
			r.waitLog(t, "model worker stopped; restarting", tc.why+tc.log)
			r.ready(t, first.Runtime)
			if res, err := call(t, r.s, "history"); err != nil || res.Message != "call:history" {
				t.Errorf("the next worker: %+v %v", res, err)
			}
		})
	}
}
