package testcluster

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/modelnodes/modelnodes/internal/testing/leftovers"
	"github.com/modelnodes/modelnodes/internal/testing/logtail"
)

// process is one agent running as a child of the test binary, in its own
// process group so that stopping it also ends the plugins it spawned.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	err     error         // exit status, valid after done
}

// startProcess starts bin with args, logging to dir/name.log. Pdeathsig makes
// the kernel kill the agent if the test binary dies (a panic or -timeout),
// so a crashed test cannot leave agents behind.
// A non-nil cred runs it as that user.
func startProcess(name, dir, bin string, args, env []string, cred *syscall.Credential) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the agent alone (Nomad in dev mode then stops its
// tasks through its executors), waits up to timeout, then kills the whole
// process group. It reports whether the agent stopped on its own.
func (p *process) stop(timeout time.Duration) bool {
	graceful := true
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(timeout):
			graceful = false
		}
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	return graceful
}

// tail returns the last n lines of the agent's log, indented for test output.
func (p *process) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return "    (no log: " + err.Error() + ")"
	}
	return "    " + strings.ReplaceAll(string(logtail.Lines(b, n)), "\n", "\n    ")
}

// freePorts returns n distinct loopback TCP ports that were free a moment ago.
// All listeners are held until every port is chosen, so the n are distinct.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// freePortPair returns a free port p whose successor p+1 is free too: Vault's
// dev server puts its cluster listener on the port after its API port.
func freePortPair() (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find a free port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p, nil
		}
	}
	return 0, errors.New("no free pair of adjacent loopback ports")
}

// unmountUnder lazily unmounts every mount point under dir, deepest first
// (Nomad mounts a tmpfs on each task's secrets dir when running as root).
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	prefix := strings.TrimSuffix(dir, "/") + "/"
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], prefix) {
			mounts = append(mounts, fields[4])
		}
	}
	var errs []error
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := syscall.Unmount(mounts[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mounts[i], err))
		}
	}
	return errors.Join(errs...)
}

// removeNomadCgroups removes the cgroups Nomad created for the given
// allocations and, when no other Nomad agent runs on this host, Nomad's
// (then empty) parent cgroups. rmdir only ever removes empty cgroups, so a
// cgroup still in use is left alone.
func removeNomadCgroups(allocIDs []string) {
	// Each alloc's groups, including the modelbox driver's, when a test's
	// agent went away before it could destroy its tasks.
	for _, d := range leftovers.AllocCgroups(allocIDs) {
		leftovers.RemoveEmptyTree(d)
	}
	if otherNomadRunning() {
		return
	}
	parents, _ := filepath.Glob("/sys/fs/cgroup/*/nomad")
	for _, d := range append(parents, "/sys/fs/cgroup/nomad.slice") {
		leftovers.RemoveEmptyTree(d)
	}
}

func otherNomadRunning() bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if filepath.Base(exe) == "nomad" {
			return true
		}
	}
	return false
}
