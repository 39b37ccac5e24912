package driver

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/nomad/client/structs"
	"github.com/hashicorp/nomad/plugins/drivers"
)

// TaskStats streams the task's CPU and memory use, read from its cgroups.
func (d *Driver) TaskStats(ctx context.Context, id string, interval time.Duration) (<-chan *drivers.TaskResourceUsage, error) {
	h, err := d.task(id)
	if err != nil {
		return nil, err
	}
	ch := make(chan *drivers.TaskResourceUsage)
	go func() {
		defer close(ch)
		var lastCPU uint64
		var lastAt time.Time
		t := time.NewTimer(0)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-d.ctx.Done():
				return
			case <-h.done:
				return
			case <-t.C:
				t.Reset(interval)
			}
			u, err := h.iso.Usage()
			if err != nil {
				h.log.Debug("reading task usage", "error", err)
				continue
			}
			now := time.Now()
			percent := 0.0
			if !lastAt.IsZero() && u.CPUTotalNanos >= lastCPU {
				percent = float64(u.CPUTotalNanos-lastCPU) / float64(now.Sub(lastAt).Nanoseconds()) * 100
			}
			lastCPU, lastAt = u.CPUTotalNanos, now
			usage := &drivers.TaskResourceUsage{
				Timestamp: now.UnixNano(),
				ResourceUsage: &structs.ResourceUsage{
					MemoryStats: &structs.MemoryStats{
						RSS: u.MemoryRSS, Usage: u.MemoryUsage, MaxUsage: u.MemoryMaxUsage,
						Measured: []string{"RSS", "Usage", "Max Usage"},
					},
					CpuStats: &structs.CpuStats{
						UserMode: float64(u.CPUUserNanos), SystemMode: float64(u.CPUSystemNanos), Percent: percent,
						ThrottledPeriods: u.ThrottledPeriods, ThrottledTime: u.ThrottledNanos,
						Measured: []string{"User Mode", "System Mode", "Percent", "Throttled Periods", "Throttled Time"},
					},
				},
			}
			select {
			case ch <- usage:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// watchOOM reports, as task events, each time the kernel kills the model
// worker for exceeding its memory limit (the runner restarts it).
func (d *Driver) watchOOM(h *taskHandle) {
	var seen uint64
	if u, err := h.iso.Usage(); err == nil {
		seen = u.WorkerOOMKills
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-h.done:
			return
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		u, err := h.iso.Usage()
		if err != nil || u.WorkerOOMKills <= seen {
			continue
		}
		n := u.WorkerOOMKills - seen
		seen = u.WorkerOOMKills
		d.emit(h.cfg, fmt.Sprintf("Model worker killed: out of memory (%d kill(s)); the runner restarts it", n),
			map[string]string{"oom_kills": fmt.Sprint(seen)})
		h.log.Warn("model worker killed for exceeding its memory limit", "oom_kills", seen)
	}
}
