//go:build e2e

package driver_test

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/nomad/plugins/drivers"

	"github.com/modelnodes/modelnodes/client/variants"
	"github.com/modelnodes/modelnodes/driver"
	"github.com/modelnodes/modelnodes/driver/pyenv/pyenvtest"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

// Real submissions in the real sandbox, their environments built from PyPI:
//
//   - a scikit-learn model (pandas, pyarrow, scikit-learn pinned in its
//     requirements.txt, its training data in resources/) becomes callable and
//     predicts on a PARQUET DataFrame sent from Go;
//   - a second model with the same requirements starts on the same
//     environment: nothing is built, and it adds no disk;
//   - requirements that cannot be resolved: Setup answers BAD_IMPLEMENTATION
//     with uv's own message, a task event says so, and the next task with
//     them does not build again;
//   - with a budget smaller than anything, building another environment
//     spares the one the running models use, and collects it once they
//     have stopped.
func TestE2EEnvironmentsFromRequirements(t *testing.T) {
	requireRoot(t)
	uv := pyenvtest.UV(t)
	root := filepath.Join(t.TempDir(), "envs")
	plugin := map[string]any{"environments": map[string]any{"root": root, "uv": uv, "budget_mb": 1}}

	// 1. Cold: built, then callable.
	first := newEnv(t, "testdata/skmodel", &drivers.LinuxResources{MemoryLimitBytes: 1 << 30, CPUShares: 1000}, plugin)
	ev1 := collectEvents(t, first.d)
	start := time.Now()
	first.start()
	t.Logf("cold start with a pandas + pyarrow + scikit-learn environment: %s", time.Since(start).Round(100*time.Millisecond))
	c1 := first.client()
	setup(t, c1, "model_base.Model")
	checkPredictions(t, first)
	built := ev1.of(first.task.ID)
	if !hasEvent(built, "Environment: downloading") || !hasEvent(built, "built in") {
		t.Errorf("the build's progress is missing from the task's events: %q", messages(built))
	}
	if log := first.stderr(); !strings.Contains(log, "modelbox: Environment: installing") || !regexp.MustCompile(`Downloaded pyarrow \([0-9]+ of [0-9]+\)`).MatchString(log) {
		t.Errorf("the task's log does not show the build's stages:\n%s", log)
	}
	envs := dirs(t, filepath.Join(root, "envs"))
	if len(envs) != 1 {
		t.Fatalf("environments after one build: %v", envs)
	}
	shared := filepath.Join(root, "envs", envs[0])

	// 2. Warm: same requirements, another model: no build, no disk.
	before := diskUse(t, root)
	second := newEnv(t, "testdata/skmodel", &drivers.LinuxResources{MemoryLimitBytes: 1 << 30, CPUShares: 1000}, plugin)
	ev2 := collectEvents(t, second.d)
	start = time.Now()
	second.start()
	setup(t, second.client(), "model_base.Model")
	t.Logf("warm start on the shared environment, to Setup answered: %s", time.Since(start).Round(10*time.Millisecond))
	checkPredictions(t, second)
	if evs := ev2.of(second.task.ID); hasEvent(evs, "Environment: ") {
		t.Errorf("the second model's start built something: %q", messages(evs))
	}
	grew := diskUse(t, root) - before
	t.Logf("the second model added %d bytes to the environments' disk", grew)
	if grew > 1<<20 {
		t.Errorf("the second model added %d bytes to the environments; want at most 1 MiB", grew)
	}

	// 3. Unresolvable: faulty at Setup with uv's reason; not rebuilt.
	bad := t.TempDir()
	copyDir(t, "../runner/testdata/pymodel", bad)
	if err := os.WriteFile(filepath.Join(bad, driver.RequirementsFile), []byte("pandas==0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for attempt := 1; attempt <= 2; attempt++ {
		e := newEnv(t, bad, nil, plugin)
		evs := collectEvents(t, e.d)
		e.start()
		st := setupOn(t, e.addr, "crunch_base.Tracker")
		if st.GetCode() != "BAD_IMPLEMENTATION" || !strings.Contains(st.GetMessage(), "pandas==0.0.1") ||
			!strings.Contains(st.GetMessage(), "unsatisfiable") {
			t.Fatalf("attempt %d: Setup answered %s %q, want BAD_IMPLEMENTATION with uv's reason", attempt, st.GetCode(), st.GetMessage())
		}
		failed := evs.waitFor(t, func(ev *drivers.TaskEvent) bool {
			return ev.TaskID == e.task.ID && ev.Annotations[driver.EventEnvironment] == driver.EnvironmentStageFailed
		})
		if !strings.Contains(failed.Message, "unsatisfiable") {
			t.Errorf("attempt %d: the failure event does not give uv's reason: %q", attempt, failed.Message)
		}
		if attempt == 2 {
			if hasEvent(evs.of(e.task.ID), "Environment: resolving") || !strings.Contains(st.GetMessage(), "not rebuilt until") {
				t.Errorf("a failed environment was built again at the next start: events %q, answer %q", messages(evs.of(e.task.ID)), st.GetMessage())
			}
		}
		stopTask(t, e)
	}

	// 4. Collection within the budget never takes an environment in use.
	other := t.TempDir()
	copyDir(t, "../runner/testdata/pymodel", other)
	if err := os.WriteFile(filepath.Join(other, driver.RequirementsFile), []byte("six==1.16.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, other, nil, plugin)
	e.start()
	setup(t, e.client(), "crunch_base.Tracker")
	if _, err := os.Stat(shared); err != nil {
		t.Fatalf("collection removed the environment two running models use: %v", err)
	}
	checkPredictions(t, first)
	stopTask(t, e)
	stopTask(t, first)
	stopTask(t, second)
	if err := os.WriteFile(filepath.Join(other, driver.RequirementsFile), []byte("six==1.17.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e = newEnv(t, other, nil, plugin)
	e.start()
	setup(t, e.client(), "crunch_base.Tracker")
	if _, err := os.Stat(shared); err == nil {
		t.Errorf("the environment no model uses any more outlived a collection with a 1 MiB budget")
	}
}

// checkPredictions sends a PARQUET DataFrame and reads the model's
// DataFrame back.
func checkPredictions(t *testing.T, e *env) {
	t.Helper()
	tbl, err := variants.Table(variants.Column{Name: "a", Values: []float64{1, 3}}, variants.Column{Name: "b", Values: []float64{2, 0}})
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Release()
	arg, err := variants.Parquet(tbl)
	if err != nil {
		t.Fatal(err)
	}
	res := call(t, e.client(), "predict", arg)
	if res.GetStatus().GetCode() != "SUCCESS" || res.GetMethodResponse().GetType() != commonspb.VariantType_PARQUET {
		t.Fatalf("predict: %v %v\n%s", res.GetStatus(), res.GetMethodResponse().GetType(), e.stderr())
	}
	out, err := variants.ReadTable(res.GetMethodResponse())
	if err != nil {
		t.Fatal(err)
	}
	defer out.Release()
	rows := variants.Rows(out)
	want := []float64{2*1 - 2 + 0.5, 2*3 - 0 + 0.5}
	for i, w := range want {
		got, _ := rows[i]["prediction"].(float64)
		if len(rows) != len(want) || math.Abs(got-w) > 1e-6 {
			t.Fatalf("predictions %v, want %v", rows, want)
		}
	}
}

func stopTask(t *testing.T, e *env) {
	t.Helper()
	if err := e.d.StopTask(e.task.ID, 5*time.Second, "SIGTERM"); err != nil {
		t.Fatalf("StopTask: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ch, err := e.d.WaitTask(ctx, e.task.ID)
	if err != nil {
		t.Fatal(err)
	}
	<-ch
	if err := e.d.DestroyTask(e.task.ID, true); err != nil {
		t.Fatalf("DestroyTask: %v", err)
	}
}

func hasEvent(evs []*drivers.TaskEvent, substr string) bool {
	for _, ev := range evs {
		if strings.Contains(ev.Message, substr) {
			return true
		}
	}
	return false
}

func messages(evs []*drivers.TaskEvent) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Message)
	}
	return out
}

func dirs(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// diskUse is the bytes of blocks under dir, each inode counted once.
func diskUse(t *testing.T, dir string) int64 {
	t.Helper()
	seen := map[uint64]bool{}
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return nil // collected meanwhile
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && !seen[st.Ino] {
			seen[st.Ino] = true
			total += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// A requirement that only has a source distribution (termcolor 1.1.0 on
// PyPI: its setup.py must run): the default wheels-only mode refuses it,
// with uv's reason at Setup; build = "sandbox" builds it in the build
// sandbox, through the allow-list proxy, and the model runs on it.
func TestE2ESourceDistributionNeedsTheBuildSandbox(t *testing.T) {
	requireRoot(t)
	uv := pyenvtest.UV(t)
	model := t.TempDir()
	copyDir(t, "../runner/testdata/pymodel", model)
	if err := os.WriteFile(filepath.Join(model, driver.RequirementsFile), []byte("termcolor==1.1.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Run("build=wheels", func(t *testing.T) {
		e := newEnv(t, model, nil, map[string]any{"environments": map[string]any{"root": filepath.Join(t.TempDir(), "envs"), "uv": uv}})
		e.start()
		st := setupOn(t, e.addr, "crunch_base.Tracker")
		if st.GetCode() != "BAD_IMPLEMENTATION" || !strings.Contains(st.GetMessage(), "termcolor") {
			t.Fatalf("Setup answered %s %q, want BAD_IMPLEMENTATION naming the sdist-only termcolor", st.GetCode(), st.GetMessage())
		}
	})
	t.Run("build=sandbox", func(t *testing.T) {
		root := filepath.Join(t.TempDir(), "envs")
		e := newEnv(t, model, nil, map[string]any{"environments": map[string]any{"root": root, "uv": uv, "build": "sandbox"}})
		evs := collectEvents(t, e.d)
		e.start()
		setup(t, e.client(), "crunch_base.Tracker")
		if !hasEvent(evs.of(e.task.ID), "built in") {
			t.Errorf("no build in the task's events: %q", messages(evs.of(e.task.ID)))
		}
		found, _ := filepath.Glob(filepath.Join(root, "envs", "*", "lib", "python3*", "site-packages", "termcolor*"))
		if len(found) == 0 {
			t.Fatalf("termcolor is not in the sandbox-built environment")
		}
		fi, err := os.Stat(found[0])
		if err != nil || fi.Sys().(*syscall.Stat_t).Uid != 0 || fi.Mode().Perm()&0o222 != 0 {
			t.Errorf("the sandbox-built environment is not root's and read-only: %v %v", fi.Mode(), err)
		}
	})
}
