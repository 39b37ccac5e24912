package runner_test

import (
	"bytes"
	"encoding/json"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/gomodel"
	"github.com/modelnodes/modelnodes/runner/worker"
)

// hostileMain is the test binary acting as a Go model worker that misbehaves
// on request: it exits, hangs or corrupts the protocol mid-call.
func hostileMain() {
	if os.Getenv("HOSTILE_EXIT_AT_START") != "" {
		os.Exit(7)
	}
	// gomodel closes fd 3 once it holds the socket: keep a copy to corrupt.
	fd, err := syscall.Dup(3)
	if err != nil {
		panic(err)
	}
	rawSocket = os.NewFile(uintptr(fd), "raw-socket")
	gomodel.Main(gomodel.Model{
		Concurrency: 4,
		New: func(string, gomodel.Args) (gomodel.Instance, error) {
			return hostile{}, nil
		},
	})
}

type hostile struct{}

var rawSocket *os.File

func (hostile) Call(method string, args gomodel.Args) (*commonspb.Variant, error) {
	switch method {
	case "pid":
		return commonspb.Int(int64(os.Getpid())), nil
	case "exit":
		os.Exit(3)
	case "sleep":
		d, _ := args.Positional[0].AsDouble()
		time.Sleep(time.Duration(d * float64(time.Second)))
		return commonspb.String("slept"), nil
	case "bigheader":
		// A result header claiming a 64 MiB body (under the runner's frame
		// limit), then nothing for 5 s.
		_, _ = rawSocket.Write([]byte{0x04, 0x00, 0x00, 0x00, 0x10, 0, 0, 0, 1})
		time.Sleep(5 * time.Second)
		return nil, nil
	case "shout":
		// One 10 MiB line on stderr.
		_, _ = os.Stderr.Write(append(bytes.Repeat([]byte("x"), 10<<20), '\n'))
		return commonspb.String("shouted"), nil
	case "garbage":
		// A frame header claiming 2 GiB, then junk.
		_, _ = rawSocket.Write([]byte{0x7f, 0xff, 0xff, 0xff, 0x10, 'j', 'u', 'n', 'k'})
		time.Sleep(5 * time.Second)
		return nil, nil
	}
	return nil, gomodel.ErrNoMethod
}

func (h *harness) pid() int64 {
	h.t.Helper()
	res := h.call("pid", nil)
	v, err := res.GetMethodResponse().AsInt()
	if err != nil {
		h.t.Fatalf("pid(): %v %v", res.GetStatus(), err)
	}
	return v
}

// Each fault gets a clear status, the worker is replaced, the model's Setup is
// replayed on the new worker, and the next call succeeds without a new Setup.
func TestWorkerFaultsAreContained(t *testing.T) {
	for _, tc := range []struct {
		name, method string
		worker       func(t testing.TB) []string
	}{
		{"go worker exits mid-call", "exit", hostileWorker},
		{"go worker writes a corrupt frame", "garbage", hostileWorker},
		{"python worker exits mid-call", "crash", func(t testing.TB) []string { return pythonWorker(t, "pymodel") }},
		{"python worker writes a corrupt frame", "garbage", func(t testing.TB) []string { return pythonWorker(t, "pymodel") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, tc.worker(t)).ready()
			wantCode(t, "setup", h.setup("crunch_base.Tracker", nil), "SUCCESS", "")
			before := h.pid()
			st := h.call(tc.method, nil).GetStatus()
			wantCode(t, tc.method, st, "UNKNOWN", "model worker")
			h.ready()
			if after := h.pid(); after == before {
				t.Errorf("worker pid %d unchanged: the faulty worker was not replaced", before)
			}
		})
	}
}

func TestWorkerHangPastDeadline(t *testing.T) {
	h := start(t, hostileWorker(t), withCallTimeout(time.Second)).ready()
	wantCode(t, "setup", h.setup("x.Base", nil), "SUCCESS", "")
	before := h.pid()

	// The caller's own deadline: DEADLINE_EXCEEDED at that deadline.
	t0 := time.Now()
	_, err := h.ds.Call(ctxTimeout(t, 200*time.Millisecond), &dspb.CallRequest{MethodName: "sleep", MethodArguments: args(commonspb.Double(30))})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("sleeping call: %v, want DeadlineExceeded", err)
	}
	if el := time.Since(t0); el > 2*time.Second {
		t.Errorf("the call returned after %s, long past its 200ms deadline", el)
	}
	// A caller without a deadline is cut at the runner's call timeout (1s),
	// and the hung worker is replaced (at call timeout + 5s).
	_, err = h.ds.Call(ctxTimeout(t, 30*time.Second), &dspb.CallRequest{MethodName: "sleep", MethodArguments: args(commonspb.Double(30))})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("call past --call-timeout: %v, want DeadlineExceeded", err)
	}
	// The old worker answers until it is killed as hung; then calls wait
	// for its replacement.
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := h.ds.Call(ctxTimeout(t, 5*time.Second), &dspb.CallRequest{MethodName: "pid"})
		if pid, perr := res.GetMethodResponse().AsInt(); err == nil && perr == nil && pid != before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hung worker was never replaced (last: %v %v)", res.GetStatus(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestWorkerThatCannotStart(t *testing.T) {
	cmd := hostileWorker(t)
	t.Setenv("HOSTILE_EXIT_AT_START", "1")
	h := start(t, cmd)
	h.waitHealth("", healthpb.HealthCheckResponse_NOT_SERVING)
	_, err := h.ds.Call(ctxTimeout(t, 5*time.Second), &dspb.CallRequest{MethodName: "pid"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call with no worker: %v, want Unavailable", err)
	}
}

