package testcluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/driver/pyenv/pyenvtest"
	"github.com/modelnodes/modelnodes/internal/testing/leftovers"
)

// Options adjust how StartWith configures the agents; the zero value is
// what Start does.
type Options struct {
	// MinHeartbeatTTL and HeartbeatGrace, when set, are the Nomad server's
	// min_heartbeat_ttl and heartbeat_grace (Nomad's defaults: 10 s and
	// 10 s). The server gives each client a TTL of max(MinHeartbeatTTL,
	// nodes/50 s) plus up to as much again at random, and marks a client
	// down TTL+HeartbeatGrace after its last heartbeat: 20-30 s by default,
	// 2-3 s with 1 s and 1 s. Short values let a test see a lost machine
	// within seconds; a client that stalls longer than the grace is taken
	// for dead.
	MinHeartbeatTTL, HeartbeatGrace time.Duration
	// NomadACL enables Nomad's ACL system; the cluster bootstraps it and
	// keeps the management token in Nomad.Token (Nomad.Client and the
	// scripts' NOMAD_TOKEN use it).
	NomadACL bool
	// NomadPluginHCL is added to the Nomad agent's configuration: plugin
	// blocks for more plugins of the repository's bin (a test's device
	// plugin, internal/testing/testdevice/cmd/nomad-device-testdev).
	NomadPluginHCL string
	// DiskRaft runs the Consul and Nomad servers as production runs them
	// (server with bootstrap_expect = 1, not -dev, whose Raft log and
	// snapshots live in memory): their Raft is on disk under their data
	// dirs, so its size and the servers' memory can be measured.
	DiskRaft bool
	// ShortAllocDir gives the cluster's own Nomad agent an alloc_dir of a
	// short path (<temp dir>/nmNNNN/alloc, removed at Stop): a task's API
	// socket (secrets/api.sock, NOMAD_UNIX_ADDR) must fit in a unix
	// socket's 108 bytes, which a test's temp dir does not leave. Not a
	// symlink into Dir: the exec driver refuses a symlinked root.
	ShortAllocDir bool
}

// ClientOptions adjust one Nomad client added with AddNomadClientWith;
// the zero value is what AddNomadClient does.
type ClientOptions struct {
	// UID, when not 0, runs the Nomad client agent as that user (and GID):
	// as root, Nomad mounts a tmpfs for every task's secrets dir and
	// manages its cgroups, which a host running thousands of stand-in
	// tasks (Nomad's mock_driver) does not need. Its Consul agent stays
	// the test's user.
	UID, GID int
	// PluginHCL, when set, replaces the client's plugin blocks (raw_exec
	// and the modelbox driver) and Drivers the drivers it must report
	// healthy before it counts as ready.
	PluginHCL string
	Drivers   []string
	// ClientHCL is added inside the client block (e.g. the machine's
	// size: cpu_total_compute, memory_total_mb).
	ClientHCL string
}

// consulServerHCL makes the Consul agent a server without -dev (DiskRaft).
func (o Options) consulServerHCL() string {
	if !o.DiskRaft {
		return ""
	}
	return "server           = true\nbootstrap_expect = 1\nperformance {\n  raft_multiplier = 1\n}\n"
}

// nomadDiskRaftHCL makes the Nomad agent a server and client without -dev
// (DiskRaft): what -dev sets implicitly, said explicitly.
func (o Options) nomadDiskRaftHCL() string {
	if !o.DiskRaft {
		return ""
	}
	return `# -dev's pprof endpoints (/v1/agent/pprof), on loopback: BenchmarkScale
# profiles the server with them.
enable_debug = true
client {
  enabled           = true
  network_interface = "lo"
}
advertise {
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}
`
}

