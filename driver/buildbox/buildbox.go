// Package buildbox runs the commands of an environment build (uv venv, uv pip
// install, compileall) in the model's kind of sandbox, for builds that may
// run package code: an sdist's setup.py is the submitter's code, as hostile
// as the model. It is a pyenv.Sandbox.
//
// Each command gets its own sandbox (driver/sandbox, re-executing the plugin
// binary) and its own cgroup (memory, CPU, processes): an unprivileged user,
// no environment variable of the plugin, the system paths, the node's
// interpreters and uv read-only, the build's directory the only writable
// place, its own /tmp, pid, mount, IPC and network namespaces. Its network
// namespace has loopback only; the one way out is an HTTP proxy
// (driver/buildproxy) the driver serves on the sandbox's 127.0.0.1:3128
// from the host's network, which reaches the configured index hosts and
// nothing else. uv finds it through HTTPS_PROXY and HTTP_PROXY. When the
// command ends, or its context does (the build's time limit), everything
// left in its cgroup is killed.
//
// Index credentials never enter the sandbox: an index URL that carries them
// is refused (the proxy tunnels TLS without opening it, so it cannot add
// them either). Private indexes with credentials are for wheels-only builds
// on the trusted side.
package buildbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/driver/buildproxy"
	"github.com/modelnodes/modelnodes/driver/cgroup"
	"github.com/modelnodes/modelnodes/driver/sandbox"
	"github.com/modelnodes/modelnodes/internal/redact"
)

// ProxyAddr is where, inside the sandbox, the index proxy listens.
const ProxyAddr = "127.0.0.1:3128"

// devShmBytes is the build's /dev/shm: semaphores, not data.
const devShmBytes = 16 << 20

// killTimeout bounds the wait for a command's processes to be gone.
const killTimeout = 10 * time.Second

// Config is the build sandbox's settings.
type Config struct {
	// Self is the plugin binary (os.Executable()), re-executed as the
	// sandbox; its main must call sandbox.Main first.
	Self string
	// Dir is a directory private to the driver (created 0700 when missing)
	// where each command's sandbox root, spec and /tmp live while it runs.
	// It must not be inside a build's directory.
	Dir string
	// UID and GID the build's commands run as: not 0, and better none of the
	// models' (the plugin's uid_range). Concurrent builds may share them:
	// each sees only its own directory and processes.
	UID, GID int
	// Limits apply to each command: MemoryBytes (0: none), CPUShares,
	// CPUQuotaMicros/CPUPeriodMicros and WorkerPids (0: none).
	// RunnerReserveBytes is ignored: a build has no runner.
	Limits cgroup.Limits
	// ReadOnly lists the host paths the build reads: the system paths (the
	// plugin's readonly_paths: /usr, /lib, /etc/ssl...). Missing ones are
	// skipped.
	ReadOnly []string
	// Interpreters are the node's Python interpreters; the installation of
	// each (the directory above its bin/) is shown read-only.
	Interpreters []string
	// UV is the uv binary, shown read-only.
	UV string
	// Indexes are the index URLs the builds use (pyenv.Spec.Indexes; PyPI
	// when none). With ExtraHosts ("host" or "host:port") they make the
	// proxy's allow-list; PyPI brings files.pythonhosted.org. None may
	// carry credentials.
	Indexes, ExtraHosts []string
	// Landlock is sandbox.LandlockOff, LandlockBestEffort (default) or
	// LandlockRequired.
	Landlock string
	// Logger hears each command and every request the proxy refused.
	Logger hclog.Logger
}

// Box runs build commands in the sandbox. It implements pyenv.Sandbox.
type Box struct {
	cfg      Config
	allow    []string
	readOnly []string
	log      hclog.Logger
}

