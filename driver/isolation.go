package driver

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/modelnodes/modelnodes/driver/cgroup"
	"github.com/modelnodes/modelnodes/driver/launcher"
	"github.com/modelnodes/modelnodes/driver/sandbox"
)

// Isolator sets up what keeps a task's model worker apart from the host and
// from the runner. The driver's own logic only talks to this interface, so it
// is testable without root; the real one (cgroups and the sandbox) is tested
// as root.
type Isolator interface {
	// Prepare creates the isolation of a new task. Preconditions: the task's
	// directories exist; req.UID is not 0.
	Prepare(req *IsolationRequest) (Isolation, error)
	// Restore finds the isolation of a task recovered after a plugin
	// restart, from what Isolation.State returned.
	Restore(state *IsolationState) (Isolation, error)
}

// Isolation is one task's isolation.
type Isolation interface {
	// WorkerWrapper is the argv prefix the runner puts in front of the
	// worker's command, for a runner started without RunnerWrapper.
	WorkerWrapper() []string
	// WorkerPaths maps host directories to where the worker sees them
	// (the runner's --worker-paths); nil where it sees the host's paths.
	WorkerPaths() map[string]string
	// RunnerWrapper is the argv prefix the driver puts in front of the
	// runner's command: the launcher (driver/launcher) that starts the
	// runner as the request's runner user and its workers in the sandbox.
	// The launcher waits on its fd 3 (launcher.GateFD) for a byte the
	// driver writes once AddRunner placed it. Nil: the runner is started
	// as it is and wraps its workers in WorkerWrapper.
	RunnerWrapper() []string
	// AddRunner places the runner process (pid) in the task's limits.
	AddRunner(pid int) error
	// Usage reads the task's resource use.
	Usage() (*cgroup.Usage, error)
	// KillAll kills every process of the task and waits for them to go.
	KillAll(timeout time.Duration) error
	// Destroy removes what Prepare created; the task has no process left.
	Destroy() error
	// State is saved in the task's driver state for Restore.
	State() *IsolationState
}

// IsolationRequest describes a task to isolate.
type IsolationRequest struct {
	// ID is unique per task (alloc id and task name).
	ID       string
	UID, GID int
	// RunnerUID and RunnerGID are the runner's user: not root, not UID.
	RunnerUID, RunnerGID int
	// PrivateDir is the driver's directory in the task dir (root only).
	PrivateDir string
	// ReadOnly lists system paths the worker may read, at their host path.
	ReadOnly []string
	// Binds shows the task's own directories (the model, its environment)
	// read-only at neutral paths.
	Binds []sandbox.Bind
	// DiskBytes bounds what the worker writes (/tmp and /scratch).
	DiskBytes int64
	// AllowWrittenExecutables lets the worker execute files it wrote
	// (the plugin's allow_written_executables).
	AllowWrittenExecutables bool
	Limits                  cgroup.Limits
	Landlock                string
	Env                     []string
	// Devices are the devices reserved for the task: in the worker's
	// /dev, and the only ones its device cgroup allows besides
	// cgroup.DefaultDevices.
	Devices []ReservedDevice
	// Mounts are the task's mounts (Nomad's volume and device mounts).
	Mounts []sandbox.Mount
}

// Where the worker sees the task's own directories (the sandbox shows them
// at these neutral paths, never at their host paths).
const (
	InsideModelDir = "/model"    // the submission, its resources at /model/resources
	InsideEnvDir   = "/env"      // its Python environment, when it has requirements
	InsideHostDir  = "/modelbox" // the runner's Python host script
)

// workerShmBytes bounds the worker's /dev/shm.
const workerShmBytes = 64 << 20

// IsolationState is what Restore needs; it is msgpack-encoded in the task's
// driver state.
type IsolationState struct {
	Cgroup     cgroup.State
	SpecFile   string
	PluginPath string
}

// hostIsolator is the real isolation: cgroups v1/v2 plus the sandbox.
type hostIsolator struct {
	// self is the plugin binary, re-executed as the sandbox.
	self string
}

func newHostIsolator() (*hostIsolator, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return &hostIsolator{self: self}, nil
}

