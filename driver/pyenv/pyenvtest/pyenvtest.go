// Package pyenvtest gives tests what a pyenv.Cache needs from the machine: a
// uv binary and a Python interpreter. It is for tests only.
package pyenvtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/driver/pyenv"
)

// UV returns the path of a uv binary (Install's), or skips the test saying
// why none can be had.
func UV(tb testing.TB) string {
	tb.Helper()
	uv, err := Install()
	if err != nil {
		tb.Skipf("no uv: %v", err)
	}
	return uv
}

// Install returns the path of a uv binary: MODELNODES_UV, else what the
// repository's deploy/uv/install prints (uv of the pinned version on PATH,
// else the one it keeps in ~/.cache/modelnodes/uv-<version>/, fetched once
// from PyPI and checked against its pinned SHA-256; concurrent processes
// wait on its lock). The script is found above the working directory, which
// go test sets to the package's.
func Install() (string, error) {
	if p := os.Getenv("MODELNODES_UV"); p != "" {
		return p, nil
	}
	script, err := installScript()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stderr strings.Builder
	cmd := exec.CommandContext(ctx, script)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", script, err, strings.TrimSpace(stderr.String()))
	}
	for _, line := range strings.Split(string(out), "\n") {
		if p, ok := strings.CutPrefix(line, "uv="); ok && p != "" {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s printed no uv= line: %q", script, out)
}

// installScript finds deploy/uv/install above the working directory.
func installScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "deploy", "uv", "install")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no deploy/uv/install above the working directory (set MODELNODES_UV)")
		}
		dir = parent
	}
}

// Python fingerprints the interpreter python3 on PATH resolves to (its real
// executable, not a shim), or skips the test saying why.
func Python(tb testing.TB) pyenv.Interpreter {
	tb.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		tb.Skip("no python3 on PATH")
	}
	out, err := exec.Command(py, "-c", "import sys; print(sys.executable)").Output()
	if err != nil {
		tb.Skipf("python3 does not run: %v", err)
	}
	in, err := pyenv.Fingerprint(context.Background(), strings.TrimSpace(string(out)))
	if err != nil {
		tb.Skipf("python3: %v", err)
	}
	return in
}

// PyPIReachable skips the test, saying why, when PyPI's simple index cannot
// be reached from this machine.
func PyPIReachable(tb testing.TB, uv string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// uv itself asks the index, with the proxy settings it would use.
	cmd := exec.CommandContext(ctx, uv, "pip", "compile", "--no-config", "--no-cache", "--no-header", "-q", "-")
	cmd.Stdin = strings.NewReader("six==1.16.0\n")
	cmd.Env = append(os.Environ(), "UV_PYTHON_DOWNLOADS=never")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Skipf("PyPI is not reachable with uv: %v: %s", err, strings.TrimSpace(string(out)))
	}
}

// Venv returns the python of a new virtual environment (under the test's
// temporary dir, on Python's interpreter) holding packages from PyPI, or
// skips the test saying why there is none.
func Venv(tb testing.TB, packages ...string) string {
	tb.Helper()
	uv := UV(tb)
	PyPIReachable(tb, uv)
	base := Python(tb)
	env := filepath.Join(tb.TempDir(), "venv")
	run := func(args ...string) {
		tb.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, uv, args...)
		cmd.Env = append(os.Environ(), "UV_PYTHON_DOWNLOADS=never", "VIRTUAL_ENV="+env)
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Skipf("cannot install %v from PyPI with uv: %v\n%s", packages, err, out)
		}
	}
	run("venv", "--python", base.Path, env)
	run(append([]string{"pip", "install"}, packages...)...)
	return filepath.Join(env, "bin", "python")
}
