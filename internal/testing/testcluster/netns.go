package testcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NetNS is a network namespace of its own for one machine of a test
// cluster, joined to the host by a veth pair: the host's end has HostAddr,
// the namespace's end NodeAddr (a /30 of 10.231.0.0/16, host-local). A
// Nomad client started in it (AddNomadClientIn) advertises NodeAddr, so its
// models listen there and the host (Consul's checks, coordinators) reaches
// them over the pair; Cut and Reconnect take the pair's link down and up,
// and with it everything between the machine and the rest of the cluster.
//
// The cluster's agents stay on the host's loopback. What the machine
// reaches there (the Nomad servers' RPC, Vault, its Consul agent, an
// artifact server) Forward makes reachable in the namespace at the same
// 127.0.0.1 address, relayed over the pair: the Nomad servers hand their
// clients their own advertised address (127.0.0.1:port), which the
// namespace's loopback would otherwise not answer.
type NetNS struct {
	// Name is the namespace's name (ip netns), Path its file.
	Name, Path string
	// HostIf and NodeIf are the pair's ends, on the host and in the
	// namespace; HostAddr and NodeAddr their addresses.
	HostIf, NodeIf     string
	HostAddr, NodeAddr string

	ipBin, nsenterBin string

	mu        sync.Mutex
	closers   []io.Closer
	forwarded map[string]bool // ports
}

// NewNetNS creates the namespace and its veth pair for t, and removes both
// (and stops every relay) when t ends, whatever happened. It skips t when
// it cannot: not root, no ip or nsenter, or a kernel that refuses.
func NewNetNS(t testing.TB) *NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("testcluster: a network namespace needs root")
	}
	n := &NetNS{}
	var err error
	for _, b := range []struct {
		name string
		path *string
	}{{"ip", &n.ipBin}, {"nsenter", &n.nsenterBin}} {
		if *b.path, err = exec.LookPath(b.name); err != nil {
			t.Skipf("testcluster: a network namespace needs %s (iproute2, util-linux): %v", b.name, err)
		}
	}
	// One /30 per process: tests that use it run one at a time (they hold
	// the fixed-ports lock), and a leftover of a crashed run shows.
	id := os.Getpid() % 16000
	n.Name = fmt.Sprintf("modelnodes-%d", os.Getpid())
	n.Path = filepath.Join("/run/netns", n.Name)
	n.HostIf, n.NodeIf = fmt.Sprintf("mnh%d", os.Getpid()), fmt.Sprintf("mnn%d", os.Getpid())
	base := 4 * id
	n.HostAddr = fmt.Sprintf("10.231.%d.%d", base/256, base%256+1)
	n.NodeAddr = fmt.Sprintf("10.231.%d.%d", base/256, base%256+2)
	if out, _ := exec.Command(n.ipBin, "-o", "addr", "show", "to", n.HostAddr+"/30").CombinedOutput(); len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("testcluster: %s/30 is in use on this host (a leftover?): %s", n.HostAddr, out)
	}
	if err := n.ip("netns", "add", n.Name); err != nil {
		t.Skipf("testcluster: cannot create a network namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("testcluster: removing network namespace %s: %v", n.Name, err)
		}
	})
	for _, args := range [][]string{
		{"link", "add", n.HostIf, "type", "veth", "peer", "name", n.NodeIf, "netns", n.Name},
		{"addr", "add", n.HostAddr + "/30", "dev", n.HostIf},
		{"link", "set", n.HostIf, "up"},
		{"-n", n.Name, "addr", "add", n.NodeAddr + "/30", "dev", n.NodeIf},
		{"-n", n.Name, "link", "set", n.NodeIf, "up"},
		{"-n", n.Name, "link", "set", "lo", "up"},
	} {
		if err := n.ip(args...); err != nil {
			t.Fatalf("testcluster: network namespace %s: %v", n.Name, err)
		}
	}
	t.Logf("testcluster: network namespace %s: %s (%s) <-> %s (%s)", n.Name, n.HostAddr, n.HostIf, n.NodeAddr, n.NodeIf)
	return n
}

