package driver

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/hashicorp/nomad/plugins/drivers"

	"github.com/modelnodes/modelnodes/driver/nvidia"
	"github.com/modelnodes/modelnodes/driver/sandbox"
)

// Where a GPU task's worker finds the host driver's files: neutral paths,
// apart from the system paths (which the worker sees read-only at their
// host paths and the host's libraries may not be in).
const (
	InsideNvidiaLib = "/nvidia/lib"
	InsideNvidiaBin = "/nvidia/bin"
)

// gpuResources is what a task's NVIDIA reservation adds to its sandbox.
type gpuResources struct {
	devices []ReservedDevice
	binds   []sandbox.Bind
	env     []string
}

// nvidiaSource is where the driver reads the node's NVIDIA driver: the
// host's /proc, /dev and ldconfig cache, fakes in tests.
type nvidiaSource struct {
	host     nvidia.Host
	ldconfig func(context.Context) (string, error)
}

var hostNvidia = nvidiaSource{host: nvidia.Node, ldconfig: nvidia.Ldconfig}

// gpu reads the task's NVIDIA reservation: NVIDIA_VISIBLE_DEVICES as the
// device plugin set it (TaskConfig.DeviceEnv, never the job's env, which
// anyone who may submit the job writes), and returns the GPUs' nodes (and
// their cgroup rules), the driver's libraries and nvidia-smi, read-only,
// and the environment that finds them. Nil when the task reserved none.
func (src nvidiaSource) gpu(ctx context.Context, cfg *drivers.TaskConfig, plugin *Config) (*gpuResources, error) {
	value, ok := cfg.DeviceEnv[nvidia.EnvVisibleDevices]
	if !ok {
		return nil, nil
	}
	fail := func(err error) (*gpuResources, error) {
		return nil, fmt.Errorf("modelbox: the task reserves NVIDIA GPUs (%s=%q): %w", nvidia.EnvVisibleDevices, value, err)
	}
	gpus, err := src.host.GPUs()
	if err != nil && !errors.Is(err, nvidia.ErrNoDriver) {
		return fail(err)
	}
	sel, err := nvidia.Select(value, gpus)
	if err != nil {
		return fail(err)
	}
	if sel.Empty() {
		return nil, nil
	}
	if len(gpus) == 0 {
		return fail(nvidia.ErrNoDriver)
	}
	nodes, err := src.host.Nodes(sel)
	if err != nil {
		return fail(err)
	}
	r := &gpuResources{}
	for _, n := range nodes {
		rel, err := filepath.Rel(src.host.Dev, n)
		if err != nil || strings.HasPrefix(rel, "..") {
			return fail(fmt.Errorf("device node %s is outside %s", n, src.host.Dev))
		}
		rule, err := deviceRule(n, "rw")
		if err != nil {
			return fail(fmt.Errorf("%s: %w", n, err))
		}
		r.devices = append(r.devices, ReservedDevice{Node: sandbox.Device{Host: n, Inside: "/dev/" + rel}, Rule: rule})
	}
	var libs []nvidia.Library
	if len(plugin.GPU.Libraries) > 0 {
		libs = nvidia.LibrariesFromPaths(plugin.GPU.Libraries)
	} else {
		out, err := src.ldconfig(ctx)
		if err != nil {
			return fail(err)
		}
		libs = nvidia.LibrariesFromLdconfig(out)
	}
	hasCUDA := false
	for _, l := range libs {
		hasCUDA = hasCUDA || l.Name == "libcuda.so.1"
		r.binds = append(r.binds, sandbox.Bind{Host: l.Path, Inside: InsideNvidiaLib + "/" + l.Name})
	}
	if !hasCUDA {
		return fail(errors.New("the node's driver libraries hold no libcuda.so.1 (ldconfig -p; or set the plugin's gpu.libraries)"))
	}
	smi := plugin.GPU.NvidiaSMI
	if smi == "" {
		smi, _ = exec.LookPath("nvidia-smi")
	}
	if smi != "" {
		r.binds = append(r.binds, sandbox.Bind{Host: smi, Inside: InsideNvidiaBin + "/nvidia-smi"})
	}
	r.env = []string{"LD_LIBRARY_PATH=" + InsideNvidiaLib, "PATH=" + InsideNvidiaBin + ":/usr/local/bin:/usr/bin:/bin"}
	return r, nil
}
