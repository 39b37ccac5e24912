package pyenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// fakeUV stands in for uv through the Run seam: "venv" makes a directory with
// bin/python, "pip install" reads the requirements file and, per line,
//
//	NAME==V     writes lib/NAME
//	blob=N      writes N bytes (for the disk budget)
//	fail=MSG    exits 1 with MSG on stderr, like a resolver error
//	crash       writes a half-installed file, then dies of SIGKILL
//	slow=D      sleeps D first (so that concurrent Acquires overlap)
//	compile=bad   compileall reports a file it cannot compile
//	compile=crash compileall itself fails
//
// A real process exits (sh), so the errors are the ones os/exec gives for uv.
type fakeUV struct {
	runs    atomic.Int32
	mu      sync.Mutex
	fixed   bool // fail= lines succeed: the index is back
	started chan struct{}
}

func (f *fakeUV) run(ctx context.Context, cmd *exec.Cmd) error {
	f.runs.Add(1)
	args := cmd.Args[1:]
	script := "exit 0"
	switch args[0] {
	case "venv":
		target := args[4] // venv --relocatable --python PY TARGET
		if err := os.MkdirAll(filepath.Join(target, "bin"), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(target, "bin", "python"), []byte("#!/bin/sh\n"), 0o755); err != nil {
			return err
		}
	case "pip":
		venv := filepath.Dir(filepath.Dir(argAfter(args, "--python")))
		req, err := os.ReadFile(argAfter(args, "-r"))
		if err != nil {
			return err
		}
		lib := filepath.Join(venv, fakeSite)
		if err := os.MkdirAll(lib, 0o755); err != nil {
			return err
		}
		for _, l := range strings.Split(strings.TrimSpace(string(req)), "\n") {
			k, v, _ := strings.Cut(l, "=")
			switch k {
			case "slow":
				d, _ := time.ParseDuration(v)
				if f.started != nil {
					close(f.started)
				}
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return ctx.Err()
				}
			case "blob":
				n, _ := strconv.Atoi(v)
				if err := os.WriteFile(filepath.Join(lib, "blob"), make([]byte, n), 0o644); err != nil {
					return err
				}
			case "fail":
				f.mu.Lock()
				fixed := f.fixed
				f.mu.Unlock()
				if !fixed {
					script = "echo 'Resolved 0 packages' >&2; echo \"  × No solution found: $0\" >&2; exit 1"
				}
			case "crash":
				_ = os.WriteFile(filepath.Join(lib, "half"), []byte("x"), 0o644)
				script = "kill -9 $$"
			default:
				_ = os.WriteFile(filepath.Join(lib, strings.TrimSuffix(k, "=")), nil, 0o644)
			}
		}
		if script == "exit 0" {
			script = "echo 'Resolved 1 package in 1ms' >&2; echo 'Prepared 1 package in 1ms' >&2; echo 'Installed 1 package in 1ms' >&2"
		}
		script += " # " + string(req)
	}
	if args[0] == "-I" { // python -I -m compileall, in site-packages
		req, _ := os.ReadFile(filepath.Join(cmd.Dir, "..", "..", "..", "..", "requirements.txt"))
		switch {
		case strings.Contains(string(req), "compile=bad"):
			script = `echo "*** Error compiling './py2only.py'..." >&2; echo "SyntaxError: Missing parentheses" >&2; exit 1`
		case strings.Contains(string(req), "compile=crash"):
			// Longer than the kept tail: the traceback's first line is gone
			// from it by the end.
			script = `echo "Traceback (most recent call last):" >&2; for i in $(seq 30); do echo "  File \"x.py\", line $i" >&2; done; echo "OSError: [Errno 38] Function not implemented" >&2; exit 1`
		}
	}
	msg := ""
	if i := strings.Index(string(readReq(args)), "fail="); i >= 0 {
		msg = strings.SplitN(string(readReq(args))[i+5:], "\n", 2)[0]
	}
	cmd.Path = "/bin/sh"
	cmd.Args = []string{"sh", "-c", script, msg}
	return cmd.Run()
}

