// Package testcluster starts the real HashiCorp agents (Consul, Vault,
// Nomad) for integration tests: as child processes on free loopback ports,
// in a private state dir, configured exactly like the dev cluster (the same
// deploy/dev/*.hcl and the same deploy/consul/setup and deploy/vault/setup
// scripts), and stopped with nothing left running or listening.
//
// A test starts its own cluster with Start; tests of one package can share
// one through Shared when the package's TestMain calls Main:
//
//	func TestMain(m *testing.M) { os.Exit(testcluster.Main(m)) }
//
//	func TestDiscovery(t *testing.T) {
//		c := testcluster.Shared(t, testcluster.All)
//		c.Nomad.Client.Jobs().Register(job, nil) // job: see HelperTask
//		c.Consul.Client.Health().Service(...)
//	}
//
// Naming, PKI roles and policies are those of docs/vault.md. Binaries come
// from $NOMAD_BIN/$CONSUL_BIN/$VAULT_BIN (make test sets them), the cache of
// deploy/hashistack/install, or PATH; when none is found the test is skipped
// with the reason and the way to get them (make hashistack).
package testcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/internal/testing/leftovers"
	"github.com/modelnodes/modelnodes/internal/testing/testtime"
)

// Agent selects agents to start; combine with |.
type Agent uint8

const (
	Consul Agent = 1 << iota
	Vault
	// Nomad is configured with Consul and Vault workload identities, so
	// asking for Nomad starts all three.
	Nomad
	All = Consul | Vault | Nomad
)

func (a Agent) String() string {
	var names []string
	for _, x := range []struct {
		a    Agent
		name string
	}{{Consul, "consul"}, {Vault, "vault"}, {Nomad, "nomad"}} {
		if a&x.a != 0 {
			names = append(names, x.name)
		}
	}
	return strings.Join(names, "+")
}

// Cluster is a running set of agents. Fields of agents that were not asked
// for are nil.
type Cluster struct {
	// Dir holds every agent's config, data and log (<agent>/<agent>.log).
	Dir    string
	Consul *ConsulAgent
	Vault  *VaultAgent
	Nomad  *NomadAgent

	agents Agent
	opts   Options
	root   string
	procs  []*process // in start order
	ports  []int
	// extraDirs hold agents' state outside Dir (Options.ShortAllocDir):
	// Stop cleans them like Dir, then removes them.
	extraDirs []string
}

// readyTimeout bounds the agents' start and setup, stopTimeout an agent's
// exit after SIGTERM: both stretch with MODELNODES_TEST_TIMEOUT_SCALE on a
// slow machine (internal/testing/testtime).
func readyTimeout() time.Duration { return testtime.Scaled(60 * time.Second) }
func stopTimeout() time.Duration  { return testtime.Scaled(20 * time.Second) }

const (
	// portAttempts bounds restarts when another process took a chosen port
	// between choosing it and the agent binding it.
	portAttempts = 3
)

// Start starts the requested agents for t and stops them when t ends. It
// skips t (with the reason) when -short is set or a binary is missing, and
// fails t when an agent does not come up.
func Start(t testing.TB, agents Agent) *Cluster {
	t.Helper()
	return StartWith(t, agents, Options{})
}

// StartWith is Start with the agents configured by opts.
func StartWith(t testing.TB, agents Agent, opts Options) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("testcluster: integration test skipped with -short")
	}
	dir := t.TempDir()
	c, err := start(dir, agents, opts, t.Logf)
	if err != nil {
		var miss *missingBinaryError
		if errors.As(err, &miss) {
			t.Skip("testcluster: " + miss.Error())
		}
		t.Fatalf("testcluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.logTails(40))
		}
		t0 := time.Now()
		if err := c.Stop(); err != nil {
			t.Errorf("testcluster: %v", err)
		}
		t.Logf("testcluster: stopped %s in %.1fs", c.agents, time.Since(t0).Seconds())
	})
	return c
}

type missingBinaryError struct{ err error }

func (e *missingBinaryError) Error() string { return e.err.Error() }

// start brings up the agents in dir, retrying with new ports when an agent
// lost a port race with another process.
func start(dir string, agents Agent, opts Options, logf func(string, ...any)) (*Cluster, error) {
	if agents&Nomad != 0 {
		agents = All
	}
	if agents == 0 {
		return nil, errors.New("no agent requested")
	}
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	versions, err := pinnedVersions(root)
	if err != nil {
		return nil, err
	}
	bins := map[string]string{}
	for _, a := range []Agent{Consul, Vault, Nomad} {
		if agents&a == 0 {
			continue
		}
		bin, err := findBinary(a.String(), versions[a.String()])
		if err != nil {
			return nil, &missingBinaryError{err}
		}
		bins[a.String()] = bin
	}
	for attempt := 1; ; attempt++ {
		sub := filepath.Join(dir, fmt.Sprintf("try%d", attempt))
		c := &Cluster{Dir: sub, agents: agents, opts: opts, root: root}
		err := c.startAll(bins, logf)
		if err == nil {
			return c, nil
		}
		stopErr := c.Stop()
		if attempt < portAttempts && errors.Is(err, errPortTaken) {
			logf("testcluster: %v; retrying with new ports", err)
			continue
		}
		return nil, errors.Join(err, stopErr)
	}
}

var errPortTaken = errors.New("a chosen port was taken by another process")

