package driver

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/nomad/plugins/drivers"

	"github.com/modelnodes/modelnodes/driver/cgroup"
	"github.com/modelnodes/modelnodes/driver/sandbox"
)

// A device reservation becomes the worker's node and the cgroup rule for
// its numbers; anything but a device node is refused, saying which.
func TestTaskDevices(t *testing.T) {
	got, err := taskDevices([]*drivers.DeviceConfig{
		{HostPath: "/dev/null", TaskPath: "/dev/testdev0", Permissions: "rw"},
		{HostPath: "/dev/zero"}, // no task path, no permissions: the host's path, read-write
		{HostPath: "/dev/full", TaskPath: "/dev/full-ro", Permissions: "r"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []ReservedDevice{
		{sandbox.Device{Host: "/dev/null", Inside: "/dev/testdev0"}, cgroup.Device{Type: 'c', Major: 1, Minor: 3, Permissions: "rw"}},
		{sandbox.Device{Host: "/dev/zero", Inside: "/dev/zero"}, cgroup.Device{Type: 'c', Major: 1, Minor: 5, Permissions: "rw"}},
		{sandbox.Device{Host: "/dev/full", Inside: "/dev/full-ro"}, cgroup.Device{Type: 'c', Major: 1, Minor: 7, Permissions: "r"}},
	}
	if !slices.Equal(got, want) {
		t.Errorf("taskDevices = %+v, want %+v", got, want)
	}

	file := filepath.Join(t.TempDir(), "not-a-device")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dev  drivers.DeviceConfig
		want string
	}{
		{drivers.DeviceConfig{HostPath: file, TaskPath: "/dev/x"}, "not a device node"},
		{drivers.DeviceConfig{HostPath: "/dev/no-such-device", TaskPath: "/dev/x"}, "no such file"},
		{drivers.DeviceConfig{HostPath: "dev/null", TaskPath: "/dev/x"}, "absolute"},
		{drivers.DeviceConfig{HostPath: "/dev/../dev/null", TaskPath: "/dev/x"}, "clean"},
		{drivers.DeviceConfig{HostPath: "/dev/null", TaskPath: "/dev/x", Permissions: "rwx"}, "permissions"},
	} {
		_, err := taskDevices([]*drivers.DeviceConfig{&tc.dev})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.dev.HostPath) {
			t.Errorf("%+v: err = %v, want one naming the path and %q", tc.dev, err, tc.want)
		}
	}
}

func TestTaskMounts(t *testing.T) {
	got, err := taskMounts([]*drivers.MountConfig{
		{HostPath: "/srv/weights", TaskPath: "/weights", Readonly: true, PropagationMode: "private"},
		{HostPath: "/srv/out", TaskPath: "/out"},
	})
	want := []sandbox.Mount{{Host: "/srv/weights", Inside: "/weights", ReadOnly: true}, {Host: "/srv/out", Inside: "/out"}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("taskMounts = %+v, %v; want %+v", got, err, want)
	}
	for _, p := range []string{"host-to-task", "bidirectional"} {
		if _, err := taskMounts([]*drivers.MountConfig{{HostPath: "/srv", TaskPath: "/srv", PropagationMode: p}}); err == nil || !strings.Contains(err.Error(), "private") {
			t.Errorf("propagation %s: err = %v, want refused", p, err)
		}
	}
}

// Only the device plugins' variables reach the worker, never the job's env
// (where anybody who writes the job could set NVIDIA_VISIBLE_DEVICES).
func TestDeviceEnv(t *testing.T) {
	cfg := &drivers.TaskConfig{
		Env:       map[string]string{"NVIDIA_VISIBLE_DEVICES": "all", "VAULT_TOKEN": "s.secret"},
		DeviceEnv: map[string]string{"NVIDIA_VISIBLE_DEVICES": "GPU-1", "MODELNODES_TESTDEV": "testdev0"},
	}
	if got := deviceEnv(cfg); !slices.Equal(got, []string{"MODELNODES_TESTDEV=testdev0", "NVIDIA_VISIBLE_DEVICES=GPU-1"}) {
		t.Errorf("deviceEnv = %v", got)
	}
}

// Task paths come from jobs and device plugins: the isolation refuses one
// that would hide what the sandbox shows, with a clear error, before it
// creates anything (no cgroup, no spec).
func TestIsolatorRefusesTaskPaths(t *testing.T) {
	h := &hostIsolator{self: "/usr/bin/true"}
	for _, tc := range []struct {
		name string
		edit func(*IsolationRequest)
		want string
	}{
		{"mount over the model", func(r *IsolationRequest) {
			r.Mounts = []sandbox.Mount{{Host: "/srv/evil", Inside: InsideModelDir}}
		}, "overlaps /model"},
		{"mount over a system path", func(r *IsolationRequest) {
			r.Mounts = []sandbox.Mount{{Host: "/srv/evil", Inside: "/usr/lib"}}
		}, "overlaps /usr"},
		{"mount in /dev", func(r *IsolationRequest) {
			r.Mounts = []sandbox.Mount{{Host: "/srv/evil", Inside: "/dev/nvidia0"}}
		}, "overlaps /dev"},
		{"relative mount", func(r *IsolationRequest) {
			r.Mounts = []sandbox.Mount{{Host: "/srv/evil", Inside: "model"}}
		}, "absolute"},
		{"device outside /dev", func(r *IsolationRequest) {
			r.Devices = []ReservedDevice{{sandbox.Device{Host: "/dev/null", Inside: "/etc/passwd"}, cgroup.Device{Type: 'c', Major: 1, Minor: 3, Permissions: "rw"}}}
		}, "under /dev/"},
		{"device over /dev/urandom", func(r *IsolationRequest) {
			r.Devices = []ReservedDevice{{sandbox.Device{Host: "/dev/null", Inside: "/dev/urandom"}, cgroup.Device{Type: 'c', Major: 1, Minor: 3, Permissions: "rw"}}}
		}, "makes /dev/urandom itself"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			private := t.TempDir()
			req := &IsolationRequest{
				ID: "isolator-refuses-" + strings.NewReplacer(" ", "-", "/", "-").Replace(tc.name), UID: 64001, GID: 64001, RunnerUID: 62001, RunnerGID: 62001,
				PrivateDir: private, ReadOnly: []string{"/usr"}, Landlock: sandbox.LandlockOff,
				Binds: []sandbox.Bind{{Host: private, Inside: InsideModelDir}},
			}
			tc.edit(req)
			iso, err := h.Prepare(req)
			if err == nil {
				_ = iso.Destroy()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one saying %q", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(private, "sandbox.json")); err == nil {
				t.Error("a spec was written")
			}
			v1, _ := filepath.Glob("/sys/fs/cgroup/*/" + cgroup.Root + "/" + req.ID)
			if m, _ := filepath.Glob("/sys/fs/cgroup/" + cgroup.Root + "/" + req.ID); len(m)+len(v1) > 0 {
				t.Errorf("a cgroup was created: %v", append(m, v1...))
			}
		})
	}
}