// nomadServerHCL is the server block carrying the options, if any.
func (o Options) nomadServerHCL() string {
	var lines []string
	if o.DiskRaft {
		lines = append(lines, "  enabled          = true", "  bootstrap_expect = 1")
	}
	if o.MinHeartbeatTTL > 0 {
		lines = append(lines, fmt.Sprintf("  min_heartbeat_ttl = %q", o.MinHeartbeatTTL))
	}
	if o.HeartbeatGrace > 0 {
		lines = append(lines, fmt.Sprintf("  heartbeat_grace   = %q", o.HeartbeatGrace))
	}
	if len(lines) == 0 {
		return ""
	}
	return "server {\n" + strings.Join(lines, "\n") + "\n}\n"
}

// rawExecHCL enables raw_exec, which the test workloads (HelperTask) run
// on. deploy/dev/nomad.hcl leaves it off: it runs any command as root, so
// only these short-lived test clusters have it.
const rawExecHCL = "plugin \"raw_exec\" {\n  config {\n    enabled = true\n  }\n}\n"

// modelboxPlugin returns the dir Nomad agents load plugins from (the
// repository's bin) and the plugin block of the modelbox driver, empty when
// that driver is not built. Python models' environments live in the
// cluster's dir, built with the uv of deploy/uv/install; without one the
// block says why, and only models with a requirements.txt fail to start.
func (c *Cluster) modelboxPlugin() (dir, block string) {
	dir = filepath.Join(c.root, "bin")
	if isExecutable(filepath.Join(dir, "nomad-driver-modelbox")) {
		uv, err := testUV()
		env := fmt.Sprintf("    environments {\n      root = %q\n      uv   = %q\n    }\n", filepath.Join(c.Dir, "envs"), uv)
		if err != nil {
			env = fmt.Sprintf("    # no uv: %s\n    environments {\n      root = %q\n    }\n",
				strings.Join(strings.Fields(err.Error()), " "), filepath.Join(c.Dir, "envs"))
		}
		// Tests run models from host directories (allow_host_model_dirs,
		// off on real nodes); stored models stay in the cluster's dir.
		block = fmt.Sprintf("plugin %q {\n  config {\n    runner_path = %q\n    allow_host_model_dirs = true\n    model_store = %q\n%s  }\n}\n",
			"nomad-driver-modelbox", filepath.Join(dir, "model-runner"), filepath.Join(c.Dir, "modelbox-models"), env)
	}
	return dir, block
}

// testUV is the uv of the test clusters' nodes, looked for once per process.
var testUV = sync.OnceValues(pyenvtest.Install)

// NomadClientAgent is one more Nomad client of a cluster: another machine,
// as far as Nomad and Consul can tell. It has its own Nomad data, alloc and
// plugin state, its own ports, and its own Consul client agent joined to the
// cluster's Consul: Nomad clients that share a Consul agent deregister each
// other's services (each removes the Nomad services it does not know of,
// after a minute's probation), so every Nomad client needs its own, as in
// production. Nomad's own cgroups on v1 are always under /nomad whatever
// the client's cgroup_parent says (Nomad 1.11: cgroupslib.NomadCgroupParent
// is fixed), and so are the modelbox driver's under /modelbox: every group
// is named <alloc id>.<task>, so clients on one host never share one.
type NomadClientAgent struct {
	// Name is the Nomad node's and the Consul node's name.
	Name string
	// NodeID is the Nomad node id.
	NodeID string
	// Addr is this client's Nomad HTTP API (http://host:port); ConsulAddr
	// its Consul agent's (host:port).
	Addr, ConsulAddr string
	// Dir holds both agents' config, data and logs; allocations live in
	// DataDir/alloc.
	Dir, DataDir string
	// Client talks to this client agent's HTTP API.
	Client *nomadapi.Client

	cluster       *Cluster
	nomad, consul *process
	ports         []int
	netns         *NetNS // where the Nomad agent runs; nil: the host

	mu     sync.Mutex
	killed bool
}

// AddNomadClient starts one more Nomad client (with its own Consul agent)
// in the running cluster c, configured like the cluster's own agent
// (deploy/dev/nomad.hcl, the same Consul token, Vault and modelbox plugin),
// and returns once Nomad reports it ready with its drivers healthy. When t
// ends, the machine is taken away with Kill if the test did not do it.
func (c *Cluster) AddNomadClient(t testing.TB) *NomadClientAgent {
	t.Helper()
	return c.addClient(t, nil, ClientOptions{})
}