// New checks cfg and returns the sandbox. It refuses an index URL with
// credentials (buildproxy.ErrCredentials).
func New(cfg Config) (*Box, error) {
	switch {
	case cfg.UID <= 0 || cfg.GID <= 0:
		return nil, fmt.Errorf("build sandbox: the build must run as a user that is not root, not uid %d gid %d", cfg.UID, cfg.GID)
	case !filepath.IsAbs(cfg.Self) || !filepath.IsAbs(cfg.Dir) || !filepath.IsAbs(cfg.UV):
		return nil, fmt.Errorf("build sandbox: Self, Dir and UV must be absolute paths")
	}
	if cfg.Landlock == "" {
		cfg.Landlock = sandbox.LandlockBestEffort
	}
	allow, err := buildproxy.AllowList(cfg.Indexes, cfg.ExtraHosts)
	if errors.Is(err, buildproxy.ErrCredentials) {
		return nil, fmt.Errorf("build sandbox: %w: a build that runs package code must not hold them; build from wheels only (on the trusted side) to use a private index with credentials", err)
	}
	if err != nil {
		return nil, fmt.Errorf("build sandbox: %w", err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("build sandbox: %w", err)
	}
	if err := os.Chmod(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("build sandbox: %w", err)
	}
	b := &Box{cfg: cfg, allow: allow, log: cfg.Logger}
	if b.log == nil {
		b.log = hclog.NewNullLogger()
	}
	b.readOnly = append(b.readOnly, cfg.ReadOnly...)
	for _, py := range cfg.Interpreters {
		if p := InstallDir(py); p != "" && !slices.Contains(b.readOnly, p) {
			b.readOnly = append(b.readOnly, p)
		}
	}
	b.readOnly = append(b.readOnly, cfg.UV)
	return b, nil
}

// InstallDir is the directory of an interpreter's installation: the one
// above its bin/ (/opt/python3.13 for /opt/python3.13/bin/python3), after
// symbolic links, or its own directory when it is not in a bin/. "" when
// the interpreter does not exist. Never "/".
func InstallDir(python string) string {
	real, err := filepath.EvalSymlinks(python)
	if err != nil {
		return ""
	}
	dir := filepath.Dir(real)
	if filepath.Base(dir) == "bin" && filepath.Dir(dir) != "/" {
		return filepath.Dir(dir)
	}
	return dir
}

// AllowList is the proxy's allow-list: the host:port the builds may reach.
func (b *Box) AllowList() []string { return slices.Clone(b.allow) }

// Dir is where the sandboxes' roots and specs live (Config.Dir).
func (b *Box) Dir() string { return b.cfg.Dir }

// User is the uid and gid the builds run as.
func (b *Box) User() (int, int) { return b.cfg.UID, b.cfg.GID }

// Run runs cmd in a sandbox of its own, dir (the build's directory)
// writable, and returns when it has ended and nothing it started is left.
// A command the kernel killed for memory gets a line saying so on its
// Stderr, which is what pyenv shows as the build's failure.
func (b *Box) Run(ctx context.Context, dir string, cmd *exec.Cmd) error {
	if !filepath.IsAbs(dir) || !filepath.IsAbs(cmd.Path) {
		return fmt.Errorf("build sandbox: %s and %s must be absolute", dir, cmd.Path)
	}
	env, err := sandboxEnv(cmd.Env)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp(b.cfg.Dir, "run.")
	if err != nil {
		return fmt.Errorf("build sandbox: %w", err)
	}
	defer func() {
		if err := os.RemoveAll(work); err != nil {
			b.log.Warn("build sandbox: remove its directory", "dir", work, "error", err)
		}
	}()
	root, tmp := filepath.Join(work, "root"), filepath.Join(work, "tmp")
	for _, d := range []string{root, tmp} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return fmt.Errorf("build sandbox: %w", err)
		}
	}
	if err := os.Chown(tmp, b.cfg.UID, b.cfg.GID); err != nil {
		return fmt.Errorf("build sandbox: %w", err)
	}
	limits := b.cfg.Limits
	limits.RunnerReserveBytes = 0
	group, err := cgroup.Create(cgroupPrefix+randomID(), limits)
	if err != nil {
		return fmt.Errorf("build sandbox: %w", err)
	}
	defer func() {
		if err := group.Destroy(); err != nil {
			b.log.Warn("build sandbox: remove its cgroup", "error", err)
		}
	}()
	wd := cmd.Dir
	if wd == "" {
		wd = dir
	}
	spec := &sandbox.Spec{
		UID: b.cfg.UID, GID: b.cfg.GID,
		Hostname:     "build",
		Root:         root,
		ReadOnly:     b.readOnly,
		Writable:     []string{dir},
		TmpDir:       tmp,
		WorkDir:      wd,
		WorkerCgroup: group.State().Worker,
		Landlock:     b.cfg.Landlock,
		Env:          env,
		ListenInside: ProxyAddr,
		// compileall's workers (multiprocessing) need POSIX semaphores.
		DevShmBytes: devShmBytes,
		// A build runs what it builds: the environment's interpreter, the
		// build backends uv installs under /tmp, their compiled modules.
		// (It is still no_new_privs, unprivileged, offline but the proxy.)
		AllowWrittenExecutables: true,
	}
	specFile := filepath.Join(work, "sandbox.json")
	if err := spec.Write(specFile); err != nil {
		return fmt.Errorf("build sandbox: %w", err)
	}
	parent, child, err := sandbox.ListenerPair()
	if err != nil {
		return fmt.Errorf("build sandbox: %w", err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		_ = parent.Close()
		_ = child.Close()
		return fmt.Errorf("build sandbox: %w", err)
	}
	argv := append(sandbox.Command(b.cfg.Self, specFile), append([]string{cmd.Path}, cmd.Args[1:]...)...)
	sc := exec.Command(argv[0], argv[1:]...)
	sc.Env = []string{} // the sandbox takes its environment from the spec alone
	sc.Stdout, sc.Stderr = cmd.Stdout, cmd.Stderr
	sc.WaitDelay = cmd.WaitDelay
	// fd 3 is the model worker's socket in the model's sandbox; a build
	// has none.
	sc.ExtraFiles = []*os.File{devnull, child}
	log := b.log.With("build", filepath.Base(dir))
	log.Debug("build sandbox: run", "cmd", filepath.Base(cmd.Path), "arg", firstArg(cmd.Args))
	err = sc.Start()
	_ = child.Close()
	_ = devnull.Close()
	if err != nil {
		_ = parent.Close()
		return fmt.Errorf("build sandbox: start: %w", err)
	}

	proxy := &buildproxy.Proxy{Allow: b.allow, Logger: log}
	// listening says whether stage 2 got as far as sending its listener,
	// which it does just before it executes the command: a sandbox that
	// failed before is the node's problem, not the requirements'.
	listening := make(chan bool, 1)
	served := make(chan struct{})
	go func() {
		defer close(served)
		l, err := sandbox.ReceiveListener(parent)
		listening <- err == nil
		if err != nil {
			log.Debug("build sandbox: no proxy listener", "error", err)
			return
		}
		_ = proxy.Serve(l)
	}()
	// The build's time limit (or the driver giving up): the cgroup goes
	// whole, stage 1 included, so nothing of the sandbox outlives it.
	done := make(chan struct{})
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		select {
		case <-ctx.Done():
			if err := group.Kill(killTimeout); err != nil {
				log.Warn("build sandbox: kill", "error", err)
			}
		case <-done:
		}
	}()
	err = sc.Wait()
	close(done)
	<-killed
	// What the command left running (a daemon its setup.py started) goes
	// with it: the pid namespace's end kills most, the cgroup the rest.
	if kerr := group.Kill(killTimeout); kerr != nil {
		err = errors.Join(err, fmt.Errorf("build sandbox: %w", kerr))
	}
	_ = proxy.Close()
	// With every process of the sandbox gone, the listener's socket pair
	// has no other end left: ReceiveListener has returned or will now.
	started := false
	select {
	case started = <-listening:
	case <-time.After(killTimeout):
		log.Warn("build sandbox: still waiting for the sandbox's listener after its end")
	}
	if started {
		<-served
	}
	if u, uerr := group.Usage(); uerr == nil && u.WorkerOOMKills > 0 && limits.MemoryBytes > 0 && cmd.Stderr != nil {
		fmt.Fprintf(cmd.Stderr, "build stopped: it ran out of memory (limit %d MiB; %d processes killed)\n",
			limits.MemoryBytes>>20, u.WorkerOOMKills)
	}
	var exit *exec.ExitError
	if !started && ctx.Err() == nil && errors.As(err, &exit) && exit.ExitCode() == sandboxFailed {
		// Not an *exec.ExitError: pyenv does not remember it against the
		// requirements. The sandbox's own message is on Stderr.
		return fmt.Errorf("build sandbox: the sandbox did not start (exit status %d)", exit.ExitCode())
	}
	return err
}

