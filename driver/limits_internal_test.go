package driver

import (
	"runtime"
	"testing"

	"github.com/hashicorp/nomad/plugins/drivers"
)

// A task gets a hard CPU cap by default: Nomad's own quota (cores, or the
// job's cpu_hard_limit) when it sends one, else its share of the node;
// cpu_hard_limit = false lets it burst into idle CPU.
func TestLimitsCapTheCPU(t *testing.T) {
	cores := float64(runtime.NumCPU())
	for name, tc := range map[string]struct {
		lr        drivers.LinuxResources
		hardLimit bool
		quota     int64
		period    uint64
	}{
		"half a core of the node's share":   {drivers.LinuxResources{CPUShares: 500, PercentTicks: 0.5 / cores}, true, 50_000, 100_000},
		"two cores":                         {drivers.LinuxResources{CPUShares: 2000, PercentTicks: 2 / cores}, true, 200_000, 100_000},
		"Nomad's quota wins":                {drivers.LinuxResources{CPUShares: 500, PercentTicks: 0.5 / cores, CPUQuota: 30_000, CPUPeriod: 50_000}, true, 30_000, 50_000},
		"a sliver still gets the minimum":   {drivers.LinuxResources{CPUShares: 1, PercentTicks: 1e-9}, true, 1000, 100_000},
		"bursting allowed: shares only":     {drivers.LinuxResources{CPUShares: 500, PercentTicks: 0.5 / cores}, false, 0, 0},
		"bursting allowed, Nomad's quota":   {drivers.LinuxResources{CPUShares: 500, CPUQuota: 30_000, CPUPeriod: 50_000}, false, 30_000, 50_000},
		"no share known: nothing to derive": {drivers.LinuxResources{CPUShares: 500}, true, 0, 0},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := &drivers.TaskConfig{Resources: &drivers.Resources{LinuxResources: &tc.lr}}
			l := limitsOf(cfg, &Config{CPUHardLimit: tc.hardLimit})
			// PercentTicks × cores is a float: allow a microsecond of rounding.
			if d := l.CPUQuotaMicros - tc.quota; d < -1 || d > 1 || l.CPUPeriodMicros != tc.period {
				t.Errorf("quota %d/%d µs, want %d/%d", l.CPUQuotaMicros, l.CPUPeriodMicros, tc.quota, tc.period)
			}
			if l.CPUShares != uint64(tc.lr.CPUShares) {
				t.Errorf("shares %d, want %d", l.CPUShares, tc.lr.CPUShares)
			}
		})
	}
}

// The model's writable space: the task's disk_mb, else the plugin's, else
// the default.
func TestDiskBytes(t *testing.T) {
	for _, tc := range []struct {
		task, plugin int
		want         int64
	}{
		{0, 0, DefaultDiskMB << 20},
		{0, 100, 100 << 20},
		{300, 100, 300 << 20},
	} {
		if got := diskBytes(&TaskConfig{DiskMB: tc.task}, &Config{DiskMB: int64(tc.plugin)}); got != tc.want {
			t.Errorf("task %d MiB, plugin %d MiB: %d bytes, want %d", tc.task, tc.plugin, got, tc.want)
		}
	}
}
