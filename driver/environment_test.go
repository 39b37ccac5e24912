package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/nomad/plugins/drivers"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/modelnodes/modelnodes/driver"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
)

// A submission's requirements.txt is untrusted, and the driver reads it as
// root. What it must refuse makes the model faulty, not the node: the runner
// comes up and answers Setup BAD_IMPLEMENTATION saying why, a task event says
// so, and nothing is built (uv points nowhere: running it would fail the
// task's start instead).
func TestRefusedRequirementsMakeTheModelFaulty(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "runner.key")
	if err := os.WriteFile(secret, []byte("-----BEGIN PRIVATE KEY----- s3cr3t"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		plant func(t *testing.T, path string)
		want  string
	}{
		"a link to a root-only file": {func(t *testing.T, p string) { must(t, os.Symlink(secret, p)) }, "is a symbolic link"},
		"a directory":                {func(t *testing.T, p string) { must(t, os.Mkdir(p, 0o755)) }, "is not a regular file"},
		"a fifo":                     {func(t *testing.T, p string) { must(t, mkfifo(p)) }, "is not a regular file"},
		"larger than 1 MiB": {func(t *testing.T, p string) {
			must(t, os.WriteFile(p, []byte(strings.Repeat("six\n", 300_000)), 0o644))
		}, "more than 1048576"},
		"an index of its own": {func(t *testing.T, p string) {
			must(t, os.WriteFile(p, []byte("pandas\n--extra-index-url https://evil.example/simple\n"), 0o644))
		}, "requirements line 2"},
		"a local path": {func(t *testing.T, p string) {
			must(t, os.WriteFile(p, []byte("/etc/passwd\n"), 0o644))
		}, "requirements line 1"},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRootless(t, nil)
			r.plugin = map[string]any{"environments": map[string]any{"root": filepath.Join(t.TempDir(), "envs"), "uv": "/nonexistent/uv"}}
			r.d = r.newDriver()
			c.plant(t, filepath.Join(r.task.TaskDir().LocalDir, "model", driver.RequirementsFile))
			events := collectEvents(t, r.d)
			if _, _, err := r.d.StartTask(r.task); err != nil {
				t.Fatalf("StartTask: %v (a submission's bad requirements must not fail the node's start)", err)
			}
			res := setupOn(t, r.addr, "crunch_base.Tracker")
			if res.GetCode() != "BAD_IMPLEMENTATION" || !strings.Contains(res.GetMessage(), c.want) {
				t.Fatalf("Setup answered %s %q, want BAD_IMPLEMENTATION saying %q", res.GetCode(), res.GetMessage(), c.want)
			}
			if strings.Contains(res.GetMessage(), "s3cr3t") {
				t.Fatalf("the answer quotes the file the link points to: %q", res.GetMessage())
			}
			ev := events.waitFor(t, func(e *drivers.TaskEvent) bool {
				return e.Annotations[driver.EventEnvironment] == driver.EnvironmentStageFailed
			})
			if !strings.Contains(ev.Message, c.want) {
				t.Errorf("task event %q does not say %q", ev.Message, c.want)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// setupOn calls Setup on the model at addr once it answers.
func setupOn(t *testing.T, addr, class string) interface {
	GetCode() string
	GetMessage() string
} {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := dspb.NewDynamicSubclassServiceClient(conn).Setup(ctx, &dspb.SetupRequest{ClassName: class}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return res.GetStatus()
}

// taskEvents collects a driver's task events as Nomad does: all along.
type taskEvents struct {
	mu  sync.Mutex
	all []*drivers.TaskEvent
}

func collectEvents(t *testing.T, d *driver.Driver) *taskEvents {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := d.TaskEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := &taskEvents{}
	go func() {
		for ev := range ch {
			e.mu.Lock()
			e.all = append(e.all, ev)
			e.mu.Unlock()
		}
	}()
	return e
}

// of returns the events of one task so far.
func (e *taskEvents) of(taskID string) []*drivers.TaskEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*drivers.TaskEvent
	for _, ev := range e.all {
		if ev.TaskID == taskID {
			out = append(out, ev)
		}
	}
	return out
}

// waitFor returns the first event that matches, or fails the test after 30
// seconds.
func (e *taskEvents) waitFor(t *testing.T, match func(*drivers.TaskEvent) bool) *drivers.TaskEvent {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		e.mu.Lock()
		var seen []string
		for _, ev := range e.all {
			if match(ev) {
				e.mu.Unlock()
				return ev
			}
			seen = append(seen, ev.Message)
		}
		e.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no such task event within 30s; saw %q", seen)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mkfifo(p string) error { return syscall.Mkfifo(p, 0o644) }

// fakeUV writes a uv stand-in that makes a bare virtual environment on the
// host's python3 and records the requirements each install was asked for in
// log, so the driver's wiring is tested without PyPI.
func fakeUV(t *testing.T, python string) (uv, log string) {
	t.Helper()
	dir := t.TempDir()
	uv, log = filepath.Join(dir, "uv"), filepath.Join(dir, "requested")
	script := `#!/bin/sh
set -e
case "$1" in
venv) venv=$5; mkdir -p "$venv/bin" "$venv/lib/python3.x/site-packages"; ln -s ` + python + ` "$venv/bin/python" ;;
pip) while [ $# -gt 0 ]; do if [ "$1" = -r ]; then cat "$2" >> ` + log + `; fi; shift; done ;;
esac
`
	if err := os.WriteFile(uv, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return uv, log
}

// The node's default requirements (CrunchDAO's images carry pandas and
// pyarrow) reach the build of a submission that has no requirements.txt,
// and a submission's own pin of one of them wins over the default.
func TestDefaultRequirementsReachTheBuild(t *testing.T) {
	for name, c := range map[string]struct{ submission, want string }{
		"no requirements.txt": {"", "pandas>=2.2.3,<3  # the node's default\npyarrow>=18.1,<19  # the node's default\n"},
		"its own pandas":      {"pandas==2.1.4\n", "pandas==2.1.4\npyarrow>=18.1,<19  # the node's default\n"},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRootless(t, nil)
			uv, requested := fakeUV(t, r.python)
			r.plugin = map[string]any{"environments": map[string]any{"root": filepath.Join(t.TempDir(), "envs"), "uv": uv,
				"default_requirements": []string{"pandas>=2.2.3,<3", "pyarrow>=18.1,<19"}}}
			r.d = r.newDriver()
			if c.submission != "" {
				must(t, os.WriteFile(filepath.Join(r.task.TaskDir().LocalDir, "model", driver.RequirementsFile), []byte(c.submission), 0o644))
			}
			if _, _, err := r.d.StartTask(r.task); err != nil {
				t.Fatalf("StartTask: %v", err)
			}
			r.waitServing()
			got, err := os.ReadFile(requested)
			if err != nil || string(got) != c.want {
				t.Fatalf("the build was asked for %q (%v), want %q", got, err, c.want)
			}
		})
	}
}