// AddNomadClientWith is AddNomadClient with the client configured by o.
func (c *Cluster) AddNomadClientWith(t testing.TB, o ClientOptions) *NomadClientAgent {
	t.Helper()
	return c.addClient(t, nil, o)
}

// AddNomadClientIn is AddNomadClient with the machine's Nomad agent, and
// so its models, in the network namespace ns: it advertises ns.NodeAddr
// (network_interface ns.NodeIf), and reaches the Nomad servers, Vault and
// its Consul agent (which runs on the host, where Consul's gossip stays)
// through ns's relays. ns.Cut cuts it off from all of them.
func (c *Cluster) AddNomadClientIn(t testing.TB, ns *NetNS) *NomadClientAgent {
	t.Helper()
	return c.addClient(t, ns, ClientOptions{})
}

func (c *Cluster) addClient(t testing.TB, ns *NetNS, o ClientOptions) *NomadClientAgent {
	t.Helper()
	if c.Nomad == nil {
		t.Fatal("testcluster: AddNomadClient needs a cluster started with Nomad")
	}
	t0 := time.Now()
	a, err := c.addNomadClient(ns, o)
	for attempt := 2; attempt <= portAttempts && errors.Is(err, errPortTaken); attempt++ {
		t.Logf("testcluster: %v; retrying with new ports", err)
		_, _ = a.Kill()
		a, err = c.addNomadClient(ns, o)
	}
	if a != nil {
		t.Cleanup(func() {
			if t.Failed() {
				for _, p := range []*process{a.nomad, a.consul} {
					if p != nil {
						t.Logf("testcluster: last lines of %s:\n%s", p.logPath, p.tail(40))
					}
				}
			}
			if _, err := a.Kill(); err != nil {
				t.Errorf("testcluster: removing client %s: %v", a.Name, err)
			}
		})
	}
	if err != nil {
		t.Fatalf("testcluster: adding a Nomad client: %v", err)
	}
	t.Logf("testcluster: nomad client %s (node %.8s) ready at %s (%.1fs)", a.Name, a.NodeID, a.Addr, time.Since(t0).Seconds())
	return a
}

func (c *Cluster) addNomadClient(ns *NetNS, o ClientOptions) (*NomadClientAgent, error) {
	dir, err := os.MkdirTemp(c.Dir, "client-")
	if err != nil {
		return nil, err
	}
	a := &NomadClientAgent{Name: filepath.Base(dir), Dir: dir, DataDir: filepath.Join(dir, "nomad", "data"), cluster: c, netns: ns}
	ports, err := freePorts(6)
	if err != nil {
		return a, err
	}
	a.ports = ports
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout())
	defer cancel()
	if err := a.startConsul(ctx, ports[0], ports[1], ports[2]); err != nil {
		return a, err
	}
	return a, a.startNomad(ctx, o, ports[3], ports[4], ports[5])
}

