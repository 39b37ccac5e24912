// Package cgroup holds a model task's control groups, on cgroups v1 and v2,
// through runc's cgroup library. A task gets one group with the task's limits
// and two leaves: one for the trusted runner and one for the model worker,
// which also gets its own pids and memory caps, so a hostile model that
// fork-bombs or balloons exhausts its own leaf and never the runner's threads.
// The worker's leaf also allows only its devices (DefaultDevices and those
// reserved for the task): the v1 devices controller, or v2's device BPF
// program.
package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"syscall"
	"time"

	"github.com/opencontainers/cgroups"
	// Registers the device rules' writers (v1 devices.allow/deny, v2's BPF
	// program) with the managers: without it they refuse device rules.
	_ "github.com/opencontainers/cgroups/devices"
	devrules "github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/cgroups/manager"
)

// Limits are a task's resource limits.
type Limits struct {
	// MemoryBytes caps runner and worker together (Nomad's memory); 0: none.
	MemoryBytes int64
	// RunnerReserveBytes is kept out of the worker's cap for the runner.
	RunnerReserveBytes int64
	// CPUShares is the task's relative CPU weight (Nomad's cpu, in MHz).
	CPUShares uint64
	// CPUQuotaMicros per CPUPeriodMicros is a hard CPU cap; 0: none.
	CPUQuotaMicros  int64
	CPUPeriodMicros uint64
	// WorkerPids caps the worker's processes and threads; 0: none.
	WorkerPids int64
	// WorkerDevices are the devices the worker may open besides
	// DefaultDevices (Nomad's device reservations); every other device is
	// refused (EPERM), whatever node the worker finds for it.
	WorkerDevices []Device
}

// Device is a device a worker may open, by its numbers: the kernel checks
// the device cgroup on open, whichever node (path) names the device.
type Device struct {
	// Type is 'c' (character device) or 'b' (block device).
	Type         rune
	Major, Minor int64
	// Permissions is a non-empty subset of "rwm": read, write, mknod.
	Permissions string
}

// String is the device in the v1 devices.list form: "c 1:3 rw".
func (d Device) String() string {
	return fmt.Sprintf("%c %d:%d %s", d.Type, d.Major, d.Minor, d.Permissions)
}

// Validate rejects a device the cgroup could not express, or one that names
// more than one device (no wildcards).
func (d Device) Validate() error {
	switch {
	case d.Type != 'c' && d.Type != 'b':
		return fmt.Errorf("cgroup: device %s: type %q, want 'c' or 'b'", d, d.Type)
	case d.Major < 0 || d.Minor < 0:
		return fmt.Errorf("cgroup: device %s: negative (wildcard) numbers", d)
	case d.Permissions == "" || !devrules.Permissions(d.Permissions).IsValid():
		return fmt.Errorf("cgroup: device %s: permissions %q, want a non-empty subset of \"rwm\"", d, d.Permissions)
	}
	return nil
}

// DefaultDevices are the devices every worker may read and write: the nodes
// the sandbox puts in its /dev (null, zero, full, random, urandom, bound from
// the host's, whose numbers Linux fixes).
var DefaultDevices = []Device{
	{'c', 1, 3, "rw"}, {'c', 1, 5, "rw"}, {'c', 1, 7, "rw"}, {'c', 1, 8, "rw"}, {'c', 1, 9, "rw"},
}

// deviceRules is the worker's allowlist: DefaultDevices and extra, and
// nothing else (the library's rules deny what they do not allow).
func deviceRules(extra []Device) ([]*devrules.Rule, error) {
	var rules []*devrules.Rule
	for _, d := range append(slices.Clone(DefaultDevices), extra...) {
		if err := d.Validate(); err != nil {
			return nil, err
		}
		rules = append(rules, &devrules.Rule{Type: devrules.Type(d.Type), Major: d.Major, Minor: d.Minor,
			Permissions: devrules.Permissions(d.Permissions), Allow: true})
	}
	return rules, nil
}

