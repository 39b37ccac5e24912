package scheduler

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/redact"
	"github.com/modelnodes/modelnodes/scheduler/observer"
)

// NomadPlacements tells why Nomad could not place a job (nomad.Client).
type NomadPlacements interface {
	// PlacementFailure returns the metrics of the newest evaluation that
	// failed to place the job, nil when it placed everything.
	PlacementFailure(ctx context.Context, jobID string) (*nomadapi.AllocationMetric, error)
}

// placementsEvery is how often pending models are checked.
const placementsEvery = 10 * time.Second

// placementsPerRound bounds the evaluations read per check, so that a
// first pass over thousands of models does not read thousands of them.
const placementsPerRound = 100

// watchPlacements asks Nomad, now and every placementsEvery, why each
// model desired running that has no allocation placed (the observer sees
// it pending, or not at all) is not placed. Nomad's own verdict is the
// truth: its evaluation counts the nodes each constraint filtered and the
// resources exhausted. (Reading the nodes instead would need node:read,
// which the scheduler's token does not have.)
func (s *Scheduler) watchPlacements(ctx context.Context) {
	for {
		s.checkPlacements(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(placementsEvery):
		case <-s.placed:
			// Jobs were just written: give Nomad's scheduler a moment
			// to evaluate them.
			select {
			case <-ctx.Done():
				return
			case <-time.After(placementSettle):
			}
		}
	}
}

// placementSettle is how long after a write the evaluations are read.
const placementSettle = time.Second

// jobsWritten tells watchPlacements that a pass wrote jobs.
func (s *Scheduler) jobsWritten() {
	select {
	case s.placed <- struct{}{}:
	default:
	}
}

func (s *Scheduler) checkPlacements(ctx context.Context) {
	placed := map[string]bool{}
	for _, st := range s.Observer.States() {
		if st.State != observer.StatePending {
			placed[st.JobID] = true
		}
	}
	notes := s.pythonNotes()
	desired, _ := s.watcher.Desired()
	blocked := map[string]string{}
	n := 0
	for _, id := range slices.Sorted(maps.Keys(desired)) {
		d := desired[id]
		note := notes[id]
		if !d.Model.Running || placed[id] || note.wait {
			continue // not to run, placed, or not written (waiting for its code)
		}
		if n++; n > placementsPerRound {
			break
		}
		m, err := s.Placements.PlacementFailure(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.Logger.Debug("cannot read why a job is not placed", "job", id, "error", redact.Error(err))
			continue
		}
		why := ""
		if note.python != "" {
			why = pythonBlocked(m, note.python)
		}
		if why == "" {
			why = placementFailure(m)
		}
		if why != "" {
			blocked[id] = why
		}
	}
	s.mu.Lock()
	s.blocked = blocked
	s.mu.Unlock()
}

// placementNotes returns why Nomad does not place the pending models, by
// job id (checkPlacements).
func (s *Scheduler) placementNotes() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.blocked
}

// placementFailure says why Nomad's evaluation placed nothing, from its
// metrics, as `nomad job status` shows a placement failure; "" for none.
func placementFailure(m *nomadapi.AllocationMetric) string {
	if m == nil {
		return ""
	}
	var parts []string
	if m.NodesEvaluated == 0 {
		parts = append(parts, "no node is ready in the job's datacenters and node pool")
	}
	for _, c := range slices.Sorted(maps.Keys(m.ConstraintFiltered)) {
		parts = append(parts, fmt.Sprintf("constraint %s filtered %d", c, m.ConstraintFiltered[c]))
	}
	for _, c := range slices.Sorted(maps.Keys(m.ClassFiltered)) {
		parts = append(parts, fmt.Sprintf("class %q filtered %d", c, m.ClassFiltered[c]))
	}
	if m.NodesExhausted > 0 {
		parts = append(parts, fmt.Sprintf("resources exhausted on %d", m.NodesExhausted))
	}
	for _, d := range slices.Sorted(maps.Keys(m.DimensionExhausted)) {
		parts = append(parts, fmt.Sprintf("dimension %q exhausted on %d", d, m.DimensionExhausted[d]))
	}
	for _, q := range m.QuotaExhausted {
		parts = append(parts, fmt.Sprintf("quota %q exhausted", q))
	}
	if len(parts) == 0 {
		parts = append(parts, fmt.Sprintf("%d filtered", m.NodesFiltered))
	}
	return fmt.Sprintf("not placed by Nomad (nodes evaluated: %d): %s", m.NodesEvaluated, strings.Join(parts, "; "))
}

// recount is the Observer's Metrics while the Scheduler keeps the models
// gauge: the observer's counts ask for a recount (countModels).
type recount struct {
	observer.Metrics
	s *Scheduler
}

// ModelStates implements observer.Metrics.
func (r recount) ModelStates(map[string]int) {
	select {
	case r.s.recountC <- struct{}{}:
	default:
	}
}

// countModels keeps the models gauge: the observer's states, and the models
// desired running that Nomad has no allocation of as pending (the observer
// only sees jobs with allocations). It counts when the observer's states
// change (at most every 200 ms) and every 2 s (the desired state changes).
func (s *Scheduler) countModels(ctx context.Context) {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		counts := map[string]int{}
		seen := map[string]bool{}
		for _, st := range s.Observer.States() {
			counts[st.State]++
			seen[st.JobID] = true
		}
		for id := range s.watcher.runningIDs() {
			if !seen[id] {
				counts[observer.StatePending]++
			}
		}
		s.stateMetrics.ModelStates(counts)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-s.recountC:
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}
