//go:build e2e

package buildbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/driver/buildbox"
	"github.com/modelnodes/modelnodes/driver/cgroup"
	"github.com/modelnodes/modelnodes/driver/pyenv"
	"github.com/modelnodes/modelnodes/driver/pyenv/pyenvtest"
	"github.com/modelnodes/modelnodes/driver/sandbox"
	"github.com/modelnodes/modelnodes/internal/testing/pyindex"
)

// The test binary is also the plugin binary: it runs the sandbox's hidden
// subcommands.
func TestMain(m *testing.M) {
	if sandbox.Main(os.Args[1:]) {
		return
	}
	os.Exit(m.Run())
}

// buildUID is the build's user in these tests: no account, no file of the
// host is its own.
const buildUID, buildGID = 64990, 64990

// systemPaths are the driver's default readonly_paths.
var systemPaths = []string{"/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc/ssl", "/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime"}

type setup struct {
	cache *pyenv.Cache
	box   *buildbox.Box
	py    pyenv.Interpreter
	index *pyindex.Index
	// visible is a directory the sandbox shows read-only, holding a
	// root-only runner.key; secrets is a task's secrets/ dir it does not show.
	visible, secrets string
	logs             *strings.Builder
	logger           hclog.Logger
}

// sandboxedCache is a pyenv cache whose builds run in a buildbox sandbox,
// with the test's local index as the only index.
func sandboxedCache(t *testing.T, limits cgroup.Limits, timeout time.Duration) *setup {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the build sandbox needs root (namespaces, mounts, cgroups, setuid); run the e2e tests as root (CI does)")
	}
	uv := pyenvtest.UV(t)
	py := pyenvtest.Python(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	t.Cleanup(func() { _ = exec.Command("chmod", "-R", "u+w", base).Run() })
	s := &setup{py: py, index: pyindex.New(t), logs: &strings.Builder{}}
	s.visible = filepath.Join(base, "visible")
	s.secrets = filepath.Join(base, "secrets")
	for _, d := range []string{s.visible, s.secrets} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(s.visible, "runner.key"), []byte("RUNNER-PRIVATE-KEY"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.secrets, "vault_token"), []byte("TASK-SECRET"), 0o644); err != nil {
		t.Fatal(err)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "build", Level: hclog.Debug, Output: &lockedWriter{t: t, sb: s.logs}})
	s.logger = logger
	s.box, err = buildbox.New(buildbox.Config{
		Self: self, Dir: filepath.Join(base, "sandboxes"),
		UID: buildUID, GID: buildGID,
		Limits:       limits,
		ReadOnly:     append(append([]string{}, systemPaths...), s.visible),
		Interpreters: []string{py.Path},
		UV:           uv,
		Indexes:      []string{s.index.URL()},
		Logger:       logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.cache = &pyenv.Cache{Root: filepath.Join(base, "cache"), UV: uv, Sandbox: s.box, BuildTimeout: timeout, Logger: logger}
	return s
}

type lockedWriter struct {
	t  *testing.T
	sb *strings.Builder
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	w.sb.Write(p)
	return len(p), nil
}

func (s *setup) spec(requirements string) pyenv.Spec {
	return s.py.Spec([]byte(requirements), s.index.URL())
}

// markedProcesses lists the host's processes whose command line holds mark.
func markedProcesses(mark string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), mark) {
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// buildCgroups lists the build cgroups that exist now.
func buildCgroups() []string {
	var out []string
	for _, pat := range []string{"/sys/fs/cgroup/*/" + cgroup.Root + "/build-*", "/sys/fs/cgroup/" + cgroup.Root + "/build-*"} {
		m, _ := filepath.Glob(pat)
		out = append(out, m...)
	}
	return out
}

func noneLeft(t *testing.T, mark string) {
	t.Helper()
	// The kill is synchronous; give a daemon's exit a moment to be reaped.
	deadline := time.Now().Add(3 * time.Second)
	for len(markedProcesses(mark)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if left := markedProcesses(mark); len(left) > 0 {
		t.Errorf("processes the build started are still running: %v", left)
	}
	if left := buildCgroups(); len(left) > 0 {
		t.Errorf("build cgroups left: %v", left)
	}
}

func TestE2EGoodSdistBuildsAndImports(t *testing.T) {
	s := sandboxedCache(t, cgroup.Limits{MemoryBytes: 1 << 30, WorkerPids: 256}, 5*time.Minute)
	s.index.Add("goodpkg", "goodpkg-1.0.tar.gz", pyindex.SDist(t, "goodpkg", "def hook():\n    return {}\n", "VALUE = 42\n"))
	env, err := s.cache.Acquire(context.Background(), s.spec("goodpkg==1.0\n"))
	if err != nil {
		t.Fatal(err)
	}
	defer env.Release()
	out, err := exec.Command(env.Python(), "-I", "-c", "import goodpkg; print(goodpkg.VALUE)").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "42" {
		t.Fatalf("import goodpkg: %v: %s", err, out)
	}
	// The shared cache holds nothing of a sandboxed build.
	if ents, _ := os.ReadDir(filepath.Join(s.cache.Root, "uv-cache")); len(ents) != 0 {
		t.Errorf("the shared uv-cache/ has %d entries after a sandboxed build", len(ents))
	}
	noneLeft(t, "goodpkg")
}

// hostileHook is the setup.py code of the hostile sdist. Each attempt's
// outcome goes into the report shipped in the wheel.
const hostileHook = `import socket, subprocess

TRAP_PORT, KEY, SECRET, MARK, SHARED = %d, %q, %q, %q, %q

def _connect(addr):
    try:
        socket.create_connection(addr, timeout=3).close()
        return "connected"
    except Exception as e:
        return "%%s: %%s" %% (type(e).__name__, e)

def _via_proxy(target):
    proxy = os.environ.get("HTTPS_PROXY", "").replace("http://", "")
    if not proxy:
        return "no proxy"
    host, port = proxy.rsplit(":", 1)
    try:
        s = socket.create_connection((host, int(port)), timeout=3)
        s.sendall(("CONNECT %%s HTTP/1.1\r\nHost: %%s\r\n\r\n" %% (target, target)).encode())
        line = s.recv(200).split(b"\r\n")[0].decode()
        s.close()
        return line
    except Exception as e:
        return "%%s: %%s" %% (type(e).__name__, e)

def _read(path):
    try:
        with open(path) as f:
            return "read: " + f.read()
    except Exception as e:
        return "%%s: %%s" %% (type(e).__name__, e)

def _write(path):
    try:
        with open(path, "w") as f:
            f.write("poison")
        return "written"
    except Exception as e:
        return "%%s: %%s" %% (type(e).__name__, e)

def hook():
    r = {"uid": os.getuid(), "env": dict(os.environ)}
    r["shared_cache"] = _write(os.path.join(SHARED, "poison"))
    r["host_loopback"] = _connect(("127.0.0.1", TRAP_PORT))
    r["outside"] = _connect(("192.0.2.1", 80))
    r["proxy_trap"] = _via_proxy("127.0.0.1:%%d" %% TRAP_PORT)
    r["proxy_other"] = _via_proxy("example.com:443")
    r["key"] = _read(KEY)
    r["secret"] = _read(SECRET)
    # A daemon, in its own session, that would outlive the build.
    subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)", MARK],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r
`

func TestE2EHostileSdistIsContained(t *testing.T) {
	s := sandboxedCache(t, cgroup.Limits{MemoryBytes: 1 << 30, WorkerPids: 256}, 5*time.Minute)
	// Something on the host's loopback the build must not reach.
	trap, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer trap.Close()
	var trapped atomic.Int32
	go func() {
		for {
			c, err := trap.Accept()
			if err != nil {
				return
			}
			trapped.Add(1)
			c.Close()
		}
	}()
	t.Setenv("VAULT_TOKEN", "s.must-not-leak")
	mark := fmt.Sprintf("hostile-daemon-%d", time.Now().UnixNano())
	hook := fmt.Sprintf(hostileHook, trap.Addr().(*net.TCPAddr).Port,
		filepath.Join(s.visible, "runner.key"), filepath.Join(s.secrets, "vault_token"), mark,
		filepath.Join(s.cache.Root, "uv-cache"))
	s.index.Add("hostile", "hostile-1.0.tar.gz", pyindex.SDist(t, "hostile", hook, ""))

	env, err := s.cache.Acquire(context.Background(), s.spec("hostile==1.0\n"))
	if err != nil {
		t.Fatal(err)
	}
	defer env.Release()
	reports, _ := filepath.Glob(filepath.Join(env.Path, "lib", "python*", "site-packages", "hostile", "report.json"))
	if len(reports) != 1 {
		t.Fatalf("no report in the built environment")
	}
	b, err := os.ReadFile(reports[0])
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		UID          int               `json:"uid"`
		Env          map[string]string `json:"env"`
		HostLoopback string            `json:"host_loopback"`
		Outside      string            `json:"outside"`
		ProxyTrap    string            `json:"proxy_trap"`
		ProxyOther   string            `json:"proxy_other"`
		Key          string            `json:"key"`
		Secret       string            `json:"secret"`
		SharedCache  string            `json:"shared_cache"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	t.Logf("setup.py saw: %s", b)
	check := func(what string, ok bool) {
		t.Helper()
		if !ok {
			t.Errorf("%s (report: %s)", what, b)
		}
	}
	check("runs as the build user", r.UID == buildUID)
	check("cannot reach the host's loopback", strings.Contains(r.HostLoopback, "Connection refused"))
	check("cannot reach outside", strings.Contains(r.Outside, "unreachable"))
	check("the proxy refuses the host's other port", strings.Contains(r.ProxyTrap, "403"))
	check("the proxy refuses another host", strings.Contains(r.ProxyOther, "403"))
	check("cannot read the runner's key", strings.Contains(r.Key, "PermissionError") && !strings.Contains(r.Key, "RUNNER-PRIVATE-KEY"))
	check("cannot see the task's secrets", strings.Contains(r.Secret, "FileNotFoundError"))
	check("cannot write the shared uv cache", strings.HasPrefix(r.SharedCache, "FileNotFoundError"))
	for k, v := range r.Env {
		check("no variable of the driver passes: "+k, k != "VAULT_TOKEN" && !strings.Contains(v, "must-not-leak"))
	}
	if n := trapped.Load(); n != 0 {
		t.Errorf("the host's loopback listener saw %d connections", n)
	}
	if !strings.Contains(s.logs.String(), "build proxy: refused") {
		t.Errorf("the refused CONNECTs were not logged")
	}
	noneLeft(t, mark)
}

func TestE2EBuildPastItsMemoryLimitFails(t *testing.T) {
	s := sandboxedCache(t, cgroup.Limits{MemoryBytes: 256 << 20, WorkerPids: 256}, 5*time.Minute)
	hook := "def hook():\n    hog = bytearray(b'x') * (768 << 20)\n    return {'n': len(hog)}\n"
	s.index.Add("hog", "hog-1.0.tar.gz", pyindex.SDist(t, "hog", hook, ""))
	_, err := s.cache.Acquire(context.Background(), s.spec("hog==1.0\n"))
	var be *pyenv.BuildError
	if !errors.As(err, &be) {
		t.Fatalf("a build past its memory limit: %v, want a BuildError", err)
	}
	if !strings.Contains(be.Output, "ran out of memory") {
		t.Errorf("the failure does not say why: %q", be.Output)
	}
	noneLeft(t, "hog")
}

func TestE2EBuildPastItsTimeLimitIsKilled(t *testing.T) {
	s := sandboxedCache(t, cgroup.Limits{MemoryBytes: 1 << 30, WorkerPids: 256}, 8*time.Second)
	mark := fmt.Sprintf("sleeper-daemon-%d", time.Now().UnixNano())
	hook := fmt.Sprintf(`import subprocess, time
def hook():
    subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)", %q], start_new_session=True)
    time.sleep(600)
    return {}
`, mark)
	s.index.Add("sleeper", "sleeper-1.0.tar.gz", pyindex.SDist(t, "sleeper", hook, ""))
	start := time.Now()
	_, err := s.cache.Acquire(context.Background(), s.spec("sleeper==1.0\n"))
	took := time.Since(start)
	var be *pyenv.BuildError
	if !errors.As(err, &be) || !strings.Contains(be.Output, "time limit") {
		t.Fatalf("a build past its time limit: %v, want a BuildError saying so", err)
	}
	if took > 30*time.Second {
		t.Errorf("the build stopped %s after it started, its limit is 8s", took)
	}
	noneLeft(t, mark)
}

// A wheel's .pth file runs code in every interpreter that starts with its
// site-packages. A wheels-only build on the trusted side (no sandbox) must
// not start one: the marker that the .pth writes stays absent.
func TestE2EWheelsOnlyBuildRunsNoPthFile(t *testing.T) {
	uv := pyenvtest.UV(t)
	py := pyenvtest.Python(t)
	ix := pyindex.New(t)
	base := t.TempDir()
	t.Cleanup(func() { _ = exec.Command("chmod", "-R", "u+w", base).Run() })
	marker := filepath.Join(base, "pth-ran")
	ix.Add("pthpkg", "pthpkg-1.0-py3-none-any.whl", pyindex.Wheel(t, "pthpkg", map[string]string{
		"pthpkg/__init__.py": "",
		"pthpkg.pth":         fmt.Sprintf("import os; open(%q, 'w').close()\n", marker),
	}))
	c := &pyenv.Cache{Root: filepath.Join(base, "cache"), UV: uv}
	spec := py.Spec([]byte("pthpkg==1.0\n"), ix.URL())
	spec.OnlyBinary = true
	env, err := c.Acquire(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer env.Release()
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the wheel's .pth file ran during the trusted-side build")
	}
	// The .pth does run in a normal start of the environment's interpreter:
	// what the build avoided is real.
	if out, err := exec.Command(env.Python(), "-c", "pass").CombinedOutput(); err != nil {
		t.Fatalf("start the environment's python: %v: %s", err, out)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the .pth file did not run at a normal start either (%v): the test proves nothing", err)
	}
}

// A real sdist from PyPI (termcolor 1.1.0 has no wheel): uv fetches
// setuptools for its build and the sdist over HTTPS, through the proxy's
// CONNECT tunnels to pypi.org and files.pythonhosted.org, and its setup.py
// runs in the sandbox.
func TestE2ESdistFromPyPIThroughTheProxy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the build sandbox needs root; run the e2e tests as root (CI does)")
	}
	uv := pyenvtest.UV(t)
	pyenvtest.PyPIReachable(t, uv)
	s := sandboxedCache(t, cgroup.Limits{MemoryBytes: 1 << 30, WorkerPids: 256}, 5*time.Minute)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// PyPI the only index (the default).
	box, err := buildbox.New(buildbox.Config{
		Self: self, Dir: filepath.Join(t.TempDir(), "sandboxes"), UID: buildUID, GID: buildGID,
		Limits: cgroup.Limits{MemoryBytes: 1 << 30, WorkerPids: 256}, ReadOnly: systemPaths,
		Interpreters: []string{s.py.Path}, UV: uv, Logger: s.logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.cache.Sandbox = box
	env, err := s.cache.Acquire(context.Background(), s.py.Spec([]byte("termcolor==1.1.0\n")))
	if err != nil {
		t.Fatal(err)
	}
	defer env.Release()
	out, err := exec.Command(env.Python(), "-I", "-c", "import termcolor; print(termcolor.colored('ok', None))").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("import termcolor: %v: %s", err, out)
	}
	for _, host := range []string{"pypi.org:443", "files.pythonhosted.org:443"} {
		if !regexp.MustCompile(`build proxy: tunnel: .*target=` + regexp.QuoteMeta(host)).MatchString(s.logs.String()) {
			t.Errorf("no tunnel to %s in the log", host)
		}
	}
	noneLeft(t, "termcolor")
}

// A plugin that died mid-build left the build running in its cgroup, and
// its sandbox directory: Sweep, at the next start, ends both.
func TestE2ESweepEndsWhatADeadPluginLeft(t *testing.T) {
	s := sandboxedCache(t, cgroup.Limits{WorkerPids: 16}, time.Minute)
	name := fmt.Sprintf("build-sweeptest%d", time.Now().UnixNano())
	group, err := cgroup.Create(name, cgroup.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	orphan := exec.Command("sleep", "1000")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	if err := cgroup.JoinWorker(group.State().Worker, orphan.Process.Pid); err != nil {
		_ = orphan.Process.Kill()
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = orphan.Wait(); close(exited) }()
	run := filepath.Join(s.box.Dir(), "run.left")
	if err := os.MkdirAll(filepath.Join(run, "root"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := s.box.Sweep(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = orphan.Process.Kill()
		t.Fatal("the orphaned build process still runs after Sweep")
	}
	if _, err := os.Stat(run); !os.IsNotExist(err) {
		t.Errorf("the left sandbox directory: %v, want it gone", err)
	}
	noneLeft(t, "sweeptest")
}

// A sandbox that cannot start is the node's fault: the build fails without
// being remembered against the requirements (which would blame the
// submission and hold its key back for the backoff).
func TestE2ESandboxThatCannotStartIsNotTheRequirementsFault(t *testing.T) {
	s := sandboxedCache(t, cgroup.Limits{WorkerPids: 16}, time.Minute)
	broken := filepath.Join(t.TempDir(), "plugin")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho 'modelbox sandbox: cannot start' >&2\nexit 126\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	box, err := buildbox.New(buildbox.Config{
		Self: broken, Dir: s.box.Dir(), UID: buildUID, GID: buildGID,
		ReadOnly: systemPaths, Interpreters: []string{s.py.Path}, UV: s.cache.UV,
		Indexes: []string{s.index.URL()}, Logger: s.logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.cache.Sandbox = box
	_, err = s.cache.Acquire(context.Background(), s.spec(""))
	var be *pyenv.BuildError
	if err == nil || errors.As(err, &be) || !strings.Contains(err.Error(), "the sandbox did not start") {
		t.Fatalf("acquire with a broken sandbox: %v, want an error that is not a BuildError", err)
	}
	if failed, _ := filepath.Glob(filepath.Join(s.cache.Root, "failed", "*.json")); len(failed) != 0 {
		t.Errorf("the failure was remembered: %v", failed)
	}
	noneLeft(t, "cannot start")
}
