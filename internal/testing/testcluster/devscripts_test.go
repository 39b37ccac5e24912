//go:build e2e

package testcluster

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/procfs"
	"github.com/modelnodes/modelnodes/internal/testing/leftovers"
)

// devEnv prepares a run of deploy/dev/{up,down} next to any dev cluster of
// the user's (see DevEnv).
func devEnv(t *testing.T) (env []string, state string, ports []int) {
	t.Helper()
	return DevEnv(t)
}

func runDev(t *testing.T, env []string, script string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root, _ := repoRoot()
	cmd := exec.Command(filepath.Join(root, "deploy", "dev", script), args...)
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
	// Vault keeps its data (raft storage), unsealed by up.
	for _, want := range []string{"ready", "alive", "Storage Type            raft"} {
		if !bytes.Contains(out, []byte(want)) || !regexp.MustCompile(`Sealed\s+false`).Match(out) {
			t.Errorf("CLI output lacks %q:\n%s", want, out)
		}
	}
	checkDevLockedDown(t, state, ports[8])
	if _, stderr, err := runDev(t, env, "up"); err != nil || !strings.Contains(stderr, "already up") {
		t.Errorf("second up: %v, %q; want it to say the cluster is already up", err, stderr)
	}
	orphan := logmonStandIn(t, state)
	if _, stderr, err := runDev(t, env, "down"); err != nil {
		t.Fatalf("deploy/dev/down: %v\n%s", err, stderr)
	}
	if procfs.Running(orphan) {
		t.Errorf("down left the stand-in for a killed agent's logmon running (pid %d)", orphan)
	}
	if busy := leftovers.Listening(ports); len(busy) > 0 {
		t.Errorf("ports still listening after down: %v", busy)
	}
	if pids := leftovers.Kill(leftovers.Processes(state)); len(pids) > 0 {
		t.Errorf("processes left running in the state dir after down: %v", pids)
	}
	// The next up resumes the same cluster: same tokens, Vault unsealed
	// by up, nothing configured again.
	again, stderr, err := runDev(t, env, "up")
	if err != nil || again != stdout || !strings.Contains(stderr, "resuming") || strings.Contains(stderr, "configuring") {
		t.Errorf("up after down: %v; printed the same env: %v\n%s", err, again == stdout, stderr)
	}
	if _, stderr, err := runDev(t, env, "down", "--purge"); err != nil {
		t.Fatalf("deploy/dev/down --purge: %v\n%s", err, stderr)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("state dir after down --purge: %v, want it gone", err)
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
	for _, f := range []string{"env", "nomad/management-token", "vault/root-token", "vault/unseal-key", "consul/management-token"} {
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

// logmonStandIn starts what a killed Nomad agent leaves behind: a process in
// a session of its own, started from another working dir, holding a task's
// log file open (Nomad's logmon). It returns its pid.
func logmonStandIn(t *testing.T, state string) int {
	t.Helper()
	log := filepath.Join(state, "nomad", "data", "alloc", "stand-in", "alloc", "logs", ".model.stdout.fifo")
	if err := os.MkdirAll(filepath.Dir(log), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(log, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("sleep", "300")
	cmd.Dir = "/"
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return cmd.Process.Pid
}
