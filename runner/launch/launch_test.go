package launch_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/runner/frame"
	"github.com/modelnodes/modelnodes/runner/launch"
	"github.com/modelnodes/modelnodes/runner/worker"
)

// The test binary plays the launcher's prefix (role "prefix": it marks the
// environment and executes the rest of its argv, as the sandbox would) and
// the worker (role "worker").
const roleEnv = "LAUNCH_TEST_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "prefix":
		// argv: self prefix -- worker argv...
		if len(os.Args) < 3 || os.Args[1] != "--" {
			os.Exit(126)
		}
		env := []string{roleEnv + "=worker", "WRAPPED=by the prefix"}
		err := syscall.Exec(os.Args[2], os.Args[2:], env)
		fmt.Fprintln(os.Stderr, err)
		os.Exit(126)
	case "worker":
		fakeWorker()
		return
	}
	os.Exit(m.Run())
}

// fakeWorker says hello (its pid and what the prefix set), prints a line,
// then answers requests by name: history, crash (exits 3), hang (never
// answers, nor exits when its socket ends); anything else succeeds.
func fakeWorker() {
	sock := os.NewFile(3, "worker-socket")
	fmt.Println("worker up")
	hello, _ := json.Marshal(frame.Hello{Protocol: frame.ProtocolVersion,
		Runtime: fmt.Sprintf("pid=%d wrapped=%q", os.Getpid(), os.Getenv("WRAPPED")), Services: []string{"dynamic_subclass"}})
	if _, err := sock.Write(frame.AppendHello(nil, hello)); err != nil {
		os.Exit(2)
	}
	rd := frame.NewReader(sock, 0)
	var history []string
	for {
		k, id, body, err := rd.Next()
		if err != nil {
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
		case "crash":
			os.Exit(3)
		case "hang":
			time.Sleep(time.Hour) // deaf even to the end of its socket
		}
		_, _ = sock.Write(frame.AppendResult(nil, res))
	}
}

// launcher serves a Server whose prefix is the test binary, and returns the
// runner's client; the test's end closes the socket and waits for Serve.
func launcher(t *testing.T) (*launch.Client, *launch.Server) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	lf, rf, err := launch.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	s := &launch.Server{Prefix: []string{self, "--"}, Env: []string{roleEnv + "=prefix"}, Errorf: t.Logf}
	served := make(chan error, 1)
	go func() { served <- s.Serve(lf) }()
	c, err := launch.NewClient(rf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Close()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after the runner closed its socket")
		}
	})
	return c, s
}

// supervise runs a worker.Supervisor whose workers the launcher starts.
func supervise(t *testing.T, c *launch.Client, cfg worker.Config) (*worker.Supervisor, *syncbuf.Buffer) {
	t.Helper()
	self, _ := os.Executable()
	logs := &syncbuf.Buffer{}
	cfg.Command = []string{self}
	cfg.Env = []string{roleEnv + "=never passed: the launcher decides the environment"}
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs})
	cfg.Starter = c
	s := worker.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("supervisor log:\n%s", logs.String())
		}
	})
	return s, logs
}

func ready(t *testing.T, s *worker.Supervisor, prev string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if h := s.Hello(); h != nil && h.Runtime != prev {
			return h.Runtime
		}
		if time.Now().After(deadline) {
			t.Fatal("no new worker became ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func do(s *worker.Supervisor, kind frame.Kind, name string) (*frame.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return s.Do(ctx, &frame.Request{Kind: kind, Name: name})
}

// Through the launcher, the supervisor's worker runs behind the launcher's
// prefix (never the runner's environment), its output reaches the runner's
// log, and after a crash a new worker takes over with the model's setup
// replayed: what a runner that is not root relies on.
func TestWorkerRestartsThroughTheLauncher(t *testing.T) {
	c, _ := launcher(t)
	s, logs := supervise(t, c, worker.Config{MinBackoff: 10 * time.Millisecond})
	first := ready(t, s, "")
	if !strings.Contains(first, `wrapped="by the prefix"`) {
		t.Fatalf("worker hello %q: it did not run behind the launcher's prefix", first)
	}
	if _, err := do(s, frame.KindSetup, "Model"); err != nil {
		t.Fatal(err)
	}
	s.Remember("model", &frame.Request{Kind: frame.KindSetup, Name: "Model"})
	if _, err := do(s, frame.KindCall, "crash"); !errors.Is(err, worker.ErrWorkerDied) {
		t.Fatalf("a call whose worker exited: %v, want ErrWorkerDied", err)
	}
	second := ready(t, s, first)
	if res, err := do(s, frame.KindCall, "history"); err != nil || res.Message != "setup:Model,call:history" {
		t.Fatalf("second worker (%s): %+v %v, want the setup replayed", second, res, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "exit status 3") || !strings.Contains(logs.String(), "worker up") {
		if time.Now().After(deadline) {
			t.Fatalf("the log lacks the worker's exit status or its output:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A hung worker is killed through the launcher (the runner may not signal
// the sandbox itself), and replaced.
func TestHungWorkerIsKilledThroughTheLauncher(t *testing.T) {
	c, _ := launcher(t)
	s, logs := supervise(t, c, worker.Config{HangTimeout: 300 * time.Millisecond, MinBackoff: 10 * time.Millisecond})
	first := ready(t, s, "")
	if _, err := do(s, frame.KindCall, "hang"); !errors.Is(err, worker.ErrWorkerDied) {
		t.Fatalf("a call whose worker hung: %v, want ErrWorkerDied", err)
	}
	ready(t, s, first)
	if !strings.Contains(logs.String(), "signal: killed") {
		t.Errorf("the log does not say the hung worker was killed:\n%s", logs.String())
	}
}

// The runner closing its socket (or dying) kills the worker, and the
// launcher's Serve returns.
func TestClosingTheSocketKillsTheWorker(t *testing.T) {
	c, _ := launcher(t)
	s, _ := supervise(t, c, worker.Config{})
	h := ready(t, s, "")
	var pid int
	if _, err := fmt.Sscanf(h, "pid=%d", &pid); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("worker %d outlived its runner's socket by 10s", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