func TestQueueBoundAnswersResourceExhausted(t *testing.T) {
	// The Python host takes one call at a time; one more may queue.
	h := start(t, pythonWorker(t, "pymodel"), withMaxQueue(1)).ready()
	wantCode(t, "setup", h.setup("crunch_base.Tracker", nil), "SUCCESS", "")
	var exhausted, ok atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := h.ds.Call(ctxTimeout(t, 20*time.Second), &dspb.CallRequest{MethodName: "sleep", MethodArguments: args(commonspb.Double(0.5))})
			switch {
			case status.Code(err) == codes.ResourceExhausted:
				exhausted.Add(1)
			case err == nil && res.GetStatus().GetCode() == "SUCCESS":
				ok.Add(1)
			default:
				t.Errorf("unexpected: %v %v", res, err)
			}
		}()
		time.Sleep(50 * time.Millisecond) // let each call take its place in turn
	}
	wg.Wait()
	if ok.Load() != 2 || exhausted.Load() != 2 {
		t.Errorf("%d succeeded and %d were refused; want 2 and 2 (1 running + 1 queued)", ok.Load(), exhausted.Load())
	}
}

func TestOversizedRequestRefused(t *testing.T) {
	h := start(t, exampleWorker(t)).ready()
	wantCode(t, "setup", h.setup("x.Base", nil), "SUCCESS", "")
	big := make([]byte, 100<<20)
	_, err := h.ds.Call(ctxTimeout(t, 60*time.Second), &dspb.CallRequest{MethodName: "echo", MethodArguments: args(commonspb.Parquet(big))})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("100 MB request: %v, want ResourceExhausted", err)
	}
	// Just under the 64 MiB limit is fine.
	fits := make([]byte, 60<<20)
	res := h.call("echo", args(commonspb.Parquet(fits)))
	if len(res.GetMethodResponse().GetValue()) != len(fits) {
		t.Fatalf("60 MiB echo came back with %d bytes (%v)", len(res.GetMethodResponse().GetValue()), res.GetStatus())
	}
}

func exampleWorker(t testing.TB) []string { return []string{exampleModel(t)} }

// A hostile worker announces a 64 MiB result and sends nothing: the runner
// must not allocate the claim before the bytes arrive (its task reserves
// 48 MB), and its other calls go on.
func TestHostileWorkerHugeFrameHeader(t *testing.T) {
	h := start(t, hostileWorker(t)).ready()
	wantCode(t, "setup", h.setup("x.Base", nil), "SUCCESS", "")
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := h.ds.Call(ctxTimeout(t, time.Second), &dspb.CallRequest{MethodName: "bigheader"}); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("bigheader: %v, want DeadlineExceeded", err)
	}
	runtime.ReadMemStats(&after)
	grew := after.TotalAlloc - before.TotalAlloc
	t.Logf("a stalled 64 MiB result cost the runner %d KiB", grew>>10)
	if grew > 16<<20 {
		t.Errorf("the runner allocated %d MiB for a frame whose body never came; want a few KiB", grew>>20)
	}
}

// A hostile worker writes a 10 MiB line: the runner's log gets one entry of
// about 4 KiB saying how much was dropped, not 10 MiB or thousands of
// entries.
func TestHostileWorkerLongLogLine(t *testing.T) {
	logs := &syncbuf.Buffer{}
	h := start(t, hostileWorker(t), func(c *runner.Config) {
		c.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs, JSONFormat: true})
	}).ready()
	wantCode(t, "setup", h.setup("x.Base", nil), "SUCCESS", "")
	if s, _ := h.call("shout", nil).GetMethodResponse().AsString(); s != "shouted" {
		t.Fatal("shout() did not answer")
	}
	var lines []string
	deadline := time.Now().Add(10 * time.Second)
	for len(lines) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		lines = nil
		for _, l := range strings.Split(logs.String(), "\n") {
			var e map[string]any
			if json.Unmarshal([]byte(l), &e) == nil && e["@message"] == "model output" {
				lines = append(lines, e["line"].(string))
			}
		}
	}
	if len(lines) != 1 {
		t.Fatalf("a 10 MiB line made %d log entries, want 1", len(lines))
	}
	if len(lines[0]) > worker.MaxLogField+64 || !strings.HasSuffix(lines[0], "bytes truncated)") {
		t.Errorf("the 10 MiB line was logged as %d bytes ending %q", len(lines[0]), lines[0][max(0, len(lines[0])-40):])
	}
	t.Logf("a 10 MiB line: 1 entry of %d bytes, %d bytes of log in all", len(lines[0]), len(logs.String()))
	if n := len(logs.String()); n > 64<<10 {
		t.Errorf("the runner's log holds %d KiB after one 10 MiB line", n>>10)
	}
}
