package launcher_test

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/driver/launcher"
)

// The test binary is the launcher too.
func TestMain(m *testing.M) {
	if launcher.Main(os.Args[1:]) {
		return
	}
	os.Exit(m.Run())
}

// launched is a launcher started as the driver starts it, whose runner is
// /bin/sh -c script, as nobody.
type launched struct {
	cmd  *exec.Cmd
	gate *os.File
	out  *strings.Builder
}

func launch(t *testing.T, script string, runnerFiles ...*os.File) *launched {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the launcher starts the runner as another user, which needs root")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	gr, gw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer gr.Close()
	argv := append(launcher.Command(self, "/nonexistent/sandbox.json", 65534, 65534), "/bin/sh", "-c", script)
	l := &launched{cmd: exec.Command(argv[0], argv[1:]...), gate: gw, out: &strings.Builder{}}
	l.cmd.Env = []string{} // as the driver starts it
	l.cmd.Stdout, l.cmd.Stderr = l.out, l.out
	l.cmd.ExtraFiles = append([]*os.File{gr}, runnerFiles...)
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = l.cmd.Process.Kill()
		_ = l.cmd.Wait()
	})
	return l
}

// wait returns how the launcher ended.
func (l *launched) wait(t *testing.T) syscall.WaitStatus {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- l.cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return l.cmd.ProcessState.Sys().(syscall.WaitStatus)
	case <-time.After(20 * time.Second):
		t.Fatalf("the launcher did not exit; output:\n%s", l.out)
		return 0
	}
}

// The runner runs as its user without capabilities or a way to regain
// them, with the environment the driver released, the files the driver
// passed it and the launcher's socket, nothing else of the launcher's; and
// the launcher exits with its status.
func TestRunnerRunsUnprivilegedAndTheLauncherExitsAsIt(t *testing.T) {
	lock, err := os.Open("/dev/zero") // stands for the environment's in-use lock
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	// A descriptor left open without O_CLOEXEC above the launcher (as a
	// careless parent might): it must not reach the runner.
	if err := syscall.Dup2(int(lock.Fd()), 77); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(77)
	l := launch(t, `grep -E '^(Uid|Gid|Groups|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status
echo "FOO=$FOO LD=$LD_PRELOAD fd=$MODELNODES_LAUNCHER_FD"
for f in /proc/$$/fd/*; do l=$(readlink $f) && echo "fd ${f##*/} -> $l"; done
exit 7`, lock)
	if err := launcher.Release(l.gate, []string{"FOO=bar"}); err != nil {
		t.Fatal(err)
	}
	ws := l.wait(t)
	if ws.ExitStatus() != 7 {
		t.Errorf("the launcher exited %v, want the runner's status 7; output:\n%s", ws, l.out)
	}
	out := l.out.String()
	for _, want := range []string{"Uid:\t65534\t65534\t65534\t65534", "Gid:\t65534\t65534\t65534\t65534",
		"CapPrm:\t0000000000000000", "CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "CapAmb:\t0000000000000000",
		"NoNewPrivs:\t1", "FOO=bar LD= fd=4", "fd 3 -> /dev/zero", "fd 4 -> socket:"} {
		if !strings.Contains(out, want) {
			t.Errorf("the runner's view lacks %q:\n%s", want, out)
		}
	}
	var fds []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "Groups:") && strings.TrimSpace(strings.TrimPrefix(line, "Groups:")) != "" {
			t.Errorf("the runner has supplementary groups: %q", line)
		}
		if f, ok := strings.CutPrefix(line, "fd "); ok {
			fds = append(fds, f)
		}
	}
	// 0-2, the driver's file, the socket, and the listing's own (5).
	if len(fds) != 6 || !strings.HasPrefix(fds[len(fds)-1], "5 ") {
		t.Errorf("the runner holds %q; want stdio, the driver's file and the launcher's socket, nothing else the launcher had", fds)
	}
}

// Signals reach the runner (SIGHUP reloads, SIGTERM stops), and a runner
// that dies by a signal makes the launcher die by it too.
func TestSignalsReachTheRunner(t *testing.T) {
	l := launch(t, `trap 'echo reload' HUP; echo ready; while :; do sleep 0.05; done`)
	if err := launcher.Release(l.gate, nil); err != nil {
		t.Fatal(err)
	}
	waitFor := func(s string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(l.out.String(), s) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q from the runner; output:\n%s", s, l.out)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("ready")
	_ = l.cmd.Process.Signal(syscall.SIGHUP)
	waitFor("reload")
	_ = l.cmd.Process.Signal(syscall.SIGTERM)
	if ws := l.wait(t); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("the launcher ended %v after SIGTERM, want killed by SIGTERM as its runner", ws)
	}
}

// A gate closed without a release starts no runner.
func TestNoReleaseNoRunner(t *testing.T) {
	l := launch(t, `echo started`)
	_ = l.gate.Close()
	if ws := l.wait(t); ws.ExitStatus() != 126 || strings.Contains(l.out.String(), "started") {
		t.Errorf("without a release: %v, output %q; want exit 126 and no runner", ws, l.out)
	}
}
