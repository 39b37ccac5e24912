package testcluster

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/modelnodes/modelnodes/internal/testing/leftovers"
	"github.com/modelnodes/modelnodes/internal/testing/logtail"
)

// DevPorts are the ports deploy/dev/up uses before DEV_PORT_OFFSET, in its
// order: Consul HTTP, DNS, gRPC, serf LAN, serf WAN, server RPC; Vault API,
// cluster; Nomad HTTP, RPC, serf.
var DevPorts = []int{18500, 18600, 18502, 18301, 18302, 18300, 18200, 18201, 14646, 14647, 14648}

// DevEnv prepares a run of deploy/dev/{up,down,restart} next to any dev
// cluster of the user's: its own state dir (under t's temp dir) and an
// offset that moves every port to a free one below Nomad's dynamic port
// range. It returns the scripts' environment (a minimal one: PATH, HOME,
// the agents' binaries, uv when the test clusters have one), the state
// dir and the ports. It skips t when a binary is missing.
func DevEnv(t testing.TB) (env []string, state string, ports []int) {
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
	if uv, err := testUV(); err == nil {
		env = append(env, "MODELNODES_UV="+uv)
	}
	for range 20 {
		off := -9000 + rand.IntN(5000)
		ports = ports[:0]
		for _, p := range DevPorts {
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

// DevOptions adjust StartDev.
type DevOptions struct {
	// NomadConfig is more Nomad agent configuration (HCL), given after
	// the dev cluster's own (deploy/dev/up's DEV_NOMAD_CONFIG): a test
	// shortens a timer with it, and says why that is equivalent.
	NomadConfig string
	// Env are more variables for deploy/dev/up and so for the agents it
	// starts (e.g. VAULT_MAX_RETRIES, which the Vault clients inside
	// Nomad read).
	Env []string
}

// DevCluster is a cluster started by deploy/dev/up, the script behind `make
// dev` and `make demo`: its agents keep their state on disk, and a test
// restarts them the way an operator does (Restart, or Kill then Up). Its
// embedded Cluster has the agents' clients and addresses (procs are the
// script's, not the test's).
type DevCluster struct {
	*Cluster
	// State is the cluster's state dir (MODELNODES_STATE).
	State string
	env   []string
}

// StartDev starts a dev cluster for t with deploy/dev/up and tears it down
// (deploy/dev/down) when t ends, failing t if anything is left running or
// listening. It skips t when a binary is missing.
func StartDev(t testing.TB, o DevOptions) *DevCluster {
	t.Helper()
	env, state, ports := DevEnv(t)
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if o.NomadConfig != "" {
		extra := filepath.Join(filepath.Dir(state), "nomad-extra.hcl")
		if err := os.WriteFile(extra, []byte(o.NomadConfig), 0o600); err != nil {
			t.Fatal(err)
		}
		env = append(env, "DEV_NOMAD_CONFIG="+extra)
	}
	env = append(env, o.Env...)
	d := &DevCluster{State: state, env: env,
		Cluster: &Cluster{Dir: state, agents: All, root: root, ports: ports}}
	t.Cleanup(func() {
		if t.Failed() {
			for _, a := range []string{"consul", "vault", "nomad"} {
				p := filepath.Join(state, a, a+".log")
				b, _ := os.ReadFile(p)
				t.Logf("testcluster: last lines of %s:\n    %s", p, strings.ReplaceAll(string(logtail.Lines(b, 40)), "\n", "\n    "))
			}
		}
		t0 := time.Now()
		// down finds the cgroups of the allocations whose dirs Nomad
		// still has; those it garbage-collected are only known here.
		var allocIDs []string
		if d.Nomad != nil {
			if stubs, _, err := d.Nomad.Client.Allocations().List(nil); err == nil {
				for _, a := range stubs {
					allocIDs = append(allocIDs, a.ID)
				}
			}
		}
		if _, stderr, err := d.Script("down"); err != nil {
			t.Errorf("deploy/dev/down: %v\n%s", err, stderr)
		}
		if left := leftovers.AllocCgroups(allocIDs); len(left) > 0 {
			t.Logf("testcluster: removing the cgroups the allocations left: %v", left)
			removeNomadCgroups(allocIDs)
		}
		if busy := leftovers.Listening(ports); len(busy) > 0 {
			t.Errorf("ports still listening after deploy/dev/down: %v", busy)
		}
		if pids := leftovers.Kill(leftovers.Processes(state)); len(pids) > 0 {
			t.Errorf("processes of the dev cluster left running after deploy/dev/down (killed now): %v", pids)
		}
		t.Logf("testcluster: dev cluster down in %.1fs", time.Since(t0).Seconds())
	})
	t0 := time.Now()
	d.Up(t)
	t.Logf("testcluster: dev cluster up in %.1fs (state %s)", time.Since(t0).Seconds(), state)
	return d
}

// Script runs deploy/dev/<name> with args against this cluster.
func (d *DevCluster) Script(name string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(filepath.Join(d.root, "deploy", "dev", name), args...)
	cmd.Env = d.env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// Up runs deploy/dev/up (which starts the agents that are not running, with
// their state; only the given ones, if any) and reconnects the clients; it
// fails t when up fails.
func (d *DevCluster) Up(t testing.TB, agents ...string) {
	t.Helper()
	if _, stderr, err := d.Script("up", agents...); err != nil {
		t.Fatalf("deploy/dev/up: %v\n%s", err, stderr)
	}
	if err := d.connect(); err != nil {
		t.Fatal(err)
	}
}

// Restart restarts agents with deploy/dev/restart: each is stopped
// gracefully (its tasks keep running) and started again with its state.
func (d *DevCluster) Restart(t testing.TB, agents ...string) {
	t.Helper()
	if _, stderr, err := d.Script("restart", agents...); err != nil {
		t.Fatalf("deploy/dev/restart %s: %v\n%s", strings.Join(agents, " "), err, stderr)
	}
	if err := d.connect(); err != nil {
		t.Fatal(err)
	}
}

// Kill sends SIGKILL to the agent process alone, as a crash would: what
// it started (Nomad's plugins, logmon, the tasks) keeps running. Up starts
// it again.
func (d *DevCluster) Kill(t testing.TB, agent string) {
	t.Helper()
	pid := d.Pid(agent)
	if pid == 0 {
		t.Fatalf("the dev cluster's %s is not running", agent)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s (pid %d): %v", agent, pid, err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || bytes.Contains(st, []byte(") Z ")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) still runs 10 s after SIGKILL", agent, pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Pid is the agent's pid as deploy/dev/up recorded it (0: none).
func (d *DevCluster) Pid(agent string) int {
	b, err := os.ReadFile(filepath.Join(d.State, agent, "pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// connect (re)builds the agents' clients from the env file up wrote.
func (d *DevCluster) connect() error {
	b, err := os.ReadFile(filepath.Join(d.State, "env"))
	if err != nil {
		return fmt.Errorf("dev cluster: %w", err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		for _, kv := range strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "export ")) {
			if k, v, ok := strings.Cut(kv, "="); ok && !strings.Contains(v, "$") {
				env[k] = v
			}
		}
	}
	for _, k := range []string{"NOMAD_ADDR", "NOMAD_TOKEN", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "VAULT_ADDR", "VAULT_TOKEN"} {
		if env[k] == "" {
			return fmt.Errorf("dev cluster: %s/env lacks %s", d.State, k)
		}
	}
	off := d.ports[0] - DevPorts[0]
	consul, err := consulapi.NewClient(&consulapi.Config{Address: env["CONSUL_HTTP_ADDR"], Token: env["CONSUL_HTTP_TOKEN"]})
	if err != nil {
		return err
	}
	vcfg := vaultapi.DefaultConfig()
	vcfg.Address = env["VAULT_ADDR"]
	vault, err := vaultapi.NewClient(vcfg)
	if err != nil {
		return err
	}
	vault.SetToken(env["VAULT_TOKEN"])
	nomad, err := nomadapi.NewClient(&nomadapi.Config{Address: env["NOMAD_ADDR"], SecretID: env["NOMAD_TOKEN"]})
	if err != nil {
		return err
	}
	d.Consul = &ConsulAgent{Addr: env["CONSUL_HTTP_ADDR"], GRPCAddr: fmt.Sprintf("127.0.0.1:%d", DevPorts[2]+off),
		DNSAddr: fmt.Sprintf("127.0.0.1:%d", DevPorts[1]+off), Token: env["CONSUL_HTTP_TOKEN"], Bin: env["CONSUL_BIN"], Client: consul}
	d.Vault = &VaultAgent{Addr: env["VAULT_ADDR"], Token: env["VAULT_TOKEN"], Bin: env["VAULT_BIN"], Client: vault}
	d.Nomad = &NomadAgent{Addr: env["NOMAD_ADDR"], Bin: env["NOMAD_BIN"], Client: nomad,
		DataDir: filepath.Join(d.State, "nomad", "data"), Token: env["NOMAD_TOKEN"]}
	if d.Consul.Bin == "" || d.Vault.Bin == "" || d.Nomad.Bin == "" {
		return errors.New("dev cluster: its env file names no agent binaries")
	}
	return nil
}
