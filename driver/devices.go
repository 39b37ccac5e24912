package driver

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hashicorp/nomad/plugins/drivers"
	"golang.org/x/sys/unix"

	"github.com/modelnodes/modelnodes/driver/cgroup"
	"github.com/modelnodes/modelnodes/driver/sandbox"
)

// ReservedDevice is a device Nomad reserved for a task: its node in the
// worker's /dev and the device cgroup's rule that lets the worker open it.
type ReservedDevice struct {
	Node sandbox.Device
	Rule cgroup.Device
}

// defaultDevicePermissions is what a reservation that names no cgroup
// permissions gets: read and write, never mknod (the worker has no
// CAP_MKNOD anyway).
const defaultDevicePermissions = "rw"

// taskDevices turns Nomad's device reservations (TaskConfig.Devices, from
// the device plugins' Reserve) into the worker's nodes and their cgroup
// rules. A host path must name a device node: its numbers are what the
// cgroup allows.
func taskDevices(devs []*drivers.DeviceConfig) ([]ReservedDevice, error) {
	var out []ReservedDevice
	for _, d := range devs {
		if d == nil {
			continue
		}
		inside := d.TaskPath
		if inside == "" {
			inside = d.HostPath
		}
		perms := d.Permissions
		if perms == "" {
			perms = defaultDevicePermissions
		}
		rule, err := deviceRule(d.HostPath, perms)
		if err != nil {
			return nil, fmt.Errorf("modelbox: reserved device %q: %w", d.HostPath, err)
		}
		out = append(out, ReservedDevice{Node: sandbox.Device{Host: d.HostPath, Inside: inside}, Rule: rule})
	}
	return out, nil
}

// deviceRule reads the numbers of the device node at path.
func deviceRule(path, perms string) (cgroup.Device, error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return cgroup.Device{}, fmt.Errorf("want an absolute, clean host path")
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return cgroup.Device{}, err
	}
	d := cgroup.Device{Major: int64(unix.Major(st.Rdev)), Minor: int64(unix.Minor(st.Rdev)), Permissions: perms}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		d.Type = 'c'
	case unix.S_IFBLK:
		d.Type = 'b'
	default:
		return cgroup.Device{}, fmt.Errorf("not a device node")
	}
	return d, d.Validate()
}

// taskMounts turns Nomad's mounts for the task (volume_mount blocks and the
// device plugins' mounts) into the sandbox's. Where they land is checked
// with everything else the sandbox shows (sandbox.Spec.Validate).
func taskMounts(mounts []*drivers.MountConfig) ([]sandbox.Mount, error) {
	var out []sandbox.Mount
	for _, m := range mounts {
		if m == nil {
			continue
		}
		// The sandbox's mounts are private: nothing mounted on either
		// side later shows on the other.
		if p := m.PropagationMode; p != "" && p != "private" {
			return nil, fmt.Errorf("modelbox: mount at %q: propagation mode %q: the sandbox's mounts are private", m.TaskPath, p)
		}
		out = append(out, sandbox.Mount{Host: m.HostPath, Inside: m.TaskPath, ReadOnly: m.Readonly})
	}
	return out, nil
}

// deviceEnv is what the device plugins' reservations set in the task's
// environment (TaskConfig.DeviceEnv: Nomad keeps it apart from the job's
// env), for the worker's: NVIDIA_VISIBLE_DEVICES and the like.
func deviceEnv(cfg *drivers.TaskConfig) []string {
	var env []string
	for k, v := range cfg.DeviceEnv {
		if k != "" && !strings.ContainsAny(k, "=\x00") && !strings.Contains(v, "\x00") {
			env = append(env, k+"="+v)
		}
	}
	slices.Sort(env)
	return env
}
