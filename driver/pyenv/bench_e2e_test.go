//go:build e2e

package pyenv_test

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/driver/pyenv"
	"github.com/modelnodes/modelnodes/driver/pyenv/pyenvtest"
)

// benchRequirements is a typical submission's: what CrunchDAO's image build
// installs for a scikit-learn model.
const benchRequirements = "pandas==2.2.3\nscikit-learn==1.6.1\n"

// BenchmarkE2EColdBuild builds a pandas + scikit-learn environment from
// nothing (no wheel cache, everything downloaded from PyPI) with the cache
// (uv) and, as the baseline, the way CrunchDAO's image build does it
// (python -m venv, then pip install -r requirements.txt), in the same run on
// the same interpreter. Both compile bytecode. About 100 MB each way:
//
//	go test -tags e2e -run '^$' -bench ColdBuild -benchtime 1x ./driver/pyenv/
func BenchmarkE2EColdBuild(b *testing.B) {
	uv := pyenvtest.UV(b)
	pyenvtest.PyPIReachable(b, uv)
	py := pyenvtest.Python(b)
	b.Run("uv", func(b *testing.B) {
		for range b.N {
			c := &pyenv.Cache{Root: b.TempDir(), UV: uv}
			start := time.Now()
			env, err := c.Acquire(context.Background(), py.Spec([]byte(benchRequirements)))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(time.Since(start).Seconds(), "s/build")
			b.ReportMetric(float64(countPyc(b, env.Path)), "pyc-files")
			env.Release()
		}
	})
	b.Run("pip", func(b *testing.B) {
		for range b.N {
			dir := b.TempDir()
			req := filepath.Join(dir, "requirements.txt")
			if err := os.WriteFile(req, []byte(benchRequirements), 0o644); err != nil {
				b.Fatal(err)
			}
			venv := filepath.Join(dir, "venv")
			// No pip configuration or wheel directory of this machine: only the
			// certificate settings, as the uv build gets the system's store.
			env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + dir, "PIP_CONFIG_FILE=/dev/null",
				"PIP_NO_CACHE_DIR=1", "PIP_DISABLE_PIP_VERSION_CHECK=1"}
			for _, k := range []string{"SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_CERT", "HTTPS_PROXY", "https_proxy"} {
				if v, ok := os.LookupEnv(k); ok {
					env = append(env, k+"="+v)
				}
			}
			start := time.Now()
			for _, args := range [][]string{{py.Path, "-m", "venv", venv}, {filepath.Join(venv, "bin", "pip"), "install", "-q", "-r", req}} {
				cmd := exec.Command(args[0], args[1:]...)
				cmd.Env = env
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("%v: %v: %s", args, err, out)
				}
			}
			b.ReportMetric(time.Since(start).Seconds(), "s/build")
			b.ReportMetric(float64(countPyc(b, venv)), "pyc-files")
		}
	})
}

// countPyc counts the compiled modules under dir: both builds must compile
// what a model imports, or the faster one only moved the work to task start.
func countPyc(b *testing.B, dir string) int {
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".pyc") {
			n++
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}
