package pyenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/modelnodes/modelnodes/internal/redact"
	"golang.org/x/sys/unix"
)

// build makes the environment of key in a fresh directory under tmp/ and
// renames it into envs/ once complete. The caller holds the key's build lock.
func (c *Cache) build(ctx context.Context, key string, spec Spec) error {
	log := c.logger().With("env", key)
	timeout := c.BuildTimeout
	if timeout <= 0 {
		timeout = 30 * time.Minute
	}
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dir, err := os.MkdirTemp(c.path("tmp"), key+".")
	if err != nil {
		return fmt.Errorf("build environment %s: %w", key, err)
	}
	defer func() {
		if err := removeTree(dir); err != nil {
			log.Warn("remove build directory", "dir", dir, "error", err)
		}
	}()
	uvCache := c.path("uv-cache")
	if c.Sandbox != nil {
		uid, gid := c.Sandbox.User()
		if uid <= 0 || gid <= 0 {
			return fmt.Errorf("build environment %s: the build sandbox must run as a user that is not root (uid %d gid %d)", key, uid, gid)
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			return fmt.Errorf("build environment %s: %w", key, err)
		}
		uvCache = filepath.Join(dir, "uv-cache")
	} else {
		// Builds share uv's cache; Collect clears it only when none runs.
		ucl, err := lock(ctx, c.path("locks", "uv-cache.lock"), unix.LOCK_SH)
		if err != nil {
			return err
		}
		defer ucl.unlock()
	}

	start := time.Now()
	log.Info("building environment", "python", spec.Python, "requirements_bytes", len(spec.Requirements))
	venv := filepath.Join(dir, "env")
	out := &uvOutput{cache: c, key: key, uvCache: uvCache}
	c.progress(key, "creating", "")
	err = c.runUV(bctx, dir, spec, out, "venv", "--relocatable", "--python", spec.Python, venv)
	req := normalizeRequirements(spec.Requirements)
	if err == nil && len(req) > 0 {
		reqFile := filepath.Join(dir, "requirements.txt")
		// Readable by the sandbox's user; the file is the submission's own.
		if err = os.WriteFile(reqFile, req, 0o644); err != nil {
			return fmt.Errorf("build environment %s: %w", key, err)
		}
		c.progress(key, "resolving", "")
		args := []string{"pip", "install", "--python", filepath.Join(venv, "bin", "python")}
		if spec.OnlyBinary {
			args = append(args, "--only-binary", ":all:")
		}
		err = c.runUV(bctx, dir, spec, out, append(args, "-r", reqFile)...)
		if err == nil {
			err = c.compile(bctx, dir, venv, out)
		}
	}
	if err != nil {
		return c.buildFailed(ctx, bctx, key, out, err)
	}
	// Moving a directory to another parent needs write permission on it
	// (its ".." changes) unless one is root: its own mode is set last.
	final := c.path("envs", key)
	if c.Sandbox != nil {
		// Every command has ended (Sandbox.Run's promise): nothing of the
		// build's user can change the tree from here on. But the build's
		// directory was its own: env/ may have been replaced by a link to
		// a file of the host, which the chmods and the rename below would
		// follow.
		if fi, err := os.Lstat(venv); err != nil || !fi.IsDir() {
			return fmt.Errorf("build environment %s: the build left no environment directory (%v)", key, modeOrErr(fi, err))
		}
		if err := chownTree(venv, 0, 0); err != nil {
			return fmt.Errorf("build environment %s: %w", key, err)
		}
	}
	if err := makeReadOnly(venv); err != nil {
		return fmt.Errorf("build environment %s: %w", key, err)
	}
	if err := os.Chmod(venv, 0o755); err != nil {
		return fmt.Errorf("build environment %s: %w", key, err)
	}
	if err := os.Rename(venv, final); err != nil {
		return fmt.Errorf("build environment %s: %w", key, err)
	}
	if err := os.Chmod(final, 0o555); err != nil {
		return fmt.Errorf("build environment %s: %w", key, err)
	}
	_ = os.Remove(c.path("failed", key+".json"))
	log.Info("environment built", "duration", time.Since(start).Round(time.Millisecond))
	c.progress(key, "done", fmt.Sprintf("built in %s", time.Since(start).Round(time.Millisecond)))
	return nil
}

