package driver_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/helper/uuid"
	"github.com/hashicorp/nomad/nomad/structs"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers"

	"github.com/modelnodes/modelnodes/driver"
	"github.com/modelnodes/modelnodes/driver/cgroup"
	"github.com/modelnodes/modelnodes/internal/procfs"
	"github.com/modelnodes/modelnodes/internal/testing/testtime"
)

// The tests in this file drive the driver's own logic (start, wait,
// recover, stop, destroy, undo) through a fake isolator: no cgroup, no
// namespace, no setuid. They run as any user.

// fakeIsolator isolates nothing: the runner and the worker run as the test's
// user. It records what the driver asked for and can fail on demand.
type fakeIsolator struct {
	mu       sync.Mutex
	requests []*driver.IsolationRequest
	live     map[string]*fakeIsolation // by request ID, until Destroy
	all      []*fakeIsolation
	// failPrepare and failAddRunner, when set, are returned by Prepare and
	// Isolation.AddRunner.
	failPrepare, failAddRunner error
	oomKills                   uint64
}

func newFakeIsolator() *fakeIsolator { return &fakeIsolator{live: map[string]*fakeIsolation{}} }

func (f *fakeIsolator) Prepare(req *driver.IsolationRequest) (driver.Isolation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, req)
	if f.failPrepare != nil {
		return nil, f.failPrepare
	}
	if _, ok := f.live[req.ID]; ok {
		return nil, fmt.Errorf("fake isolation %s exists already", req.ID)
	}
	i := &fakeIsolation{f: f, id: req.ID}
	f.live[req.ID] = i
	f.all = append(f.all, i)
	return i, nil
}

func (f *fakeIsolator) Restore(st *driver.IsolationState) (driver.Isolation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.live[st.SpecFile]
	if !ok {
		return nil, fmt.Errorf("fake isolation %s is gone", st.SpecFile)
	}
	return i, nil
}

// lastRequest is the latest Prepare's request.
func (f *fakeIsolator) lastRequest(t *testing.T) *driver.IsolationRequest {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.requests) == 0 {
		t.Fatal("the driver prepared no isolation")
	}
	return f.requests[len(f.requests)-1]
}

// runners are every runner pid ever added to an isolation.
func (f *fakeIsolator) runners() []int {
	f.mu.Lock()
	all := append([]*fakeIsolation{}, f.all...)
	f.mu.Unlock()
	var pids []int
	for _, i := range all {
		pids = append(pids, i.runners()...)
	}
	return pids
}

func (f *fakeIsolator) liveCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.live)
}

type fakeIsolation struct {
	f    *fakeIsolator
	id   string
	mu   sync.Mutex
	pids []int // runners added
}

func (i *fakeIsolation) WorkerWrapper() []string        { return nil }
func (i *fakeIsolation) WorkerPaths() map[string]string { return nil }
func (i *fakeIsolation) RunnerWrapper() []string        { return nil }

func (i *fakeIsolation) AddRunner(pid int) error {
	i.mu.Lock()
	i.pids = append(i.pids, pid)
	i.mu.Unlock()
	i.f.mu.Lock()
	defer i.f.mu.Unlock()
	return i.f.failAddRunner
}

func (i *fakeIsolation) runners() []int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return append([]int{}, i.pids...)
}

func (i *fakeIsolation) Usage() (*cgroup.Usage, error) {
	i.f.mu.Lock()
	defer i.f.mu.Unlock()
	return &cgroup.Usage{WorkerOOMKills: i.f.oomKills}, nil
}