// sandboxFailed is the exit status of a sandbox stage that failed
// (sandbox.Main).
const sandboxFailed = 126

// cgroupPrefix starts the name of every build's cgroup (under cgroup.Root).
const cgroupPrefix = "build-"

// Sweep kills and removes what the builds of an earlier plugin process left
// when it died mid-build: their cgroups (a build's processes outlive the
// plugin otherwise, until their own end, if any) and their sandbox
// directories. Call it once when the plugin starts, before any build.
func (b *Box) Sweep() error {
	seen := map[string]bool{}
	var errs []error
	for _, pat := range []string{
		filepath.Join("/sys/fs/cgroup", "*", cgroup.Root, cgroupPrefix+"*"), // v1: one hierarchy per controller
		filepath.Join("/sys/fs/cgroup", cgroup.Root, cgroupPrefix+"*"),      // v2
	} {
		dirs, _ := filepath.Glob(pat)
		for _, d := range dirs {
			name := filepath.Base(d)
			if seen[name] {
				continue
			}
			seen[name] = true
			// Create opens an existing group as well; the limits do not
			// matter any more.
			group, err := cgroup.Create(name, cgroup.Limits{})
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if err := group.Kill(killTimeout); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := group.Destroy(); err != nil {
				errs = append(errs, err)
				continue
			}
			b.log.Info("build sandbox: removed what an earlier build left", "cgroup", name)
		}
	}
	runs, _ := filepath.Glob(filepath.Join(b.cfg.Dir, "run.*"))
	for _, d := range runs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("build sandbox: sweep: %w", err)
	}
	return nil
}

