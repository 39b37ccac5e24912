//go:build e2e

package runner_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/modelnodes/modelnodes/client/variants"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	tipb "github.com/modelnodes/modelnodes/proto/train_infer"
	"github.com/modelnodes/modelnodes/runner/runneropts"
)

// The DataFrame tests run the Python host in virtual environments built from
// PyPI wheels, pinned: pandas and pyarrow as CrunchDAO's runner requires them
// (pandas >=2.2.3,<3, pyarrow >=18.1,<19) and their dependencies.
var pyPins = map[string]string{
	"pandas": "2.2.3", "pyarrow": "18.1.0", "numpy": "2.1.3",
	"python-dateutil": "2.9.0.post0", "six": "1.17.0", "pytz": "2024.2", "tzdata": "2024.2",
}

// A DataFrame sent from Go arrives in Python as a pandas DataFrame (PARQUET
// and ARROW alike), and what the model returns, a DataFrame or a pyarrow
// Table, comes back as PARQUET that Go decodes.
func TestE2EPythonDataFrames(t *testing.T) {
	h := startPython(t, pythonEnv(t, "pandas", "pyarrow"), "pyframes")
	wantCode(t, "setup", h.setup("frames_base.FrameModel", nil, kw("scale", commonspb.Double(10))), "SUCCESS", "")

	in := inputFrame(t)
	for _, v := range in {
		res := h.call("kind", args(v))
		if s, _ := res.GetMethodResponse().AsString(); s != "pandas.core.frame.DataFrame" {
			t.Errorf("kind(%s) = %v %v, want a pandas DataFrame", v.GetType(), res.GetStatus(), res.GetMethodResponse())
		}
		res = h.call("enrich", args(v))
		wantCode(t, "enrich "+v.GetType().String(), res.GetStatus(), "SUCCESS", "")
		wantRows(t, "enrich("+v.GetType().String()+")", res.GetMethodResponse(), []map[string]any{
			{"a": 1.5, "b": int64(10), "name": "X", "total": 115.0},
			{"a": -2.0, "b": int64(20), "name": "YZ", "total": 180.0},
			{"a": 0.25, "b": int64(-1), "name": "", "total": -7.5},
		})
	}
	res := h.call("as_table", args(in[0]))
	wantRows(t, "as_table (a pyarrow Table)", res.GetMethodResponse(), []map[string]any{
		{"a": 1.5, "b": int64(10), "name": "x"},
		{"a": -2.0, "b": int64(20), "name": "yz"},
		{"a": 0.25, "b": int64(-1), "name": ""},
	})
	sums, err := h.call("column_sums", args(in[0])).GetMethodResponse().AsJSON()
	if err != nil || !reflect.DeepEqual(sums, map[string]any{"a": -0.25, "b": 29.0}) {
		t.Errorf("column_sums = %v (%v), want a -0.25, b 29", sums, err)
	}

	// The model's failures are MODEL_FAILED; the caller's are INVALID_ARGUMENT.
	wantCode(t, "a DataFrame pyarrow cannot type", h.call("mixed_frame", nil).GetStatus(), "MODEL_FAILED", "the result cannot be encoded: Arrow")
	wantCode(t, "bytes that are no Parquet file", h.call("kind", args(commonspb.Parquet([]byte("PAR1 but not really")))).GetStatus(),
		"INVALID_ARGUMENT", "argument 0")

	// TrainInfer takes and gives DataFrames too.
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := h.ti.Setup(ctx, &emptypb.Empty{}); err != nil {
		t.Fatalf("TrainInfer Setup: %v", err)
	}
	pred, err := h.ti.Infer(ctx, &tipb.InferRequest{Argument: in[1]})
	if err != nil {
		t.Fatalf("Infer(ARROW): %v", err)
	}
	wantRows(t, "infer", pred.GetPrediction(), []map[string]any{{"double_a": 3.0}, {"double_a": -4.0}, {"double_a": 0.5}})
}

// Without pyarrow, a table argument is refused as the submission's fault
// (its requirements lack pyarrow), and a DataFrame result as the model's.
func TestE2EPythonDataFramesWithoutPyarrow(t *testing.T) {
	h := startPython(t, pythonEnv(t, "pandas"), "pyframes")
	wantCode(t, "setup", h.setup("frames_base.FrameModel", nil), "SUCCESS", "")
	for _, v := range inputFrame(t) {
		wantCode(t, v.GetType().String()+" argument", h.call("kind", args(v)).GetStatus(),
			"BAD_IMPLEMENTATION", v.GetType().String()+" arguments need pyarrow, which the model's Python environment lacks (ModuleNotFoundError: No module named 'pyarrow')")
	}
	wantCode(t, "DataFrame result", h.call("make_frame", nil).GetStatus(), "MODEL_FAILED", "DataFrame results need pyarrow")
	wantCode(t, "still serving", h.call("kind", args(commonspb.Int(1))).GetStatus(), "SUCCESS", "")
}

