package launch

import (
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// rawRunner is a runner that speaks the protocol by hand, as a compromised
// one could.
type rawRunner struct {
	t    *testing.T
	conn *net.UnixConn
}

func serveRaw(t *testing.T) *rawRunner {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	lf, rf, err := Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Prefix: []string{self, "--"}, Env: []string{"LAUNCH_TEST_ROLE=prefix"}, Errorf: t.Logf}
	served := make(chan error, 1)
	go func() { served <- s.Serve(lf) }()
	conn, err := fileConn(rf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after the runner closed its socket")
		}
	})
	return &rawRunner{t: t, conn: conn}
}

// pipes returns n write ends of pipes (closed at the test's end).
func (r *rawRunner) pipes(n int) []*os.File {
	var fs []*os.File
	for range n {
		pr, pw, err := os.Pipe()
		if err != nil {
			r.t.Fatal(err)
		}
		r.t.Cleanup(func() { _ = pr.Close(); _ = pw.Close() })
		fs = append(fs, pw)
	}
	return fs
}

func (r *rawRunner) ask(m *message, files ...*os.File) *message {
	r.t.Helper()
	if err := send(r.conn, m, files...); err != nil {
		r.t.Fatal(err)
	}
	return r.next()
}

func (r *rawRunner) next() *message {
	r.t.Helper()
	_ = r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, files, err := receive(r.conn)
	closeAll(files)
	if err != nil {
		r.t.Fatal(err)
	}
	return m
}

// What a compromised runner might ask for is refused: a second worker while
// one runs, a start without its three descriptors or without argv, a
// message too large, an unknown request; a kill names only the launcher's
// own worker. The launcher answers each refusal and keeps serving.
func TestLauncherRefusesWhatARunnerShouldNotAsk(t *testing.T) {
	r := serveRaw(t)
	self, _ := os.Executable()
	refused := func(what string, m *message, sub string) {
		t.Helper()
		if m.Op != opRefused || !strings.Contains(m.Error, sub) {
			t.Errorf("%s: %+v, want refused with %q", what, m, sub)
		}
	}
	first := r.ask(&message{Op: opStart, Argv: []string{self}}, r.pipes(3)...)
	if first.Op != opStarted || first.Pid <= 0 {
		t.Fatalf("start: %+v", first)
	}
	refused("a second worker while one runs", r.ask(&message{Op: opStart, Argv: []string{self}}, r.pipes(3)...), "running already")
	refused("a start with two descriptors", r.ask(&message{Op: opStart, Argv: []string{self}}, r.pipes(2)...), "descriptors")
	refused("a start without argv", r.ask(&message{Op: opStart}, r.pipes(3)...), "empty argv")
	refused("a start with nine descriptors", r.ask(&message{Op: opStart, Argv: []string{self}}, r.pipes(9)...), "descriptors")
	refused("a 70 KiB message", r.ask(&message{Op: opStart, Argv: []string{self, strings.Repeat("x", 70<<10)}}, r.pipes(3)...), "larger than")

	// A kill that names another process is ignored.
	bystander, err := os.StartProcess("/bin/sleep", []string{"sleep", "60"}, &os.ProcAttr{Sys: &syscall.SysProcAttr{Setpgid: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = bystander.Kill(); _, _ = bystander.Wait() }()
	if err := send(r.conn, &message{Op: opKill, Pid: bystander.Pid}); err != nil {
		t.Fatal(err)
	}
	// Its own worker dies by the kill, and the exit says so.
	if err := send(r.conn, &message{Op: opKill, Pid: first.Pid}); err != nil {
		t.Fatal(err)
	}
	if m := r.next(); m.Op != opExited || m.Pid != first.Pid || m.Signal != int(syscall.SIGKILL) {
		t.Fatalf("after the kill: %+v, want the worker's exit by SIGKILL", m)
	}
	if err := bystander.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the launcher killed a process it did not start: %v", err)
	}
	if m := r.ask(&message{Op: opStart, Argv: []string{self}}, r.pipes(3)...); m.Op != opStarted {
		t.Errorf("a start after the refusals: %+v", m)
	}
}