// sandboxEnv is the command's environment for the sandbox: the proxy's
// address in place of any proxy setting, and refused when an index URL in
// it carries credentials.
func sandboxEnv(env []string) ([]string, error) {
	out := make([]string, 0, len(env)+4)
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY":
			continue
		case "UV_DEFAULT_INDEX", "UV_INDEX", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL":
			for _, ix := range strings.Fields(value) {
				// uv's named form: name=URL.
				if i := strings.Index(ix, "="); i > 0 && !strings.ContainsAny(ix[:i], ":/") {
					ix = ix[i+1:]
				}
				if u, err := url.Parse(ix); err != nil || u.User != nil || u.RawQuery != "" {
					return nil, fmt.Errorf("build sandbox: index %s: %w: a build that runs package code must not hold them; build from wheels only to use a private index with credentials",
						redact.URL(ix), buildproxy.ErrCredentials)
				}
			}
		}
		if strings.HasPrefix(name, "UV_INDEX_") && (strings.HasSuffix(name, "_PASSWORD") || strings.HasSuffix(name, "_USERNAME")) {
			return nil, fmt.Errorf("build sandbox: %s: %w", name, buildproxy.ErrCredentials)
		}
		out = append(out, kv)
	}
	proxy := "http://" + ProxyAddr
	return append(out, "HTTPS_PROXY="+proxy, "HTTP_PROXY="+proxy, "https_proxy="+proxy, "http_proxy="+proxy), nil
}

func firstArg(args []string) string {
	if len(args) > 1 {
		return args[1]
	}
	return ""
}

func randomID() string { return strings.ToLower(rand.Text()) }