// fakeSite is where the fake installs, as uv would.
const fakeSite = "lib/python3.11/site-packages"

func readReq(args []string) []byte {
	if args[0] != "pip" {
		return nil
	}
	b, _ := os.ReadFile(argAfter(args, "-r"))
	return b
}

func argAfter(args []string, flag string) string {
	for i, a := range args[:len(args)-1] {
		if a == flag {
			return args[i+1]
		}
	}
	return ""
}

func newTestCache(t *testing.T, f *fakeUV) *Cache {
	t.Helper()
	root := t.TempDir()
	// Environments are read-only trees: give their directories back their
	// write bit before TempDir's cleanup, which may not run as root.
	t.Cleanup(func() { _ = removeTree(root) })
	return &Cache{Root: root, UV: "/nonexistent/uv", Run: f.run}
}

func acquire(t *testing.T, c *Cache, req string) *Env {
	t.Helper()
	env, err := c.Acquire(context.Background(), baseSpec(req))
	if err != nil {
		t.Fatalf("acquire %q: %v", req, err)
	}
	return env
}

func TestAcquireBuildsOnceForConcurrentCallers(t *testing.T) {
	f := &fakeUV{}
	c := newTestCache(t, f)
	// A second Cache on the same Root is what another plugin process sees:
	// flock serializes both alike.
	other := &Cache{Root: c.Root, UV: c.UV, Run: f.run}
	req := "slow=300ms\nsix==1.16.0\n"
	var wg sync.WaitGroup
	envs := make([]*Env, 5)
	errs := make([]error, 5)
	for i := range envs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc := c
			if i%2 == 1 {
				cc = other
			}
			envs[i], errs[i] = cc.Acquire(context.Background(), baseSpec(req))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("acquire %d: %v", i, err)
		}
		if envs[i].Path != envs[0].Path {
			t.Fatalf("acquire %d got %s, acquire 0 %s", i, envs[i].Path, envs[0].Path)
		}
	}
	if n := f.runs.Load(); n != 3 {
		t.Fatalf("the build ran %d commands for 5 concurrent Acquires, want 3 (uv venv, uv pip install, compileall) once", n)
	}
	if _, err := os.Stat(filepath.Join(envs[0].Path, fakeSite, "six")); err != nil {
		t.Fatalf("environment incomplete: %v", err)
	}
	for _, e := range envs {
		e.Release()
	}
	again := acquire(t, c, req)
	defer again.Release()
	if n := f.runs.Load(); n != 3 {
		t.Fatalf("a later Acquire ran uv again (%d runs)", n)
	}
	if again.Python() != filepath.Join(c.Root, "envs", Key(baseSpec(req)), "bin", "python") {
		t.Fatalf("python at %s", again.Python())
	}
}

func TestBuiltEnvironmentIsReadOnlyAndProgressIsReported(t *testing.T) {
	f := &fakeUV{}
	c := newTestCache(t, f)
	var stages []string
	c.Progress = func(key, stage, detail string) { stages = append(stages, stage) }
	env := acquire(t, c, "six==1.16.0\n")
	defer env.Release()
	for p, want := range map[string]os.FileMode{
		env.Path:                                 0o555,
		filepath.Join(env.Path, "bin/python"):    0o555,
		filepath.Join(env.Path, fakeSite, "six"): 0o444,
	} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	if got, want := strings.Join(stages, ","), "creating,resolving,downloading,installing,compiling,done"; got != want {
		t.Errorf("progress %s, want %s", got, want)
	}
	left, _ := os.ReadDir(filepath.Join(c.Root, "tmp"))
	if len(left) != 0 {
		t.Errorf("build left %d entries in tmp/", len(left))
	}
}

