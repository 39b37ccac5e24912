// Package pyenv builds Python execution environments with uv and keeps them
// in a content-addressed cache on the node: one virtual environment per
// requirements set (Key), built once per node even when many tasks ask at
// once, shared read-only, failures remembered with backoff, and unused
// environments collected within a disk budget, never one in use.
//
// Layout under Cache.Root:
//
//	envs/<key>/        finished environments (read-only trees; a virtual environment made with
//	                   uv venv --relocatable, so it works wherever it is mounted)
//	use/<key>.lock     shared flock held by every Acquire until Release; its mtime is the last use
//	locks/<key>.lock   exclusive flock of the one build of <key> (across processes)
//	locks/uv-cache.lock, locks/collect.lock
//	failed/<key>.json  the last failed build: uv's message, time, attempts
//	tmp/<key>.<rand>/  builds in progress; renamed into envs/ when complete, so an
//	                   environment is either whole or absent
//	uv-cache/          uv's cache (UV_CACHE_DIR): downloaded wheels are reused across builds,
//	                   and environments hardlink their files from it
package pyenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Cache is a node's store of environments. Its zero value is not usable: set
// Root and UV. Methods are safe for concurrent use, and several processes may
// share one Root.
type Cache struct {
	// Root holds everything (layout in the package doc). It must be on one
	// file system: builds are renamed into place.
	Root string
	// BudgetBytes is the disk the cache may use (environments, uv's cache and
	// builds, each file counted once however many hardlinks it has). Collect
	// removes least recently used environments not in use until the total
	// fits. Zero or less: no limit.
	BudgetBytes int64
	// UV is the path of the uv binary.
	UV string
	// Run runs one build command (uv venv, uv pip install) to completion. It
	// must keep the command's Path, Args, Env, Dir, Stdout and Stderr, and
	// stop it when ctx ends. The default runs it on the host in its own
	// process group, which isolates nothing: safe only for wheels-only
	// builds (Spec.OnlyBinary). A build that may run package code (an
	// sdist's setup.py) needs Sandbox instead, which replaces Run.
	Run func(ctx context.Context, cmd *exec.Cmd) error
	// Sandbox, when set, runs every build command instead of Run, as an
	// unprivileged user, and the build is arranged for it (see Sandbox).
	Sandbox Sandbox
	// Env is added to the builds' environment, which is otherwise made from
	// scratch: the operator's HTTPS_PROXY, SSL_CERT_FILE and the like
	// ("NAME=value").
	Env []string
	// Logger receives the build's steps and uv's output lines. Default: none.
	Logger hclog.Logger
	// Progress, when set, is told each stage of a build: "creating",
	// "resolving", "downloading", "installing", "compiling", "done" or
	// "failed", with a detail (uv's own line, or the error). It is called
	// from the building goroutine and must not block.
	Progress func(key, stage, detail string)
	// BuildTimeout bounds one build (default 30 minutes). A build that runs
	// past it is remembered as failed, like one uv rejects.
	BuildTimeout time.Duration
	// MinBackoff and MaxBackoff bound how long a failed key is not rebuilt:
	// MinBackoff after the first failure, doubling per failure up to
	// MaxBackoff (defaults 1 minute and 1 hour).
	MinBackoff, MaxBackoff time.Duration

	now func() time.Time // tests move the clock
}

// Sandbox runs a build's commands isolated from the host, as a user that is
// not root: the driver's build sandbox, for builds that may run package code
// (an sdist's setup.py). With a Sandbox, a build
//
//   - hands its directory (tmp/<key>.<rand>/, fresh, root's until then) to
//     User before the first command; the commands may write there and
//     nowhere else;
//   - keeps uv's cache in that directory (uv-cache/ inside it, removed with
//     it), never in the shared uv-cache/ that other environments hardlink
//     their files from: a build's code could otherwise change a file that
//     every later environment links;
//   - once every command has ended, makes the environment root's again
//     (lchown, no link followed) before it is made read-only and renamed
//     into envs/.
type Sandbox interface {
	// User is the uid and gid the build's commands run as; never 0.
	User() (uid, gid int)
	// Run runs cmd like Cache.Run: it keeps its Path, Args, Env, Dir,
	// Stdout and Stderr, and stops it, with every process it started, when
	// ctx ends. dir is the build's directory, the only one it may write.
	// When Run returns, no process of the command is left.
	Run(ctx context.Context, dir string, cmd *exec.Cmd) error
}

// Env is an environment held for use. Its files stay until Release, whatever
// Collect does meanwhile.
type Env struct {
	// Key is the spec's content address.
	Key string
	// Path is the virtual environment's directory (bin/python inside).
	Path string

	use  *lockedFile
	once sync.Once
}

// Python is the environment's interpreter.
func (e *Env) Python() string { return filepath.Join(e.Path, "bin", "python") }

// File is the environment's in-use lock, held shared. The lock belongs to
// the open file, not to this process: a process that inherits it (an
// os/exec ExtraFiles entry) keeps the environment in use until it exits,
// even after Release and after the plugin itself has restarted. The driver
// hands it to the runner, which outlives the plugin; the sandbox closes it
// before the model's code starts.
func (e *Env) File() *os.File { return e.use.f }

