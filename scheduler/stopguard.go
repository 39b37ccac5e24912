package scheduler

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
)

// StopGuard holds the stops of a pass that would stop more than MaxShare
// of a crunch's running models (and at least MinModels of them): whatever
// the sources say, so many stops at once more likely come from a fault
// (a chain node that lost its state, a feed answering nothing) than from
// the crunch. A hold is reported (Holds, the status API, the held_stops
// gauge, a warning) and its stops are made only once the passes have
// wanted them for Hold, or when an operator confirms them (Confirm). A
// pass that no longer wants them ends the hold. Crash-loop stops are never
// held.
type StopGuard struct {
	// MaxShare is the share of a crunch's running models one pass may stop
	// without a hold: 0.5 holds a pass that would stop 3 of 4. 1 or more
	// turns the guard off.
	MaxShare float64
	// Hold is how long the held stops must be wanted before they are made;
	// 0: only an operator's confirmation makes them.
	Hold time.Duration
	// MinModels is the fewest stops of one crunch that can be held
	// (default 2): a single stop rests on its own authorization's evidence.
	MinModels int
	Logger    hclog.Logger
	Metrics   *Metrics

	mu    sync.Mutex
	holds map[string]*StopHold // by crunch
}

// StopHold is one crunch's held stops, as the status API shows them.
type StopHold struct {
	// Crunch is the crunch's id (the jobs' meta "crunch"), CrunchName its name.
	Crunch     string `json:"crunch"`
	CrunchName string `json:"crunch_name,omitempty"`
	// Jobs are the jobs whose stop is held, Running the crunch's running
	// jobs (the share is len(Jobs)/Running).
	Jobs    []string `json:"jobs"`
	Running int      `json:"running"`
	// Since is when the hold began; Until when its stops are made if the
	// passes still want them (zero: only a confirmation makes them).
	Since     time.Time `json:"since"`
	Until     time.Time `json:"until,omitzero"`
	Confirmed bool      `json:"confirmed,omitempty"`
}

// ErrNoHold is Confirm's error when there is no hold to confirm.
var ErrNoHold = errors.New("no stops are held")

func (g *StopGuard) log() hclog.Logger {
	if g.Logger == nil {
		return hclog.NewNullLogger()
	}
	return g.Logger
}