// With pyarrow but no pandas, the model gets the pyarrow Table itself.
func TestE2EPythonTablesWithoutPandas(t *testing.T) {
	h := startPython(t, pythonEnv(t, "pyarrow"), "pyframes")
	wantCode(t, "setup", h.setup("frames_base.FrameModel", nil), "SUCCESS", "")
	in := inputFrame(t)
	for _, v := range in {
		if s, _ := h.call("kind", args(v)).GetMethodResponse().AsString(); s != "pyarrow.lib.Table" {
			t.Errorf("kind(%s) = %q, want a pyarrow Table", v.GetType(), s)
		}
	}
	res := h.call("enrich_table", args(in[0]))
	wantRows(t, "enrich_table", res.GetMethodResponse(), []map[string]any{
		{"a": 1.5, "b": int64(10), "name": "x", "total": 11.5},
		{"a": -2.0, "b": int64(20), "name": "yz", "total": 18.0},
		{"a": 0.25, "b": int64(-1), "name": "", "total": -0.75},
	})
}

// inputFrame is one table as PARQUET and as ARROW, built with the Go client.
func inputFrame(t *testing.T) []*commonspb.Variant {
	t.Helper()
	tbl, err := variants.Table(
		variants.Column{Name: "a", Values: []float64{1.5, -2, 0.25}},
		variants.Column{Name: "b", Values: []int64{10, 20, -1}},
		variants.Column{Name: "name", Values: []string{"x", "yz", ""}},
	)
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Release()
	pq, err := variants.Parquet(tbl)
	if err != nil {
		t.Fatal(err)
	}
	arrow, err := variants.Arrow(tbl)
	if err != nil {
		t.Fatal(err)
	}
	return []*commonspb.Variant{pq, arrow}
}

// wantRows decodes a PARQUET result with the Go client and compares its rows.
func wantRows(t *testing.T, what string, v *commonspb.Variant, want []map[string]any) {
	t.Helper()
	if v.GetType() != commonspb.VariantType_PARQUET {
		t.Errorf("%s: result %s, want PARQUET", what, v.GetType())
		return
	}
	tbl, err := variants.ReadTable(v)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	defer tbl.Release()
	if got := variants.Rows(tbl); !reflect.DeepEqual(got, want) {
		t.Errorf("%s: rows %v, want %v", what, got, want)
	}
}

// startPython serves testdata/<model> through runner.Run with python as the
// interpreter (--python), as the driver starts a model in its environment.
func startPython(t *testing.T, python, model string) *harness {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("testdata", model))
	if err != nil {
		t.Fatal(err)
	}
	o := runneropts.Defaults()
	o.ModelDir, o.Python, o.Plaintext, o.Listen, o.LogLevel = dir, python, true, freeAddr(t), "warn"
	o.HostDir = t.TempDir()
	h, _ := run(t, o)
	return h
}

// pythonEnv returns the interpreter of a virtual environment holding pkgs
// (names from pyPins), built once per machine under the user's cache
// (~/.cache/modelnodes/pyenvs) from a wheelhouse downloaded once from PyPI,
// binary wheels only. It skips when venv or PyPI is unavailable.
func pythonEnv(t *testing.T, pkgs ...string) string {
	t.Helper()
	base, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed: the Python runtime cannot be tested here")
	}
	version, err := exec.Command(base, "-c", "import sys, sysconfig; print(sys.version, sysconfig.get_platform())").Output()
	if err != nil {
		t.Fatalf("%s: %v", base, err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Skipf("no cache directory for the Python environments: %v", err)
	}
	root := filepath.Join(cache, "modelnodes", "pyenvs")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	var pins []string
	for name, v := range pyPins {
		pins = append(pins, name+"=="+v)
	}
	sort.Strings(pins)
	sum := sha256.Sum256([]byte(base + "\n" + string(version) + strings.Join(pins, "\n")))
	key := hex.EncodeToString(sum[:8])
	env := filepath.Join(root, key+"-"+strings.Join(pkgs, "-"))
	python := filepath.Join(env, "bin", "python")
	done := filepath.Join(env, ".complete")

	// Concurrent test binaries (go test runs packages in parallel) build
	// each environment once.
	lock, err := os.OpenFile(filepath.Join(root, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck
	if fileExists(done) {
		return python
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	run := func(name string, args ...string) error {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Env = append(os.Environ(), "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_INPUT=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, lastLines(out, 8))
		}
		return nil
	}
	if err := os.RemoveAll(env); err != nil {
		t.Fatal(err)
	}
	if err := run(base, "-m", "venv", env); err != nil {
		t.Skipf("cannot make a virtual environment (Debian: apt-get install python3-venv): %v", err)
	}
	wheels := filepath.Join(root, key+"-wheels")
	if !fileExists(filepath.Join(wheels, ".complete")) {
		_ = os.RemoveAll(wheels)
		if err := run(python, append([]string{"-m", "pip", "download", "--only-binary=:all:", "-d", wheels}, pins...)...); err != nil {
			_ = os.RemoveAll(env)
			_ = os.RemoveAll(wheels)
			t.Skipf("cannot download the pinned wheels from PyPI (offline, or no wheels for this Python): %v", err)
		}
		if err := os.WriteFile(filepath.Join(wheels, ".complete"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	install := []string{"-m", "pip", "install", "--no-index", "--find-links", wheels}
	for _, p := range pkgs {
		install = append(install, p+"=="+pyPins[p])
	}
	if err := run(python, install...); err != nil {
		t.Fatalf("installing %v from the wheelhouse: %v", pkgs, err)
	}
	if err := os.WriteFile(done, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the Python environment %s (%s) in %s", env, strings.Join(pkgs, " + "), time.Since(start).Round(time.Millisecond))
	return python
}

func lastLines(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
