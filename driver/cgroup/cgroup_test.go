//go:build e2e

package cgroup

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("creating cgroups needs root; run the tests as root (CI does)")
	}
}

// A real group on this machine's hierarchy (v1 here, v2 on most hosts):
// limits land in the kernel's files, processes join the leaves, Kill empties
// the task and Destroy removes it.
func TestTaskGroupsLifecycle(t *testing.T) {
	requireRoot(t)
	name := fmt.Sprintf("test-%d", time.Now().UnixNano())
	g, err := Create(name, Limits{MemoryBytes: 256 << 20, RunnerReserveBytes: 64 << 20, CPUShares: 500, WorkerPids: 32})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = g.Kill(time.Second); _ = g.Destroy() }()

	st := g.State()
	if Version() == "v1" {
		assertFile(t, st.Task["memory"]+"/memory.limit_in_bytes", "268435456")
		assertFile(t, st.Worker["memory"]+"/memory.limit_in_bytes", "201326592")
		assertFile(t, st.Worker["pids"]+"/pids.max", "32")
		assertFile(t, st.Task["cpu"]+"/cpu.shares", "500")
	} else {
		assertFile(t, st.Task[""]+"/memory.max", "268435456")
		assertFile(t, st.Worker[""]+"/memory.max", "201326592")
		assertFile(t, st.Worker[""]+"/pids.max", "32")
	}

	runner := exec.Command("sleep", "60")
	worker := exec.Command("sleep", "60")
	for _, c := range []*exec.Cmd{runner, worker} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Process.Kill() }()
	}
	if err := g.AddRunner(runner.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := JoinWorker(st.Worker, worker.Process.Pid); err != nil {
		t.Fatal(err)
	}
	// Recovery after a plugin restart finds the same groups.
	again, err := Open(st)
	if err != nil {
		t.Fatal(err)
	}
	pids, err := again.PIDs()
	if err != nil || len(pids) != 2 {
		t.Fatalf("PIDs() = %v, %v; want the runner and the worker", pids, err)
	}
	u, err := again.Usage()
	if err != nil || u.MemoryUsage == 0 || u.WorkerPids != 1 {
		t.Fatalf("Usage() = %+v, %v", u, err)
	}
	if err := again.Kill(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*exec.Cmd{runner, worker} {
		if err := c.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
			t.Errorf("process %d: %v, want killed", c.Process.Pid, err)
		}
	}
	if err := again.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(st); err == nil {
		t.Fatal("Open found a destroyed group")
	}
}

func assertFile(t *testing.T, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != want {
		t.Errorf("%s = %s, want %s", path, got, want)
	}
}