// runUV runs one uv command through the Run seam. uv reads no configuration
// file of the host and never downloads an interpreter. Index URLs go in the
// environment, not in the arguments, because arguments are visible to every
// user in ps.
func (c *Cache) runUV(ctx context.Context, dir string, spec Spec, out *uvOutput, args ...string) error {
	env := []string{
		"UV_CACHE_DIR=" + out.uvCache,
		"UV_NO_CONFIG=1",
		"UV_PYTHON_DOWNLOADS=never",
		"UV_LINK_MODE=hardlink",
		// The node's trust store, not uv's bundled roots: a private mirror
		// or a TLS-inspecting proxy is signed by a CA the operator installed.
		"UV_SYSTEM_CERTS=1",
	}
	if len(spec.Indexes) > 0 {
		env = append(env, "UV_DEFAULT_INDEX="+spec.Indexes[0])
		if len(spec.Indexes) > 1 {
			env = append(env, "UV_INDEX="+strings.Join(spec.Indexes[1:], " "))
		}
	}
	// No --no-progress: writing to a pipe, uv draws no bars but announces
	// each large download ("Downloading pyarrow (38.2MiB)", " Downloaded
	// pyarrow"), which Progress counts; --no-progress silences those too.
	return c.run(ctx, dir, dir, env, out, c.UV, append(args, "--color", "never")...)
}

// compile writes the bytecode of what was installed, now, because the
// environment is read-only afterwards: Python could not cache it at import
// and would compile pandas again at every task start. Test suites shipped
// inside packages (pandas/tests, scipy/*/tests: more than half of a pandas +
// scikit-learn environment's files) are left out: a model does not import
// them, and compiling them doubled the build (uv pip install
// --compile-bytecode took 7.5 s for 3,565 files, this 3.2 s for 1,506, on 2
// cores). The paths matched are relative to site-packages, so nothing above
// it (the cache's root) can match. A file that does not compile (some
// packages ship sources for other Python versions) is not an error, as it is
// not for pip or uv: it is only imported, if ever, from source.
func (c *Cache) compile(ctx context.Context, dir, venv string, out *uvOutput) error {
	sites, _ := filepath.Glob(filepath.Join(venv, "lib", "python*", "site-packages"))
	if len(sites) != 1 {
		return fmt.Errorf("compile: %d site-packages directories in %s", len(sites), venv)
	}
	c.progress(out.key, "compiling", "")
	// -S: no site module, so no installed package's .pth file runs. A .pth
	// line that starts with "import" is executed by every interpreter that
	// starts with this site-packages, and a wheel may ship one: without -S
	// a wheels-only build on the trusted side would run package code.
	err := c.run(ctx, sites[0], dir, nil, out, filepath.Join(venv, "bin", "python"),
		"-I", "-S", "-m", "compileall", "-q", "-j", "0", "-x", `/tests?/`, ".")
	var exit *exec.ExitError
	// compileall says "*** Error compiling" per file it could not compile;
	// anything else (a traceback: no /dev/shm for its workers, say) is the
	// build's failure, not the package's.
	if errors.As(err, &exit) && exit.Exited() && !out.sawTraceback() {
		c.logger().Warn("some files did not compile", "env", out.key, "output", redact.URLsIn(out.tail()))
		return nil
	}
	return err
}

