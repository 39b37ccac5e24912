package driver

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/nomad/plugins/drivers"
	pstructs "github.com/hashicorp/nomad/plugins/shared/structs"
	"github.com/shoenig/go-landlock"

	"github.com/modelnodes/modelnodes/driver/cgroup"
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
	abi, err := landlock.Detect()
	if err != nil {
		abi = 0
	}
	attrs["driver.modelbox.landlock_abi"] = pstructs.NewIntAttribute(int64(abi), "")
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
		}
	}
	return fp
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

// hasGPU reports an NVIDIA device node.
func hasGPU() bool {
	m, _ := filepath.Glob("/dev/nvidia[0-9]*")
	return len(m) > 0
}