func TestEmptyRequirementsShareOneBareEnvironment(t *testing.T) {
	f := &fakeUV{}
	c := newTestCache(t, f)
	a := acquire(t, c, "")
	defer a.Release()
	b := acquire(t, c, "\r\n  \n")
	defer b.Release()
	if a.Path != b.Path {
		t.Fatalf("two empty requirements files got %s and %s", a.Path, b.Path)
	}
	if n := f.runs.Load(); n != 1 {
		t.Fatalf("uv ran %d times, want 1 (uv venv only)", n)
	}
}

func TestFailedBuildIsRememberedWithBackoff(t *testing.T) {
	f := &fakeUV{}
	c := newTestCache(t, f)
	now := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	c.now = func() time.Time { return now }
	req := "fail=Because no-such-package-xyz was not found in the package registry at https://u:s3cret@mirror.example/simple\n"
	key := Key(baseSpec(req))

	_, err := c.Acquire(context.Background(), baseSpec(req))
	var be *BuildError
	if !errors.As(err, &be) {
		t.Fatalf("error %v (%T), want a *BuildError", err, err)
	}
	if !strings.Contains(be.Output, "no-such-package-xyz was not found") || be.Remembered || be.Attempts != 1 {
		t.Fatalf("first failure: %+v", be)
	}
	rec, _ := os.ReadFile(filepath.Join(c.Root, "failed", key+".json"))
	if strings.Contains(be.Error(), "s3cret") || strings.Contains(string(rec), "s3cret") || !strings.Contains(string(rec), "not found") {
		t.Fatalf("index credentials in the error or the record, or no message recorded: %s / %s", be.Error(), rec)
	}
	if !be.RetryAt.Equal(now.Add(time.Minute)) {
		t.Fatalf("retry at %s, want a minute later", be.RetryAt)
	}
	if exists(filepath.Join(c.Root, "envs", key)) {
		t.Fatal("a failed build left an environment")
	}
	runs := f.runs.Load()

	now = now.Add(59 * time.Second)
	_, err = c.Acquire(context.Background(), baseSpec(req))
	if !errors.As(err, &be) || !be.Remembered || !strings.Contains(err.Error(), "was not found") {
		t.Fatalf("within the backoff: %v", err)
	}
	// A new process (another Cache on the root) remembers it too.
	other := &Cache{Root: c.Root, UV: c.UV, Run: f.run, now: c.now}
	if _, err := other.Acquire(context.Background(), baseSpec(req)); !errors.As(err, &be) || !be.Remembered {
		t.Fatalf("another process within the backoff: %v", err)
	}
	if f.runs.Load() != runs {
		t.Fatal("uv ran again within the backoff")
	}

	now = now.Add(2 * time.Second)
	_, err = c.Acquire(context.Background(), baseSpec(req))
	if !errors.As(err, &be) || be.Remembered || be.Attempts != 2 || !be.RetryAt.Equal(now.Add(2*time.Minute)) {
		t.Fatalf("after the backoff: %+v (%v)", be, err)
	}
	if f.runs.Load() == runs {
		t.Fatal("uv did not run after the backoff")
	}

	f.mu.Lock()
	f.fixed = true
	f.mu.Unlock()
	now = now.Add(3 * time.Minute)
	env := acquire(t, c, req)
	env.Release()
	if exists(filepath.Join(c.Root, "failed", key+".json")) {
		t.Fatal("the failure is still recorded after a successful build")
	}
}