// KillAll kills the runners; their workers die with them (the runner's
// worker has a parent-death signal).
func (i *fakeIsolation) KillAll(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, pid := range i.runners() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		for procfs.Running(pid) {
			if time.Now().After(deadline) {
				return fmt.Errorf("runner %d survived SIGKILL", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

func (i *fakeIsolation) Destroy() error {
	i.f.mu.Lock()
	defer i.f.mu.Unlock()
	delete(i.f.live, i.id)
	return nil
}

func (i *fakeIsolation) State() *driver.IsolationState { return &driver.IsolationState{SpecFile: i.id} }

// rootless is a driver with the fake isolator and a task, set up without
// Nomad's alloc dir builder (which would need root).
type rootless struct {
	t      *testing.T
	python string
	// plugin is added to the plugin config of every newDriver.
	plugin map[string]any
	iso    *fakeIsolator
	d      *driver.Driver
	task   *drivers.TaskConfig
	addr   string
	store  string
}

func newRootless(t *testing.T, tc *driver.TaskConfig) *rootless {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed: the model cannot run")
	}
	r := &rootless{t: t, python: python, iso: newFakeIsolator(), store: filepath.Join(t.TempDir(), "models")}
	r.d = r.newDriver()
	alloc := t.TempDir()
	r.task = &drivers.TaskConfig{
		ID: uuid.Generate(), AllocID: uuid.Generate(), Name: "model", AllocDir: alloc,
		StdoutPath: filepath.Join(alloc, "stdout"), StderrPath: filepath.Join(alloc, "stderr"),
	}
	r.addr = freeAddr(t)
	_, port, _ := net.SplitHostPort(r.addr)
	portNum, _ := strconv.Atoi(port)
	r.task.Resources = &drivers.Resources{
		NomadResources: &structs.AllocatedTaskResources{Memory: structs.AllocatedMemoryResources{MemoryMB: 256}},
		LinuxResources: &drivers.LinuxResources{MemoryLimitBytes: 256 << 20, CPUShares: 500},
		Ports:          &structs.AllocatedPorts{{Label: "grpc", Value: portNum, HostIP: "127.0.0.1"}},
	}
	dirs := r.task.TaskDir()
	for _, dir := range []string{dirs.LocalDir, dirs.SecretsDir, filepath.Join(dirs.Dir, "private")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.CopyFS(filepath.Join(dirs.LocalDir, "model"), os.DirFS("../runner/testdata/pymodel")); err != nil {
		t.Fatal(err)
	}
	if tc == nil {
		tc = &driver.TaskConfig{ModelDir: "local/model", Runtime: "python", Port: "grpc", Plaintext: true}
	}
	if err := r.task.EncodeConcreteDriverConfig(tc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.d.DestroyTask(r.task.ID, true) })
	return r
}

// newDriver is a fresh driver instance (a plugin process) with the fake
// isolator, as Nomad configures it.
func (r *rootless) newDriver() *driver.Driver {
	r.t.Helper()
	d := driver.NewWithIsolator(hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: r.t.Output()}), r.iso)
	var data []byte
	cfg := map[string]any{"runner_path": modelRunner(r.t), "python": r.python, "model_store": r.store}
	for k, v := range r.plugin {
		cfg[k] = v
	}
	if err := base.MsgPackEncode(&data, cfg); err != nil {
		r.t.Fatal(err)
	}
	if err := d.SetConfig(&base.Config{PluginConfig: data}); err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(d.Shutdown)
	return d
}

// waitServing waits until the model behind addr is loaded.
func (r *rootless) waitServing() {
	r.t.Helper()
	if err := awaitServing(r.addr, serviceDynamicSubclass, testtime.Scaled(30*time.Second)); err != nil {
		b, _ := os.ReadFile(r.task.StderrPath)
		r.t.Fatalf("the model never became SERVING: %v\nrunner stderr:\n%s", err, b)
	}
}

// children are the live child processes of pid (each thread lists the
// children it forked).
func children(pid int) []int {
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var pids []int
	for _, file := range files {
		b, _ := os.ReadFile(file)
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				pids = append(pids, c)
			}
		}
	}
	return pids
}

func (r *rootless) privateDir() string {
	return filepath.Join(r.task.TaskDir().Dir, "private", "modelbox")
}