func (c *Cluster) startAll(bins map[string]string, logf func(string, ...any)) error {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return err
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout())
	defer cancel()
	if c.agents&Consul != 0 {
		if err := c.startConsul(ctx, bins["consul"]); err != nil {
			return err
		}
		logf("testcluster: consul ready at %s (%.1fs)", c.Consul.Addr, time.Since(t0).Seconds())
	}
	if c.agents&Vault != 0 {
		if err := c.startVault(ctx, bins["vault"]); err != nil {
			return err
		}
		logf("testcluster: vault ready at %s (%.1fs)", c.Vault.Addr, time.Since(t0).Seconds())
	}
	if c.agents&Nomad != 0 {
		if err := c.startNomad(ctx, bins["nomad"]); err != nil {
			return err
		}
		logf("testcluster: nomad ready at %s (%.1fs)", c.Nomad.Addr, time.Since(t0).Seconds())
		if err := c.runScript(ctx, "deploy/consul/setup", "--anonymous-dns"); err != nil {
			return err
		}
	}
	if c.agents&Vault != 0 {
		if err := c.runScript(ctx, "deploy/vault/setup"); err != nil {
			return err
		}
		logf("testcluster: configured (%.1fs)", time.Since(t0).Seconds())
	}
	return nil
}

// Env returns the variables a CLI or script needs to reach this cluster
// (NOMAD_ADDR, CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, VAULT_ADDR, VAULT_TOKEN,
// and the *_BIN paths).
func (c *Cluster) Env() []string {
	var env []string
	if c.Consul != nil {
		env = append(env, "CONSUL_HTTP_ADDR="+c.Consul.Addr, "CONSUL_HTTP_TOKEN="+c.Consul.Token,
			"CONSUL_BIN="+c.Consul.Bin)
	}
	if c.Vault != nil {
		env = append(env, "VAULT_ADDR="+c.Vault.Addr, "VAULT_TOKEN="+c.Vault.Token, "VAULT_BIN="+c.Vault.Bin)
	}
	if c.Nomad != nil {
		env = append(env, "NOMAD_ADDR="+c.Nomad.Addr, "NOMAD_BIN="+c.Nomad.Bin)
		if c.Nomad.Token != "" {
			env = append(env, "NOMAD_TOKEN="+c.Nomad.Token)
		}
	}
	return env
}

// scriptEnv is the test's environment without any variable that could point
// a script or agent at another cluster, plus this cluster's.
func (c *Cluster) scriptEnv(extra ...string) []string {
	return append(append(baseEnv(), c.Env()...), extra...)
}

// baseEnv is the test's environment without CONSUL_*, VAULT_* and NOMAD_*
// variables; the agents themselves run with it.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "CONSUL_") || strings.HasPrefix(name, "VAULT_") || strings.HasPrefix(name, "NOMAD_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// logTails returns the last n lines of each agent's log: the cluster's dir
// goes away with the test, so a failing test shows them.
func (c *Cluster) logTails(n int) string {
	var b strings.Builder
	for _, p := range c.procs {
		fmt.Fprintf(&b, "testcluster: last lines of %s:\n%s\n", p.logPath, p.tail(n))
	}
	return b.String()
}

// Stop stops every agent, then removes what Nomad may leave behind (task
// processes, secrets mounts, cgroups), and reports anything still
// listening on the cluster's ports. It is safe to call more than once.
func (c *Cluster) Stop() error {
	var errs []error
	var allocIDs []string
	if c.Nomad != nil && c.Nomad.Client != nil {
		if stubs, _, err := c.Nomad.Client.Allocations().List(nil); err == nil {
			for _, a := range stubs {
				allocIDs = append(allocIDs, a.ID)
			}
		}
	}
	// Allocations the servers already forgot (a purged job's) may still
	// be stopping on a client that is about to go: their dirs name them.
	allocIDs = append(allocIDs, leftovers.AllocIDs(c.Dir)...)
	for _, d := range c.extraDirs {
		allocIDs = append(allocIDs, leftovers.AllocIDs(d)...)
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		if !p.stop(stopTimeout()) {
			errs = append(errs, fmt.Errorf("%s did not stop within %s after SIGTERM; killed it", p.name, stopTimeout()))
		}
	}
	c.procs = nil
	if c.agents&Nomad != 0 && c.Dir != "" {
		for _, d := range append([]string{filepath.Join(c.Dir, "nomad")}, c.extraDirs...) {
			if pids := leftovers.Kill(leftovers.Processes(d)); len(pids) > 0 {
				errs = append(errs, fmt.Errorf("killed task processes Nomad left running: %v", pids))
			}
		}
		for _, d := range append([]string{c.Dir}, c.extraDirs...) {
			if err := unmountUnder(d); err != nil {
				errs = append(errs, err)
			}
		}
		removeNomadCgroups(allocIDs)
	}
	for _, d := range c.extraDirs {
		_ = os.RemoveAll(d)
	}
	c.extraDirs = nil
	if busy := leftovers.Listening(c.ports); len(busy) > 0 {
		errs = append(errs, fmt.Errorf("ports still listening after stop: %v", busy))
	}
	c.ports = nil
	return errors.Join(errs...)
}

// runScript runs one of the repository's setup scripts against the cluster.
func (c *Cluster) runScript(ctx context.Context, rel string, args ...string) error {
	_, err := c.RunScript(ctx, rel, args...)
	return err
}
