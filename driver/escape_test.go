//go:build e2e

package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/nomad/plugins/drivers"

	"github.com/modelnodes/modelnodes/internal/testing/testtime"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

func str(t *testing.T, res interface {
	GetMethodResponse() *commonspb.Variant
}) string {
	t.Helper()
	s, err := res.GetMethodResponse().AsString()
	if err != nil {
		t.Fatalf("result: %v", err)
	}
	return s
}

// A hostile model tries each way out of its sandbox. Every attempt fails
// inside the sandbox, and the runner keeps serving throughout.
func TestHostileModelStaysInItsSandbox(t *testing.T) {
	// 20 % of one core, as Nomad describes a task's cpu share (its part of
	// the node's MHz): no quota from Nomad, the driver's cpu_hard_limit
	// (on by default) makes one.
	res := &drivers.LinuxResources{MemoryLimitBytes: 256 << 20, CPUShares: 100, PercentTicks: 0.2 / float64(runtime.NumCPU())}
	e := newEnv(t, "testdata/hostile", res, map[string]any{"worker_pids_limit": 64, "disk_mb": 8})
	// Things the model must never reach: the runner's key in the secrets
	// dir, and another allocation's files.
	key := filepath.Join(e.task.TaskDir().SecretsDir, "runner.key")
	if err := os.WriteFile(key, []byte("-----BEGIN PRIVATE KEY-----"), 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(filepath.Dir(e.task.AllocDir), "other-alloc-secret")
	if err := os.WriteFile(other, []byte("another model's weights"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(other)
	// The process above the runner holds the key open without O_CLOEXEC
	// (as a careless Nomad or plugin might): the descriptor must not reach
	// the worker through the runner and the sandbox.
	leaked, err := syscall.Open(key, syscall.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(leaked)

	events, err := e.h.TaskEvents(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	e.start()
	c := e.client()
	setup(t, c, "base.Base")
	_, port, _ := strings.Cut(e.addr, ":")
	status, _ := e.h.InspectTask(e.task.ID)
	runnerPid := status.DriverAttributes["pid"]

	who, err := call(t, c, "whoami").GetMethodResponse().AsJSON()
	if err != nil {
		t.Fatal(err)
	}
	w := who.(map[string]any)
	if uid := w["uid"].(float64); uid < 64000 || uid > 64999 {
		t.Errorf("the worker runs as uid %v, want one from uid_range", uid)
	}
	if w["hostname"] != "model" || w["pid"] != 1.0 {
		t.Errorf("the worker sees hostname %v, pid %v: want its own uts and pid namespaces", w["hostname"], w["pid"])
	}
	if w["tmpdir"] != "/tmp" || w["scratch"] != "/scratch" || w["model"] != "/model" {
		t.Errorf("the worker sees TMPDIR=%v, MODELNODES_SCRATCH=%v, its code at %v: want /tmp, /scratch, /model", w["tmpdir"], w["scratch"], w["model"])
	}
	t.Run("learn the host's tree from the mount table", func(t *testing.T) {
		mounts, err := call(t, c, "mounts").GetMethodResponse().AsJSON()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mounts.([]any) {
			for _, host := range []string{e.task.AllocID, e.store, "/root", "/var/lib"} {
				if strings.Contains(m.(string), host) {
					t.Errorf("the worker sees a mount point at %s (names %s)", m, host)
				}
			}
		}
	})

	for _, tc := range []struct {
		name, method string
		args         []*commonspb.Variant
		want         string
	}{
		{"connect to the runner's port on the host's loopback", "connect", []*commonspb.Variant{commonspb.String("127.0.0.1"), commonspb.String(port)}, "Connection refused"},
		{"connect outside (no route: nothing is sent)", "connect", []*commonspb.Variant{commonspb.String("192.0.2.1"), commonspb.Int(443)}, "Network is unreachable"},
		{"read the runner's TLS key", "read", []*commonspb.Variant{commonspb.String(key)}, "No such file"},
		{"read another allocation's files", "read", []*commonspb.Variant{commonspb.String(other)}, "No such file"},
		{"read the host's shadow file", "read", []*commonspb.Variant{commonspb.String("/etc/shadow")}, "No such file"},
		{"change the model", "write", []*commonspb.Variant{commonspb.String("/model/main.py")}, "Read-only file system"},
		{"find the model at its host path", "read", []*commonspb.Variant{commonspb.String(filepath.Join(e.store, e.task.AllocID+".model", "model", "main.py"))}, "No such file"},
		{"write outside scratch", "write", []*commonspb.Variant{commonspb.String("/usr/evil")}, "Read-only file system"},
		{"run a program it wrote to /tmp", "execwritten", []*commonspb.Variant{commonspb.String("/tmp/prog")}, "Permission denied"},
		{"run a program it wrote to /scratch", "execwritten", []*commonspb.Variant{commonspb.String("/scratch/prog")}, "Permission denied"},
		{"fill the node's disk", "filldisk", []*commonspb.Variant{commonspb.String("/scratch/fill")}, "No space left on device"},
		// The seccomp filter refuses ptrace before the pid namespace would
		// say the runner does not exist (ESRCH).
		{"ptrace the runner", "ptrace", []*commonspb.Variant{commonspb.String(runnerPid)}, "errno 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := str(t, call(t, c, tc.method, tc.args...))
			if !strings.HasPrefix(got, "refused") || !strings.Contains(got, tc.want) {
				t.Errorf("%s: %q, want refused with %q", tc.method, got, tc.want)
			}
		})
	}
	// One call of each family the seccomp filter refuses (docs/driver.md
	// "System calls"): EPERM, and ENOSYS for clone3 so libc falls back to
	// clone.
	for _, tc := range []struct{ family, method, arg, want string }{
		{"io_uring", "syscall", "io_uring_setup", "refused: errno 1"},
		{"userfaultfd", "syscall", "userfaultfd", "refused: errno 1"},
		{"the kernel keyring", "syscall", "keyctl", "refused: errno 1"},
		{"the kernel keyring: add_key", "syscall", "add_key", "refused: errno 1"},
		{"bpf", "syscall", "bpf", "refused: errno 1"},
		{"performance counters", "syscall", "perf_event_open", "refused: errno 1"},
		{"new namespaces: unshare(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS)", "syscall", "unshare", "refused: errno 1"},
		{"joining namespaces", "syscall", "setns", "refused: errno 1"},
		{"mount", "syscall", "mount", "refused: errno 1"},
		{"the new mount API", "syscall", "fsopen", "refused: errno 1"},
		{"another process's memory", "syscall", "process_vm_readv", "refused: errno 1"},
		{"personality(ADDR_NO_RANDOMIZE)", "syscall", "personality", "refused: errno 1"},
		{"kernel modules", "syscall", "init_module", "refused: errno 1"},
		{"kexec", "syscall", "kexec_load", "refused: errno 1"},
		{"clone3: ENOSYS, so libc falls back to clone", "syscall", "clone3", "refused: errno 38"},
		{"a netlink socket", "socket_family", "AF_NETLINK", "refused: errno 1"},
		{"an AF_ALG socket", "socket_family", "AF_ALG", "refused: errno 1"},
		{"a packet socket", "socket_family", "AF_PACKET", "refused: errno 1"},
		{"execute code from a memfd", "memfd_exec", "", "refused: errno 1"},
	} {
		t.Run("seccomp: "+tc.family, func(t *testing.T) {
			var args []*commonspb.Variant
			if tc.arg != "" {
				args = append(args, commonspb.String(tc.arg))
			}
			if got := str(t, call(t, c, tc.method, args...)); got != tc.want {
				t.Errorf("%s(%s): %q, want %q", tc.method, tc.arg, got, tc.want)
			}
		})
	}
	t.Run("seccomp: threads and child processes still work", func(t *testing.T) {
		if got := str(t, call(t, c, "threads", commonspb.Int(4))); got != "4 threads, child" {
			t.Errorf("threads(4): %q", got)
		}
	})
	t.Run("inherit a descriptor of the runner's", func(t *testing.T) {
		res := call(t, c, "fds")
		fds, err := res.GetMethodResponse().AsJSON()
		if err != nil {
			t.Fatalf("fds(): %v %v", res.GetStatus(), err)
		}
		for fd, target := range fds.(map[string]any) {
			switch n, _ := strconv.Atoi(fd); {
			case n == 3 && strings.HasPrefix(target.(string), "socket:"):
			case n <= 2:
			default:
				t.Errorf("the worker holds fd %s -> %v; want only stdio and its socket (all: %v)", fd, target, fds)
			}
		}
	})
	if got := str(t, call(t, c, "write", commonspb.String("/tmp/scratch-file"))); got != "wrote" {
		t.Errorf("writing scratch: %q", got)
	}

	t.Run("spin the CPU: throttled to its quota", func(t *testing.T) {
		used, err := call(t, c, "spin", commonspb.Double(2)).GetMethodResponse().AsDouble()
		if err != nil {
			t.Fatal(err)
		}
		// A 20% quota over 2 s allows 0.4 s of CPU; leave room for noise.
		if used > 0.8 {
			t.Errorf("the model used %.2fs of CPU in 2s with a 20%% quota", used)
		}
	})

	t.Run("fork bomb: capped by the pids limit", func(t *testing.T) {
		got := str(t, call(t, c, "forkbomb", commonspb.Int(500)))
		if !strings.HasPrefix(got, "stopped after") {
			t.Errorf("forkbomb(500): %q, want it stopped by the pids limit (64)", got)
		}
	})

	t.Run("balloon past the memory limit: killed and reported", func(t *testing.T) {
		res := call(t, c, "balloon", commonspb.Int(400))
		if res.GetStatus().GetCode() != "UNKNOWN" {
			t.Errorf("balloon(400 MiB) under a 256 MiB task: %v, want the worker killed (UNKNOWN)", res.GetStatus())
		}
		deadline := time.After(testtime.Scaled(15 * time.Second))
		for found := false; !found; {
			select {
			case ev := <-events:
				found = ev.TaskID == e.task.ID && strings.Contains(ev.Message, "out of memory")
			case <-deadline:
				t.Fatal("no task event reported the out-of-memory kill")
			}
		}
	})

	// The runner survived all of it and the model answers again (the
	// runner restarted the worker and replayed Setup).
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(30*time.Second))
	defer cancel()
	for {
		res, err := c.Call(ctx, callReq("whoami"))
		if err == nil && res.GetStatus().GetCode() == "SUCCESS" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the model never answered again: %v %v", res, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st, _ := e.h.InspectTask(e.task.ID); st.DriverAttributes["pid"] != runnerPid || st.State != drivers.TaskStateRunning {
		t.Fatalf("the runner changed or stopped: %+v", st)
	}

	t.Run("a background process does not outlive the task", func(t *testing.T) {
		if got := str(t, call(t, c, "daemon")); got != "left a daemon behind" {
			t.Fatalf("daemon(): %q", got)
		}
		pids := taskPIDs(t, e)
		if err := e.h.StopTask(e.task.ID, 5*time.Second, "SIGTERM"); err != nil {
			t.Fatal(err)
		}
		for _, pid := range pids {
			if alive(pid) {
				cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
				t.Errorf("process %d (%q) outlived the stopped task", pid, cmdline)
			}
		}
	})
}
