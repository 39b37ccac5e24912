//go:build e2e

package driver_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/helper/uuid"
	"github.com/hashicorp/nomad/plugins/drivers/testutils"

	"github.com/modelnodes/modelnodes/driver"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

func (e *env) setModelDir(dir string) {
	e.t.Helper()
	if err := e.task.EncodeConcreteDriverConfig(&driver.TaskConfig{ModelDir: dir, Runtime: "python", Port: "grpc", Plaintext: true}); err != nil {
		e.t.Fatal(err)
	}
}

// A job may show model code only its own model: a host directory only where
// the node allows it, nothing outside the task dir, never its secrets.
func TestModelDirIsConfined(t *testing.T) {
	hostModel := t.TempDir()
	copyDir(t, "../runner/testdata/pymodel", hostModel)
	if err := os.Chmod(hostModel, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		dir   func(e *env) string
		extra map[string]any
		want  string // in the StartTask error
	}{
		{"a host directory on a node that does not allow them", func(*env) string { return hostModel }, nil, "allow_host_model_dirs"},
		{"a relative path out of the task dir", func(*env) string { return "../../../../etc" }, nil, "inside the task dir"},
		{"a symlink out of the task dir", func(e *env) string {
			link := filepath.Join(e.task.TaskDir().LocalDir, "escape")
			if err := os.Symlink("/etc", link); err != nil {
				t.Fatal(err)
			}
			return "local/escape"
		}, nil, "outside the task dir"},
		{"the task's secrets", func(*env) string { return "secrets" }, nil, "secrets/"},
		{"the secrets through a symlink", func(e *env) string {
			link := filepath.Join(e.task.TaskDir().LocalDir, "keys")
			if err := os.Symlink("../secrets", link); err != nil {
				t.Fatal(err)
			}
			return "local/keys"
		}, nil, "secrets/"},
		{"the whole task dir", func(*env) string { return "." }, nil, "inside the task dir"},
		{"the whole local dir", func(*env) string { return "local/" }, nil, "inside it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, "../runner/testdata/pymodel", nil, tc.extra)
			e.setModelDir(tc.dir(e))
			_, _, err := e.h.StartTask(e.task)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("StartTask: %v, want a refusal naming %q", err, tc.want)
			}
			t.Logf("refused: %v", err)
		})
	}
	t.Run("a host directory where the node allows them", func(t *testing.T) {
		e := newEnv(t, "../runner/testdata/pymodel", nil, map[string]any{"allow_host_model_dirs": true})
		e.setModelDir(hostModel)
		e.start()
		c := e.client()
		setup(t, c, "crunch_base.Tracker")
		if v, _ := call(t, c, "predict", commonspb.Int(5)).GetMethodResponse().AsDouble(); v != 5 {
			t.Fatalf("predict(5) = %v", v)
		}
		if _, err := os.Stat(filepath.Join(hostModel, "main.py")); err != nil {
			t.Errorf("the host model dir was changed: %v", err)
		}
	})
}

// The model leaves local/ (which `nomad alloc fs` serves) for the driver's
// store when the task starts; a restart of the task (Nomad does not fetch
// artifacts again) runs it from the store; once Nomad has removed the task
// dir, the store forgets it.
func TestModelLeavesTheAllocDir(t *testing.T) {
	e := newEnv(t, "../runner/testdata/pymodel", nil, nil)
	local := filepath.Join(e.task.TaskDir().LocalDir, "model")
	// Through a link, as an artifact may unpack one: the link is resolved
	// and its target moved; a restart finds the store's copy all the same.
	link := filepath.Join(e.task.TaskDir().LocalDir, "current")
	if err := os.Symlink("model", link); err != nil {
		t.Fatal(err)
	}
	e.setModelDir("local/current")
	e.start()
	if _, err := os.Lstat(local); !os.IsNotExist(err) {
		t.Fatalf("local/model after the start: %v; want it gone from the alloc dir", err)
	}
	stored := filepath.Join(e.store, e.task.AllocID+".model", "model", "main.py")
	if _, err := os.Stat(stored); err != nil {
		t.Fatalf("the model is not in the store: %v", err)
	}
	c := e.client()
	setup(t, c, "crunch_base.Tracker")
	if v, _ := call(t, c, "predict", commonspb.Int(3)).GetMethodResponse().AsDouble(); v != 3 {
		t.Fatalf("predict(3) = %v", v)
	}

	// Nomad restarts the task: stop, destroy, start with a new task id.
	if err := e.h.StopTask(e.task.ID, 10*time.Second, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	if err := e.h.DestroyTask(e.task.ID, false); err != nil {
		t.Fatal(err)
	}
	e.task.ID = uuid.Generate()
	e.start()
	c = e.client()
	setup(t, c, "crunch_base.Tracker")
	if v, _ := call(t, c, "predict", commonspb.Int(4)).GetMethodResponse().AsDouble(); v != 4 {
		t.Fatalf("after a restart predict(4) = %v", v)
	}
	if err := e.h.StopTask(e.task.ID, 10*time.Second, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	if err := e.h.DestroyTask(e.task.ID, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stored); err != nil {
		t.Fatalf("the stored model went with DestroyTask (%v): a restart could not find it", err)
	}

	// Nomad garbage-collects the allocation; the next sweep (here, the one a
	// driver runs when configured) removes the model.
	e.cleanup()
	d := driver.New(hclog.NewNullLogger())
	setConfig(t, testutils.NewDriverHarness(t, d), map[string]any{"runner_path": modelRunner(t), "model_store": e.store})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Dir(stored)); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stored model outlived its garbage-collected allocation")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
