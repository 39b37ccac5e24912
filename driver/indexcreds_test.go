package driver_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/hashicorp/nomad/plugins/drivers/testutils"

	"github.com/modelnodes/modelnodes/driver"
)

// With index_credentials set, a build needs the task's Vault token: a task
// without one (its job has no vault block) fails to start, saying so,
// before anything is built; the start's failure is the node's, for Nomad's
// restart policy, not BAD_IMPLEMENTATION against the model. A model that
// needs no build starts without Vault. (The real Vault: TestE2EIndexCredentialsFromVault.)
func TestIndexCredentialsNeedTheTasksVaultToken(t *testing.T) {
	r := newRootless(t, nil)
	uv, requested := fakeUV(t, r.python)
	r.plugin = map[string]any{"environments": map[string]any{"root": filepath.Join(t.TempDir(), "envs"), "uv": uv,
		"index_urls": []string{"https://mirror.example/simple"}, "index_credentials": "secret/data/modelnodes/indexes"}}
	r.d = r.newDriver()

	// No requirements: no build, no Vault.
	if _, _, err := r.d.StartTask(r.task); err != nil {
		t.Fatalf("StartTask of a model without requirements: %v", err)
	}
	r.waitServing()
	must(t, r.d.DestroyTask(r.task.ID, true))

	r = newRootless(t, nil)
	r.plugin = map[string]any{"environments": map[string]any{"root": filepath.Join(t.TempDir(), "envs"), "uv": uv,
		"index_urls": []string{"https://mirror.example/simple"}, "index_credentials": "secret/data/modelnodes/indexes"}}
	r.d = r.newDriver()
	must(t, os.WriteFile(filepath.Join(r.task.TaskDir().LocalDir, "model", driver.RequirementsFile), []byte("six\n"), 0o644))
	_, _, err := r.d.StartTask(r.task)
	if err == nil || !strings.Contains(err.Error(), "package index credentials") || !strings.Contains(err.Error(), "needs a vault block") {
		t.Fatalf("StartTask without a Vault token: %v, want a failed start saying the job needs a vault block", err)
	}
	if b, _ := os.ReadFile(requested); len(b) > 0 {
		t.Errorf("uv was asked to install %q without the index credentials", b)
	}
}

// Index credentials are for wheels-only builds on the trusted side: a
// sandboxed build runs an sdist's code, which must not hold them. A path
// that is not a KV v2 secret's is refused too.
func TestIndexCredentialsConfig(t *testing.T) {
	d := driver.New(hclog.NewNullLogger())
	h := testutils.NewDriverHarness(t, d)
	for name, c := range map[string]struct {
		envs map[string]any
		want string
	}{
		"sandbox build": {map[string]any{"build": "sandbox", "index_credentials": "secret/data/modelnodes/indexes"}, `environments.index_credentials: a "sandbox" build runs package code`},
		"not KV v2":     {map[string]any{"index_credentials": "secret/modelnodes/indexes"}, "is not a KV v2 secret path"},
	} {
		var data []byte
		must(t, base.MsgPackEncode(&data, map[string]any{"environments": c.envs}))
		if err := h.SetConfig(&base.Config{PluginConfig: data}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: SetConfig: %v, want an error saying %q", name, err, c.want)
		}
	}
	var data []byte
	must(t, base.MsgPackEncode(&data, map[string]any{"environments": map[string]any{"index_credentials": "secret/data/modelnodes/indexes"}}))
	must(t, h.SetConfig(&base.Config{PluginConfig: data}))
}

// A build an index refused (uv's 401/403 on an index's host) fails the
// start: the node's login is wrong, and the model's callers must not hear
// BAD_IMPLEMENTATION. A refusal from another host (a requirement's own URL)
// is the model's, as any other failed build. uv is a stand-in printing
// uv 0.13's lines.
func TestIndexRefusalIsTheNodesFault(t *testing.T) {
	for name, c := range map[string]struct {
		line  string
		node  bool
		index string
	}{
		"index 401": {"hint: An index URL (https://mirror.example/simple) could not be queried due to a lack of valid authentication credentials (401 Unauthorized)", true, "https://mirror.example/simple"},
		"file 403":  {"  Caused by: HTTP status client error (403 Forbidden) for url (https://mirror.example/files/six-1.0-py3-none-any.whl)", true, "https://mirror.example/simple"},
		"other 401": {"  Caused by: HTTP status client error (401 Unauthorized) for url (https://elsewhere.example/pkg.whl)", false, "https://mirror.example/simple"},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRootless(t, nil)
			uv := filepath.Join(t.TempDir(), "uv")
			must(t, os.WriteFile(uv, []byte(`#!/bin/sh
case "$1" in
venv) mkdir -p "$5/bin" "$5/lib/python3.x/site-packages"; ln -s `+r.python+` "$5/bin/python" ;;
pip) echo "error: Failed to fetch" >&2; echo '`+c.line+`' >&2; exit 1 ;;
esac
`), 0o755))
			r.plugin = map[string]any{"environments": map[string]any{"root": filepath.Join(t.TempDir(), "envs"), "uv": uv, "index_urls": []string{c.index}}}
			r.d = r.newDriver()
			must(t, os.WriteFile(filepath.Join(r.task.TaskDir().LocalDir, "model", driver.RequirementsFile), []byte("six\n"), 0o644))
			events := collectEvents(t, r.d)
			_, _, err := r.d.StartTask(r.task)
			if !c.node {
				if err != nil {
					t.Fatalf("StartTask: %v (the model's failure must not fail the start)", err)
				}
				if res := setupOn(t, r.addr, "crunch_base.Tracker"); res.GetCode() != "BAD_IMPLEMENTATION" {
					t.Fatalf("Setup answered %s %q, want BAD_IMPLEMENTATION", res.GetCode(), res.GetMessage())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "a package index refused the node's login") || !strings.Contains(err.Error(), c.line[len(c.line)-40:]) {
				t.Fatalf("StartTask: %v, want a failed start quoting uv", err)
			}
			// The events travel through the driver's event channel: the
			// last may arrive after StartTask returned.
			stage := ""
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if stage = lastEnvironmentStage(events.of(r.task.ID)); stage == driver.EnvironmentStageRefused || time.Now().After(deadline) {
					break
				}
			}
			if stage != driver.EnvironmentStageRefused {
				t.Errorf("the last environment event's stage is %q, want %q: the scheduler would report the model's environment failed", stage, driver.EnvironmentStageRefused)
			}
		})
	}
}

// lastEnvironmentStage is the stage of the last event about the task's
// environment, which the scheduler's observer reads.
func lastEnvironmentStage(evs []*drivers.TaskEvent) string {
	stage := ""
	for _, ev := range evs {
		if s := ev.Annotations[driver.EventEnvironment]; s != "" {
			stage = s
		}
	}
	return stage
}