// State is what Open needs to find a task's groups again after the plugin
// restarts: each group's path per controller.
type State struct {
	Task, Runner, Worker map[string]string
}

// Task is one task's groups.
type Task struct {
	task, runner, worker cgroups.Manager
}

// Root is the parent group of every task, under each controller's hierarchy.
const Root = "modelbox"

// Version reports "v2" on a unified hierarchy, else "v1".
func Version() string {
	if cgroups.IsCgroup2UnifiedMode() {
		return "v2"
	}
	return "v1"
}

// Create makes the groups of task name (a unique id: alloc and task) with the
// given limits.
func Create(name string, l Limits) (*Task, error) {
	base := path.Join("/", Root, name)
	taskRes := &cgroups.Resources{
		Memory:      l.MemoryBytes,
		CpuShares:   l.CPUShares,
		CpuQuota:    l.CPUQuotaMicros,
		CpuPeriod:   l.CPUPeriodMicros,
		SkipDevices: true,
	}
	if l.MemoryBytes > 0 {
		taskRes.MemorySwap = l.MemoryBytes // no swap beyond the limit
	}
	if cgroups.IsCgroup2UnifiedMode() {
		// cgroup v2 wants shares as a weight in [1, 10000].
		taskRes.CpuWeight = cgroups.ConvertCPUSharesToCgroupV2Value(l.CPUShares)
	}
	rules, err := deviceRules(l.WorkerDevices)
	if err != nil {
		return nil, err
	}
	// The task's group and the runner's leaf leave devices alone (the
	// runner opens none); the worker's leaf allows only its own.
	workerRes := &cgroups.Resources{Devices: rules}
	if l.WorkerPids > 0 {
		workerRes.PidsLimit = &l.WorkerPids
	}
	if l.MemoryBytes > 0 {
		workerRes.Memory = max(l.MemoryBytes-l.RunnerReserveBytes, l.MemoryBytes/2)
		workerRes.MemorySwap = workerRes.Memory
	}
	t := &Task{}
	if t.task, err = newGroup(base, taskRes); err != nil {
		return nil, err
	}
	if t.runner, err = newGroup(path.Join(base, "runner"), &cgroups.Resources{SkipDevices: true}); err != nil {
		_ = t.task.Destroy()
		return nil, err
	}
	if t.worker, err = newGroup(path.Join(base, "worker"), workerRes); err != nil {
		_ = t.runner.Destroy()
		_ = t.task.Destroy()
		return nil, err
	}
	return t, nil
}

func newGroup(p string, r *cgroups.Resources) (cgroups.Manager, error) {
	m, err := manager.New(&cgroups.Cgroup{Path: p, Resources: r})
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", p, err)
	}
	if err := m.Apply(-1); err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", p, err)
	}
	if err := m.Set(r); err != nil {
		_ = m.Destroy()
		return nil, fmt.Errorf("set limits on cgroup %s: %w", p, err)
	}
	return m, nil
}

// Open finds a task's groups from their State.
func Open(s State) (*Task, error) {
	t := &Task{}
	var err error
	for _, g := range []struct {
		m     *cgroups.Manager
		paths map[string]string
	}{{&t.task, s.Task}, {&t.runner, s.Runner}, {&t.worker, s.Worker}} {
		if len(g.paths) == 0 {
			return nil, errors.New("cgroup: state lacks a group's paths")
		}
		if *g.m, err = manager.NewWithPaths(&cgroups.Cgroup{Resources: &cgroups.Resources{SkipDevices: true}}, g.paths); err != nil {
			return nil, err
		}
	}
	// Some listed paths are never created (devices, v1's unified mount):
	// the group exists while any of its directories does.
	for _, p := range s.Task {
		if _, err := os.Stat(p); err == nil {
			return t, nil
		}
	}
	return nil, fmt.Errorf("cgroup %s no longer exists", t.task.Path("memory"))
}

// State returns what Open needs.
func (t *Task) State() State {
	return State{Task: t.task.GetPaths(), Runner: t.runner.GetPaths(), Worker: t.worker.GetPaths()}
}

