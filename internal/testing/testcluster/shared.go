package testcluster

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
)

// shared is the one cluster the tests of a package may share (see Shared).
var shared struct {
	mu      sync.Mutex
	inMain  bool
	dir     string
	cluster *Cluster
	skip    string // why the shared cluster cannot exist, once known
}

// Main runs a package's tests (m.Run) and then stops the cluster Shared
// started, if any. Call it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testcluster.Main(m)) }
//
// It first gives RunHelperIfRequested the chance to turn this process into a
// workload of a Nomad job (see helper.go).
func Main(m *testing.M) int {
	RunHelperIfRequested()
	shared.mu.Lock()
	shared.inMain = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.cluster != nil {
		if code != 0 {
			fmt.Fprint(os.Stderr, shared.cluster.logTails(40))
		}
		if err := shared.cluster.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testcluster: stopping the shared cluster: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	return code
}

// Shared returns the package's shared cluster, starting it on first use with
// at least the given agents (a later call asking for more agents restarts it
// with all of them). Tests that change cluster-wide state should use Start.
// The package's TestMain must call Main, which stops the cluster at the end.
func Shared(t testing.TB, agents Agent) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("testcluster: integration test skipped with -short")
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inMain {
		t.Fatal("testcluster.Shared needs the package's TestMain to call testcluster.Main")
	}
	if shared.skip != "" {
		t.Skip(shared.skip)
	}
	if c := shared.cluster; c != nil {
		if c.agents&agents == agents {
			return c
		}
		agents |= c.agents
		if err := c.Stop(); err != nil {
			t.Fatalf("testcluster: stopping the shared cluster to add agents: %v", err)
		}
		shared.cluster = nil
	}
	if shared.dir == "" {
		dir, err := os.MkdirTemp("", "testcluster-")
		if err != nil {
			t.Fatal(err)
		}
		shared.dir = dir
	}
	dir, err := os.MkdirTemp(shared.dir, "cluster-")
	if err != nil {
		t.Fatal(err)
	}
	c, err := start(dir, agents, Options{}, t.Logf)
	if err != nil {
		var miss *missingBinaryError
		if errors.As(err, &miss) {
			shared.skip = "testcluster: " + miss.Error()
			t.Skip(shared.skip)
		}
		t.Fatalf("testcluster: %v", err)
	}
	shared.cluster = c
	return c
}