func TestInterruptedBuildLeavesNothingAndIsNotRemembered(t *testing.T) {
	f := &fakeUV{}
	c := newTestCache(t, f)
	req := "six==1.16.0\ncrash\n"
	key := Key(baseSpec(req))
	_, err := c.Acquire(context.Background(), baseSpec(req))
	var be *BuildError
	if err == nil || errors.As(err, &be) {
		t.Fatalf("killed build: error %v, want one that is not a remembered BuildError", err)
	}
	if exists(filepath.Join(c.Root, "envs", key)) || exists(filepath.Join(c.Root, "failed", key+".json")) {
		t.Fatal("a killed build left an environment or a failure record")
	}
	if left, _ := os.ReadDir(filepath.Join(c.Root, "tmp")); len(left) != 0 {
		t.Fatalf("a killed build left %d entries in tmp/", len(left))
	}

	// The caller gives up mid-build (its task was stopped).
	f.started = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-f.started; cancel() }()
	slow := "slow=1m\nsix==1.16.0\n"
	if _, err := c.Acquire(ctx, baseSpec(slow)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled build: %v", err)
	}
	if exists(filepath.Join(c.Root, "failed", Key(baseSpec(slow))+".json")) {
		t.Fatal("a cancelled build was remembered as failed")
	}
	f.started = nil
	env := acquire(t, c, "six==1.16.0\n")
	env.Release()
}

func TestBuildLeftByACrashedProcessIsReplaced(t *testing.T) {
	f := &fakeUV{}
	c := newTestCache(t, f)
	req := "six==1.16.0\n"
	key := Key(baseSpec(req))
	// What a plugin killed mid-build leaves: a half build in tmp/, its lock
	// released by the kernel.
	half := filepath.Join(c.Root, "tmp", key+".123456", "env", fakeSite)
	if err := os.MkdirAll(half, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(half, "partial"), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(half, 0o555); err != nil {
		t.Fatal(err)
	}
	env := acquire(t, c, req)
	defer env.Release()
	if exists(filepath.Join(env.Path, fakeSite, "partial")) {
		t.Fatal("the environment holds the crashed build's file")
	}
	if left, _ := os.ReadDir(filepath.Join(c.Root, "tmp")); len(left) != 0 {
		t.Fatalf("tmp/ still holds %d entries", len(left))
	}
}

func TestCollectRemovesLeastRecentlyUsedButNeverOneInUse(t *testing.T) {
	f := &fakeUV{}
	c := newTestCache(t, f)
	const mib = 1 << 20
	blob := func(name string) string { return fmt.Sprintf("blob=%d\n%s==1\n", mib, name) }
	old := acquire(t, c, blob("old"))       // held throughout: in use
	older := acquire(t, c, blob("older"))   // released first: least recently used
	recent := acquire(t, c, blob("recent")) // released last
	older.Release()
	time.Sleep(20 * time.Millisecond) // mtimes of last use must differ
	recent.Release()
	// Make "old" the least recently used of all, though in use.
	past := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(c.Root, "use", old.Key+".lock"), past, past); err != nil {
		t.Fatal(err)
	}

	c.BudgetBytes = 3*mib + mib/2 // room for three environments, not four
	fourth := acquire(t, c, blob("fourth"))
	defer fourth.Release()
	for _, tc := range []struct {
		env  *Env
		kept bool
	}{{old, true}, {older, false}, {recent, true}, {fourth, true}} {
		if got := exists(tc.env.Path); got != tc.kept {
			t.Errorf("%s kept: %v, want %v", tc.env.Path, got, tc.kept)
		}
	}
	if _, err := os.Stat(filepath.Join(old.Path, fakeSite, "blob")); err != nil {
		t.Fatalf("the environment in use lost its files: %v", err)
	}

	// Released (which makes it the most recently used), the old one goes
	// too once the budget leaves room for one environment: the one in use.
	c.BudgetBytes = mib + mib/2
	old.Release()
	if err := c.Collect(); err != nil {
		t.Fatal(err)
	}
	if exists(old.Path) || exists(recent.Path) || !exists(fourth.Path) {
		t.Errorf("after release: old %v recent %v fourth %v, want only fourth",
			exists(old.Path), exists(recent.Path), exists(fourth.Path))
	}
	// An environment collected is built again on demand.
	runs := f.runs.Load()
	again := acquire(t, c, blob("older"))
	defer again.Release()
	if f.runs.Load() == runs {
		t.Fatal("a collected environment was not rebuilt")
	}
}

