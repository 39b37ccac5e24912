// Package pyenvtest gives tests what a pyenv.Cache needs from the machine: a
// uv binary and a Python interpreter. It is for tests only.
package pyenvtest

import (
	"archive/zip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/driver/pyenv"
	"golang.org/x/sys/unix"
)

// UVVersion is the uv the tests fetch from PyPI when none is on PATH.
const UVVersion = "0.13.9"

// UV returns the path of a uv binary: MODELNODES_UV, then uv on PATH, then
// ~/.cache/modelnodes/uv-<UVVersion>/uv, which it fetches once from PyPI
// (pip download of the wheel, no install; concurrent test processes wait on
// a lock). It skips the test, saying why, when none can be had.
func UV(tb testing.TB) string {
	tb.Helper()
	if p := os.Getenv("MODELNODES_UV"); p != "" {
		return p
	}
	if p, err := exec.LookPath("uv"); err == nil {
		return p
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		tb.Skipf("uv: no cache dir to keep it in: %v", err)
	}
	dir := filepath.Join(cache, "modelnodes", "uv-"+UVVersion)
	bin := filepath.Join(dir, "uv")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Skipf("uv: %v", err)
	}
	l, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		tb.Skipf("uv: %v", err)
	}
	defer l.Close()
	if err := unix.Flock(int(l.Fd()), unix.LOCK_EX); err != nil {
		tb.Skipf("uv: lock: %v", err)
	}
	if _, err := os.Stat(bin); err == nil { // another test process fetched it
		return bin
	}
	if err := fetchUV(dir, bin); err != nil {
		tb.Skipf("uv is not on PATH and could not be fetched from PyPI: %v", err)
	}
	return bin
}

func fetchUV(dir, bin string) error {
	python, err := exec.LookPath("python3")
	if err != nil {
		return fmt.Errorf("no python3 to run pip: %w", err)
	}
	dl, err := os.MkdirTemp(dir, "download.")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dl)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
		"--disable-pip-version-check", "-q", "-d", dl, "uv=="+UVVersion).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pip download uv==%s: %w: %s", UVVersion, err, strings.TrimSpace(string(out)))
	}
	wheels, _ := filepath.Glob(filepath.Join(dl, "uv-*.whl"))
	if len(wheels) != 1 {
		return fmt.Errorf("pip download uv==%s: %d wheels", UVVersion, len(wheels))
	}
	z, err := zip.OpenReader(wheels[0])
	if err != nil {
		return err
	}
	defer z.Close()
	want := "uv-" + UVVersion + ".data/scripts/uv"
	for _, f := range z.File {
		if f.Name != want {
			continue
		}
		r, err := f.Open()
		if err != nil {
			return err
		}
		defer r.Close()
		tmp := bin + ".tmp"
		w, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
		if err != nil {
			return err
		}
		if _, err := io.Copy(w, r); err != nil {
			w.Close()
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
		return os.Rename(tmp, bin)
	}
	return fmt.Errorf("%s has no %s", filepath.Base(wheels[0]), want)
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
