package nvidia

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeHost writes a node's driver state as a two-GPU host shows it (the
// information files' layout is the driver's), the GPUs listed out of bus
// order, and empty files for /dev's nodes.
func fakeHost(t *testing.T, devs ...string) Host {
	t.Helper()
	root := t.TempDir()
	h := Host{Proc: filepath.Join(root, "proc"), Dev: filepath.Join(root, "dev")}
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	info := "Model: \t\t NVIDIA H200\nIRQ:   \t\t 91\nGPU UUID: \t %s\nVideo BIOS: \t 96.00.af.00.01\nBus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t %s\nDevice Minor: \t %s\nGPU Excluded:\t No\n"
	write(filepath.Join(h.Proc, "driver/nvidia/gpus/0000:9b:00.0/information"), fmt.Sprintf(info, "GPU-bbbbbbbb-0000-0000-0000-000000000002", "0000:9b:00.0", "1"))
	write(filepath.Join(h.Proc, "driver/nvidia/gpus/0000:1b:00.0/information"), fmt.Sprintf(info, "GPU-aaaaaaaa-0000-0000-0000-000000000001", "0000:1b:00.0", "0"))
	write(filepath.Join(h.Proc, "driver/nvidia/version"), "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Tue Nov 11 2025\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
	write(filepath.Join(h.Proc, "driver/nvidia/capabilities/gpu1/mig/gi2/access"), "DeviceFileMinor: 30\nDeviceFileMode: 292\nDeviceFileModify: 1\n")
	write(filepath.Join(h.Proc, "driver/nvidia/capabilities/gpu1/mig/gi2/ci0/access"), "DeviceFileMinor: 31\nDeviceFileMode: 292\nDeviceFileModify: 1\n")
	for _, d := range devs {
		write(filepath.Join(h.Dev, d), "")
	}
	return h
}

func TestGPUsFromProc(t *testing.T) {
	h := fakeHost(t)
	gpus, err := h.GPUs()
	if err != nil {
		t.Fatal(err)
	}
	want := []GPU{
		{UUID: "GPU-aaaaaaaa-0000-0000-0000-000000000001", Minor: 0, BusID: "0000:1b:00.0", Model: "NVIDIA H200", Index: 0},
		{UUID: "GPU-bbbbbbbb-0000-0000-0000-000000000002", Minor: 1, BusID: "0000:9b:00.0", Model: "NVIDIA H200", Index: 1},
	}
	if !slices.Equal(gpus, want) {
		t.Errorf("GPUs() = %+v\nwant %+v", gpus, want)
	}
	if v, err := h.DriverVersion(); err != nil || v != "580.159.04" {
		t.Errorf("DriverVersion() = %q, %v", v, err)
	}
	none := Host{Proc: t.TempDir(), Dev: t.TempDir()}
	if _, err := none.GPUs(); !errors.Is(err, ErrNoDriver) {
		t.Errorf("GPUs() without a driver: %v, want ErrNoDriver", err)
	}
	if _, err := none.DriverVersion(); !errors.Is(err, ErrNoDriver) {
		t.Errorf("DriverVersion() without a driver: %v, want ErrNoDriver", err)
	}
}

func TestDriverVersionOpenModule(t *testing.T) {
	h := fakeHost(t)
	if err := os.WriteFile(filepath.Join(h.Proc, "driver/nvidia/version"), []byte("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16-I3-B13-4-1)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if v, err := h.DriverVersion(); err != nil || v != "570.86.15" {
		t.Errorf("DriverVersion() = %q, %v", v, err)
	}
}

// NVIDIA_VISIBLE_DEVICES, as nomad-device-nvidia and the toolkit's users
// write it; a name of no GPU on the node is refused, never widened.
func TestSelect(t *testing.T) {
	gpus, err := fakeHost(t).GPUs()
	if err != nil {
		t.Fatal(err)
	}
	a, b := gpus[0], gpus[1]
	for _, tc := range []struct {
		value string
		want  Selection
		err   string
	}{
		{"", Selection{}, ""},
		{"void", Selection{}, ""},
		{"none", Selection{DriverOnly: true}, ""},
		{"all", Selection{GPUs: []GPU{a, b}}, ""},
		{"GPU-bbbbbbbb-0000-0000-0000-000000000002", Selection{GPUs: []GPU{b}}, ""},
		{"GPU-BBBBBBBB-0000-0000-0000-000000000002", Selection{GPUs: []GPU{b}}, ""},
		{"GPU-aaaaaaaa-0000-0000-0000-000000000001,GPU-bbbbbbbb-0000-0000-0000-000000000002", Selection{GPUs: []GPU{a, b}}, ""},
		{"1", Selection{GPUs: []GPU{b}}, ""},
		{"1,0,1", Selection{GPUs: []GPU{b, a}}, ""},
		{"MIG-GPU-bbbbbbbb-0000-0000-0000-000000000002/2/0", Selection{MIGs: []MIG{{Parent: b, GI: 2, CI: 0}}}, ""},
		{"2", Selection{}, "no such GPU"},
		{"-1", Selection{}, "no such GPU"},
		{"01", Selection{}, "no such GPU"},
		{"GPU-cccccccc-0000-0000-0000-000000000003", Selection{}, "no such GPU"},
		{"GPU-aaaaaaaa-0000-0000-0000-000000000001,GPU-cccccccc-0000-0000-0000-000000000003", Selection{}, "no such GPU"},
		{"MIG-GPU-cccccccc-0000-0000-0000-000000000003/1/0", Selection{}, "no such GPU"},
		{"MIG-4f6e2c1a-0000-0000-0000-000000000009", Selection{}, "NVML"},
		{"../../dev/mem", Selection{}, "no such GPU"},
	} {
		got, err := Select(tc.value, gpus)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Select(%q) = %+v, %v; want an error saying %q", tc.value, got, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got.GPUs, tc.want.GPUs) || !slices.Equal(got.MIGs, tc.want.MIGs) || got.DriverOnly != tc.want.DriverOnly {
			t.Errorf("Select(%q) = %+v, %v; want %+v", tc.value, got, err, tc.want)
		}
	}
}

func TestNodes(t *testing.T) {
	h := fakeHost(t, "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-caps/nvidia-cap30", "nvidia-caps/nvidia-cap31")
	gpus, _ := h.GPUs()
	dev := func(names ...string) []string {
		var out []string
		for _, n := range names {
			out = append(out, filepath.Join(h.Dev, n))
		}
		return out
	}
	for _, tc := range []struct {
		sel  Selection
		want []string
	}{
		{Selection{}, nil},
		{Selection{DriverOnly: true}, nil},
		{Selection{GPUs: gpus[1:]}, dev("nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")},
		{Selection{GPUs: gpus}, dev("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")},
		{Selection{MIGs: []MIG{{Parent: gpus[1], GI: 2, CI: 0}}},
			dev("nvidia1", "nvidia-caps/nvidia-cap30", "nvidia-caps/nvidia-cap31", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")},
	} {
		got, err := h.Nodes(tc.sel)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Nodes(%+v) = %v, %v; want %v", tc.sel, got, err, tc.want)
		}
	}
	if _, err := h.Nodes(Selection{MIGs: []MIG{{Parent: gpus[1], GI: 3, CI: 0}}}); err == nil {
		t.Error("a MIG instance the driver does not have was given nodes")
	}
	// Before the first CUDA program as root, nvidia-uvm may not exist:
	// say how to make it rather than start a worker CUDA fails in.
	bare := fakeHost(t, "nvidia0", "nvidiactl")
	gpus, _ = bare.GPUs()
	if _, err := bare.Nodes(Selection{GPUs: gpus[:1]}); err == nil || !strings.Contains(err.Error(), "nvidia-modprobe") {
		t.Errorf("Nodes without /dev/nvidia-uvm: %v, want an error saying how to make it", err)
	}
}

// The libraries as `ldconfig -p` lists them on a distribution's host (the
// output's shape is glibc's).
func TestLibrariesFromLdconfig(t *testing.T) {
	out := `1234 libs found in cache ` + "`/etc/ld.so.cache'" + `
	libz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1
	libnvidia-ptxjitcompiler.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1
	libnvidia-nvvm.so.4 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-nvvm.so.4
	libnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
	libnvidia-ml.so.1 (libc6) => /usr/lib/i386-linux-gnu/libnvidia-ml.so.1
	libnvidia-gpucomp.so.580.159.04 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-gpucomp.so.580.159.04
	libnvidia-glcore.so.580.159.04 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-glcore.so.580.159.04
	libcudart.so.12 (libc6,x86-64) => /usr/local/cuda/lib64/libcudart.so.12
	libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1
	libcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1
	libcuda.so (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so
	libcuda.so.1 (libc6,x86-64) => /usr/local/nvidia/lib64/libcuda.so.1
`
	got := LibrariesFromLdconfig(out)
	if ldconfigArch != "x86-64" {
		t.Skipf("the sample is x86-64's; this is %s", ldconfigArch)
	}
	want := []Library{
		{"libnvidia-ptxjitcompiler.so.1", "/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1"},
		{"libnvidia-nvvm.so.4", "/usr/lib/x86_64-linux-gnu/libnvidia-nvvm.so.4"},
		{"libnvidia-ml.so.1", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"},
		{"libnvidia-gpucomp.so.580.159.04", "/usr/lib/x86_64-linux-gnu/libnvidia-gpucomp.so.580.159.04"},
		{"libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("LibrariesFromLdconfig =\n%v\nwant\n%v", got, want)
	}
}