// start → wait → recover in a new driver instance → stop → destroy, with
// the runner and the worker as real processes.
func TestRootlessLifecycle(t *testing.T) {
	r := newRootless(t, nil)
	handle, _, err := r.d.StartTask(r.task)
	if err != nil {
		t.Fatalf("StartTask: %v", err)
	}
	r.waitServing()
	status, err := r.d.InspectTask(r.task.ID)
	if err != nil || status.State != drivers.TaskStateRunning {
		t.Fatalf("InspectTask: %+v %v", status, err)
	}
	pid, _ := strconv.Atoi(status.DriverAttributes["pid"])
	workers := children(pid)
	if len(workers) != 1 {
		t.Fatalf("runner %d has children %v, want its one worker", pid, workers)
	}

	// What the driver asked of the isolation, and told the runner.
	req := r.iso.lastRequest(t)
	if req.UID < 64000 || req.UID > 64999 || req.ID != r.task.AllocID+".model" || req.PrivateDir != r.privateDir() {
		t.Errorf("isolation request: %+v", req)
	}
	if req.Limits.MemoryBytes != 256<<20 {
		t.Errorf("memory limit %d, want the task's 256 MiB", req.Limits.MemoryBytes)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	argv := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	stored := filepath.Join(r.store, r.task.AllocID+".model", "model")
	for _, want := range []string{"serve", "--plaintext", "--listen=" + r.addr, "--model-dir=" + stored, "--log-json"} {
		if !strings.Contains(strings.Join(argv, " "), want) {
			t.Errorf("runner argv %q lacks %q", argv, want)
		}
	}

	// An OOM kill in the task's limits becomes a task event.
	events, err := r.d.TaskEvents(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r.iso.mu.Lock()
	r.iso.oomKills = 2
	r.iso.mu.Unlock()
	select {
	case ev := <-events:
		if !strings.Contains(ev.Message, "out of memory (2 kill(s))") {
			t.Errorf("event %q, want the OOM kills", ev.Message)
		}
	case <-time.After(10 * time.Second):
		t.Error("no task event for 2 OOM kills")
	}

	// The plugin restarts: a new instance recovers the task from its
	// handle alone, without starting anything.
	d2 := r.newDriver()
	if _, err := d2.InspectTask(r.task.ID); !errors.Is(err, drivers.ErrTaskNotFound) {
		t.Fatalf("a fresh driver knows the task already: %v", err)
	}
	if err := d2.RecoverTask(handle); err != nil {
		t.Fatalf("RecoverTask: %v", err)
	}
	if status, err := d2.InspectTask(r.task.ID); err != nil || status.DriverAttributes["pid"] != strconv.Itoa(pid) {
		t.Fatalf("after recovery: %+v %v; want runner %d", status, err, pid)
	}
	if err := d2.RecoverTask(handle); err != nil {
		t.Errorf("recovering a task the driver knows: %v", err)
	}
	r.waitServing()
	wait, err := d2.WaitTask(context.Background(), r.task.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.DestroyTask(r.task.ID, false); err == nil {
		t.Error("a running task was destroyed without force")
	}
	if err := d2.StopTask(r.task.ID, 10*time.Second, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-wait:
		if res == nil {
			t.Fatal("WaitTask closed without a result")
		}
		// The recovered runner is not the plugin's child: its status is
		// unknown, and the message says so without a dangling ": <nil>".
		if res.Err == nil || strings.HasSuffix(res.Err.Error(), "<nil>") {
			t.Errorf("a recovered runner's exit: %v", res.Err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("WaitTask did not return after StopTask")
	}
	for _, p := range append(workers, pid) {
		for deadline := time.Now().Add(5 * time.Second); procfs.Running(p) && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		if procfs.Running(p) {
			t.Errorf("process %d of the stopped task is still alive", p)
		}
	}
	if err := d2.DestroyTask(r.task.ID, false); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.InspectTask(r.task.ID); !errors.Is(err, drivers.ErrTaskNotFound) {
		t.Errorf("the task is still known after DestroyTask: %v", err)
	}
	if n := r.iso.liveCount(); n != 0 {
		t.Errorf("%d isolations left after DestroyTask", n)
	}
	// The worker uid went back to the range: the next task gets it again.
	uid := req.UID
	r.task.ID = uuid.Generate()
	if _, _, err := d2.StartTask(r.task); err != nil {
		t.Fatal(err)
	}
	if got := r.iso.lastRequest(t).UID; got != uid {
		t.Errorf("next task's worker uid %d, want the released %d", got, uid)
	}
	if err := d2.DestroyTask(r.task.ID, true); err != nil {
		t.Fatal(err)
	}
}

// A start that fails after prepare takes back all prepare made: no runner,
// no isolation, no private dir, the uid free again, no task.
func TestFailedStartUndoesEverything(t *testing.T) {
	for name, c := range map[string]struct {
		tc          *driver.TaskConfig
		failPrepare error
		failAdd     error
		want        string
	}{
		"isolation refused": {failPrepare: errors.New("no isolation today"), want: "no isolation today"},
		"runner not placed": {failAdd: errors.New("cannot place the runner"), want: "cannot place the runner"},
		"no health port": {tc: &driver.TaskConfig{ModelDir: "local/model", Runtime: "python", Port: "grpc", Plaintext: true, HealthPort: "health"},
			want: `no network port labelled "health"`},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRootless(t, c.tc)
			r.iso.failPrepare, r.iso.failAddRunner = c.failPrepare, c.failAdd
			if _, _, err := r.d.StartTask(r.task); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("StartTask: %v, want %q", err, c.want)
			}
			if _, err := r.d.InspectTask(r.task.ID); !errors.Is(err, drivers.ErrTaskNotFound) {
				t.Errorf("the failed task is known: %v", err)
			}
			if n := r.iso.liveCount(); n != 0 {
				t.Errorf("%d isolations left", n)
			}
			if _, err := os.Stat(r.privateDir()); !os.IsNotExist(err) {
				t.Errorf("the driver's private dir is left: %v", err)
			}
			if c.failAdd != nil && len(r.iso.runners()) != 1 {
				t.Errorf("runners placed: %v, want the one that failed", r.iso.runners())
			}
			for _, pid := range r.iso.runners() {
				if procfs.Running(pid) {
					t.Errorf("runner %d of the failed start is alive", pid)
				}
			}
			first := r.iso.lastRequest(t).UID
			r.iso.failPrepare, r.iso.failAddRunner = nil, nil
			if c.tc != nil {
				return // the config itself is what fails
			}
			if _, _, err := r.d.StartTask(r.task); err != nil {
				t.Fatalf("StartTask once the fault is gone: %v", err)
			}
			if got := r.iso.lastRequest(t).UID; got != first {
				t.Errorf("worker uid %d, want %d, released by the failed start", got, first)
			}
			r.waitServing()
		})
	}
}

// allow_written_executables reaches the task's isolation (the sandbox then
// allows memfd_create): off unless the node's plugin block says so.
func TestAllowWrittenExecutablesReachesTheIsolation(t *testing.T) {
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprintf("allow_written_executables=%v", allow), func(t *testing.T) {
			r := newRootless(t, nil)
			if allow {
				r.plugin = map[string]any{"allow_written_executables": true}
				r.d = r.newDriver()
			}
			if _, _, err := r.d.StartTask(r.task); err != nil {
				t.Fatalf("StartTask: %v", err)
			}
			if got := r.iso.lastRequest(t).AllowWrittenExecutables; got != allow {
				t.Errorf("the isolation request allows written executables: %v, want %v", got, allow)
			}
		})
	}
}