// AddRunner moves process pid into the runner's leaf.
func (t *Task) AddRunner(pid int) error { return t.runner.Apply(pid) }

// JoinWorker moves process pid into the worker leaf whose paths are given; the
// sandbox calls it on itself before it starts the model.
func JoinWorker(paths map[string]string, pid int) error {
	// v1: the leaf's devices group holds the worker's device rules, so the
	// worker joins it too; a leaf made before workers had device rules
	// (a task recovered across an upgrade) has none to join.
	_, err := os.Stat(paths["devices"])
	skip := !cgroups.IsCgroup2UnifiedMode() && errors.Is(err, os.ErrNotExist)
	m, err := manager.NewWithPaths(&cgroups.Cgroup{Resources: &cgroups.Resources{SkipDevices: skip}}, paths)
	if err != nil {
		return err
	}
	return m.Apply(pid)
}

// Usage is a task's resource use.
type Usage struct {
	MemoryRSS, MemoryUsage, MemoryMaxUsage      uint64
	CPUTotalNanos, CPUUserNanos, CPUSystemNanos uint64
	ThrottledPeriods, ThrottledNanos            uint64
	// WorkerOOMKills counts the worker's processes the kernel killed for memory.
	WorkerOOMKills uint64
	WorkerPids     uint64
}

// Usage reads the task's counters.
func (t *Task) Usage() (*Usage, error) {
	st, err := t.task.GetStats()
	if err != nil {
		return nil, err
	}
	u := &Usage{
		MemoryUsage:      st.MemoryStats.Usage.Usage,
		MemoryMaxUsage:   st.MemoryStats.Usage.MaxUsage,
		CPUTotalNanos:    st.CpuStats.CpuUsage.TotalUsage,
		CPUUserNanos:     st.CpuStats.CpuUsage.UsageInUsermode,
		CPUSystemNanos:   st.CpuStats.CpuUsage.UsageInKernelmode,
		ThrottledPeriods: st.CpuStats.ThrottlingData.ThrottledPeriods,
		ThrottledNanos:   st.CpuStats.ThrottlingData.ThrottledTime,
	}
	// v1 names resident memory "total_rss"; v2 "anon".
	for _, k := range []string{"total_rss", "rss", "anon"} {
		if v, ok := st.MemoryStats.Stats[k]; ok {
			u.MemoryRSS = v
			break
		}
	}
	if n, err := t.worker.OOMKillCount(); err == nil {
		u.WorkerOOMKills = n
	}
	if ws, err := t.worker.GetStats(); err == nil {
		u.WorkerPids = ws.PidsStats.Current
	}
	return u, nil
}

// PIDs lists every process of the task.
func (t *Task) PIDs() ([]int, error) {
	// The library lists v1 processes through the devices hierarchy, which
	// these groups leave alone (device access is the sandbox's business):
	// read the pids hierarchy instead.
	p := t.task.Path("")
	if !cgroups.IsCgroup2UnifiedMode() {
		p = t.task.Path("pids")
	}
	return cgroups.GetAllPids(p)
}

// Kill stops every process of the task: it freezes the group (so nothing
// forks while being killed), sends SIGKILL to each process, thaws it and waits
// until the group is empty or timeout passes.
func (t *Task) Kill(timeout time.Duration) error {
	if t.task.Freeze(cgroups.Frozen) == nil {
		// Thaw whatever happens: a frozen process cannot even die.
		defer func() { _ = t.task.Freeze(cgroups.Thawed) }()
	}
	pids, err := t.PIDs()
	if err != nil {
		return err
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if err := t.task.Freeze(cgroups.Thawed); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		left, err := t.PIDs()
		if err != nil || len(left) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup: %d processes still alive after SIGKILL", len(left))
		}
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Destroy removes the groups; the task must have no process left.
func (t *Task) Destroy() error {
	return errors.Join(t.worker.Destroy(), t.runner.Destroy(), t.task.Destroy())
}
