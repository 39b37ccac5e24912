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

// The worker's leaf allows its devices and nothing else, on v1 (the devices
// controller) and v2 (a BPF program): a process in it opens the default
// nodes, a reserved device with just the reserved access, and no other
// device, whatever the node's own permissions say (the test runs as root).
func TestWorkerDevicesAllowlist(t *testing.T) {
	requireRoot(t)
	// /dev/kmsg (1:11) reserved read-only: reading it is harmless, and the
	// write access refused is only ever opened, never written.
	g, err := Create(fmt.Sprintf("test-%d", time.Now().UnixNano()), Limits{WorkerDevices: []Device{{'c', 1, 11, "r"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = g.Kill(time.Second); _ = g.Destroy() }()
	st := g.State()
	if Version() == "v1" {
		assertFile(t, st.Worker["devices"]+"/devices.list", "c 1:3 rw\nc 1:5 rw\nc 1:7 rw\nc 1:8 rw\nc 1:9 rw\nc 1:11 r")
	}
	// open runs a shell in the worker's leaf that opens one node (the
	// redirection of sh's exec: nothing is read or written).
	open := func(redirect string) string {
		t.Helper()
		cmd := exec.Command("sh", "-c", "read _ && exec 3"+redirect+" && echo opened")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if err := JoinWorker(st.Worker, cmd.Process.Pid); err != nil {
			_ = cmd.Process.Kill()
			t.Fatal(err)
		}
		_, _ = stdin.Write([]byte("\n"))
		_ = cmd.Wait()
		return strings.TrimSpace(out.String())
	}
	for _, tc := range []struct{ redirect, want string }{
		{"<>/dev/null", "opened"},
		{"</dev/urandom", "opened"},
		{"</dev/kmsg", "opened"},
		{">>/dev/kmsg", "Operation not permitted"}, // reserved "r" only
		{"</dev/tty", "Operation not permitted"},   // not reserved (5:0)
	} {
		if got := open(tc.redirect); !strings.Contains(got, tc.want) {
			t.Errorf("open %s in the worker's leaf: %q, want %q", tc.redirect, got, tc.want)
		}
	}
}

func TestDeviceValidate(t *testing.T) {
	for _, d := range []Device{
		{'a', 1, 3, "rw"}, {'p', 1, 3, "rw"}, {'c', -1, 3, "rw"}, {'c', 1, -1, "rw"},
		{'c', 1, 3, ""}, {'c', 1, 3, "rwx"}, {'c', 1, 3, "rr"},
	} {
		if d.Validate() == nil {
			t.Errorf("%s: accepted", d)
		}
	}
	if err := (Device{'b', 7, 0, "r"}).Validate(); err != nil {
		t.Error(err)
	}
}
