package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/modelnodes/modelnodes/internal/procfs"
	"github.com/modelnodes/modelnodes/internal/testing/logtail"
)

// The demo's processes run in their own sessions (Ctrl-C in the terminal
// reaches only the demo, which stops them in order) and outlive it with
// --keep. Each has a pid file holding its pid and start time, so `down`
// from another shell stops exactly that process, never a recycled pid.

// startChild starts argv in its own session, output to log; it writes the
// pid file and returns the process (reaped in the background).
func startChild(argv, env []string, log, pidFile string) (*os.Process, error) {
	if err := os.MkdirAll(filepath.Dir(log), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = cmd.Wait() }()
	if err := writePidFile(pidFile, cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		return nil, err
	}
	return cmd.Process, nil
}

func writePidFile(path string, pid int) error {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	return os.WriteFile(path, fmt.Appendf(nil, "%d %d\n", pid, st.StartTicks), 0o644)
}

// livePid returns the pid recorded in path when that very process still
// runs (same start time), else 0.
func livePid(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	pid, err1 := strconv.Atoi(f[0])
	ticks, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	st, err := procfs.ReadStat(pid)
	if err != nil || st.State == 'Z' || st.StartTicks != ticks {
		return 0
	}
	return pid
}

// stopPidFile stops the process of a pid file and its process group:
// SIGTERM, then SIGKILL after timeout. It reports the pid it stopped (0:
// nothing was running) and removes the pid file.
func stopPidFile(path string, timeout time.Duration) (int, error) {
	pid := livePid(path)
	defer os.Remove(path)
	if pid == 0 {
		return 0, nil
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !procfs.Running(pid) {
			_ = syscall.Kill(-pid, syscall.SIGKILL) // whatever the group left
			return pid, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return pid, fmt.Errorf("pid %d (%s) did not stop within %s; killed it", pid, filepath.Base(path), timeout)
}

// command is exec.CommandContext for the short commands the demo runs:
// in their own process group (Ctrl-C in the terminal reaches only the
// demo), ended with SIGTERM to the group when ctx is done.
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	return cmd
}

// runCommand runs a command and returns its stdout; an error carries the
// tail of its stderr.
func runCommand(ctx context.Context, env []string, argv ...string) (string, error) {
	cmd := command(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w\n%s", filepath.Base(argv[0]), err, indent(string(logtail.Lines([]byte(stderr.String()), 20))))
	}
	return stdout.String(), nil
}

// waitHTTP polls url until it answers 200, while alive says the process
// runs.
func waitHTTP(ctx context.Context, url string, timeout time.Duration, alive func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if alive != nil && !alive() {
			return errors.New("the process exited")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s does not answer: %w", url, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
