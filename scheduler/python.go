package scheduler

import (
	"context"
	"fmt"
	"slices"
	"strings"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/scheduler/observer"
)

// pythonNote is what the status API says of a model's Python.
type pythonNote struct {
	python string // the request
	state  string // overrides a pending state when set
	reason string
	wait   bool // the job is neither written nor stopped (Desired.Wait)
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
			notes[id] = pythonNote{reason: d.Wait, wait: true}
		case a.Err != nil:
			d.Wait = "the submission's python request is refused: " + a.Err.Error()
			notes[id] = pythonNote{state: observer.StateFailed, reason: d.Wait, wait: true}
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
