package launch

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
)

// Server is the launcher's side: it starts the workers a runner asks for,
// always behind Prefix, one at a time.
type Server struct {
	// Prefix is put in front of every argv the runner sends (the sandbox's
	// command and the driver's spec); the runner cannot change it.
	Prefix []string
	// Env and Dir are the started command's environment and directory,
	// never the runner's: the command runs with the launcher's privileges
	// until the sandbox drops them.
	Env []string
	Dir string
	// Errorf reports what went wrong with a runner's request (nil: nothing
	// is reported).
	Errorf func(format string, args ...any)

	mu   sync.Mutex
	live *exec.Cmd     // the running worker, nil when none
	gone chan struct{} // closed when live has been reaped
}

// maxArgs bounds a start's argv (the Python host's command has a handful).
const maxArgs = 256

// Serve answers the runner on f (which it takes over) until the runner
// closes it or goes away, then kills the worker it runs and waits for it.
func (s *Server) Serve(f *os.File) error {
	conn, err := fileConn(f)
	if err != nil {
		return fmt.Errorf("runner socket: %w", err)
	}
	defer conn.Close()
	defer s.stop()
	var wmu sync.Mutex // starts and exits are written from different goroutines
	write := func(m *message) {
		wmu.Lock()
		defer wmu.Unlock()
		_ = send(conn, m)
	}
	for {
		m, files, err := receive(conn)
		if errors.Is(err, errClosed) {
			return nil
		}
		if err != nil {
			// A broken message is the runner's fault, not the socket's:
			// refuse it and go on reading, unless the socket failed.
			var ne *net.OpError
			if errors.As(err, &ne) {
				return err
			}
			s.errorf("refused a message from the runner: %v", err)
			write(&message{Op: opRefused, Error: err.Error()})
			continue
		}
		switch m.Op {
		case opStart:
			// The answer goes out under wmu, taken before the start: the
			// worker's exit, written under it too, cannot overtake it.
			wmu.Lock()
			pid, err := s.start(m.Argv, files, func(pid int, ws syscall.WaitStatus) {
				exit := &message{Op: opExited, Pid: pid, Code: ws.ExitStatus()}
				if ws.Signaled() {
					exit.Code, exit.Signal = 0, int(ws.Signal())
				}
				write(exit)
			})
			answer := &message{Op: opStarted, Pid: pid}
			if err != nil {
				s.errorf("refused to start a worker: %v", err)
				answer = &message{Op: opRefused, Error: err.Error()}
			}
			_ = send(conn, answer)
			wmu.Unlock()
		case opKill:
			closeAll(files)
			s.kill(m.Pid)
		default:
			closeAll(files)
			s.errorf("unknown request %q from the runner", m.Op)
		}
	}
}

// start starts Prefix + argv with files as the worker's socket, stdout and
// stderr (it closes them), and calls exited, from another goroutine, when
// it has been reaped.
func (s *Server) start(argv []string, files []*os.File, exited func(int, syscall.WaitStatus)) (pid int, err error) {
	defer closeAll(files) // the child has its copies
	switch {
	case len(argv) == 0:
		return 0, errors.New("empty argv")
	case len(argv) > maxArgs:
		return 0, fmt.Errorf("argv of %d words; at most %d", len(argv), maxArgs)
	case len(files) != startFiles:
		return 0, fmt.Errorf("%d descriptors; want %d (socket, stdout, stderr)", len(files), startFiles)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live != nil {
		return 0, errors.New("a worker is running already")
	}
	full := append(append([]string{}, s.Prefix...), argv...)
	cmd := exec.Command(full[0], full[1:]...)
	cmd.Env = append([]string{}, s.Env...) // never nil: nil would pass the launcher's own
	cmd.Dir = s.Dir
	cmd.ExtraFiles = []*os.File{files[0]}
	cmd.Stdout, cmd.Stderr = files[1], files[2]
	// Its own process group, so a kill reaches everything the model forked;
	// and it dies with the launcher.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	s.live, s.gone = cmd, make(chan struct{})
	gone := s.gone
	go func() {
		_ = cmd.Wait()
		ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		s.mu.Lock()
		s.live = nil
		s.mu.Unlock()
		close(gone)
		exited(cmd.Process.Pid, ws)
	}()
	return cmd.Process.Pid, nil
}

// kill kills the running worker's process group if pid is that worker;
// a kill for any other pid is ignored.
func (s *Server) kill(pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live != nil && s.live.Process.Pid == pid {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// stop kills the running worker, if any, and waits until it is reaped.
func (s *Server) stop() {
	s.mu.Lock()
	live, gone := s.live, s.gone
	if live != nil {
		_ = syscall.Kill(-live.Process.Pid, syscall.SIGKILL)
	}
	s.mu.Unlock()
	if live != nil {
		<-gone
	}
}

func (s *Server) errorf(format string, args ...any) {
	if s.Errorf != nil {
		s.Errorf(format, args...)
	}
}