// startConsul starts the machine's Consul client agent and waits until it
// has joined the cluster's Consul and registered its node.
func (a *NomadClientAgent) startConsul(ctx context.Context, httpPort, grpcPort, serfPort int) error {
	c := a.cluster
	self, err := c.Consul.Client.Agent().Self()
	if err != nil {
		return fmt.Errorf("read the Consul server's gossip address: %w", err)
	}
	member := self["Member"]
	port, _ := member["Port"].(float64)
	join := fmt.Sprintf("%v:%d", member["Addr"], int(port))
	dir := filepath.Join(a.Dir, "consul")
	local := filepath.Join(dir, "local.hcl")
	if err := writeConfig(local, fmt.Sprintf(`node_name      = %q
data_dir       = %q
bind_addr      = "127.0.0.1"
advertise_addr = "127.0.0.1"
client_addr    = "127.0.0.1"
retry_join     = [%q]
ports {
  http     = %d
  https    = -1
  dns      = -1
  grpc     = %d
  grpc_tls = -1
  serf_lan = %d
  serf_wan = -1
}
acl {
  tokens {
    agent = %q
  }
}
`, a.Name, filepath.Join(dir, "data"), join, httpPort, grpcPort, serfPort, c.Consul.Token)); err != nil {
		return err
	}
	a.ConsulAddr = fmt.Sprintf("127.0.0.1:%d", httpPort)
	client, err := consulapi.NewClient(&consulapi.Config{Address: a.ConsulAddr, Token: c.Consul.Token})
	if err != nil {
		return fmt.Errorf("consul client: %w", err)
	}
	args := []string{"agent", "-config-file=" + filepath.Join(c.root, "deploy", "dev", "consul.hcl"), "-config-file=" + local}
	a.consul, err = launchProcess(ctx, "consul", dir, c.Consul.Bin, args, func(context.Context) bool {
		node, _, err := client.Catalog().Node(a.Name, nil)
		return err == nil && node != nil && node.Node != nil
	})
	return err
}

// startNomad starts the machine's Nomad client agent and waits until the
// server reports its node ready with its drivers healthy.
func (a *NomadClientAgent) startNomad(ctx context.Context, o ClientOptions, httpPort, rpcPort, serfPort int) error {
	c := a.cluster
	server, err := c.Nomad.Client.Status().Leader()
	if err != nil {
		return fmt.Errorf("read the Nomad server's RPC address: %w", err)
	}
	bin := c.Nomad.Bin
	pluginDir, plugin := c.modelboxPlugin()
	plugins := rawExecHCL + plugin
	drivers := []string{"raw_exec"}
	if plugin != "" {
		drivers = append(drivers, "modelbox")
	}
	dir := filepath.Join(a.Dir, "nomad")
	if o.PluginHCL != "" {
		// Only the named (builtin) plugins: nothing of bin/ to launch.
		plugins, drivers, pluginDir = o.PluginHCL, o.Drivers, filepath.Join(dir, "plugins")
	}
	var cred *syscall.Credential
	clientExtra := o.ClientHCL
	if clientExtra != "" && !strings.HasSuffix(clientExtra, "\n") {
		clientExtra += "\n"
	}
	if o.UID != 0 {
		// Its dirs its own (alloc mounts too: by default a sibling of
		// the data dir), and the path to them traversable.
		clientExtra += fmt.Sprintf("  alloc_mounts_dir  = %q\n", filepath.Join(a.DataDir, "alloc_mounts"))
		if err := os.MkdirAll(a.DataDir, 0o755); err != nil {
			return err
		}
		if err := chownTree(dir, o.UID, o.GID); err != nil {
			return err
		}
		if err := traversable(dir); err != nil {
			return err
		}
		cred = &syscall.Credential{Uid: uint32(o.UID), Gid: uint32(o.GID)}
		if bin, err = c.sharedBinary(c.Nomad.Bin); err != nil {
			return err
		}
	}
	local := filepath.Join(dir, "local.hcl")
	bind, iface := "127.0.0.1", "lo"
	args := []string{"agent", "-config=" + filepath.Join(c.root, "deploy", "dev", "nomad.hcl"), "-config=" + local}
	if ns := a.netns; ns != nil {
		bind, iface = ns.NodeAddr, ns.NodeIf
		bin, args = ns.Command(bin, args...)
		for _, addr := range []string{server, a.ConsulAddr, fmt.Sprintf("127.0.0.1:%d", a.ports[1]), strings.TrimPrefix(c.Vault.Addr, "http://")} {
			if err := ns.Forward(addr); err != nil {
				return fmt.Errorf("reach %s from network namespace %s: %w", addr, ns.Name, err)
			}
		}
	}
	if err := writeConfig(local, fmt.Sprintf(`name       = %q
data_dir   = %q
bind_addr  = %q
plugin_dir = %q
ports {
  http = %d
  rpc  = %d
  serf = %d
}
advertise {
  http = %q
  rpc  = %q
  serf = %q
}
client {
  enabled           = true
  servers           = [%q]
  network_interface = %q
%s  # This machine's Consul agent, for jobs that reach it from their tasks
  # (CONSUL_HTTP_ADDR = "${meta.consul_http_addr}"): on a real node it is
  # the same address everywhere, here each machine has its own port.
  meta {
    consul_http_addr = %q
  }
}
consul {
  address      = %q
  grpc_address = "127.0.0.1:%d"
  token        = %q
}
vault {
  address = %q
}
%s`, a.Name, a.DataDir, bind, pluginDir, httpPort, rpcPort, serfPort, bind, bind, bind, server, iface, clientExtra, a.ConsulAddr,
		a.ConsulAddr, a.ports[1], c.Consul.Token, c.Vault.Addr, plugins)); err != nil {
		return err
	}
	if cred != nil {
		if err := os.Chown(local, o.UID, o.GID); err != nil {
			return err
		}
	}
	a.Addr = fmt.Sprintf("http://%s:%d", bind, httpPort)
	if a.Client, err = nomadapi.NewClient(&nomadapi.Config{Address: a.Addr}); err != nil {
		return fmt.Errorf("nomad client: %w", err)
	}
	a.nomad, err = launchProcessAs(ctx, "nomad", dir, bin, args, cred, func(context.Context) bool {
		if a.NodeID == "" {
			stubs, _, err := c.Nomad.Client.Nodes().List(&nomadapi.QueryOptions{Filter: fmt.Sprintf("Name == %q", a.Name)})
			if err != nil || len(stubs) != 1 {
				return false
			}
			a.NodeID = stubs[0].ID
		}
		return nodeReady(c.Nomad.Client, a.NodeID, drivers...)
	})
	return err
}

