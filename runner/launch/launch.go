// Package launch is the protocol between a runner that is not root and the
// privileged launcher that started it (the modelbox driver's, package
// driver/launcher). The runner cannot set up the worker's sandbox itself
// (namespaces, mounts, another uid need root), so it asks the launcher over
// a unix socket the launcher handed it: "start a worker with this argv and
// these three descriptors" (its socket, stdout and stderr, passed with
// SCM_RIGHTS), "kill it", and the launcher tells it when the worker exited
// and how.
//
// The launcher decides everything that matters for isolation: it puts its
// own fixed prefix (the sandbox and the spec the driver wrote) in front of
// the argv, gives the worker's starter its own environment and directory,
// and runs one worker at a time. A compromised runner can therefore at most
// restart its own worker, inside the same sandbox.
//
// Messages are JSON, one per SOCK_SEQPACKET datagram.
package launch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// EnvFD names, in the runner's environment, the descriptor of its end of
// the launcher's socket.
const EnvFD = "MODELNODES_LAUNCHER_FD"

// Operations. The runner sends opStart and opKill; the launcher answers a
// start with opStarted or opRefused, and sends opExited when a worker ends.
const (
	opStart   = "start"
	opKill    = "kill"
	opStarted = "started"
	opRefused = "refused"
	opExited  = "exited"
)

// Limits on what a message may carry: the launcher is root and reads what a
// possibly compromised runner sends.
const (
	maxMessage = 64 << 10
	// startFiles are the descriptors of a start: socket, stdout, stderr.
	startFiles = 3
	// maxFiles is what a receive makes room for, so that a sender of too
	// many is seen (MSG_CTRUNC) rather than silently cut.
	maxFiles = 8
)

type message struct {
	Op   string   `json:"op"`
	Argv []string `json:"argv,omitempty"`
	Pid  int      `json:"pid,omitempty"`
	// Code is the exit status, Signal the signal that ended the worker.
	Code   int    `json:"code,omitempty"`
	Signal int    `json:"signal,omitempty"`
	Error  string `json:"error,omitempty"`
}

// ExitError says how a worker ended when not with status 0; its text is
// what os/exec says of the same end.
type ExitError struct {
	Code   int
	Signal syscall.Signal
}

func (e *ExitError) Error() string {
	if e.Signal != 0 {
		return "signal: " + e.Signal.String()
	}
	return fmt.Sprintf("exit status %d", e.Code)
}

// exitError turns an exited message into Wait's answer.
func exitError(m *message) error {
	if m.Code == 0 && m.Signal == 0 {
		return nil
	}
	return &ExitError{Code: m.Code, Signal: syscall.Signal(m.Signal)}
}

// errClosed: the other side closed the socket.
var errClosed = errors.New("launcher socket closed")

// send writes m with files attached.
func send(conn *net.UnixConn, m *message, files ...*os.File) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	_, _, err = conn.WriteMsgUnix(b, oob, nil)
	return err
}

// receive reads one message and the descriptors that came with it (which
// the caller owns). A message too large, or with too many descriptors, is
// an error; the descriptors are closed then.
func receive(conn *net.UnixConn) (*message, []*os.File, error) {
	buf := make([]byte, maxMessage+1)
	oob := make([]byte, unix.CmsgSpace(maxFiles*4))
	n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	if errors.Is(err, io.EOF) {
		return nil, nil, errClosed
	}
	if err != nil {
		return nil, nil, err
	}
	files, ferr := parseRights(oob[:oobn])
	switch {
	case ferr != nil:
		err = ferr
	case n == 0 && oobn == 0:
		err = errClosed // SOCK_SEQPACKET: a zero-length read is the end
	case n > maxMessage || flags&unix.MSG_TRUNC != 0:
		err = fmt.Errorf("message larger than %d bytes", maxMessage)
	case flags&unix.MSG_CTRUNC != 0:
		err = fmt.Errorf("more than %d descriptors", maxFiles)
	}
	var m message
	if err == nil {
		if jerr := json.Unmarshal(buf[:n], &m); jerr != nil {
			err = fmt.Errorf("bad message: %w", jerr)
		}
	}
	if err != nil {
		closeAll(files)
		return nil, nil, err
	}
	return &m, files, nil
}

func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var files []*os.File
	var bad error
	for i := range msgs {
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			bad = fmt.Errorf("control message: %w", err)
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "received"))
		}
	}
	if bad != nil {
		closeAll(files)
		return nil, bad
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		_ = f.Close()
	}
}

// Socketpair returns the two ends of a new launcher socket: the launcher
// keeps one, the runner inherits the other.
func Socketpair() (launcher, runner *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "launcher"), os.NewFile(uintptr(fds[1]), "launcher-runner"), nil
}

// fileConn makes a connection of f (which it closes).
func fileConn(f *os.File) (*net.UnixConn, error) {
	c, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		_ = c.Close()
		return nil, fmt.Errorf("not a unix socket")
	}
	return uc, nil
}
