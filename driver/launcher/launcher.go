// Package launcher starts the model runner as an unprivileged user and
// starts its sandboxed worker for it. The driver starts the plugin binary's
// hidden "runner-launch" subcommand in the runner's place, as root; it:
//
//   - waits on its gate (fd 3) until the driver has placed it in the task's
//     runner cgroup, so the runner starts inside the task's limits; the
//     gate also brings the runner's environment, which the launcher itself
//     never runs with (it is root; the task's environment is the job's to
//     set, LD_PRELOAD included);
//   - starts the runner as the task's runner uid and gid, with no
//     supplementary groups, no capabilities (an empty bounding set too) and
//     no_new_privs, holding one end of a socketpair (package runner/launch);
//   - serves that socket: each worker the runner asks for is started through
//     the sandbox command and the spec the driver wrote, never an argv or a
//     spec the runner chose, one at a time;
//   - relays the signals the driver sends (SIGTERM to stop, SIGHUP to reload
//     the TLS files) to the runner and exits as the runner did, so the
//     driver's task handle, its wait, stop and recovery, see the runner.
//
// The launcher stays root for as long as the task runs: it is the only
// process of the task that is, and it reads nothing but the runner's small
// requests.
package launcher

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/modelnodes/modelnodes/driver/sandbox"
	"github.com/modelnodes/modelnodes/runner/launch"
)

// CmdLaunch is the plugin binary's hidden subcommand.
const CmdLaunch = "runner-launch"

// GateFD is the launcher's fd 3: the read end of a pipe from the driver.
// What Release writes says "you are in the task's runner cgroup: start the
// runner, with this environment"; its end without it, "give up". The
// runner's own files follow it, from fd 4.
const GateFD = 3

// maxGate bounds what the gate may carry (the runner's environment).
const maxGate = 1 << 20

// Release writes the runner's environment to the driver's end of the gate
// and closes it.
func Release(gate *os.File, env []string) error {
	b, err := json.Marshal(env)
	if err == nil && len(b) > maxGate {
		err = fmt.Errorf("the runner's environment takes %d bytes, more than %d", len(b), maxGate)
	}
	if err == nil {
		_, err = gate.Write(b)
	}
	if cerr := gate.Close(); err == nil {
		err = cerr
	}
	return err
}

// Command returns the argv prefix that launches the runner as uid and gid,
// its workers in the sandbox of specFile; self is the plugin binary. The
// runner's argv follows it.
func Command(self, specFile string, uid, gid int) []string {
	return []string{self, CmdLaunch, specFile, fmt.Sprintf("%d:%d", uid, gid), "--"}
}

// Main runs the launcher if args (os.Args[1:]) name it, and never returns
// then; otherwise it returns false.
func Main(args []string) bool {
	if len(args) < 5 || args[0] != CmdLaunch || args[3] != "--" {
		return false
	}
	err := run(args[1], args[2], args[4:])
	fmt.Fprintf(os.Stderr, "modelbox %s: %v\n", CmdLaunch, err)
	os.Exit(126)
	return true
}

// run launches the runner and, when it has exited, exits as it did.
func run(specFile, user string, argv []string) error {
	uid, gid, err := parseUser(user)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(argv[0], "/") {
		return fmt.Errorf("the runner %q is not an absolute path", argv[0])
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	files := inherited()
	// Nothing else the launcher inherited reaches the runner or the
	// sandbox (Go never closes a descriptor opened without O_CLOEXEC).
	if err := unix.CloseRange(uint(GateFD+1+len(files)), ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("close_range: %w", err)
	}
	env, err := waitGate()
	if err != nil {
		return err
	}
	// Opened as root: the runner's user may not pass through the binary's
	// directories (a repository under a 0700 home). It executes it through
	// the descriptor, which needs only the file's own execute bit; the
	// number is above any the child's ExtraFiles take, and closes at exec.
	prog, err := os.Open(argv[0])
	if err != nil {
		return fmt.Errorf("the runner: %w", err)
	}
	progFD, err := unix.FcntlInt(prog.Fd(), unix.F_DUPFD_CLOEXEC, 100)
	_ = prog.Close()
	if err != nil {
		return fmt.Errorf("the runner: %w", err)
	}
	mine, theirs, err := launch.Socketpair()
	if err != nil {
		return err
	}
	cmd := &exec.Cmd{Path: fmt.Sprintf("/proc/self/fd/%d", progFD), Args: argv}
	cmd.Env = append(env, fmt.Sprintf("%s=%d", launch.EnvFD, 3+len(files)))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = append(files, theirs)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
		// The runner dies with the launcher (and the launcher's thread
		// that started it lives until the runner exits: startUnprivileged).
		Pdeathsig: syscall.SIGKILL,
	}
	// Signals for the runner, from now on: one that came before the
	// runner exists is relayed once it does.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	started, exited := startUnprivileged(cmd)
	if err := <-started; err != nil {
		return fmt.Errorf("start the runner: %w", err)
	}
	_ = theirs.Close()
	_ = unix.Close(progFD)
	for _, f := range files {
		_ = f.Close()
	}
	srv := &launch.Server{
		Prefix: sandbox.Command(self, specFile),
		Env:    []string{}, // never the runner's: stage 1 of the sandbox is root
		Dir:    "/",
		Errorf: func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "modelbox %s: %s\n", CmdLaunch, fmt.Sprintf(format, args...))
		},
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(mine) }()
	// The launcher lives as long as the task, in the runner's cgroup: give
	// back what the plugin binary's start-up left on the heap.
	debug.FreeOSMemory()
	var ws syscall.WaitStatus
	for done := false; !done; {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case ws = <-exited:
			done = true
		}
	}
	// The runner's end is closed with the runner: the server kills the
	// worker if the runner left one, and returns.
	select {
	case <-served:
	case <-time.After(30 * time.Second):
		fmt.Fprintf(os.Stderr, "modelbox %s: the worker outlived the runner by 30s\n", CmdLaunch)
	}
	exitAs(ws)
	return nil
}

