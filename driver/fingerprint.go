package driver

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/nomad/plugins/drivers"
	pstructs "github.com/hashicorp/nomad/plugins/shared/structs"
	"github.com/shoenig/go-landlock"

	"github.com/modelnodes/modelnodes/driver/cgroup"
	"github.com/modelnodes/modelnodes/driver/nvidia"
	"github.com/modelnodes/modelnodes/driver/sandbox/seccomp"
	"github.com/modelnodes/modelnodes/names"
)

var _ drivers.DriverPlugin = (*Driver)(nil)
var _ drivers.ExecTaskStreamingDriver = (*Driver)(nil)

const fingerprintPeriod = 30 * time.Second

// Fingerprint reports the driver's health and what the node can do, now and
// every 30 seconds.
func (d *Driver) Fingerprint(ctx context.Context) (<-chan *drivers.Fingerprint, error) {
	ch := make(chan *drivers.Fingerprint)
	go func() {
		defer close(ch)
		t := time.NewTimer(0)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-d.ctx.Done():
				return
			case <-t.C:
				t.Reset(fingerprintPeriod)
			}
			select {
			case ch <- d.fingerprint():
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

func (d *Driver) fingerprint() *drivers.Fingerprint {
	cfg := d.cfg()
	attrs := map[string]*pstructs.Attribute{
		"driver.modelbox":         pstructs.NewBoolAttribute(true),
		"driver.modelbox.version": pstructs.NewStringAttribute(Version),
		"driver.modelbox.cgroup":  pstructs.NewStringAttribute(cgroup.Version()),
		"driver.modelbox.gpu":     pstructs.NewBoolAttribute(hasGPU()),
		"driver.modelbox.user_namespaces": pstructs.NewBoolAttribute(
			readInt("/proc/sys/user/max_user_namespaces") > 0),
	}
	for _, name := range hardeningSysctls {
		if v, ok := readSysctl(name); ok {
			attrs["driver.modelbox.sysctl."+name] = pstructs.NewIntAttribute(v, "")
		}
	}
	attrs["driver.modelbox.cpu_hard_limit"] = pstructs.NewBoolAttribute(cfg.CPUHardLimit)
	attrs["driver.modelbox.written_executables"] = pstructs.NewBoolAttribute(cfg.AllowWrittenExecutables)
	abi, err := landlock.Detect()
	if err != nil {
		abi = 0
	}
	attrs["driver.modelbox.landlock_abi"] = pstructs.NewIntAttribute(int64(abi), "")
	for k, v := range gpuAttributes(d.nvidia.host) {
		attrs[k] = v
	}
	profile := seccompProfile(cfg)
	attrs[names.AttrSeccompProfile] = pstructs.NewStringAttribute(profile)
	for k, v := range interpreterAttributes(d.ctx, cfg, d.log) {
		attrs[k] = pstructs.NewStringAttribute(v)
	}
	fp := &drivers.Fingerprint{Attributes: attrs, Health: drivers.HealthStateHealthy, HealthDescription: drivers.DriverHealthy}
	switch {
	case os.Geteuid() != 0:
		fp.Health, fp.HealthDescription = drivers.HealthStateUndetected, "modelbox needs root to isolate model workers"
	case d.isolator == nil:
		fp.Health, fp.HealthDescription = drivers.HealthStateUnhealthy, "modelbox cannot locate its own binary for the sandbox"
	default:
		if _, err := exec.LookPath(cfg.RunnerPath); err != nil {
			fp.Health, fp.HealthDescription = drivers.HealthStateUnhealthy, fmt.Sprintf("runner_path %q not found", cfg.RunnerPath)
		} else if cfg.Landlock == "required" && abi == 0 {
			fp.Health, fp.HealthDescription = drivers.HealthStateUnhealthy, "landlock = required, but the kernel has no Landlock"
		} else if profile == seccompUnsupported {
			fp.Health, fp.HealthDescription = drivers.HealthStateUnhealthy, "the kernel cannot filter system calls (seccomp): model workers would start unfiltered"
		}
	}
	return fp
}

// hardeningSysctls are the node settings that narrow what a model's kernel
// surface is beyond the sandbox (deploy/nomad/client.hcl says which values
// to set): fingerprinted as driver.modelbox.sysctl.<name>, so a security
// team sees each node's from Nomad (`nomad node status -verbose`) and a job
// may constrain on them.
var hardeningSysctls = []string{
	"kernel.io_uring_disabled",         // 2: io_uring off for everyone
	"user.max_user_namespaces",         // 0: no user namespaces (the driver needs none)
	"kernel.unprivileged_bpf_disabled", // 1 or 2: no bpf() without CAP_BPF
	"kernel.perf_event_paranoid",       // ≥ 2 (3 on some kernels): no kernel profiling
	"kernel.unprivileged_userns_clone", // Debian's older switch: 0
	"kernel.yama.ptrace_scope",         // ≥ 1: ptrace only of descendants
	"vm.unprivileged_userfaultfd",      // 0: userfaultfd only with CAP_SYS_PTRACE
}

// readSysctl reads an integer sysctl by its dotted name; false when the
// kernel has no such setting.
func readSysctl(name string) (int64, bool) {
	b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n, err == nil
}

// seccompUnsupported is the seccomp profile attribute of a kernel without
// seccomp filters.
const seccompUnsupported = "unsupported"

// seccompProfile is the hash of the filter the node's workers run under
// (names.AttrSeccompProfile).
func seccompProfile(cfg *Config) string {
	if !seccomp.Supported() {
		return seccompUnsupported
	}
	return seccomp.Hash(seccomp.Options{AllowWrittenExecutables: cfg.AllowWrittenExecutables})
}

func readInt(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	var n int
	_, _ = fmt.Sscan(strings.TrimSpace(string(b)), &n)
	return n
}

// gpuAttributes describes the node's NVIDIA GPUs as the driver sees them
// (/proc/driver/nvidia): driver.modelbox.gpu.count, .models (the distinct
// model names, sorted, comma-separated) and .driver_version; none on a node
// without an NVIDIA driver or GPU. The device plugin (nomad-device-nvidia)
// reports each GPU's memory and the like as device attributes.
func gpuAttributes(h nvidia.Host) map[string]*pstructs.Attribute {
	gpus, err := h.GPUs()
	if err != nil || len(gpus) == 0 {
		return nil
	}
	var models []string
	for _, g := range gpus {
		if !slices.Contains(models, g.Model) {
			models = append(models, g.Model)
		}
	}
	slices.Sort(models)
	attrs := map[string]*pstructs.Attribute{
		"driver.modelbox.gpu.count":  pstructs.NewIntAttribute(int64(len(gpus)), ""),
		"driver.modelbox.gpu.models": pstructs.NewStringAttribute(strings.Join(models, ",")),
	}
	if v, err := h.DriverVersion(); err == nil {
		attrs["driver.modelbox.gpu.driver_version"] = pstructs.NewStringAttribute(v)
	}
	return attrs
}

// hasGPU reports an NVIDIA device node.
func hasGPU() bool {
	m, _ := filepath.Glob("/dev/nvidia[0-9]*")
	return len(m) > 0
}