func TestUsageCountsHardlinksOnce(t *testing.T) {
	root := t.TempDir()
	c := &Cache{Root: root, UV: "uv"}
	if err := c.init(); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 64<<10)
	cached := filepath.Join(root, "uv-cache", "wheel")
	if err := os.WriteFile(cached, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b"} {
		if err := os.MkdirAll(filepath.Join(root, "envs", k), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(cached, filepath.Join(root, "envs", k, "f")); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "envs", "b", "own"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	u, err := c.usage()
	if err != nil {
		t.Fatal(err)
	}
	files := int64(2 * len(data))
	if u.total < files || u.total > files+64<<10 {
		t.Fatalf("total %d, want about %d (the linked file once, plus directories)", u.total, files)
	}
	if freed := u.remove("a"); freed > 8<<10 {
		t.Fatalf("removing a frees %d, want only its directory (its file is linked elsewhere)", freed)
	}
	if freed := u.remove("b"); freed < int64(len(data)) || freed >= files {
		t.Fatalf("removing b frees %d, want its own file only (the cache keeps the linked one)", freed)
	}
}

func TestBuildPastItsTimeLimitIsRemembered(t *testing.T) {
	f := &fakeUV{}
	c := newTestCache(t, f)
	c.BuildTimeout = 200 * time.Millisecond
	req := "slow=1m\nsix==1.16.0\n"
	_, err := c.Acquire(context.Background(), baseSpec(req))
	var be *BuildError
	if !errors.As(err, &be) || !strings.Contains(be.Output, "time limit") {
		t.Fatalf("error %v, want a BuildError about the time limit", err)
	}
	runs := f.runs.Load()
	if _, err := c.Acquire(context.Background(), baseSpec(req)); !errors.As(err, &be) || !be.Remembered {
		t.Fatalf("second Acquire: %v, want the remembered failure", err)
	}
	if f.runs.Load() != runs {
		t.Fatal("a build that ran out of time was started again within the backoff")
	}
}

// TestBuildOfAKilledProcessIsTakenOver kills, with SIGKILL, another process
// in the middle of its build: the kernel releases its lock, and the next
// Acquire builds the environment and removes the half build.
func TestBuildOfAKilledProcessIsTakenOver(t *testing.T) {
	if root := os.Getenv("PYENV_TEST_HANG_ROOT"); root != "" {
		// The other process: a build that never ends.
		c := &Cache{Root: root, UV: "/nonexistent/uv", Run: func(ctx context.Context, cmd *exec.Cmd) error {
			if err := os.MkdirAll(filepath.Join(cmd.Dir, "env", fakeSite), 0o755); err != nil {
				return err
			}
			time.Sleep(time.Hour)
			return nil
		}}
		_, err := c.Acquire(context.Background(), baseSpec("six==1.16.0\n"))
		t.Fatalf("the hanging build returned: %v", err)
	}
	f := &fakeUV{}
	c := newTestCache(t, f)
	other := exec.Command(os.Args[0], "-test.run=^TestBuildOfAKilledProcessIsTakenOver$")
	other.Env = append(os.Environ(), "PYENV_TEST_HANG_ROOT="+c.Root)
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	key := Key(baseSpec("six==1.16.0\n"))
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m, _ := filepath.Glob(filepath.Join(c.Root, "tmp", key+".*", "env", fakeSite)); len(m) > 0 {
			break
		}
		if time.Now().After(deadline) {
			_ = other.Process.Kill()
			t.Fatal("the other process did not start its build")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// While it builds, this process waits for it rather than building too.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := c.Acquire(ctx, baseSpec("six==1.16.0\n"))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || f.runs.Load() != 0 {
		t.Fatalf("during the other's build: %v after %d runs, want to wait without building", err, f.runs.Load())
	}
	_ = other.Process.Signal(syscall.SIGKILL)
	_ = other.Wait()

	env := acquire(t, c, "six==1.16.0\n")
	defer env.Release()
	if f.runs.Load() == 0 || !exists(filepath.Join(env.Path, fakeSite, "six")) {
		t.Fatal("the environment was not built after the other process died")
	}
	if left, _ := filepath.Glob(filepath.Join(c.Root, "tmp", "*")); len(left) != 0 {
		t.Fatalf("the killed build's directory is still there: %v", left)
	}
}

func TestProgressCountsDownloads(t *testing.T) {
	var got []string
	c := &Cache{Progress: func(key, stage, detail string) { got = append(got, stage+": "+detail) }}
	out := &uvOutput{cache: c, key: "k"}
	// uv 0.13's output for a cold pandas install, cut short.
	_, _ = out.Write([]byte("Resolved 6 packages in 404ms\nDownloading pandas (12.5MiB)\nDownloading numpy (16.1MiB)\n Downloaded numpy\n"))
	_, _ = out.Write([]byte(" Downloaded pandas\nPrepared 6 packages in 3.31s\nInstalled 6 packages in 231ms\n + six==1.16.0"))
	out.flush()
	want := []string{
		"downloading: Resolved 6 packages in 404ms",
		"downloading: Downloading pandas (12.5MiB)",
		"downloading: Downloading numpy (16.1MiB)",
		"downloading: Downloaded numpy (1 of 2)",
		"downloading: Downloaded pandas (2 of 2)",
		"installing: Prepared 6 packages in 3.31s",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("progress:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if tail := out.tail(); !strings.HasSuffix(tail, " + six==1.16.0") {
		t.Fatalf("the last line without a newline is not in the tail: %q", tail)
	}
}

func TestAProcessHoldingTheFileKeepsTheEnvironment(t *testing.T) {
	f := &fakeUV{}
	c := newTestCache(t, f)
	env := acquire(t, c, "six==1.16.0\n")
	// The runner inherits the lock and outlives the plugin's own hold.
	runner := exec.Command("sleep", "60")
	runner.ExtraFiles = []*os.File{env.File()}
	if err := runner.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = runner.Process.Kill(); _ = runner.Wait() }()
	env.Release()
	c.BudgetBytes = 1
	if err := c.Collect(); err != nil {
		t.Fatal(err)
	}
	if !exists(env.Path) {
		t.Fatal("collected while a process held its lock")
	}
	_ = runner.Process.Kill()
	_ = runner.Wait()
	if err := c.Collect(); err != nil {
		t.Fatal(err)
	}
	if exists(env.Path) {
		t.Fatal("kept after the process holding it exited")
	}
}

func TestCompileErrorsOfSomeFilesAreNotABuildFailure(t *testing.T) {
	f := &fakeUV{}
	c := newTestCache(t, f)
	env := acquire(t, c, "six==1.16.0\ncompile=bad\n")
	env.Release()
	_, err := c.Acquire(context.Background(), baseSpec("six==1.16.0\ncompile=crash\n"))
	var be *BuildError
	if !errors.As(err, &be) || !strings.Contains(be.Output, "Function not implemented") {
		t.Fatalf("compileall crashed: %v, want a BuildError with its message", err)
	}
}

// fakeSandbox runs the fake uv and records what each command was given.
type fakeSandbox struct {
	f *fakeUV
	// hostile, when set, runs as the build's user after each command
	// (counted from 1).
	hostile func(dir string, n int)
	mu      sync.Mutex
	runs    []sandboxedRun
}

type sandboxedRun struct {
	dir, uvCache string
	dirOwner     uint32
}

const sandboxUID, sandboxGID = 64999, 64998

func (s *fakeSandbox) User() (int, int) { return sandboxUID, sandboxGID }

func (s *fakeSandbox) Run(ctx context.Context, dir string, cmd *exec.Cmd) error {
	r := sandboxedRun{dir: dir}
	for _, kv := range cmd.Env {
		if v, ok := strings.CutPrefix(kv, "UV_CACHE_DIR="); ok {
			r.uvCache = v
		}
	}
	if fi, err := os.Stat(dir); err == nil {
		r.dirOwner = fi.Sys().(*syscall.Stat_t).Uid
	}
	s.mu.Lock()
	s.runs = append(s.runs, r)
	s.mu.Unlock()
	err := s.f.run(ctx, cmd)
	if s.hostile != nil {
		s.hostile(dir, len(s.runs))
	}
	// What the build's user wrote is its own, as in the real sandbox.
	_ = chownTree(dir, sandboxUID, sandboxGID)
	return err
}

func TestSandboxedBuildHasAPrivateCacheAndEndsRootOwned(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a sandboxed build hands its directory to another uid and takes it back: run as root (CI does)")
	}
	f := &fakeUV{}
	sb := &fakeSandbox{f: f}
	c := newTestCache(t, f)
	c.Sandbox = sb
	env := acquire(t, c, "six==1.16.0\n")
	defer env.Release()
	if len(sb.runs) != 3 {
		t.Fatalf("the sandbox ran %d commands, want 3 (venv, pip install, compileall)", len(sb.runs))
	}
	for i, r := range sb.runs {
		if filepath.Dir(r.dir) != c.path("tmp") {
			t.Errorf("command %d: build dir %s, want one under tmp/", i, r.dir)
		}
		if r.dirOwner != sandboxUID {
			t.Errorf("command %d: build dir owned by uid %d, want the sandbox's %d", i, r.dirOwner, sandboxUID)
		}
		if i < 2 && r.uvCache != filepath.Join(r.dir, "uv-cache") {
			t.Errorf("command %d: UV_CACHE_DIR=%q, want the build's private %s", i, r.uvCache, filepath.Join(r.dir, "uv-cache"))
		}
	}
	err := filepath.WalkDir(env.Path, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s is owned by %d:%d, want root", p, st.Uid, st.Gid)
		}
		if fi.Mode().Perm()&0o222 != 0 {
			t.Errorf("%s is writable (%v)", p, fi.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(c.path("tmp")); len(ents) != 0 {
		t.Errorf("tmp/ keeps %d entries after the build (its private cache included)", len(ents))
	}
}

// The build's directory is its user's: a build that replaces its
// environment with a link to a host directory must not get that file chmodded,
// chowned or renamed into envs/.
func TestSandboxedBuildThatSwapsItsEnvironmentForALinkFails(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a sandboxed build hands its directory to another uid and takes it back: run as root (CI does)")
	}
	host := filepath.Join(t.TempDir(), "etc")
	if err := os.Mkdir(host, 0o700); err != nil {
		t.Fatal(err)
	}
	f := &fakeUV{}
	sb := &fakeSandbox{f: f, hostile: func(dir string, n int) {
		if n == 3 { // compileall: the last command
			env := filepath.Join(dir, "env")
			_ = os.RemoveAll(env)
			_ = os.Symlink(host, env)
		}
	}}
	c := newTestCache(t, f)
	c.Sandbox = sb
	_, err := c.Acquire(context.Background(), baseSpec("six==1.16.0\n"))
	if err == nil || !strings.Contains(err.Error(), "no environment directory") {
		t.Fatalf("acquire: %v, want the build refused", err)
	}
	fi, err := os.Stat(host)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o700 || st.Uid != 0 {
		t.Errorf("the host directory became %v owned by %d", fi.Mode(), st.Uid)
	}
	if ents, _ := os.ReadDir(c.path("envs")); len(ents) != 0 {
		t.Errorf("envs/ holds %d entries", len(ents))
	}
}