// launchProcess starts an agent in dir and waits until ready answers true,
// failing early (with the tail of its log) when it exits. The process is
// returned even on failure, so that it can be killed.
func launchProcess(ctx context.Context, name, dir, bin string, args []string, ready func(context.Context) bool) (*process, error) {
	return launchProcessAs(ctx, name, dir, bin, args, nil, ready)
}

// launchProcessAs is launchProcess as the user of cred (nil: the test's).
func launchProcessAs(ctx context.Context, name, dir, bin string, args []string, cred *syscall.Credential, ready func(context.Context) bool) (*process, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p, err := startProcess(name, dir, bin, args, baseEnv(), cred)
	if err != nil {
		return nil, err
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !ready(ctx) {
		select {
		case <-p.done:
			tail := p.tail(25)
			err := fmt.Errorf("%s exited before it was ready (%v); last lines of %s:\n%s", name, p.err, p.logPath, tail)
			if strings.Contains(tail, "address already in use") {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return p, err
		case <-ctx.Done():
			return p, fmt.Errorf("%s not ready within %s; last lines of %s:\n%s", name, readyTimeout(), p.logPath, p.tail(25))
		case <-tick.C:
		}
	}
	return p, nil
}

// Kill takes the machine away at once, as a power cut would: SIGKILL to the
// Nomad client and its plugins, to every task process of its allocations,
// and to its Consul agent. Nothing is deregistered or drained: Nomad's
// servers notice through missed heartbeats, Consul's through failed gossip.
//
// Killing the agent alone would not be a lost machine: the modelbox driver
// starts each runner in its own session (so that it survives a plugin
// restart), so the runners of a SIGKILLed agent go on serving, and their
// Consul checks, run by the machine's Consul agent, go on passing.
//
// Kill returns the task processes it killed (found through the
// allocations' cgroups and dir); calling it again does nothing.
func (a *NomadClientAgent) Kill() ([]int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.killed {
		return nil, nil
	}
	a.killed = true
	allocIDs := a.allocIDs()
	if a.nomad != nil {
		a.nomad.kill()
	}
	var tasks []int
	for range 10 {
		pids := append(killCgroupProcesses(allocIDs), leftovers.Kill(leftovers.Processes(a.Dir))...)
		if len(pids) == 0 {
			break
		}
		tasks = append(tasks, pids...)
		time.Sleep(50 * time.Millisecond) // let the killed exit before looking again
	}
	if a.consul != nil {
		a.consul.kill()
	}
	var errs []error
	if err := unmountUnder(a.Dir); err != nil {
		errs = append(errs, err)
	}
	removeNomadCgroups(allocIDs)
	if left := leftovers.AllocCgroups(allocIDs); len(left) > 0 {
		errs = append(errs, fmt.Errorf("cgroups left after the kill: %v", left))
	}
	if busy := leftovers.Listening(a.ports); len(busy) > 0 {
		errs = append(errs, fmt.Errorf("ports still listening after the kill: %v", busy))
	}
	slices.Sort(tasks)
	return slices.Compact(tasks), errors.Join(errs...)
}

// KillNomad takes the machine's Nomad agent away alone, as its crash would:
// SIGKILL to the agent and its plugins. The runners of its tasks (the
// modelbox driver starts each in a session of its own) go on serving, and
// the machine's Consul agent goes on checking them; the servers mark the
// node down after its heartbeats stop. Kill takes the rest away.
func (a *NomadClientAgent) KillNomad() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.nomad != nil && !a.killed {
		a.nomad.kill()
	}
}

// allocIDs lists the allocations whose dirs the client made.
func (a *NomadClientAgent) allocIDs() []string {
	entries, _ := os.ReadDir(filepath.Join(a.DataDir, "alloc"))
	var ids []string
	for _, e := range entries {
		if e.IsDir() {
			ids = append(ids, e.Name())
		}
	}
	return ids
}

// kill sends SIGKILL to the agent's process group (the agent and the
// plugins it started) and waits for the agent to exit.
func (p *process) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// killCgroupProcesses kills every process in the allocations' cgroups and
// returns their pids.
func killCgroupProcesses(allocIDs []string) []int {
	var killed []int
	for _, pid := range cgroupProcesses(allocIDs) {
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			killed = append(killed, pid)
		}
	}
	return killed
}