// Release ends this use: Collect may remove the environment once nobody else
// holds it (no other Env, no process that inherited File). It records the
// time as the environment's last use.
func (e *Env) Release() {
	e.once.Do(func() {
		now := time.Now()
		_ = os.Chtimes(e.use.f.Name(), now, now)
		e.use.unlock()
	})
}

// BuildError is a failed build: uv rejected the requirements (its message is
// in Output) or the build ran past BuildTimeout. The failure is remembered:
// until RetryAt, Acquire returns it again without building.
type BuildError struct {
	Key string
	// Output is the last lines of uv's output: the resolver's own message.
	Output string
	// Attempts counts the failed builds of this key in a row.
	Attempts int
	// FailedAt is when the last build failed; RetryAt when the next may run.
	FailedAt, RetryAt time.Time
	// Remembered is true when this Acquire did not build but returned the
	// failure of an earlier build.
	Remembered bool
}

func (e *BuildError) Error() string {
	return fmt.Sprintf("environment %s failed to build (attempt %d, next try after %s): %s",
		e.Key, e.Attempts, e.RetryAt.UTC().Format(time.RFC3339), e.Output)
}

func (c *Cache) path(parts ...string) string {
	return filepath.Join(append([]string{c.Root}, parts...)...)
}

func (c *Cache) logger() hclog.Logger {
	if c.Logger == nil {
		return hclog.NewNullLogger()
	}
	return c.Logger
}

func (c *Cache) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

func (c *Cache) progress(key, stage, detail string) {
	if c.Progress != nil {
		c.Progress(key, stage, detail)
	}
}

func (c *Cache) init() error {
	if c.Root == "" || c.UV == "" {
		return errors.New("pyenv cache needs Root and UV")
	}
	// Root and envs/ are traversable (not listable) by others: the
	// environments are read by the models' unprivileged uids where they are
	// not bind-mounted. Everything else is the driver's own.
	for _, d := range []struct {
		name string
		mode os.FileMode
	}{{"", 0o711}, {"envs", 0o711}, {"use", 0o700}, {"locks", 0o700}, {"failed", 0o700}, {"tmp", 0o700}, {"uv-cache", 0o700}} {
		if err := os.MkdirAll(c.path(d.name), d.mode); err != nil {
			return fmt.Errorf("create %s: %w", c.path(d.name), err)
		}
	}
	return nil
}

// Acquire returns the environment of spec, building it first when the node
// does not have it. Concurrent Acquires of one key, in this process or
// others sharing Root, build it once; the others wait for that build (or
// until ctx ends) and share its result. A key whose build failed recently
// returns the remembered *BuildError without building. The caller must
// Release the Env.
func (c *Cache) Acquire(ctx context.Context, spec Spec) (*Env, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("environment spec: %w", err)
	}
	if err := c.init(); err != nil {
		return nil, err
	}
	key := Key(spec)
	envDir := c.path("envs", key)
	// The use lock comes first and is held throughout: Collect removes an
	// environment only under this lock taken exclusively, so once it is
	// held shared, an environment that exists stays.
	use, err := lock(ctx, c.path("use", key+".lock"), unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	env := &Env{Key: key, Path: envDir, use: use}
	touch := func() {
		now := time.Now()
		_ = os.Chtimes(use.f.Name(), now, now)
	}
	if exists(envDir) {
		touch()
		return env, nil
	}
	built, err := c.buildOnce(ctx, key, spec)
	if err != nil {
		use.unlock()
		return nil, err
	}
	touch()
	if built {
		if err := c.Collect(); err != nil {
			c.logger().Warn("collect environments", "error", err)
		}
	}
	return env, nil
}

// buildOnce builds key under its build lock unless another build finished it
// meanwhile or it failed recently. built reports whether this call built it.
func (c *Cache) buildOnce(ctx context.Context, key string, spec Spec) (built bool, err error) {
	bl, err := lock(ctx, c.path("locks", key+".lock"), unix.LOCK_EX)
	if err != nil {
		return false, err
	}
	defer bl.unlock()
	if exists(c.path("envs", key)) {
		return false, nil
	}
	if f, ok := c.failure(key); ok && c.clock().Before(f.RetryAt) {
		f.Remembered = true
		return false, f
	}
	// A build that died with its process (the plugin killed mid-build) left
	// its directory; nobody else can be building this key now.
	if old, _ := filepath.Glob(c.path("tmp", key+".*")); len(old) > 0 {
		for _, d := range old {
			if err := removeTree(d); err != nil {
				return false, err
			}
		}
	}
	if err := c.build(ctx, key, spec); err != nil {
		return false, err
	}
	return true, nil
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// RunOnHost is the default Run: it starts cmd on the host in its own process
// group and kills the whole group when ctx ends or the command exits, so a
// setup.py's children do not outlive the build. It isolates nothing.
func RunOnHost(ctx context.Context, cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		case <-done:
		}
	}()
	err := cmd.Wait()
	close(done)
	// Whatever the build left running in its group goes with it.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	return err
}