// run runs one build command through the Run seam (or the Sandbox), in dir,
// with an environment made from scratch plus env and Cache.Env: nothing of
// the plugin's own environment (tokens, Nomad's variables) reaches the
// build. buildDir is the build's directory, also its HOME.
func (c *Cache) run(ctx context.Context, dir, buildDir string, env []string, out *uvOutput, path string, args ...string) error {
	cmd := exec.Command(path, args...)
	cmd.Dir = dir
	cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + buildDir, "NO_COLOR=1"}, env...)
	cmd.Env = append(cmd.Env, c.Env...)
	out.reset() // the error carries the failing command's lines only
	cmd.Stdout = out
	cmd.Stderr = out
	// A process the build left behind holding the output pipe must not hold
	// the build up.
	cmd.WaitDelay = 5 * time.Second
	var err error
	switch {
	case c.Sandbox != nil:
		err = c.Sandbox.Run(ctx, buildDir, cmd)
	case c.Run != nil:
		err = c.Run(ctx, cmd)
	default:
		err = RunOnHost(ctx, cmd)
	}
	out.flush()
	if err != nil {
		return fmt.Errorf("%s %s: %w", filepath.Base(path), args[0], err)
	}
	return nil
}

// buildFailed decides whether a failure is the requirements' own (uv exited
// with an error, or the build ran past its time limit), which is remembered
// so that the key is not rebuilt on every restart, or an interruption (the
// caller gave up, uv was killed, uv could not start), which is not.
func (c *Cache) buildFailed(ctx, bctx context.Context, key string, out *uvOutput, err error) error {
	tail := redact.URLsIn(out.tail())
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		c.progress(key, "failed", "interrupted")
		return fmt.Errorf("build environment %s: interrupted: %w", key, ctx.Err())
	case errors.Is(bctx.Err(), context.DeadlineExceeded):
		tail = strings.TrimSpace(tail + "\nbuild stopped: it ran past its time limit")
	case errors.As(err, &exit) && exit.Exited():
	default:
		c.progress(key, "failed", err.Error())
		return fmt.Errorf("build environment %s: %w: %s", key, err, tail)
	}
	f := &BuildError{Key: key, Output: tail, Attempts: 1, FailedAt: c.clock()}
	if prev, ok := c.failure(key); ok {
		f.Attempts = prev.Attempts + 1
	}
	f.RetryAt = f.FailedAt.Add(c.backoff(f.Attempts))
	if werr := c.writeFailure(f); werr != nil {
		c.logger().Warn("remember failed build", "env", key, "error", werr)
	}
	c.logger().Warn("environment build failed", "env", key, "attempts", f.Attempts, "retry_at", f.RetryAt, "output", tail)
	c.progress(key, "failed", tail)
	return f
}

func (c *Cache) backoff(attempts int) time.Duration {
	lo, hi := c.MinBackoff, c.MaxBackoff
	if lo <= 0 {
		lo = time.Minute
	}
	if hi <= 0 {
		hi = time.Hour
	}
	d := lo
	for i := 1; i < attempts && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

type failureRecord struct {
	Key      string    `json:"key"`
	Output   string    `json:"output"`
	Attempts int       `json:"attempts"`
	FailedAt time.Time `json:"failed_at"`
	RetryAt  time.Time `json:"retry_at"`
}

func (c *Cache) failure(key string) (*BuildError, bool) {
	b, err := os.ReadFile(c.path("failed", key+".json"))
	if err != nil {
		return nil, false
	}
	var r failureRecord
	if err := json.Unmarshal(b, &r); err != nil || r.Key != key {
		return nil, false
	}
	return &BuildError{Key: key, Output: r.Output, Attempts: r.Attempts, FailedAt: r.FailedAt, RetryAt: r.RetryAt}, true
}

func (c *Cache) writeFailure(f *BuildError) error {
	b, err := json.Marshal(failureRecord{Key: f.Key, Output: f.Output, Attempts: f.Attempts, FailedAt: f.FailedAt, RetryAt: f.RetryAt})
	if err != nil {
		return err
	}
	tmp := c.path("failed", f.Key+".json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, c.path("failed", f.Key+".json"))
}

// uvOutput receives uv's stdout and stderr: each line goes to the log,
// the lines that mark a stage go to Progress, and the last lines are kept
// for the error.
type uvOutput struct {
	cache *Cache
	key   string
	// uvCache is the build's UV_CACHE_DIR.
	uvCache string
	mu      sync.Mutex
	buf     []byte
	lines   []string
	// traceback is set once a line starts a Python traceback: the tail
	// may have lost that line to a long one.
	traceback bool
	// uv announces each large download ("Downloading numpy (16.1MiB)") and
	// its end (" Downloaded numpy"): counted, they make "N of M".
	downloads, downloaded int
}

const (
	tailLines = 20
	tailBytes = 4096
)

func (o *uvOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, p...)
	for {
		i := bytes.IndexByte(o.buf, '\n')
		if i < 0 {
			break
		}
		o.line(string(o.buf[:i]))
		o.buf = o.buf[i+1:]
	}
	// A line without end is cut rather than held without bound.
	if len(o.buf) > tailBytes {
		o.line(string(o.buf))
		o.buf = o.buf[:0]
	}
	return len(p), nil
}

func (o *uvOutput) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf, o.lines, o.traceback = o.buf[:0], nil, false
}

