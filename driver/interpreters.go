package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/modelnodes/modelnodes/driver/pyenv"
	"github.com/modelnodes/modelnodes/internal/pyversion"
	"github.com/modelnodes/modelnodes/names"
)

// Node attributes of the node's Python interpreters (docs/driver.md). A job
// constrains to nodes with a match by a regexp over the versions
// (pyversion.Request.ListRegexp).
const (
	// AttrPython is the default interpreter's version (the plugin's python).
	AttrPython = "driver.modelbox.python"
	// AttrPythonVersions lists every interpreter's version, sorted and
	// comma-separated (pyversion.FormatList): "3.11.2,3.13.0".
	AttrPythonVersions = names.AttrPythonVersions
	// AttrPythonPlatform is the default interpreter's platform, which its
	// wheels must match ("linux-x86_64-glibc2.36").
	AttrPythonPlatform = "driver.modelbox.python.platform"
)

// interpreterPaths are the node's interpreters in preference order: the
// plugin's python (the default) first, then python_interpreters, each once.
func (c *Config) interpreterPaths() []string {
	out := []string{c.Python}
	for _, p := range c.PythonInterpreters {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// probed is one interpreter's fingerprint, valid while the file it was
// taken from is unchanged.
type probed struct {
	id     fileID
	interp pyenv.Interpreter
	err    error
}

// fileID tells whether a path still names the same file (an operator who
// upgrades a Python in place gets it fingerprinted again).
type fileID struct {
	dev, ino   uint64
	size, mtim int64
}

// fingerprints caches each interpreter's fingerprint by path, so that the
// periodic node fingerprint and each task start run no interpreter while the
// binaries stay the same. It holds only the paths operators listed.
var fingerprints = struct {
	sync.Mutex
	byPath map[string]probed
}{byPath: map[string]probed{}}

// fingerprintInterpreter returns path's fingerprint, probing the
// interpreter (pyenv.Fingerprint) when it is new or its file changed. A
// failed probe is logged once per change of the file.
func fingerprintInterpreter(ctx context.Context, path string, log hclog.Logger) (pyenv.Interpreter, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		// Remembered without an identity: probed when the file appears,
		// logged once per new error.
		err = fmt.Errorf("python interpreter %s: %w", path, err)
		fingerprints.Lock()
		p, ok := fingerprints.byPath[path]
		fingerprints.byPath[path] = probed{err: err}
		fingerprints.Unlock()
		if !ok || p.err == nil || p.err.Error() != err.Error() {
			log.Warn("python interpreter left out", "path", path, "error", err)
		}
		return pyenv.Interpreter{}, err
	}
	id := fileID{dev: st.Dev, ino: st.Ino, size: st.Size, mtim: st.Mtim.Nano()}
	fingerprints.Lock()
	p, ok := fingerprints.byPath[path]
	fingerprints.Unlock()
	if ok && p.id == id {
		return p.interp, p.err
	}
	in, err := pyenv.Fingerprint(ctx, path)
	if err == nil {
		if _, verr := pyversion.ParseVersion(in.Version); verr != nil {
			err = fmt.Errorf("python interpreter %s: %w", path, verr)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return pyenv.Interpreter{}, err // cancelled: not the interpreter's fault
		}
		log.Warn("python interpreter left out: it cannot be fingerprinted", "path", path, "error", err)
	}
	fingerprints.Lock()
	fingerprints.byPath[path] = probed{id: id, interp: in, err: err}
	fingerprints.Unlock()
	return in, err
}

// nodeInterpreters fingerprints the node's interpreters (Config.
// interpreterPaths' order). Those that fail are left out; the default's
// failure is returned as well, since a task without a request runs on it.
func nodeInterpreters(ctx context.Context, cfg *Config, log hclog.Logger) ([]pyenv.Interpreter, error) {
	var out []pyenv.Interpreter
	var defaultErr error
	for i, p := range cfg.interpreterPaths() {
		in, err := fingerprintInterpreter(ctx, p, log)
		if err != nil {
			if i == 0 {
				defaultErr = err
			}
			continue
		}
		out = append(out, in)
	}
	return out, defaultErr
}

// interpreterAttributes are the node attributes of the interpreters:
// AttrPython and AttrPythonPlatform from the default, AttrPythonVersions
// from all. Absent when none can be fingerprinted.
func interpreterAttributes(ctx context.Context, cfg *Config, log hclog.Logger) map[string]string {
	interps, defaultErr := nodeInterpreters(ctx, cfg, log)
	attrs := map[string]string{}
	if len(interps) == 0 {
		return attrs
	}
	if defaultErr == nil {
		attrs[AttrPython] = interps[0].Version
		attrs[AttrPythonPlatform] = interps[0].Platform
	}
	attrs[AttrPythonVersions] = pyversion.FormatList(versionsOf(interps))
	return attrs
}

func versionsOf(interps []pyenv.Interpreter) []pyversion.Version {
	vs := make([]pyversion.Version, 0, len(interps))
	for _, in := range interps {
		v, _ := pyversion.ParseVersion(in.Version) // checked when fingerprinted
		vs = append(vs, v)
	}
	return vs
}

// ErrNoInterpreter is ChooseInterpreter's error when the submission asks
// for a Python the node does not have.
var ErrNoInterpreter = errors.New("no matching python interpreter on this node")

// ReadPythonRequest reads a submission's Python request from the
// .python-version and pyproject.toml at the root of modelDir. The
// submission's files are untrusted and the driver is root: each is opened
// without following a symlink, must be a regular file within its size cap
// (pyversion.Max*), and is never waited on (no FIFO, no device).
func ReadPythonRequest(modelDir string) (pyversion.Request, error) {
	dir, err := os.OpenFile(modelDir, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return pyversion.Request{}, fmt.Errorf("python request: %w", err)
	}
	defer dir.Close()
	pv, err := readSubmissionFile(dir, pyversion.PythonVersionFile, pyversion.MaxPythonVersionFile)
	if err != nil {
		return pyversion.Request{}, err
	}
	pp, err := readSubmissionFile(dir, pyversion.PyprojectFile, pyversion.MaxPyprojectFile)
	if err != nil {
		return pyversion.Request{}, err
	}
	return pyversion.FromFiles(pv, pp)
}

// readSubmissionFile reads name in dir: nil when absent, an error when it
// is a symlink, not a regular file, or larger than limit.
func readSubmissionFile(dir *os.File, name string, limit int64) ([]byte, error) {
	fd, err := unix.Openat(int(dir.Fd()), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, nil
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("the submission's %s is a symbolic link; refused", name)
	case err != nil:
		return nil, fmt.Errorf("the submission's %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir.Name(), name))
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("the submission's %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("the submission's %s is not a regular file (%s); refused", name, fi.Mode().Type())
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("the submission's %s has %d bytes, more than %d; refused", name, fi.Size(), limit)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("the submission's %s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("the submission's %s has more than %d bytes; refused", name, limit)
	}
	return b, nil
}

// ChooseInterpreter picks the interpreter for a submission's request among
// the node's (in preference order, the default first): the default when the
// request accepts any, else the highest matching version (the earlier one of
// equal versions). Its error names what was asked and what the node has,
// and wraps ErrNoInterpreter.
func ChooseInterpreter(req pyversion.Request, interps []pyenv.Interpreter) (pyenv.Interpreter, error) {
	if len(interps) == 0 {
		return pyenv.Interpreter{}, fmt.Errorf("%w: none could be fingerprinted", ErrNoInterpreter)
	}
	if req.Any() {
		return interps[0], nil
	}
	vs := versionsOf(interps)
	if i, ok := req.Best(vs); ok {
		return interps[i], nil
	}
	have := strings.ReplaceAll(pyversion.FormatList(vs), pyversion.ListSeparator, ", ")
	return pyenv.Interpreter{}, fmt.Errorf("%w: the submission asks for python %s; this node has %s", ErrNoInterpreter, req, have)
}

// pythonFor returns the interpreter a python task whose model is in
// modelDir runs on: the submission's request (ReadPythonRequest) matched
// against the node's interpreters (ChooseInterpreter). StartTask's prepare
// calls it before building the environment.
func (d *Driver) pythonFor(ctx context.Context, modelDir string) (pyenv.Interpreter, pyversion.Request, error) {
	req, err := ReadPythonRequest(modelDir)
	if err != nil {
		return pyenv.Interpreter{}, req, fmt.Errorf("modelbox: %w", err)
	}
	cfg := d.cfg()
	interps, defaultErr := nodeInterpreters(ctx, cfg, d.log)
	if req.Any() && defaultErr != nil {
		return pyenv.Interpreter{}, req, fmt.Errorf("modelbox: the default python: %w", defaultErr)
	}
	in, err := ChooseInterpreter(req, interps)
	if err != nil {
		return pyenv.Interpreter{}, req, fmt.Errorf("modelbox: %w", err)
	}
	return in, req, nil
}
