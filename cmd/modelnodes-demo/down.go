package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/procfs"
	"github.com/modelnodes/modelnodes/internal/testing/leftovers"
	"github.com/modelnodes/modelnodes/names"
)

// down stops everything a demo started, in order: a demo still running
// elsewhere (it tears down itself), the scheduler (so nothing re-registers),
// the models' jobs (so the driver removes their sandboxes and cgroups), the
// Solana front and the artifact server, then the dev cluster. It checks that
// nothing is left running or listening. Safe to run at any point, twice.
func (d *demo) down(ctx context.Context, standalone bool) error {
	if _, err := os.Stat(d.path(".modelnodes-demo")); err != nil {
		if standalone {
			d.progress("nothing to stop (%s is not a demo state dir)", d.o.state)
		}
		return nil
	}
	offset := d.o.offset
	if b, err := os.ReadFile(d.path("state.json")); err == nil {
		var rec record
		if json.Unmarshal(b, &rec) == nil {
			offset = rec.Offset
		}
	}
	if standalone {
		if pid := livePid(d.path("demo.pid")); pid != 0 && pid != os.Getpid() {
			d.progress("a demo is running (pid %d): asking it to stop and tear down", pid)
			_ = syscall.Kill(pid, syscall.SIGTERM)
			deadline := time.Now().Add(3 * time.Minute)
			for procfs.Running(pid) && time.Now().Before(deadline) {
				if err := sleep(ctx, 200*time.Millisecond); err != nil {
					return err
				}
			}
			if procfs.Running(pid) {
				d.progress("the demo (pid %d) did not stop within 3 minutes; killing it and finishing its teardown", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	var errs []error
	stop := func(name string, pidFile string) {
		pid, err := stopPidFile(pidFile, 10*time.Second)
		if pid != 0 {
			d.detail("%s stopped (pid %d)", name, pid)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	stop("scheduler", d.path("scheduler", "scheduler.pid"))

	// The jobs, while Nomad is up: their tasks stop cleanly.
	var allocs []string
	nomadUp := agentRunning(filepath.Join(d.path("cluster"), "nomad", "pid"))
	if c, err := d.openCluster(); err == nil && nomadUp {
		ids, err := stopJobs(ctx, c.nomad)
		if err != nil {
			errs = append(errs, err)
		}
		allocs = ids
		rememberAllocs(d.path("allocs"), ids)
		if len(ids) > 0 {
			d.detail("models' jobs purged, their %d allocation(s) stopped", len(ids))
		}
	} else if nomadUp {
		// started, but up did not finish writing the env file: the cluster's
		// down below ends the tasks.
		d.detail("the dev cluster did not finish starting; its teardown stops the tasks")
	}
	stop("Solana front", d.path("solana", "front.pid"))
	stop("artifact server", d.path("artifacts", "artifacts.pid"))

	if _, err := os.Stat(d.path("cluster", ".modelnodes-dev")); err == nil {
		cmd := exec.CommandContext(ctx, filepath.Join(d.repo, "deploy", "dev", "down"))
		cmd.Env = append(os.Environ(), "MODELNODES_STATE="+d.path("cluster"), "DEV_PORT_OFFSET="+strconv.Itoa(offset))
		out, err := cmd.CombinedOutput()
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if l != "" {
				d.detail("%s", l)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("deploy/dev/down: %w", err))
		}
	}
	allocs = append(append(allocs, leftovers.AllocIDs(d.path("cluster"))...), rememberedAllocs(d.path("allocs"))...)
	// An allocation whose task the agent had not destroyed yet when it
	// stopped (deploy/dev/down knows only those whose dirs remain) leaves
	// its modelbox groups, empty: remove them.
	for _, g := range leftovers.ModelboxCgroups(allocs) {
		leftovers.RemoveEmptyTree(g)
		if _, err := os.Stat(g); err != nil {
			d.detail("removed %s (its task was not destroyed before Nomad stopped)", g)
		}
	}
	if left := leftovers.ModelboxCgroups(allocs); len(left) > 0 {
		errs = append(errs, fmt.Errorf("modelbox cgroups left: %s", strings.Join(left, " ")))
	}

	// Nothing of ours may be left.
	ports := []int{baseSolanaPort + offset, baseArtifactPort + offset, baseSchedulerPort + offset}
	if b, err := os.ReadFile(d.path("cluster", "ports")); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				ports = append(ports, p)
			}
		}
	}
	if busy := leftovers.Listening(ports); len(busy) > 0 {
		errs = append(errs, fmt.Errorf("still listening on 127.0.0.1 ports %v (ss -ltnp shows by whom)", busy))
	}
	if pids := leftovers.Processes(d.o.state); len(pids) > 0 {
		errs = append(errs, fmt.Errorf("processes still running in %s: %v", d.o.state, pids))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	d.detail("nothing left: no demo process, no listening port (%d checked), no modelbox cgroup", len(ports))
	return nil
}

// agentRunning reads a pid file of deploy/dev/up (a bare pid) and reports
// whether that process runs.
func agentRunning(pidFile string) bool {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return err == nil && procfs.Running(pid)
}

// stopJobs purges the models' jobs and waits until their allocations have
// stopped; it returns the allocation ids.
func stopJobs(ctx context.Context, nc *nomadapi.Client) ([]string, error) {
	list, _, err := nc.Jobs().PrefixList(names.JobPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing the models' jobs: %w", err)
	}
	var ids []string
	for _, j := range list {
		allocs, _, _ := nc.Jobs().Allocations(j.ID, true, nil)
		for _, a := range allocs {
			ids = append(ids, a.ID)
		}
		if _, _, err := nc.Jobs().Deregister(j.ID, true, nil); err != nil {
			return ids, fmt.Errorf("purging job %s: %w", j.ID, err)
		}
	}
	deadline := time.Now().Add(45 * time.Second)
	for _, id := range ids {
		for {
			a, _, err := nc.Allocations().Info(id, nil)
			if err != nil || a.ClientTerminalStatus() {
				break
			}
			if time.Now().After(deadline) {
				return ids, fmt.Errorf("allocation %s still %s after 45 s", id, a.ClientStatus)
			}
			if err := sleep(ctx, 200*time.Millisecond); err != nil {
				return ids, err
			}
		}
	}
	return ids, nil
}

// rememberAllocs appends allocation ids to a file: the cgroup check after
// the cluster is gone (Nomad removes its alloc dirs) needs them.
func rememberAllocs(path string, ids []string) {
	if len(ids) == 0 {
		return
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, strings.Join(ids, "\n"))
}

func rememberedAllocs(path string) []string {
	b, _ := os.ReadFile(path)
	return strings.Fields(string(b))
}
