package worker

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// Starter starts worker processes: the seam between the supervisor and how
// a process comes to be. The default runs the command itself; a runner
// that is not root (the modelbox driver's) has its privileged launcher start
// the sandboxed worker instead (package launch).
type Starter interface {
	// Start starts one worker as cmd says and returns at once. The caller
	// closes its copies of cmd's files after Start returns, and calls Wait
	// exactly once.
	Start(cmd *Cmd) (Process, error)
}

// Cmd is one worker to start.
type Cmd struct {
	// Argv is the worker's command (Config.Command).
	Argv []string
	// Env is added to the runner's environment, and Dir is the working
	// directory (Config.Env, Config.Dir). A launcher may decide both itself:
	// the sandbox gives the worker an environment of its own.
	Env []string
	Dir string
	// Socket becomes the worker's fd 3; Stdout and Stderr its output.
	Socket, Stdout, Stderr *os.File
}

// Process is a started worker.
type Process interface {
	// Pid is the worker's process id, as the runner's logs show it.
	Pid() int
	// Kill sends SIGKILL to the worker and everything in its process
	// group (what the model forked). It may be called at any time, also
	// after the worker exited.
	Kill()
	// Wait waits for the worker to exit: nil for exit status 0, else an
	// error that says how it ended ("exit status 3", "signal: killed").
	Wait() error
}

// ExecStarter runs the worker as the runner's own child, in its own process
// group, and kills it when the runner dies. It is the default Starter.
type ExecStarter struct{}

// Start implements Starter.
func (ExecStarter) Start(c *Cmd) (Process, error) {
	if len(c.Argv) == 0 {
		return nil, fmt.Errorf("no worker command configured")
	}
	cmd := exec.Command(c.Argv[0], c.Argv[1:]...)
	cmd.Env = append(append(os.Environ(), c.Env...), "MODELNODES_WORKER_FD=3")
	cmd.Dir = c.Dir
	cmd.ExtraFiles = []*os.File{c.Socket}
	cmd.Stdout, cmd.Stderr = c.Stdout, c.Stderr
	// Its own process group, so a kill reaches everything the model forked;
	// and it dies with the runner.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return execProcess{cmd}, nil
}

type execProcess struct{ cmd *exec.Cmd }

func (p execProcess) Pid() int    { return p.cmd.Process.Pid }
func (p execProcess) Kill()       { killGroup(p.cmd.Process.Pid) }
func (p execProcess) Wait() error { return p.cmd.Wait() }

// start starts one worker through the configured Starter with a new pair of
// output pipes, whose read ends it returns. remote is the worker's end of
// its socket; the caller closes it.
func (s *Supervisor) start(remote *os.File) (Process, *os.File, *os.File, error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		_ = outR.Close()
		_ = outW.Close()
		return nil, nil, nil, err
	}
	starter := s.cfg.Starter
	if starter == nil {
		starter = ExecStarter{}
	}
	proc, err := starter.Start(&Cmd{Argv: s.cfg.Command, Env: s.cfg.Env, Dir: s.cfg.Dir, Socket: remote, Stdout: outW, Stderr: errW})
	// The worker holds the write ends now: closing ours lets its exit end
	// the output.
	_ = outW.Close()
	_ = errW.Close()
	if err != nil {
		_ = outR.Close()
		_ = errR.Close()
		return nil, nil, nil, fmt.Errorf("start worker %q: %w", s.cfg.Command[0], err)
	}
	return proc, outR, errR, nil
}