func (o *uvOutput) sawTraceback() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.traceback
}

func (o *uvOutput) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.buf) > 0 {
		o.line(string(o.buf))
		o.buf = o.buf[:0]
	}
}

func (o *uvOutput) line(l string) {
	l = strings.TrimRight(l, "\r")
	if strings.TrimSpace(l) == "" {
		return
	}
	o.cache.logger().Debug("uv", "env", o.key, "line", redact.URLsIn(l))
	if stage := stageOf(l); stage != "" {
		detail := strings.TrimSpace(redact.URLsIn(l))
		switch {
		case strings.HasPrefix(detail, "Downloading "):
			o.downloads++
		case strings.HasPrefix(detail, "Downloaded "):
			o.downloaded++
			detail = fmt.Sprintf("%s (%d of %d)", detail, o.downloaded, o.downloads)
		}
		o.cache.progress(o.key, stage, detail)
	}
	if strings.HasPrefix(l, "Traceback (most recent call last)") {
		o.traceback = true
	}
	o.lines = append(o.lines, l)
	if len(o.lines) > tailLines {
		o.lines = o.lines[len(o.lines)-tailLines:]
	}
}

func (o *uvOutput) tail() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := strings.Join(o.lines, "\n")
	if len(s) > tailBytes {
		s = s[len(s)-tailBytes:]
	}
	return s
}

// stageOf maps uv's summary lines (uv 0.13, output not a terminal) to the
// stage that starts after them.
func stageOf(line string) string {
	line = strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(line, "Resolved "):
		return "downloading"
	case strings.HasPrefix(line, "Downloading "), strings.HasPrefix(line, "Downloaded "):
		return "downloading"
	case strings.HasPrefix(line, "Prepared "):
		return "installing"
	}
	return ""
}

// makeReadOnly leaves the tree readable by everyone (the models run as other
// uids) and writable by nobody: tasks share it, none may change it. Files
// hardlinked from uv's cache share their inode, so the cache's copy becomes
// read-only too, which uv does not mind (it never rewrites a cache entry).
func makeReadOnly(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o444)
		if d.IsDir() || info.Mode()&0o100 != 0 {
			mode = 0o555
		}
		return os.Chmod(p, mode)
	})
}

func modeOrErr(fi fs.FileInfo, err error) any {
	if err != nil {
		return err
	}
	return fi.Mode()
}

// chownTree gives root and everything below it to uid:gid without following
// a symbolic link: a link the build made to a file outside stays pointing
// there, unchanged.
func chownTree(root string, uid, gid int) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// removeTree removes a tree that makeReadOnly made read-only: directories
// get their owner's write bit back first.
func removeTree(root string) error {
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return os.Chmod(p, 0o700)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", root, err)
	}
	if err := os.RemoveAll(root); err != nil {
		return fmt.Errorf("remove %s: %w", root, err)
	}
	return nil
}
