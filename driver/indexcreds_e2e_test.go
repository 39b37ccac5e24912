//go:build e2e

package driver_test

import (
	"bytes"
	"crypto/rand"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modelnodes/modelnodes/driver"
	"github.com/modelnodes/modelnodes/driver/pyenv/pyenvtest"
	"github.com/modelnodes/modelnodes/internal/testing/pyindex"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
)

// A private index (a PEP 503 index on 127.0.0.1 that wants HTTP basic
// auth) whose login is in the real Vault, at the default secret path that
// deploy/vault/policies/runner.hcl lets model tasks read:
//
//   - without index_credentials, the index refuses the build (401), and
//     the start fails saying so (the node's fault, not BAD_IMPLEMENTATION
//     against the model), also when the failure is remembered;
//   - with it, and the task's token holding the runner policy, a model whose
//     requirements name a package only that index has builds, runs and
//     imports it; the password is in none of the task's events, its log, the
//     driver's log (every level, uv's lines included) or any file of the
//     environment cache, the model store or the task's directory;
//   - with a token without that policy (the plugin's own VAULT_TOKEN is
//     root's, and unused), the start fails saying the policy must allow
//     reading the path, and nothing is built.
func TestE2EIndexCredentialsFromVault(t *testing.T) {
	requireRoot(t)
	uv := pyenvtest.UV(t)
	c := testcluster.Start(t, testcluster.Vault)
	password := "pw-" + rand.Text()

	ix := pyindex.New(t)
	ix.RequireAuth("modelnodes", password)
	ix.Add("privpkg", "privpkg-1.0-py3-none-any.whl", pyindex.Wheel(t, "privpkg", map[string]string{
		"privpkg/__init__.py": "VALUE = 'from the private index'\n",
	}))
	if _, err := c.Vault.Client.KVv2("secret").Put(t.Context(), "modelnodes/indexes", map[string]any{
		ix.Host(): "modelnodes:" + password,
	}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_TOKEN", c.Vault.Token) // the plugin's: must not be used

	model := t.TempDir()
	copyDir(t, "../runner/testdata/pymodel", model)
	src, err := os.ReadFile(filepath.Join(model, "main.py"))
	if err != nil {
		t.Fatal(err)
	}
	src = bytes.Replace(src, []byte("    def truth(self):\n        return True\n"),
		[]byte("    def truth(self):\n        import privpkg\n        return privpkg.VALUE\n"), 1)
	must(t, os.WriteFile(filepath.Join(model, "main.py"), src, 0o644))
	must(t, os.WriteFile(filepath.Join(model, driver.RequirementsFile), []byte("privpkg==1.0\n"), 0o644))

	root := filepath.Join(t.TempDir(), "envs")
	envs := map[string]any{"root": root, "uv": uv, "index_urls": []string{ix.URL()}}
	withCreds := map[string]any{"environments": map[string]any{"root": root, "uv": uv, "index_urls": []string{ix.URL()},
		"index_credentials": "secret/data/modelnodes/indexes"}}
	// task gives the task a Vault token with policies, as Nomad does.
	task := func(plugin map[string]any, policies ...string) *env {
		e := newEnv(t, model, nil, plugin)
		e.task.Env = map[string]string{"VAULT_ADDR": c.Vault.Addr}
		must(t, os.WriteFile(filepath.Join(e.task.TaskDir().SecretsDir, "vault_token"), []byte(c.Vault.TokenWithPolicies(t, policies...)), 0o600))
		return e
	}

	t.Run("without credentials", func(t *testing.T) {
		e := task(map[string]any{"environments": envs}, "runner")
		evs := collectEvents(t, e.d)
		for attempt := 1; attempt <= 2; attempt++ {
			_, _, err := e.h.StartTask(e.task)
			if err == nil || !strings.Contains(err.Error(), "a package index refused the node's login") || !strings.Contains(err.Error(), "401 Unauthorized") {
				t.Fatalf("attempt %d: StartTask: %v, want a failed start saying the index refused the login", attempt, err)
			}
			t.Logf("attempt %d: StartTask: %v", attempt, err)
			if attempt == 2 && !strings.Contains(err.Error(), "not rebuilt until") {
				t.Errorf("the second start built again: %v", err)
			}
		}
		if ix.Refused() == 0 {
			t.Fatal("the index refused nothing")
		}
		if stage := lastEnvironmentStage(evs.of(e.task.ID)); stage != driver.EnvironmentStageRefused {
			t.Errorf("the last environment event's stage is %q, want %q (the scheduler would report the model's environment failed): %q",
				stage, driver.EnvironmentStageRefused, messages(evs.of(e.task.ID)))
		}
	})

	t.Run("from vault", func(t *testing.T) {
		e := task(withCreds, "runner")
		evs := collectEvents(t, e.d)
		refused := ix.Refused()
		e.start()
		cl := e.client()
		setup(t, cl, "crunch_base.Tracker")
		if got := str(t, call(t, cl, "truth")); got != "from the private index" {
			t.Fatalf("the model's privpkg.VALUE = %q", got)
		}
		if !hasEvent(evs.of(e.task.ID), "built in") {
			t.Errorf("no build in the task's events: %q", messages(evs.of(e.task.ID)))
		}
		t.Logf("requests the index refused during the build (uv asks without a login first, or not): %d", ix.Refused()-refused)
		if !strings.Contains(e.logs.String(), "line=") {
			t.Errorf("the driver's log has no uv line, so the check below would see none:\n%s", e.logs)
		}
		noPassword(t, password, e, evs, root)
		stopTask(t, e)
	})

	t.Run("token without the policy", func(t *testing.T) {
		e := task(withCreds, "default")
		evs := collectEvents(t, e.d)
		_, _, err := e.h.StartTask(e.task)
		if err == nil {
			t.Fatal("the task started with a Vault token that may not read the index credentials")
		}
		for _, want := range []string{"package index credentials", "denied reading secret/data/modelnodes/indexes", `policy must allow "read"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("StartTask: %q does not say %q", err, want)
			}
		}
		if hasEvent(evs.of(e.task.ID), "Environment") {
			t.Errorf("a build ran: %q", messages(evs.of(e.task.ID)))
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("the start's error shows the password: %q", err)
		}
		t.Logf("StartTask: %v", err)
		noPassword(t, password, e, evs, root)
	})
}

// noPassword fails t if password is in e's task events, its log, the
// driver's log, or any file under the environment cache (uv's cache
// included), the model store or the task's allocation directory.
func noPassword(t *testing.T, password string, e *env, evs *taskEvents, root string) {
	t.Helper()
	for _, ev := range evs.of(e.task.ID) {
		all := ev.Message
		if ev.Err != nil {
			all += " " + ev.Err.Error()
		}
		for k, v := range ev.Annotations {
			all += " " + k + "=" + v
		}
		if strings.Contains(all, password) {
			t.Errorf("task event %q shows the password", ev.Message)
		}
	}
	if strings.Contains(e.stderr(), password) {
		t.Error("the task's stderr shows the password")
	}
	if strings.Contains(e.logs.String(), password) {
		t.Error("the driver's log shows the password")
	}
	files := 0
	for _, dir := range []string{root, e.store, e.task.AllocDir} {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil // a fifo (the task's log) is read above
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			files++
			if bytes.Contains(b, []byte(password)) {
				t.Errorf("%s holds the password", p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("the password is in none of %d files", files)
}
