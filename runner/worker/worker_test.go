package worker

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/runner/frame"
)

// The test binary doubles as a fake or hostile worker, its role chosen by
// this variable (see fakeWorker and hostileWorker).
const roleEnv = "WORKER_TEST_ROLE"

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		if !fakeWorker(role) {
			hostileWorker(role)
		}
		return
	}
	os.Exit(m.Run())
}

// hostileWorker misbehaves as role says, then waits to be killed.
func hostileWorker(role string) {
	sock := os.NewFile(3, "worker-socket")
	hello := frame.Hello{Protocol: frame.ProtocolVersion, Runtime: "hostile", Services: []string{"dynamic_subclass"}}
	switch role {
	case "loud":
		// A 10 MiB line on stderr, then an ordinary one, and a hello whose
		// strings are 1 MiB each.
		os.Stderr.Write(append(bytes.Repeat([]byte("x"), 10<<20), '\n'))
		os.Stderr.WriteString("after the long line\n")
		big := strings.Repeat("é", 1<<19)
		hello.Runtime, hello.LoadError = big, big
	}
	b, _ := json.Marshal(hello)
	if _, err := sock.Write(frame.AppendHello(nil, b)); err != nil {
		os.Exit(2)
	}
	if role == "stall" {
		// Answer the first request with a header claiming the largest frame,
		// then send nothing more.
		rd := frame.NewReader(sock, 0)
		_, id, _, err := rd.Next()
		if err != nil {
			os.Exit(3)
		}
		hdr := make([]byte, 9)
		binary.BigEndian.PutUint32(hdr, frame.DefaultMaxFrame)
		hdr[4] = byte(frame.KindResult)
		binary.BigEndian.PutUint32(hdr[5:], id)
		_, _ = sock.Write(hdr)
	}
	time.Sleep(time.Hour)
}

// logBuffer collects JSON log entries, one a line.
type logBuffer struct{ syncbuf.Buffer }

func (l *logBuffer) entries() []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(l.String(), "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

func (l *logBuffer) size() int { return len(l.Bytes()) }

func supervise(t *testing.T, role string, logs *logBuffer) *Supervisor {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	logger := hclog.NewNullLogger()
	if logs != nil {
		logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs, JSONFormat: true})
	}
	s := New(Config{Command: []string{self}, Env: []string{roleEnv + "=" + role}, Logger: logger, HangTimeout: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(20 * time.Second)
	for s.Hello() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the worker never said hello")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

// A worker's output line, however long, is one log entry of at most
// MaxLogField bytes plus a marker, and the hello's strings are capped too:
// the model cannot flood the node's logs or hold the runner's memory.
func TestWorkerStringsAreCappedInTheLog(t *testing.T) {
	logs := &logBuffer{}
	supervise(t, "loud", logs)
	deadline := time.Now().Add(10 * time.Second)
	var outputs []string
	var ready map[string]any
	for {
		outputs, ready = nil, nil
		for _, e := range logs.entries() {
			switch e["@message"] {
			case "model output":
				outputs = append(outputs, e["line"].(string))
			case "model worker ready":
				ready = e
			}
		}
		if (len(outputs) >= 2 && ready != nil) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(outputs) != 2 || outputs[1] != "after the long line" {
		t.Fatalf("the worker's 10 MiB line and the next one gave %d log entries, want 2 (first ones: %.200q)", len(outputs), outputs[:min(len(outputs), 3)])
	}
	long := outputs[0]
	if len(long) > MaxLogField+64 || !strings.HasSuffix(long, "…(10481664 bytes truncated)") {
		t.Errorf("the 10 MiB line was logged as %d bytes ending %q; want its first 4 KiB and the count of bytes dropped", len(long), long[max(0, len(long)-40):])
	}
	if ready == nil {
		t.Fatal("no 'model worker ready' entry")
	}
	for _, f := range []string{"runtime", "load_error"} {
		v, _ := ready[f].(string)
		if len(v) > MaxLogField+64 || !strings.Contains(v, "bytes truncated)") {
			t.Errorf("hello's 1 MiB %s was logged as %d bytes", f, len(v))
		}
	}
	if n := logs.size(); n > 64<<10 {
		t.Errorf("the log holds %d KiB after 22 MiB of worker strings; want a few KiB", n>>10)
	}
}

// A worker that answers with a header claiming 256 MiB and then stalls costs
// the runner nothing like 256 MiB.
func TestStalledHugeFrameCostsNoMemory(t *testing.T) {
	s := supervise(t, "stall", nil)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if res, err := s.Do(ctx, &frame.Request{Kind: frame.KindCall, Name: "predict"}); err == nil {
		t.Fatalf("the stalled worker answered: %+v", res)
	}
	runtime.ReadMemStats(&after)
	grew := after.TotalAlloc - before.TotalAlloc
	t.Logf("a stalled 256 MiB frame cost the supervisor %d KiB", grew>>10)
	if grew > 16<<20 {
		t.Errorf("the runner allocated %d MiB for a frame whose body never came; want a few KiB", grew>>20)
	}
}

func TestCapField(t *testing.T) {
	if got := CapField("short"); got != "short" {
		t.Errorf("CapField(short) = %q", got)
	}
	s := strings.Repeat("a", MaxLogField-1) + "é" + "tail"
	got := CapField(s)
	if !strings.HasPrefix(got, strings.Repeat("a", MaxLogField-1)+"…(") || !strings.HasSuffix(got, "(6 bytes truncated)") {
		t.Errorf("CapField split a rune or miscounted: %q", got[MaxLogField-4:])
	}
}
