package scheduler

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/redact"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/scheduler/observer"
)

// NomadPlacements tells why Nomad could not place a job (nomad.Client).
type NomadPlacements interface {
	// PlacementFailure returns the metrics of the newest evaluation that
	// failed to place the job, nil when it placed everything.
	PlacementFailure(ctx context.Context, jobID string) (*nomadapi.AllocationMetric, error)
}

// placementsEvery is how often pending models with a python request are
// checked.
const placementsEvery = 10 * time.Second

// pythonNote is what the status API says of a model's Python.
type pythonNote struct {
	python string // the request
	state  string // overrides a pending state when set
	reason string
}

// watchPlacements asks Nomad, now and every placementsEvery, why each
// model that asks for a Python and that the observer sees pending (no
// allocation) is not placed. Nomad's own verdict is the truth: its
// evaluation counts the nodes the python constraint filtered. (Reading the
// nodes' attributes instead would need node:read, which the scheduler's
// token does not have.)
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
	blocked := map[string]string{}
	for id, n := range s.pythonNotes() {
		if n.python == "" || n.state != "" || placed[id] {
			continue
		}
		m, err := s.Placements.PlacementFailure(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.Logger.Debug("cannot read why a job is not placed", "job", id, "error", redact.Error(err))
			continue
		}
		if why := pythonBlocked(m, n.python); why != "" {
			blocked[id] = why
		}
	}
	s.mu.Lock()
	s.blocked = blocked
	s.mu.Unlock()
}

// pythonBlocked says how an evaluation's failure is the python
// constraint's, or "" when it is not.
func pythonBlocked(m *nomadapi.AllocationMetric, request string) string {
	if m == nil {
		return ""
	}
	python, other := 0, 0
	for c, n := range m.ConstraintFiltered {
		if strings.Contains(c, names.AttrPythonVersions) {
			python += n
		} else {
			other += n
		}
	}
	switch {
	case python == 0:
		return ""
	case other == 0 && m.NodesFiltered == m.NodesEvaluated:
		// Nodes of one computed class are filtered once by the constraint
		// and then by class (ClassFiltered): all filtered, only by python.
		return fmt.Sprintf("no node has a python matching %s (nodes evaluated: %d)", request, m.NodesEvaluated)
	}
	return fmt.Sprintf("not placed: nodes without a python matching %s: %d of %d evaluated", request, python, m.NodesEvaluated)
}

// readPythons completes desired with what each running model's code asks for
// (Scheduler.Inspector): the Python its job is constrained to, or why the
// job waits. It reads only the Inspector's cache (a fetch runs in the
// background and kicks a new pass when done), so one slow archive never
// holds the pass up for the others.
func (s *Scheduler) readPythons(ctx context.Context, desired map[string]*Desired) {
	if s.Inspector == nil {
		return
	}
	notes := map[string]pythonNote{}
	for id, d := range desired {
		m := &d.Model
		if !m.Running || m.ArtifactURL == "" {
			continue
		}
		a := s.Inspector.Lookup(ctx, m.ArtifactURL, m.ArtifactSHA256)
		switch {
		case !a.Ready:
			d.Wait = "reading the submission's code archive"
			notes[id] = pythonNote{reason: d.Wait}
		case a.Err != nil:
			d.Wait = "the submission's python request is refused: " + a.Err.Error()
			notes[id] = pythonNote{state: observer.StateFailed, reason: d.Wait}
		case a.FetchErr != nil:
			notes[id] = pythonNote{reason: "python request unknown, placed without a python constraint: " + a.FetchErr.Error()}
		case a.Python.Any():
		default:
			d.Python = jobs.Python{Request: a.Python.String(), Regexp: a.Regexp}
			d.Spec = jobs.SpecWithPython(d.Spec, d.Python)
			notes[id] = pythonNote{python: d.Python.Request}
		}
	}
	s.mu.Lock()
	s.notes = notes
	s.mu.Unlock()
}

// pythonNotes returns the last pass's notes.
func (s *Scheduler) pythonNotes() map[string]pythonNote {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notes
}

// placementNotes returns why Nomad does not place the pending models, by
// job id (checkPlacements).
func (s *Scheduler) placementNotes() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.blocked
}

// annotate adds a model's python note to its status: the request, and the
// reason when the model is not running (pending or waiting), with why Nomad
// does not place it (blocked) when that is the python constraint.
func annotate(ms *ModelStatus, n pythonNote, ok bool, blocked string) {
	if !ok {
		return
	}
	ms.Python = n.python
	if n.reason == "" {
		n.reason = blocked
	}
	if n.reason == "" || !slices.Contains([]string{observer.StatePending, ""}, ms.State) {
		return
	}
	if n.state != "" {
		ms.State = n.state
	}
	ms.Reason = n.reason
}
