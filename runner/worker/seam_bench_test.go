package worker

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	"github.com/modelnodes/modelnodes/runner/frame"
	"github.com/modelnodes/modelnodes/runner/pyhost"
)

// pyEcho is the bare seam's peer: a Python process that sends back what it
// reads, with no frame decoding and no model.
const pyEcho = `
import socket
s = socket.socket(fileno=3)
while True:
    b = s.recv(65536)
    if not b:
        break
    s.sendall(b)
`

// BenchmarkSeam is one call's round trip between the runner and a Python
// worker process, part by part, one request at a time, on /usr/bin/python3:
//
//   - path=bare-socketpair: a frame of the same size sent to a Python echo
//     loop and read back: two processes waking each other, nothing else;
//   - path=host: the real Call frame (a 172-byte JSON echo) sent to the
//     Python host (runner/pyhost) and its result read back: adds the
//     host's decoding, the model's call and the result's encoding;
//   - path=supervisor: the same request through Supervisor.Do, the
//     runner's code for the seam (queue bound, ids, the hang timer, the
//     reader goroutine).
//
// The gRPC side is BenchmarkCall in package runner.
func BenchmarkSeam(b *testing.B) {
	const py = "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		b.Skipf("no %s: %v", py, err)
	}
	host, err := pyhost.Install(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	model, err := filepath.Abs("../testdata/pymodel")
	if err != nil {
		b.Fatal(err)
	}
	hostArgv := []string{py, "-B", host, "--model-dir", model}
	req := echoRequest(b)
	frameLen := len(frame.AppendRequest(nil, req))

	b.Run("path=bare-socketpair", func(b *testing.B) {
		nc := startPeer(b, []string{py, "-c", pyEcho})
		msg, buf := make([]byte, frameLen), make([]byte, frameLen)
		lat := make([]time.Duration, 0, b.N)
		for range b.N {
			t0 := time.Now()
			if _, err := nc.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(nc, buf); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		reportSeam(b, lat)
	})
	b.Run("path=host", func(b *testing.B) {
		nc := startPeer(b, hostArgv)
		rd := frame.NewReader(nc, 0)
		if k, _, _, err := rd.Next(); err != nil || k != frame.KindHello {
			b.Fatalf("hello: %v %v", k, err)
		}
		roundTrip := func(r *frame.Request) *frame.Result {
			if _, err := nc.Write(frame.AppendRequest(nil, r)); err != nil {
				b.Fatal(err)
			}
			_, id, body, err := rd.Next()
			if err != nil {
				b.Fatal(err)
			}
			res, err := frame.DecodeResult(id, body)
			if err != nil {
				b.Fatal(err)
			}
			return res
		}
		if res := roundTrip(&frame.Request{Kind: frame.KindSetup, ID: 1, Name: "crunch_base.Tracker"}); res.Code != frame.CodeSuccess {
			b.Fatalf("setup: %+v", res)
		}
		lat := make([]time.Duration, 0, b.N)
		for range b.N {
			t0 := time.Now()
			if res := roundTrip(req); res.Code != frame.CodeSuccess {
				b.Fatalf("call: %+v", res)
			}
			lat = append(lat, time.Since(t0))
		}
		reportSeam(b, lat)
	})
	b.Run("path=supervisor", func(b *testing.B) {
		ready := make(chan struct{}, 1)
		s := New(Config{Command: hostArgv, OnState: func(h *frame.Hello) {
			if h != nil {
				ready <- struct{}{}
			}
		}})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); s.Run(ctx) }()
		b.Cleanup(func() { cancel(); <-done })
		select {
		case <-ready:
		case <-time.After(30 * time.Second):
			b.Fatal("the Python host never said hello")
		}
		if res, err := s.Do(ctx, &frame.Request{Kind: frame.KindSetup, Name: "crunch_base.Tracker"}); err != nil || res.Code != frame.CodeSuccess {
			b.Fatalf("setup: %+v %v", res, err)
		}
		lat := make([]time.Duration, 0, b.N)
		for range b.N {
			t0 := time.Now()
			if res, err := s.Do(ctx, req); err != nil || res.Code != frame.CodeSuccess {
				b.Fatalf("call: %+v %v", res, err)
			}
			lat = append(lat, time.Since(t0))
		}
		reportSeam(b, lat)
	})
}

// echoRequest is the side-by-side benchmark's call: echo with a 172-byte
// JSON object, spaced as Python's json.dumps writes it.
func echoRequest(b *testing.B) *frame.Request {
	parts := make([]string, 27)
	for i := range parts {
		parts[i] = strconv.FormatFloat(float64(i)*0.5, 'f', 1, 64)
	}
	text := fmt.Sprintf(`{"f": [%s], "id": "%%s"}`, strings.Join(parts, ", "))
	raw := []byte(fmt.Sprintf(text, strings.Repeat("x", 172-len(fmt.Sprintf(text, "")))))
	if len(raw) != 172 {
		b.Fatalf("argument of %d bytes", len(raw))
	}
	return &frame.Request{Kind: frame.KindCall, ID: 2, Name: "echo",
		Args: []*commonspb.Argument{{Position: 0, Data: commonspb.RawJSON(raw)}}}
}

// startPeer starts argv with one end of a socketpair as its fd 3 and
// returns the other end.
func startPeer(b *testing.B, argv []string) net.Conn {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	local, remote := os.NewFile(uintptr(fds[0]), "seam"), os.NewFile(uintptr(fds[1]), "seam-peer")
	nc, err := net.FileConn(local)
	_ = local.Close()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "MODELNODES_WORKER_FD=3")
	cmd.ExtraFiles = []*os.File{remote}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	_ = remote.Close()
	b.Cleanup(func() { _ = nc.Close(); _ = cmd.Wait() })
	return nc
}

func reportSeam(b *testing.B, lat []time.Duration) {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}