func (h *hostIsolator) Prepare(req *IsolationRequest) (Isolation, error) {
	if req.UID == 0 || req.GID == 0 {
		return nil, fmt.Errorf("isolation: refusing to run a model worker as root")
	}
	if req.RunnerUID <= 0 || req.RunnerGID <= 0 || req.RunnerUID == req.UID || req.RunnerGID == req.GID {
		return nil, fmt.Errorf("isolation: the runner's user (%d:%d) must be neither root nor the worker's (%d:%d)", req.RunnerUID, req.RunnerGID, req.UID, req.GID)
	}
	// The worker writes only to its sandbox's own tmpfs (/tmp, /scratch):
	// nothing of the host's disk.
	root := filepath.Join(req.PrivateDir, "root")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("isolation: %w", err)
	}
	limits := req.Limits
	var devices []sandbox.Device
	for _, d := range req.Devices {
		devices = append(devices, d.Node)
		limits.WorkerDevices = append(limits.WorkerDevices, d.Rule)
	}
	spec := &sandbox.Spec{
		UID: req.UID, GID: req.GID,
		Hostname:                "model",
		Root:                    root,
		ReadOnly:                req.ReadOnly,
		Binds:                   req.Binds,
		Devices:                 devices,
		Mounts:                  req.Mounts,
		DiskBytes:               req.DiskBytes,
		AllowWrittenExecutables: req.AllowWrittenExecutables,
		// POSIX semaphores and shared memory (multiprocessing's locks,
		// joblib): a tmpfs counted in the task's memory, noexec.
		DevShmBytes: workerShmBytes,
		Landlock:    req.Landlock,
		Env: append([]string{
			"MODELNODES_SCRATCH=" + sandbox.ScratchDir, "TMPDIR=" + sandbox.TmpDir,
		}, req.Env...),
	}
	// A spec the sandbox would refuse (a task mount over /model, a device
	// outside /dev) is refused before anything is created.
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("isolation: %w", err)
	}
	group, err := cgroup.Create(req.ID, limits)
	if err != nil {
		return nil, fmt.Errorf("isolation: %w", err)
	}
	spec.WorkerCgroup = group.State().Worker
	specFile := filepath.Join(req.PrivateDir, "sandbox.json")
	if err := spec.Write(specFile); err != nil {
		_ = group.Destroy()
		return nil, fmt.Errorf("isolation: %w", err)
	}
	paths := map[string]string{}
	for _, b := range spec.Binds {
		paths[b.Host] = b.Inside
	}
	return &hostIsolation{group: group, specFile: specFile, self: h.self, paths: paths, runnerUID: req.RunnerUID, runnerGID: req.RunnerGID}, nil
}

func (h *hostIsolator) Restore(st *IsolationState) (Isolation, error) {
	group, err := cgroup.Open(st.Cgroup)
	if err != nil {
		return nil, fmt.Errorf("isolation: %w", err)
	}
	return &hostIsolation{group: group, specFile: st.SpecFile, self: st.PluginPath}, nil
}

type hostIsolation struct {
	group    *cgroup.Task
	specFile string
	self     string
	// paths is the spec's binds, host → inside; nil once restored (the
	// runner it was for is running).
	paths map[string]string
	// The runner's user; zero after Restore (the runner runs already).
	runnerUID, runnerGID int
}

func (i *hostIsolation) WorkerWrapper() []string        { return sandbox.Command(i.self, i.specFile) }
func (i *hostIsolation) WorkerPaths() map[string]string { return i.paths }
func (i *hostIsolation) RunnerWrapper() []string {
	return launcher.Command(i.self, i.specFile, i.runnerUID, i.runnerGID)
}
func (i *hostIsolation) AddRunner(pid int) error { return i.group.AddRunner(pid) }
func (i *hostIsolation) Usage() (*cgroup.Usage, error) {
	return i.group.Usage()
}
func (i *hostIsolation) KillAll(timeout time.Duration) error { return i.group.Kill(timeout) }
func (i *hostIsolation) Destroy() error                      { return i.group.Destroy() }
func (i *hostIsolation) State() *IsolationState {
	return &IsolationState{Cgroup: i.group.State(), SpecFile: i.specFile, PluginPath: i.self}
}
