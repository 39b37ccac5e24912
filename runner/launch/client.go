package launch

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"

	"github.com/modelnodes/modelnodes/runner/worker"
)

// answer is the launcher's answer to a start: the process, or why not.
type answer struct {
	p       *process
	refusal string
}

// Client is the runner's end of the launcher's socket: a worker.Starter
// whose workers the launcher starts.
type Client struct {
	conn *net.UnixConn

	startMu sync.Mutex  // one start at a time: answers come in order
	answers chan answer // the launcher's answers to starts

	mu    sync.Mutex
	procs map[int]*process
	err   error // why the socket failed; set once
	dead  chan struct{}
}

// FromEnv returns the client of the socket the launcher passed in EnvFD,
// and removes the variable so that nothing the runner starts inherits it.
func FromEnv() (*Client, error) {
	v, ok := os.LookupEnv(EnvFD)
	if !ok {
		return nil, fmt.Errorf("%s is not set: the runner was not started by the launcher", EnvFD)
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q: want a descriptor number above 2", EnvFD, v)
	}
	_ = os.Unsetenv(EnvFD)
	return NewClient(os.NewFile(uintptr(fd), "launcher"))
}

// NewClient returns the client of the launcher socket f (which it takes
// over).
func NewClient(f *os.File) (*Client, error) {
	conn, err := fileConn(f)
	if err != nil {
		return nil, fmt.Errorf("launcher socket: %w", err)
	}
	c := &Client{conn: conn, answers: make(chan answer, 1), procs: map[int]*process{}, dead: make(chan struct{})}
	go c.readLoop()
	return c, nil
}

// Close closes the socket: the launcher then kills the worker it runs.
func (c *Client) Close() error {
	c.fail(errClosed)
	return nil
}

// Start implements worker.Starter: the launcher starts cmd.Argv behind its
// own prefix; cmd.Env and cmd.Dir are the launcher's to decide.
func (c *Client) Start(cmd *worker.Cmd) (worker.Process, error) {
	if len(cmd.Argv) == 0 {
		return nil, errors.New("no worker command configured")
	}
	c.startMu.Lock()
	defer c.startMu.Unlock()
	if err := send(c.conn, &message{Op: opStart, Argv: cmd.Argv}, cmd.Socket, cmd.Stdout, cmd.Stderr); err != nil {
		c.fail(fmt.Errorf("send to the launcher: %w", err))
		return nil, c.failure()
	}
	select {
	case a := <-c.answers:
		if a.p == nil {
			return nil, fmt.Errorf("the launcher refused: %s", a.refusal)
		}
		return a.p, nil
	case <-c.dead:
		return nil, c.failure()
	}
}

// readLoop routes the launcher's messages until the socket fails.
func (c *Client) readLoop() {
	for {
		m, files, err := receive(c.conn)
		closeAll(files) // the launcher sends none
		if err != nil {
			c.fail(fmt.Errorf("read from the launcher: %w", err))
			return
		}
		switch m.Op {
		case opStarted:
			// Registered before Start learns of it: the exit, which
			// follows on the same socket, always finds it.
			p := &process{c: c, pid: m.Pid, done: make(chan struct{})}
			c.mu.Lock()
			c.procs[m.Pid] = p
			c.mu.Unlock()
			c.answers <- answer{p: p}
		case opRefused:
			c.answers <- answer{refusal: m.Error}
		case opExited:
			c.mu.Lock()
			p := c.procs[m.Pid]
			delete(c.procs, m.Pid)
			c.mu.Unlock()
			if p != nil {
				p.exit = exitError(m)
				close(p.done)
			}
		default:
			c.fail(fmt.Errorf("unexpected %q message from the launcher", m.Op))
			return
		}
	}
}

// fail records why the socket is unusable and ends every wait.
func (c *Client) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = err
	_ = c.conn.Close()
	close(c.dead)
	for pid, p := range c.procs {
		delete(c.procs, pid)
		p.exit = fmt.Errorf("the launcher is gone: %w", err)
		close(p.done)
	}
}

func (c *Client) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// process is a worker the launcher started.
type process struct {
	c    *Client
	pid  int
	done chan struct{}
	exit error // set before done is closed
}

func (p *process) Pid() int { return p.pid }

// Kill asks the launcher to kill the worker's process group; the runner
// may not signal the sandbox itself.
func (p *process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	if err := send(p.c.conn, &message{Op: opKill, Pid: p.pid}); err != nil {
		p.c.fail(fmt.Errorf("send to the launcher: %w", err))
	}
}

func (p *process) Wait() error {
	<-p.done
	return p.exit
}