// cgroupProcesses lists the processes in the allocations' cgroups.
func cgroupProcesses(allocIDs []string) []int {
	var pids []int
	for _, d := range leftovers.AllocCgroups(allocIDs) {
		_ = filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || e.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// AllocProcesses lists the programs (the base name of each process's
// argv[0]: the driver's launcher runs the runner from a descriptor, so its
// comm is a number) running in the allocation's cgroups, once each: on a
// machine whose agent is dead, Nomad cannot say what still runs.
func AllocProcesses(allocID string) []string {
	seen := map[int]bool{}
	var names []string
	for _, pid := range cgroupProcesses([]string{allocID}) {
		if seen[pid] {
			continue // one process is in several v1 hierarchies
		}
		seen[pid] = true
		if argv, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
			arg0, _, _ := strings.Cut(string(argv), "\x00")
			names = append(names, filepath.Base(arg0))
		}
	}
	return names
}

// chownTree gives dir and everything under it to uid:gid.
func chownTree(dir string, uid, gid int) error {
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// traversable lets every user traverse (not list) the dirs above dir:
// test temp dirs are 0700.
func traversable(dir string) error {
	for d := filepath.Dir(dir); d != "/"; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 != 0 {
			continue
		}
		if err := os.Chmod(d, st.Mode().Perm()|0o111); err != nil {
			return err
		}
	}
	return nil
}

// sharedBinary is bin where every user may run it: the agents' cache
// (under root's home) is not, so a user's agent runs a link (or copy) of
// it in the cluster's dir.
func (c *Cluster) sharedBinary(bin string) (string, error) {
	dir := filepath.Join(c.Dir, "bin")
	dst := filepath.Join(dir, filepath.Base(bin))
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.Link(bin, dst); err != nil {
		src, err := os.ReadFile(bin)
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(dst, src, 0o755); err != nil {
			return "", err
		}
	}
	if err := os.Chmod(dst, 0o755); err != nil {
		return "", err
	}
	return dst, traversable(dst)
}
