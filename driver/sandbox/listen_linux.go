package sandbox

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// listenAndSend runs in stage 2, in the sandbox's network namespace: it
// listens on addr and sends the socket to the starter over ListenerFD, then
// closes its own copies, so that the worker can neither accept on it nor
// talk to the starter.
func listenAndSend(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen inside the sandbox: %w", err)
	}
	f, err := l.(*net.TCPListener).File()
	_ = l.Close()
	if err != nil {
		return fmt.Errorf("listen inside the sandbox: %w", err)
	}
	defer f.Close()
	err = unix.Sendmsg(ListenerFD, []byte{'L'}, unix.UnixRights(int(f.Fd())), nil, 0)
	_ = unix.Close(ListenerFD)
	if err != nil {
		return fmt.Errorf("send the listener to the sandbox's starter: %w", err)
	}
	return nil
}

// ListenerPair returns the two ends of the socket a ListenInside sandbox
// sends its listener over: give child to stage 1 as fd ListenerFD (the
// second of cmd.ExtraFiles, after the worker's fd 3) and close it once
// stage 1 started; call ReceiveListener on parent.
func ListenerPair() (parent, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("listener socket pair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "listener-parent"), os.NewFile(uintptr(fds[1]), "listener-child"), nil
}

// ErrNoListener is returned by ReceiveListener when the sandbox ended (or
// failed to start) without sending its listener.
var ErrNoListener = errors.New("the sandbox sent no listener")

// ReceiveListener waits for the listener a ListenInside sandbox sends over
// parent (from ListenerPair), and closes parent. The listener accepts the
// sandbox's connections to ListenInside; whatever serves them runs here, in
// this process's network namespace. It returns ErrNoListener once every copy
// of the child end is closed without a listener sent: close parent to stop
// waiting sooner.
func ReceiveListener(parent *os.File) (net.Listener, error) {
	defer parent.Close()
	c, err := net.FileConn(parent)
	if err != nil {
		return nil, fmt.Errorf("receive the sandbox's listener: %w", err)
	}
	defer c.Close()
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("receive the sandbox's listener: not a unix socket")
	}
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil || n == 0 {
		return nil, errors.Join(ErrNoListener, err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("receive the sandbox's listener: %w", errors.Join(ErrNoListener, err))
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
		return nil, fmt.Errorf("receive the sandbox's listener: %w", errors.Join(ErrNoListener, err))
	}
	f := os.NewFile(uintptr(fds[0]), "sandbox-listener")
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("receive the sandbox's listener: %w", err)
	}
	return l, nil
}
