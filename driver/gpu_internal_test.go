package driver

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/nomad/plugins/drivers"

	"github.com/modelnodes/modelnodes/driver/cgroup"
	"github.com/modelnodes/modelnodes/driver/nvidia"
	"github.com/modelnodes/modelnodes/driver/sandbox"
)

// fakeNvidia is a two-GPU node's driver state in a temp dir. Its /dev nodes
// are links to harmless host devices (null, zero, full, random, urandom),
// so their numbers are real without mknod.
func fakeNvidia(t *testing.T) (nvidiaSource, string) {
	t.Helper()
	root := t.TempDir()
	h := nvidia.Host{Proc: filepath.Join(root, "proc"), Dev: filepath.Join(root, "dev")}
	for i, uuid := range []string{"GPU-aaaaaaaa-0000-0000-0000-000000000001", "GPU-bbbbbbbb-0000-0000-0000-000000000002"} {
		bus := []string{"0000:1b:00.0", "0000:9b:00.0"}[i]
		p := filepath.Join(h.Proc, "driver/nvidia/gpus", bus, "information")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		info := "Model: \t\t NVIDIA H200\nGPU UUID: \t " + uuid + "\nBus Location: \t " + bus + "\nDevice Minor: \t " + []string{"0", "1"}[i] + "\n"
		if err := os.WriteFile(p, []byte(info), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(h.Dev, 0o755); err != nil {
		t.Fatal(err)
	}
	for node, host := range map[string]string{"nvidia0": "/dev/null", "nvidia1": "/dev/zero", "nvidiactl": "/dev/full", "nvidia-uvm": "/dev/random", "nvidia-uvm-tools": "/dev/urandom"} {
		if err := os.Symlink(host, filepath.Join(h.Dev, node)); err != nil {
			t.Fatal(err)
		}
	}
	libs := filepath.Join(root, "lib")
	if err := os.Mkdir(libs, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"libcuda.so.1", "libnvidia-ml.so.1"} {
		if err := os.WriteFile(filepath.Join(libs, l), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ldconfig := "2 libs found in cache `/etc/ld.so.cache'\n" +
		"\tlibnvidia-ml.so.1 (libc6,x86-64) => " + libs + "/libnvidia-ml.so.1\n" +
		"\tlibcuda.so.1 (libc6,x86-64) => " + libs + "/libcuda.so.1\n"
	return nvidiaSource{host: h, ldconfig: func(context.Context) (string, error) { return ldconfig, nil }}, libs
}

// nomad-device-nvidia's reservation (NVIDIA_VISIBLE_DEVICES in the device
// env) becomes the one GPU's node, the driver's control and memory nodes,
// its libraries and the environment that finds them; the other GPU's node
// is neither shown nor allowed.
func TestGPUReservation(t *testing.T) {
	src, libs := fakeNvidia(t)
	cfg := &drivers.TaskConfig{DeviceEnv: map[string]string{"NVIDIA_VISIBLE_DEVICES": "GPU-bbbbbbbb-0000-0000-0000-000000000002"}}
	plugin := defaultConfig()
	plugin.GPU.NvidiaSMI = "/usr/bin/true" // stands in for nvidia-smi
	r, err := src.gpu(context.Background(), cfg, plugin)
	if err != nil {
		t.Fatal(err)
	}
	dev := func(name string) string { return filepath.Join(src.host.Dev, name) }
	want := []ReservedDevice{
		{sandbox.Device{Host: dev("nvidia1"), Inside: "/dev/nvidia1"}, cgroup.Device{Type: 'c', Major: 1, Minor: 5, Permissions: "rw"}},
		{sandbox.Device{Host: dev("nvidiactl"), Inside: "/dev/nvidiactl"}, cgroup.Device{Type: 'c', Major: 1, Minor: 7, Permissions: "rw"}},
		{sandbox.Device{Host: dev("nvidia-uvm"), Inside: "/dev/nvidia-uvm"}, cgroup.Device{Type: 'c', Major: 1, Minor: 8, Permissions: "rw"}},
		{sandbox.Device{Host: dev("nvidia-uvm-tools"), Inside: "/dev/nvidia-uvm-tools"}, cgroup.Device{Type: 'c', Major: 1, Minor: 9, Permissions: "rw"}},
	}
	if !slices.Equal(r.devices, want) {
		t.Errorf("devices = %+v\nwant %+v", r.devices, want)
	}
	wantBinds := []sandbox.Bind{
		{Host: libs + "/libnvidia-ml.so.1", Inside: "/nvidia/lib/libnvidia-ml.so.1"},
		{Host: libs + "/libcuda.so.1", Inside: "/nvidia/lib/libcuda.so.1"},
		{Host: "/usr/bin/true", Inside: "/nvidia/bin/nvidia-smi"},
	}
	if !slices.Equal(r.binds, wantBinds) {
		t.Errorf("binds = %+v\nwant %+v", r.binds, wantBinds)
	}
	if !slices.Contains(r.env, "LD_LIBRARY_PATH=/nvidia/lib") || !slices.ContainsFunc(r.env, func(s string) bool { return strings.HasPrefix(s, "PATH=/nvidia/bin:") }) {
		t.Errorf("env = %v", r.env)
	}
	// The result is a spec the sandbox takes.
	spec := &sandbox.Spec{UID: 64000, GID: 64000, Root: "/x", Landlock: sandbox.LandlockOff, Binds: r.binds}
	for _, d := range r.devices {
		spec.Devices = append(spec.Devices, d.Node)
	}
	if err := spec.Validate(); err != nil {
		t.Error(err)
	}
}

func TestGPUReservationRefusals(t *testing.T) {
	src, _ := fakeNvidia(t)
	plugin := defaultConfig()
	for _, tc := range []struct {
		name string
		cfg  drivers.TaskConfig
		want string // "" : no GPU resources, no error
	}{
		{"no reservation", drivers.TaskConfig{}, ""},
		// The job's own env is anyone's to write: it reserves nothing.
		{"set by the job, not a device plugin", drivers.TaskConfig{Env: map[string]string{"NVIDIA_VISIBLE_DEVICES": "all"}}, ""},
		{"void", drivers.TaskConfig{DeviceEnv: map[string]string{"NVIDIA_VISIBLE_DEVICES": "void"}}, ""},
		{"a GPU the node lacks", drivers.TaskConfig{DeviceEnv: map[string]string{"NVIDIA_VISIBLE_DEVICES": "GPU-cccccccc-0000-0000-0000-000000000003"}}, "no such GPU"},
		{"an index the node lacks", drivers.TaskConfig{DeviceEnv: map[string]string{"NVIDIA_VISIBLE_DEVICES": "2"}}, "no such GPU"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := src.gpu(context.Background(), &tc.cfg, plugin)
			if tc.want == "" {
				if r != nil || err != nil {
					t.Errorf("gpu() = %+v, %v; want nothing", r, err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "NVIDIA_VISIBLE_DEVICES") {
				t.Errorf("gpu() = %+v, %v; want an error saying %q", r, err, tc.want)
			}
		})
	}
	// No libcuda in the node's library cache: CUDA could not start.
	src.ldconfig = func(context.Context) (string, error) { return "0 libs found in cache\n", nil }
	cfg := &drivers.TaskConfig{DeviceEnv: map[string]string{"NVIDIA_VISIBLE_DEVICES": "0"}}
	if _, err := src.gpu(context.Background(), cfg, plugin); err == nil || !strings.Contains(err.Error(), "libcuda.so.1") {
		t.Errorf("gpu() without libcuda: %v", err)
	}
	// A configured list replaces the cache.
	plugin.GPU.Libraries = []string{"/opt/nvidia/libcuda.so.1"}
	if r, err := src.gpu(context.Background(), cfg, plugin); err != nil || !slices.Contains(r.binds, sandbox.Bind{Host: "/opt/nvidia/libcuda.so.1", Inside: "/nvidia/lib/libcuda.so.1"}) {
		t.Errorf("gpu() with gpu.libraries: %+v, %v", r, err)
	}
}

// A GPU node's attributes, absent on a node without one.
func TestGPUAttributes(t *testing.T) {
	src, _ := fakeNvidia(t)
	if err := os.WriteFile(filepath.Join(src.host.Proc, "driver/nvidia/version"), []byte("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Tue Nov 11 2025\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for k, v := range gpuAttributes(src.host) {
		got[k] = v.GoString()
	}
	want := map[string]string{"driver.modelbox.gpu.count": "2", "driver.modelbox.gpu.models": "NVIDIA H200", "driver.modelbox.gpu.driver_version": "580.159.04"}
	if len(got) != len(want) {
		t.Errorf("gpuAttributes = %v, want %v", got, want)
	}
	for k, v := range want {
		if !strings.Contains(got[k], v) {
			t.Errorf("%s = %s, want %s", k, got[k], v)
		}
	}
	if a := gpuAttributes(nvidia.Host{Proc: t.TempDir(), Dev: t.TempDir()}); len(a) != 0 {
		t.Errorf("attributes without a GPU: %v", a)
	}
}
