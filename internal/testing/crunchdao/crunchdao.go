// Package crunchdao installs CrunchDAO's own Python packages from PyPI for
// tests that run them beside ours, unchanged: their coordinator client
// (model-runner-client: ModelCluster, the concurrent runners) and their
// model runner (crunch-model-runner). The two cannot share an environment
// (their protobuf and pyarrow pins conflict), so each gets its own. It is
// for tests only.
package crunchdao

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/driver/pyenv/pyenvtest"
)

// The releases the tests run: the newest on PyPI when they were written.
const (
	ClientVersion = "0.14.0"
	RunnerVersion = "0.4.2"
)

// ClientPython returns the Python of a virtual environment holding
// model-runner-client ClientVersion, or skips the test saying why there is
// none.
func ClientPython(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(venv(tb, "model-runner-client=="+ClientVersion), "bin", "python")
}

// RunnerCommand returns the path of CrunchDAO's model-runner entry point in
// a virtual environment holding crunch-model-runner RunnerVersion, or skips
// the test saying why there is none.
func RunnerCommand(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(venv(tb, "crunch-model-runner=="+RunnerVersion), "bin", "model-runner")
}

// venv makes a virtual environment under the test's temporary directory
// from python3 on PATH and installs pkg into it with uv (its cache makes a
// second install take seconds).
func venv(tb testing.TB, pkg string) string {
	tb.Helper()
	uv := pyenvtest.UV(tb)
	pyenvtest.PyPIReachable(tb, uv)
	base := pyenvtest.Python(tb)
	env := filepath.Join(tb.TempDir(), "venv")
	run := func(args ...string) {
		tb.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, uv, args...)
		cmd.Env = append(os.Environ(), "UV_PYTHON_DOWNLOADS=never", "VIRTUAL_ENV="+env)
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Skipf("cannot install %s from PyPI with uv: %v\n%s", pkg, err, out)
		}
	}
	run("venv", "--python", base.Path, env)
	run("pip", "install", pkg)
	return env
}