// filter returns actions without the stops it holds, and how many it held.
// jobs are Nomad's jobs the plan was made from.
func (g *StopGuard) filter(actions []Action, jobs []nomad.JobStub, now time.Time) ([]Action, int) {
	if g == nil || g.MaxShare >= 1 {
		return actions, 0
	}
	minModels := g.MinModels
	if minModels <= 0 {
		minModels = 2
	}
	crunchOf := map[string]string{}
	crunchName := map[string]string{}
	running := map[string]int{}
	for _, j := range jobs {
		if j.Meta[names.MetaManaged] != "true" {
			continue
		}
		c := j.Meta[names.MetaCrunch]
		crunchOf[j.ID], crunchName[c] = c, j.Meta[names.MetaCrunchName]
		if !j.Stop {
			running[c]++
		}
	}
	stops := map[string][]string{}
	for _, a := range actions {
		if guarded(a) {
			c := crunchOf[a.JobID]
			stops[c] = append(stops[c], a.JobID)
		}
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	if g.holds == nil {
		g.holds = map[string]*StopHold{}
	}
	log := g.log()
	held := map[string]bool{}
	started := 0
	for _, c := range slices.Sorted(maps.Keys(stops)) {
		ids := stops[c]
		if len(ids) < minModels || float64(len(ids)) <= g.MaxShare*float64(running[c]) {
			g.end(c, "the pass no longer stops more than the allowed share")
			continue
		}
		h := g.holds[c]
		if h == nil {
			h = &StopHold{Crunch: c, Since: now}
			if g.Hold > 0 {
				h.Until = now.Add(g.Hold)
			}
			g.holds[c] = h
			started++
			log.Warn("holding stops: the pass would stop too large a share of a crunch's models",
				"crunch", c, "crunch_name", crunchName[c], "stops", len(ids), "running", running[c],
				"max_share", g.MaxShare, "until", untilText(h.Until))
		}
		h.Jobs, h.Running, h.CrunchName = ids, running[c], crunchName[c]
		switch {
		case h.Confirmed:
			log.Warn("making held stops: an operator confirmed them", "crunch", c, "stops", len(ids))
		case !h.Until.IsZero() && !now.Before(h.Until):
			log.Warn("making held stops: wanted for the whole hold", "crunch", c, "stops", len(ids), "held_for", now.Sub(h.Since).Round(time.Second))
		default:
			for _, id := range ids {
				held[id] = true
			}
			continue
		}
		delete(g.holds, c)
	}
	for c := range g.holds {
		if _, ok := stops[c]; !ok {
			g.end(c, "the pass stops none of them any more")
		}
	}
	g.Metrics.stopsHeld(len(held), started)
	if len(held) == 0 {
		return actions, 0
	}
	out := make([]Action, 0, len(actions)-len(held))
	for _, a := range actions {
		if guarded(a) && held[a.JobID] {
			continue
		}
		out = append(out, a)
	}
	return out, len(held)
}

// guarded reports whether the guard weighs a: the stops of running jobs,
// a quarantine's included (a coordinator that reports every model of its
// crunch more likely lost its network than every model its mind), but not
// crash-loop stops.
func guarded(a Action) bool {
	return a.Op == OpStop && a.Reason != ReasonCrashLoop || a.Op == OpQuarantine && !a.WasStopped
}

func untilText(t time.Time) string {
	if t.IsZero() {
		return "an operator confirms"
	}
	return t.UTC().Format(time.RFC3339)
}

// end ends crunch c's hold, if any; g.mu held.
func (g *StopGuard) end(c, why string) {
	if h := g.holds[c]; h != nil {
		delete(g.holds, c)
		g.log().Info("stop hold ended; nothing stopped", "crunch", c, "why", why, "held_for", time.Since(h.Since).Round(time.Second))
	}
}

// Holds returns the holds now, by crunch id.
func (g *StopGuard) Holds() []StopHold {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	out := []StopHold{}
	for _, c := range slices.Sorted(maps.Keys(g.holds)) {
		h := *g.holds[c]
		h.Jobs = slices.Clone(h.Jobs)
		out = append(out, h)
	}
	return out
}

// NextRelease is when the earliest hold ends by time (zero if none does),
// so that the leader reconciles then.
func (g *StopGuard) NextRelease() time.Time {
	if g == nil {
		return time.Time{}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var next time.Time
	for _, h := range g.holds {
		if !h.Until.IsZero() && (next.IsZero() || h.Until.Before(next)) {
			next = h.Until
		}
	}
	return next
}

// Confirm marks the hold of crunch (its id or name; "" for every hold)
// confirmed: the next pass makes its stops if it still wants them. It
// returns the holds confirmed, or ErrNoHold.
func (g *StopGuard) Confirm(crunch string) ([]StopHold, error) {
	if g == nil {
		return nil, ErrNoHold
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []StopHold
	for _, c := range slices.Sorted(maps.Keys(g.holds)) {
		h := g.holds[c]
		if crunch != "" && crunch != h.Crunch && crunch != h.CrunchName {
			continue
		}
		h.Confirmed = true
		g.log().Warn("held stops confirmed by an operator", "crunch", h.Crunch, "stops", len(h.Jobs))
		c := *h
		c.Jobs = slices.Clone(h.Jobs)
		out = append(out, c)
	}
	if len(out) == 0 {
		if crunch != "" {
			return nil, fmt.Errorf("%w for crunch %q", ErrNoHold, crunch)
		}
		return nil, ErrNoHold
	}
	return out, nil
}

// Reset forgets every hold (a new leadership starts them over: what
// another leader did meanwhile is not known).
func (g *StopGuard) Reset() {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.holds = nil
	g.mu.Unlock()
	g.Metrics.stopsHeld(0, 0)
}
