// Package crunchdao installs CrunchDAO's own Python packages from PyPI for
// tests that run them beside ours, unchanged: their coordinator client
// (model-runner-client: ModelCluster, the concurrent runners) and their
// model runner (crunch-model-runner). The two cannot share an environment
// (their protobuf and pyarrow pins conflict), so each gets its own. It is
// for tests only.
package crunchdao

import (
	"path/filepath"
	"testing"

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
	return pyenvtest.Venv(tb, "model-runner-client=="+ClientVersion)
}

// RunnerCommand returns the path of CrunchDAO's model-runner entry point in
// a virtual environment holding crunch-model-runner RunnerVersion, or skips
// the test saying why there is none.
func RunnerCommand(tb testing.TB) string {
	tb.Helper()
	python := pyenvtest.Venv(tb, "crunch-model-runner=="+RunnerVersion)
	return filepath.Join(filepath.Dir(python), "model-runner")
}