// parseUser reads "uid:gid", neither of them root.
func parseUser(s string) (int, int, error) {
	u, g, ok := strings.Cut(s, ":")
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if !ok || err1 != nil || err2 != nil || uid <= 0 || gid <= 0 {
		return 0, 0, fmt.Errorf("runner user %q: want UID:GID, neither of them 0", s)
	}
	return uid, gid, nil
}

// inherited returns the runner's files: the descriptors from 4 on that
// came through exec, up to the first that did not (the driver passes them
// in a row). One that is close-on-exec is the launcher's own, opened since
// (Go's runtime keeps the cgroup's CPU quota files open).
func inherited() []*os.File {
	var files []*os.File
	for fd := GateFD + 1; ; fd++ {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			return files
		}
		unix.CloseOnExec(fd) // only the runner gets them, through ExtraFiles
		files = append(files, os.NewFile(uintptr(fd), "runner-file"))
	}
}

// waitGate waits for Release on GateFD and returns the runner's
// environment.
func waitGate() ([]string, error) {
	gate := os.NewFile(GateFD, "gate")
	defer gate.Close()
	b, err := io.ReadAll(io.LimitReader(gate, maxGate+1))
	if err != nil {
		return nil, fmt.Errorf("the gate: %w", err)
	}
	if len(b) == 0 {
		return nil, errors.New("the driver did not release the runner")
	}
	env := []string{}
	if err := json.Unmarshal(b, &env); err != nil || len(b) > maxGate {
		return nil, fmt.Errorf("the gate holds no environment: %v", err)
	}
	return env, nil
}

// startUnprivileged starts cmd from a thread of its own that has set
// no_new_privs and emptied its capability bounding set: both are per
// thread and a child inherits its thread's, and cmd's Credential then
// drops every capability as it leaves root. (The launcher's other threads
// keep theirs: the sandbox needs them.) The thread then waits for the
// runner and never runs anything else: it exits with the goroutine, locked.
// Its life also bounds the runner's, by Pdeathsig.
func startUnprivileged(cmd *exec.Cmd) (<-chan error, <-chan syscall.WaitStatus) {
	started := make(chan error, 1)
	exited := make(chan syscall.WaitStatus, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		if err := dropForChildren(); err != nil {
			started <- err
			return
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		exited <- ws
	}()
	return started, exited
}

// dropForChildren sets no_new_privs and empties the bounding set of the
// calling thread.
func dropForChildren() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	// Every capability the kernel knows, which may be more than this
	// build's unix.CAP_LAST_CAP.
	for c := 0; c < 64; c++ {
		err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0)
		if errors.Is(err, unix.EINVAL) {
			break // past the kernel's last capability
		}
		if err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	return nil
}

// exitAs ends the launcher as ws says the runner ended: the same exit
// status, or death by the same signal.
func exitAs(ws syscall.WaitStatus) {
	if ws.Signaled() {
		sig := ws.Signal()
		signal.Reset(sig)
		_ = syscall.Kill(os.Getpid(), sig)
		time.Sleep(time.Second) // a signal the launcher survives: say it by the status
		os.Exit(128 + int(sig))
	}
	os.Exit(ws.ExitStatus())
}
