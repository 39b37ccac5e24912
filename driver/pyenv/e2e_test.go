//go:build e2e

package pyenv_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/modelnodes/modelnodes/driver/pyenv"
	"github.com/modelnodes/modelnodes/driver/pyenv/pyenvtest"
)

// counted runs uv on the host and counts its invocations.
type counted struct{ n atomic.Int32 }

func (c *counted) run(ctx context.Context, cmd *exec.Cmd) error {
	c.n.Add(1)
	return pyenv.RunOnHost(ctx, cmd)
}

// realCache is a cache on a fresh root with the real uv, and the interpreter
// python3 resolves to; it skips when uv or PyPI cannot be had.
func realCache(t *testing.T) (*pyenv.Cache, *counted, pyenv.Interpreter) {
	t.Helper()
	uv := pyenvtest.UV(t)
	pyenvtest.PyPIReachable(t, uv)
	py := pyenvtest.Python(t)
	runs := &counted{}
	root := t.TempDir()
	// Environments are read-only trees: TempDir's cleanup, which may not run
	// as root, needs the write bits back.
	t.Cleanup(func() { _ = exec.Command("chmod", "-R", "u+w", root).Run() })
	c := &pyenv.Cache{
		Root:   root,
		UV:     uv,
		Run:    runs.run,
		Logger: hclog.New(&hclog.LoggerOptions{Name: "pyenv", Level: hclog.Debug, Output: testWriter{t}}),
	}
	return c, runs, py
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// pythonSays runs code in the environment's interpreter and returns its output.
func pythonSays(t *testing.T, env *pyenv.Env, code string) string {
	t.Helper()
	out, err := exec.Command(env.Python(), "-I", "-c", code).CombinedOutput()
	if err != nil {
		t.Fatalf("%s -c %q: %v: %s", env.Python(), code, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestE2EBuildOnceShareAndReuse(t *testing.T) {
	c, runs, py := realCache(t)
	spec := py.Spec([]byte("six==1.16.0\r\nidna==3.7\n"))
	var stages sync.Map
	c.Progress = func(key, stage, detail string) { stages.Store(stage, detail) }

	var wg sync.WaitGroup
	envs := make([]*pyenv.Env, 5)
	errs := make([]error, 5)
	for i := range envs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			envs[i], errs[i] = c.Acquire(context.Background(), spec)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("acquire %d: %v", i, err)
		}
		defer envs[i].Release()
	}
	if n := runs.n.Load(); n != 3 {
		t.Fatalf("the build ran %d commands for 5 concurrent Acquires, want 3 (uv venv, uv pip install, compileall) once", n)
	}
	if got := pythonSays(t, envs[4], "import six, idna, sys; print(six.__version__, idna.__version__, sys.prefix)"); got != "1.16.0 3.7 "+envs[0].Path {
		t.Fatalf("the environment says %q", got)
	}
	for _, stage := range []string{"creating", "resolving", "installing", "done"} {
		if _, ok := stages.Load(stage); !ok {
			t.Errorf("no %q progress", stage)
		}
	}
	// Shared read-only: the model's user cannot add or change a package.
	site := filepath.Dir(strings.TrimSpace(pythonSays(t, envs[0], "import six; print(six.__file__)")))
	for _, p := range []string{site, filepath.Join(site, "six.py")} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o222 != 0 {
			t.Errorf("%s is writable (%v, %v)", p, fi.Mode(), err)
		}
	}
	// Bytecode was compiled at build: importing writes nothing, and need not.
	pyc, _ := filepath.Glob(filepath.Join(site, "__pycache__", "six.*.pyc"))
	if len(pyc) == 0 {
		t.Error("six was not compiled to bytecode at build")
	}

	// Relocatable: the driver mounts the tree at another path in the sandbox.
	moved := filepath.Join(t.TempDir(), "env")
	if out, err := exec.Command("cp", "-a", envs[0].Path, moved).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	defer exec.Command("chmod", "-R", "u+w", moved).Run()
	got, err := exec.Command(filepath.Join(moved, "bin", "python"), "-I", "-c", "import six, sys; print(sys.prefix)").CombinedOutput()
	if err != nil || strings.TrimSpace(string(got)) != moved {
		t.Fatalf("the environment moved to %s says %q (%v)", moved, got, err)
	}

	again, err := c.Acquire(context.Background(), py.Spec([]byte("six==1.16.0\nidna==3.7")))
	if err != nil {
		t.Fatal(err)
	}
	defer again.Release()
	if again.Path != envs[0].Path || runs.n.Load() != 3 {
		t.Fatalf("the same requirements (other line endings) got %s after %d uv runs", again.Path, runs.n.Load())
	}

	// Another requirements set that shares six links it from uv's cache:
	// nothing downloaded, no second copy on disk.
	other, err := c.Acquire(context.Background(), py.Spec([]byte("six==1.16.0\n")))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release()
	a, _ := os.Stat(filepath.Join(site, "six.py"))
	b, _ := os.Stat(filepath.Join(filepath.Dir(pythonSays(t, other, "import six; print(six.__file__)")), "six.py"))
	if !os.SameFile(a, b) {
		t.Error("two environments hold two copies of six.py, want one hardlinked file")
	}
}

func TestE2EUnresolvableRequirementIsRemembered(t *testing.T) {
	c, runs, py := realCache(t)
	spec := py.Spec([]byte("six==1.16.0\nno-such-package-xyz-modelnodes==1.0\n"))
	_, err := c.Acquire(context.Background(), spec)
	var be *pyenv.BuildError
	if !errors.As(err, &be) {
		t.Fatalf("error %v, want a *pyenv.BuildError", err)
	}
	t.Logf("uv said: %s", be.Output)
	if !strings.Contains(be.Output, "no-such-package-xyz-modelnodes") || !strings.Contains(be.Output, "not found") {
		t.Fatalf("the error does not carry uv's message: %q", be.Output)
	}
	if entries, _ := os.ReadDir(filepath.Join(c.Root, "envs")); len(entries) != 0 {
		t.Fatalf("a failed build left %d environments", len(entries))
	}
	n := runs.n.Load()
	_, err = c.Acquire(context.Background(), spec)
	if !errors.As(err, &be) || !be.Remembered || !strings.Contains(err.Error(), "no-such-package-xyz-modelnodes") {
		t.Fatalf("second Acquire: %v", err)
	}
	if runs.n.Load() != n {
		t.Fatal("uv ran again within the backoff")
	}
}

// Wheels only: a requirement that has only a source distribution (its
// setup.py would run during the build) fails, with uv's reason, and nothing
// of it ran; one with wheels builds.
func TestE2EOnlyBinaryRunsNoPackageCode(t *testing.T) {
	c, _, py := realCache(t)
	spec := py.Spec([]byte("termcolor==1.1.0\n")) // on PyPI as an sdist only
	spec.OnlyBinary = true
	_, err := c.Acquire(context.Background(), spec)
	var be *pyenv.BuildError
	if !errors.As(err, &be) || !strings.Contains(be.Output, "termcolor") {
		t.Fatalf("an sdist-only requirement with OnlyBinary: %v, want a BuildError naming it", err)
	}
	t.Logf("uv said: %s", be.Output)
	ok := py.Spec([]byte("six==1.16.0\n"))
	ok.OnlyBinary = true
	env, err := c.Acquire(context.Background(), ok)
	if err != nil {
		t.Fatalf("a wheel with OnlyBinary: %v", err)
	}
	defer env.Release()
	if got := pythonSays(t, env, "import six; print(six.__version__)"); got != "1.16.0" {
		t.Fatalf("six in the wheels-only environment: %q", got)
	}
}

func TestE2EKilledBuildLeavesNothing(t *testing.T) {
	c, _, py := realCache(t)
	spec := py.Spec([]byte("six==1.16.0\n"))
	// uv is killed (SIGKILL to its group) as soon as pip install says its first line.
	killed := false
	c.Run = func(ctx context.Context, cmd *exec.Cmd) error {
		if cmd.Args[1] != "pip" {
			return pyenv.RunOnHost(ctx, cmd)
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		cmd.Stderr = &onWrite{w: cmd.Stderr, f: func() { killed = true; cancel() }}
		return pyenv.RunOnHost(ctx, cmd)
	}
	_, err := c.Acquire(context.Background(), spec)
	var be *pyenv.BuildError
	var exit *exec.ExitError
	if !killed || err == nil || errors.As(err, &be) || !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("killed build: %v (killed %v), want uv's SIGKILL, not a remembered failure", err, killed)
	}
	for _, d := range []string{"envs", "tmp", "failed"} {
		if entries, _ := os.ReadDir(filepath.Join(c.Root, d)); len(entries) != 0 {
			t.Errorf("the killed build left %d entries in %s/", len(entries), d)
		}
	}
	c.Run = nil
	env, err := c.Acquire(context.Background(), spec)
	if err != nil {
		t.Fatalf("the next Acquire: %v", err)
	}
	defer env.Release()
	if got := pythonSays(t, env, "import six; print(six.__version__)"); got != "1.16.0" {
		t.Fatalf("six %q", got)
	}
}

type onWrite struct {
	w    interface{ Write([]byte) (int, error) }
	once sync.Once
	f    func()
}

func (o *onWrite) Write(p []byte) (int, error) {
	n, err := o.w.Write(p)
	o.once.Do(o.f)
	return n, err
}

func TestE2ECollectSparesTheEnvironmentInUse(t *testing.T) {
	c, _, py := realCache(t)
	c.BudgetBytes = 1 // nothing fits: only what is in use stays
	inUse, err := c.Acquire(context.Background(), py.Spec([]byte("idna==3.7\n")))
	if err != nil {
		t.Fatal(err)
	}
	defer inUse.Release()
	done, err := c.Acquire(context.Background(), py.Spec([]byte("six==1.16.0\n")))
	if err != nil {
		t.Fatal(err)
	}
	done.Release()
	if err := c.Collect(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(done.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the released environment is still there (%v)", err)
	}
	// Still over budget with nothing left to collect and no build running:
	// uv's cache goes too.
	if entries, err := os.ReadDir(filepath.Join(c.Root, "uv-cache")); err != nil || len(entries) != 0 {
		t.Fatalf("uv's cache holds %d entries (%v), want it cleared", len(entries), err)
	}
	// The one in use works, though uv's cache it was linked from is gone.
	if got := pythonSays(t, inUse, "import idna; print(idna.__version__)"); got != "3.7" {
		t.Fatalf("idna %q", got)
	}
	// And a collected environment comes back on demand.
	back, err := c.Acquire(context.Background(), py.Spec([]byte("six==1.16.0\n")))
	if err != nil {
		t.Fatal(err)
	}
	defer back.Release()
	if got := pythonSays(t, back, "import six; print(six.__version__)"); got != "1.16.0" {
		t.Fatalf("six %q", got)
	}
}
