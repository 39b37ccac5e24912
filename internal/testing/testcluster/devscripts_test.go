//go:build e2e

package testcluster

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/testing/leftovers"
)

// devPorts are the ports deploy/dev/up uses before DEV_PORT_OFFSET.
var devPorts = []int{18500, 18600, 18502, 18301, 18302, 18300, 18200, 18201, 14646, 14647, 14648}

// devEnv prepares a run of deploy/dev/{up,down} next to any dev cluster of
// the user's: its own state dir and an offset that moves every port to a
// free one below Nomad's dynamic port range.
func devEnv(t *testing.T) (env []string, state string, ports []int) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts the real agents; skipped with -short")
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	versions, err := pinnedVersions(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"nomad", "consul", "vault"} {
		bin, err := findBinary(name, versions[name])
		if err != nil {
			t.Skip("testcluster: " + err.Error())
		}
		env = append(env, strings.ToUpper(name)+"_BIN="+bin)
	}
	for range 20 {
		off := -9000 + rand.IntN(5000)
		ports = ports[:0]
		for _, p := range devPorts {
			ports = append(ports, p+off)
		}
		if len(leftovers.Listening(ports)) == 0 {
			state = filepath.Join(t.TempDir(), "dev")
			base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
			env = append(append(base, env...), "MODELNODES_STATE="+state, "DEV_PORT_OFFSET="+strconv.Itoa(off))
			return env, state, ports
		}
	}
	t.Skip("found no free set of dev ports")
	return nil, "", nil
}

func runDev(t *testing.T, env []string, script string) (stdout, stderr string, err error) {
	t.Helper()
	root, _ := repoRoot()
	cmd := exec.Command(filepath.Join(root, "deploy", "dev", script))
	cmd.Env = env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// As a new user: `make dev`, then the CLIs work with the printed variables,
// the cluster is closed to other local users (checkDevLockedDown), a second
// `make dev` says it is up, and `make dev-down` leaves nothing running or
// listening.
func TestDevUpDown(t *testing.T) {
	env, state, ports := devEnv(t)
	t.Cleanup(func() {
		if _, stderr, err := runDev(t, env, "down"); err != nil {
			t.Logf("down (cleanup): %v\n%s", err, stderr)
		}
	})
	stdout, stderr, err := runDev(t, env, "up")
	if err != nil {
		t.Fatalf("deploy/dev/up: %v\n%s", err, stderr)
	}
	wantAddr := "export NOMAD_ADDR=http://127.0.0.1:" + strconv.Itoa(ports[8])
	if !strings.Contains(stdout, wantAddr) {
		t.Errorf("up printed no %q:\n%s", wantAddr, stdout)
	}
	// A fresh shell with only HOME and a minimal PATH, as a user would have.
	cli := exec.Command("bash", "-c", `. "$1/env" && nomad node status && consul members && vault status`, "sh", state)
	cli.Env = []string{"HOME=" + os.Getenv("HOME"), "PATH=/usr/bin:/bin"}
	out, err := cli.CombinedOutput()
	if err != nil {
		t.Fatalf("nomad node status / consul members / vault status with the printed env: %v\n%s", err, out)
	}
	for _, want := range []string{"ready", "alive", "Sealed          false"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("CLI output lacks %q:\n%s", want, out)
		}
	}
	checkDevLockedDown(t, state, ports[8])
	if _, stderr, err := runDev(t, env, "up"); err != nil || !strings.Contains(stderr, "already up") {
		t.Errorf("second up: %v, %q; want it to say the cluster is already up", err, stderr)
	}
	if _, stderr, err := runDev(t, env, "down"); err != nil {
		t.Fatalf("deploy/dev/down: %v\n%s", err, stderr)
	}
	if busy := leftovers.Listening(ports); len(busy) > 0 {
		t.Errorf("ports still listening after down: %v", busy)
	}
	if pids := leftovers.Kill(leftovers.Processes(state)); len(pids) > 0 {
		t.Errorf("processes left running in the state dir after down: %v", pids)
	}
}

// An agent that cannot start: up names it, shows its log, stops the others.
func TestDevUpFailedAgent(t *testing.T) {
	env, state, ports := devEnv(t)
	fake := filepath.Join(t.TempDir(), "vault")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'error: storage is on fire' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	env = append(env, "VAULT_BIN="+fake)
	t.Cleanup(func() { _, _, _ = runDev(t, env, "down") })
	_, stderr, err := runDev(t, env, "up")
	if err == nil {
		t.Fatal("up succeeded with a Vault that exits at once")
	}
	for _, want := range []string{"vault failed to start", "storage is on fire", "consul: stopped"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("up's output lacks %q:\n%s", want, stderr)
		}
	}
	if busy := leftovers.Listening(ports); len(busy) > 0 {
		t.Errorf("ports still listening after the failed up: %v", busy)
	}
	if pids := leftovers.Kill(leftovers.Processes(state)); len(pids) > 0 {
		t.Errorf("processes left running after the failed up: %v", pids)
	}
}

// checkDevLockedDown: the dev cluster's Nomad refuses anonymous callers (a
// local user without the token cannot register a job: Nomad's drivers would
// run it as root), its credentials are readable by their owner only, and
// raw_exec, which runs any command as root, is not enabled.
func checkDevLockedDown(t *testing.T, state string, nomadPort int) {
	t.Helper()
	for _, f := range []string{"env", "nomad/management-token", "vault/root-token", "consul/management-token"} {
		fi, err := os.Stat(filepath.Join(state, f))
		if err != nil {
			t.Errorf("%s: %v", f, err)
		} else if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	addr := "http://127.0.0.1:" + strconv.Itoa(nomadPort)
	anon, err := nomadapi.NewClient(&nomadapi.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	anon.SetSecretID("") // not the NOMAD_TOKEN of whoever runs the test
	job := serviceJob("anonymous-probe", "anonymous-probe")
	if _, _, err := anon.Jobs().Register(job, nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("anonymous job registration on the dev cluster: %v, want 403 Permission denied", err)
	}
	token, err := os.ReadFile(filepath.Join(state, "nomad", "management-token"))
	if err != nil {
		t.Fatal(err)
	}
	mgmt, err := nomadapi.NewClient(&nomadapi.Config{Address: addr, SecretID: strings.TrimSpace(string(token))})
	if err != nil {
		t.Fatal(err)
	}
	nodes, _, err := mgmt.Nodes().List(nil)
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes with the management token: %v %v", err, nodes)
	}
	node, _, err := mgmt.Nodes().Info(nodes[0].ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := node.Drivers["raw_exec"]; d != nil && (d.Detected || d.Healthy) {
		t.Errorf("raw_exec is enabled on the dev cluster: %+v", d)
	}
}
