package main

import (
	"fmt"
	"sort"
	"strings"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/names"
)

// envWatch follows the environment builds of the models' allocations, as an
// operator would: the modelbox driver's task events, whose details carry
// the build's stage (names.EventEnvironment).
type envWatch struct {
	d      *demo
	nomad  *nomadapi.Client
	shown  map[string]int64  // model id → time (ns) of the newest event shown
	began  map[string]bool   // model id → its build was announced
	built  map[string]string // model id → how long its build took
	failed map[string]string // model id → why its build failed
}

func newEnvWatch(d *demo, nc *nomadapi.Client) *envWatch {
	return &envWatch{d: d, nomad: nc, shown: map[string]int64{}, began: map[string]bool{},
		built: map[string]string{}, failed: map[string]string{}}
}

// poll shows the environment events that appeared since the last poll.
func (w *envWatch) poll(models []*model) {
	for _, m := range models {
		if len(m.Requirements) == 0 {
			continue
		}
		for _, ev := range environmentEvents(w.nomad, m.JobID) {
			if ev.Time <= w.shown[m.ID] {
				continue
			}
			w.shown[m.ID] = ev.Time
			stage, msg := ev.Details[names.EventEnvironment], eventMessage(ev)
			if !w.began[m.ID] && stage != names.EnvironmentReady {
				w.began[m.ID] = true
				w.d.detail("%-10s its environment is being built from requirements.txt (%s, wheels from PyPI); the model waits for it", m.ID, strings.Join(m.Requirements, ", "))
			}
			switch stage {
			case names.EnvironmentReady:
				took := builtIn(msg)
				w.built[m.ID] = took
				w.d.detail("%-10s environment ready: built in %s (task event %q)", m.ID, took, msg)
			case names.EnvironmentFailed:
				// The build's own failure, then the driver's verdict: one line.
				if w.failed[m.ID] == "" {
					w.failed[m.ID] = oneLine(msg)
					w.d.detail("%-10s   %s", m.ID, oneLine(msg))
				}
			default:
				w.d.detail("%-10s   %s", m.ID, oneLine(msg))
			}
		}
	}
}

// summary says what each build took, for the end of the wait.
func (w *envWatch) summary(models []*model) {
	for _, m := range models {
		switch {
		case len(m.Requirements) == 0 || m.Broken:
		case w.built[m.ID] != "":
			w.d.detail("%s's environment took %s to build on this node (a cold build: every wheel downloaded); a model with the same requirements starts on it without building, sharing it read-only", m.ID, w.built[m.ID])
		case w.failed[m.ID] == "":
			w.d.detail("%s's environment was already built on this node: no build", m.ID)
		}
	}
}

// environmentEvents returns the driver's environment events of the job's
// latest allocation, oldest first.
func environmentEvents(nc *nomadapi.Client, jobID string) []*nomadapi.TaskEvent {
	allocs, _, err := nc.Jobs().Allocations(jobID, true, nil)
	if err != nil || len(allocs) == 0 {
		return nil
	}
	sort.Slice(allocs, func(i, j int) bool { return allocs[i].CreateIndex > allocs[j].CreateIndex })
	var out []*nomadapi.TaskEvent
	for _, ts := range allocs[0].TaskStates {
		for _, ev := range ts.Events {
			if ev.Details[names.EventEnvironment] != "" {
				out = append(out, ev)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Time < out[j].Time })
	return out
}

func eventMessage(ev *nomadapi.TaskEvent) string {
	if ev.DisplayMessage != "" {
		return ev.DisplayMessage
	}
	return ev.DriverMessage
}

// builtIn reads the duration of the driver's "Environment KEY built in
// 7.3s" event; the message itself when it says none.
func builtIn(msg string) string {
	_, took, ok := strings.Cut(msg, " built in ")
	if d, err := time.ParseDuration(strings.TrimSpace(took)); ok && err == nil {
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	return msg
}

// oneLine collapses a multi-line message (uv's) into one.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// shorten cuts s to at most n runes, marking the cut.
func shorten(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