func (n *NetNS) ip(args ...string) error {
	if out, err := exec.Command(n.ipBin, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Command returns bin with args, to be run in the namespace (nsenter: the
// network namespace alone, the host's mounts and cgroups stay, which
// `ip netns exec` would replace with its own /sys).
func (n *NetNS) Command(bin string, args ...string) (string, []string) {
	return n.nsenterBin, append([]string{"--net=" + n.Path, "--", bin}, args...)
}

// Forward makes hostAddr (host:port on the host's loopback) reachable in
// the namespace at the same address, over the veth pair: a relay listens
// on 127.0.0.1:port in the namespace and connects to HostAddr:port, where
// another relays to hostAddr. While the link is cut, connections through
// it stall as on a real network. Forwarding a port again does nothing.
func (n *NetNS) Forward(hostAddr string) error {
	_, port, err := net.SplitHostPort(hostAddr)
	if err != nil {
		return err
	}
	n.mu.Lock()
	done := n.forwarded[port]
	if n.forwarded == nil {
		n.forwarded = map[string]bool{}
	}
	n.forwarded[port] = true
	n.mu.Unlock()
	if done {
		return nil
	}
	hostLn, err := net.Listen("tcp", net.JoinHostPort(n.HostAddr, port))
	if err != nil {
		return fmt.Errorf("relay on the host's end: %w", err)
	}
	var nsLn net.Listener
	if err := n.do(func() error {
		var err error
		nsLn, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
		return err
	}); err != nil {
		hostLn.Close()
		return fmt.Errorf("relay in the namespace: %w", err)
	}
	n.mu.Lock()
	n.closers = append(n.closers, hostLn, nsLn)
	n.mu.Unlock()
	var d net.Dialer
	go n.relay(hostLn, func() (net.Conn, error) { return d.Dial("tcp", hostAddr) })
	go n.relay(nsLn, func() (net.Conn, error) {
		var c net.Conn
		err := n.do(func() error {
			// A SYN lost to a cut link is retried for minutes: give
			// up as a client's own timeout would.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var err error
			c, err = d.DialContext(ctx, "tcp", net.JoinHostPort(n.HostAddr, port))
			return err
		})
		return c, err
	})
	return nil
}

// relay accepts on ln until it is closed and pipes each connection to a
// new one from dial.
func (n *NetNS) relay(ln net.Listener, dial func() (net.Conn, error)) {
	for {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			out, err := dial()
			if err != nil {
				in.Close()
				return
			}
			n.mu.Lock()
			n.closers = append(n.closers, in, out)
			n.mu.Unlock()
			var wg sync.WaitGroup
			wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				_, _ = io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
			}
			go pipe(out, in)
			go pipe(in, out)
			wg.Wait()
			in.Close()
			out.Close()
		}()
	}
}

// do runs fn on a thread in the namespace: sockets fn creates belong to
// it. The thread returns to the host's namespace afterwards, or, when it
// cannot, ends with the goroutine (it stays locked).
func (n *NetNS) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open this thread's network namespace: %w", err)
			return
		}
		defer unix.Close(self)
		ns, err := unix.Open(n.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open %s: %w", n.Path, err)
			return
		}
		defer unix.Close(ns)
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter %s: %w", n.Name, err)
			return
		}
		err = fn()
		if unix.Setns(self, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Cut takes the pair's link down on the host's end: whatever the machine
// sends is dropped without a word (its end stays up, without a carrier),
// and what the host sends it fails (no route).
func (n *NetNS) Cut() error {
	return n.ip("link", "set", n.HostIf, "down")
}

// Reconnect brings the link back up.
func (n *NetNS) Reconnect() error {
	return n.ip("link", "set", n.HostIf, "up")
}

// Close stops the relays and removes the pair and the namespace. A process
// still in the namespace keeps it alive, without its name, until it exits.
func (n *NetNS) Close() error {
	n.mu.Lock()
	for _, c := range n.closers {
		c.Close()
	}
	n.closers = nil
	n.mu.Unlock()
	var errs []error
	// Deleting one end deletes both.
	if err := n.ip("link", "del", n.HostIf); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
		errs = append(errs, err)
	}
	if err := n.ip("netns", "del", n.Name); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
