//go:build e2e

package driver_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/nomad/plugins/drivers"

	"github.com/modelnodes/modelnodes/driver/pyenv/pyenvtest"
)

// The libraries crunch models use most work under the sandbox's seccomp
// filter: a model built from PyPI with numpy, pandas, pyarrow, scikit-learn
// and lightgbm uses each (lightgbm training on OpenMP threads, joblib's
// threads, a forked process talking over a socketpair, a spawned program),
// on Debian's CPython 3.11 and on CPython 3.13 (CrunchDAO's base version)
// where the node has it.
func TestE2EPythonStackUnderSeccomp(t *testing.T) {
	requireRoot(t)
	uv := pyenvtest.UV(t)
	pyenvtest.PyPIReachable(t, uv)
	for _, tc := range []struct{ name, python string }{
		{"python=3.11", ""},
		{"python=3.13", "3.13"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			model := "testdata/mlstack"
			plugin := map[string]any{"environments": map[string]any{"root": filepath.Join(t.TempDir(), "envs"), "uv": uv}}
			if tc.python != "" {
				py := python313(t)
				plugin["python_interpreters"] = []string{py}
				model = filepath.Join(t.TempDir(), "mlstack")
				copyDir(t, "testdata/mlstack", model)
				if err := os.WriteFile(filepath.Join(model, ".python-version"), []byte(tc.python+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			e := newEnv(t, model, &drivers.LinuxResources{MemoryLimitBytes: 2 << 30, CPUShares: 1000}, plugin)
			e.start()
			c := e.client()
			setup(t, c, "model_base.Model")
			res := call(t, c, "stack")
			if res.GetStatus().GetCode() != "SUCCESS" {
				t.Fatalf("stack(): %v\n%s", res.GetStatus(), e.stderr())
			}
			v, err := res.GetMethodResponse().AsJSON()
			if err != nil {
				t.Fatal(err)
			}
			got := v.(map[string]any)
			t.Logf("under the filter: %v", got)
			num := func(k string) float64 { f, _ := got[k].(float64); return f }
			for _, c := range []struct {
				what string
				ok   bool
			}{
				{"runs the Python asked for", tc.python == "" || len(got["python"].(string)) >= 4 && got["python"].(string)[:4] == tc.python},
				{"numpy inverts a matrix (LAPACK)", num("numpy_inverse_error") < 1e-8},
				{"numpy's SVD finds the rank", num("numpy_svd_rank") == 8},
				{"pandas groups", num("pandas_groups") == 5},
				{"pyarrow writes and reads Parquet in memory", num("parquet_rows_memory") == 2000},
				{"pyarrow writes and reads Parquet in /tmp", num("parquet_rows_file") == 2000},
				{"scikit-learn fits a linear model", num("sklearn_linear_r2") > 0.99},
				{"scikit-learn fits a forest on joblib's threads", num("sklearn_forest_r2") > 0.8},
				{"lightgbm trains", num("lightgbm_r2") > 0.9},
				{"lightgbm trains on OpenMP threads", num("threads_after_lightgbm") > num("threads_before_lightgbm")},
				{"a thread runs", num("thread") == 1},
				{"a forked process answers over a socketpair", got["fork"] == "pid True exit 0"},
				{"a multiprocessing pool works (semaphores in /dev/shm)", got["pool"] == 6.0},
				{"a spawned program runs (clone3 answers ENOSYS, libc falls back to clone)", got["subprocess"] == "42"},
				{"a loopback socket binds", got["loopback_socket"] == "bound"},
			} {
				if !c.ok {
					t.Errorf("%s: no (%v)", c.what, got)
				}
			}
		})
	}
}

// python313 is the node's CPython 3.13 (pyenv's), or skips.
func python313(t *testing.T) string {
	root := os.Getenv("PYENV_ROOT")
	if root == "" {
		home, _ := os.UserHomeDir()
		root = filepath.Join(home, ".pyenv")
	}
	if m, _ := filepath.Glob(filepath.Join(root, "versions", "3.13.*", "bin", "python3.13")); len(m) > 0 {
		return m[0]
	}
	t.Skipf("no CPython 3.13 under %s/versions: the 3.13 run needs one (pyenv install 3.13)", root)
	return ""
}

// torch on the CPU under the filter. PyPI's torch wheel for Linux pulls
// NVIDIA's CUDA libraries: about 2.8 GiB to download and 5.2 GiB installed
// (torch 2.15.0, 29 packages), too much for every make test, so the test
// is opt-in: MODELNODES_TEST_TORCH=1 (a 5-minute build here).
func TestE2ETorchUnderSeccomp(t *testing.T) {
	if os.Getenv("MODELNODES_TEST_TORCH") == "" {
		t.Skip("opt-in: torch from PyPI is 2.8 GiB of downloads (its CUDA libraries); set MODELNODES_TEST_TORCH=1 to build it and train on the CPU under the seccomp filter")
	}
	requireRoot(t)
	uv := pyenvtest.UV(t)
	pyenvtest.PyPIReachable(t, uv)
	plugin := map[string]any{"environments": map[string]any{"root": filepath.Join(t.TempDir(), "envs"), "uv": uv, "build_timeout": "20m"}}
	e := newEnv(t, "testdata/torchmodel", &drivers.LinuxResources{MemoryLimitBytes: 4 << 30, CPUShares: 1000}, plugin)
	e.start()
	c := e.client()
	setup(t, c, "model_base.Model")
	res := call(t, c, "train")
	if res.GetStatus().GetCode() != "SUCCESS" {
		t.Fatalf("train(): %v\n%s", res.GetStatus(), e.stderr())
	}
	v, err := res.GetMethodResponse().AsJSON()
	if err != nil {
		t.Fatal(err)
	}
	got := v.(map[string]any)
	t.Logf("torch under the filter: %v", got)
	first, _ := got["first_loss"].(float64)
	last, _ := got["last_loss"].(float64)
	if got["threads"] != 2.0 || last >= first/10 || got["cuda"] != false {
		t.Errorf("train(): %v; want 2 threads, the loss down tenfold, no CUDA in the sandbox", got)
	}
}
