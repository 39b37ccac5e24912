package quarantine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
)

// Restarter restarts a job's allocations (nomad.Client).
type Restarter interface {
	// RestartAllocations restarts the tasks of the job's running
	// allocations in place and returns how many it restarted.
	RestartAllocations(ctx context.Context, jobID string) (int, error)
}

// Holds is where an engine writes quarantines (Store).
type Holds interface {
	// Cached returns the quarantines as last read, by job id.
	Cached() (map[string]Record, bool)
	// Create writes r unless its job is quarantined already (ErrExists).
	Create(ctx context.Context, r Record) error
}

// Report is one failure a coordinator reported, as the orchestrator
// WebSocket received it after authenticating the coordinator.
type Report struct {
	// Crunch is the crunch (name) of the WebSocket's URL, which the
	// coordinator's certificate and key were checked against.
	Crunch string
	// Coordinator is the hash of the coordinator's key, Peer its address.
	Coordinator, Peer string
	// ModelID is the model's id as announced (its short id), Code the
	// failure code and Reason the coordinator's failure_reason.
	ModelID, Code, Reason string
}

// Outcomes of a report: the action label of the actions metric.
const (
	OutcomeCount          = "count"               // counted only
	OutcomeRestart        = "restart"             // its allocations restarted
	OutcomeRestartSkipped = "restart_skipped"     // restarted less than RestartInterval ago
	OutcomeQuarantine     = "quarantine"          // quarantined now
	OutcomeQuarantined    = "already_quarantined" // quarantined before
	OutcomeRefused        = "refused"             // not a model of the crunch
	OutcomeError          = "error"               // Nomad or Consul failed
)

// EngineConfig names an Engine's inputs.
type EngineConfig struct {
	// Policies are the crunches' policies (nil: DefaultConfig).
	Policies *Config
	Store    Holds
	Nomad    Restarter
	// Lookup returns the desired model of a job id (the scheduler's
	// desired state): only a model the desired state gives to the
	// reporting crunch is acted on.
	Lookup func(jobID string) (jobs.Model, bool)
	// OnQuarantine is called after a quarantine is written (the local
	// scheduler reconciles at once).
	OnQuarantine func()
	Logger       hclog.Logger
	// Registerer receives the actions counter; nil keeps it private.
	Registerer prometheus.Registerer
	// Now is the clock (tests); time.Now when nil.
	Now func() time.Time
}

// Engine applies the crunches' policies to their coordinators' reports.
type Engine struct {
	cfg     EngineConfig
	log     hclog.Logger
	actions *prometheus.CounterVec

	mu     sync.Mutex
	models map[string]*history // by job id
}

// history is what the engine remembers of a model's reports.
type history struct {
	reports     []time.Time // reports of restart codes within the window
	lastRestart time.Time
}

// NewEngine returns an engine.
func NewEngine(cfg EngineConfig) (*Engine, error) {
	if cfg.Store == nil || cfg.Nomad == nil || cfg.Lookup == nil {
		return nil, errors.New("quarantine: an engine needs a store, Nomad and the desired state")
	}
	if cfg.Policies == nil {
		cfg.Policies = DefaultConfig()
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	e := &Engine{cfg: cfg, log: cfg.Logger, models: map[string]*history{},
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modelnodes_orchestrator_report_actions_total",
			Help: "What coordinators' failure reports did, by crunch and action (count, restart, restart_skipped, quarantine, already_quarantined, refused, error).",
		}, []string{"crunch", "action"}),
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(e.actions); err != nil {
			return nil, fmt.Errorf("quarantine metrics: %w", err)
		}
	}
	return e, nil
}

// Policies returns the crunches' policies.
func (e *Engine) Policies() *Config { return e.cfg.Policies }

// Report applies the crunch's policy to one report and returns its
// outcome. It writes to Nomad or Consul at most once per report, and only
// for a model of the crunch.
func (e *Engine) Report(ctx context.Context, r Report) string {
	out := e.report(ctx, r)
	e.actions.WithLabelValues(r.Crunch, out).Inc()
	return out
}

func (e *Engine) report(ctx context.Context, r Report) string {
	jobID := names.Job(r.ModelID)
	m, ok := e.cfg.Lookup(jobID)
	if !names.IsLabel(r.ModelID, 63) || !ok || m.Crunch != r.Crunch {
		// orchws already refuses models it never announced to the crunch;
		// this is the scheduler's own word, whatever Consul holds.
		e.log.Warn("refusing a failure report: the crunch has no such model", "crunch", r.Crunch, "model_id", r.ModelID, "coordinator", r.Coordinator)
		return OutcomeRefused
	}
	log := e.log.With("crunch", r.Crunch, "job", jobID, "model", m.ModelID, "failure_code", r.Code, "coordinator", r.Coordinator)
	if recs, _ := e.cfg.Store.Cached(); recs != nil {
		if _, held := recs[jobID]; held {
			return OutcomeQuarantined
		}
	}
	pol := e.cfg.Policies.For(r.Crunch)
	now := e.cfg.Now()
	switch pol.Action(r.Code) {
	case ActionQuarantine:
		return e.quarantine(ctx, log, r, m, jobID, 1, r.Reason)
	case ActionRestart:
	default:
		return OutcomeCount
	}

	e.mu.Lock()
	h := e.models[jobID]
	if h == nil {
		h = &history{}
		e.models[jobID] = h
	}
	kept := h.reports[:0]
	for _, t := range h.reports {
		if now.Sub(t) < pol.Window {
			kept = append(kept, t)
		}
	}
	h.reports = append(kept, now)
	n := len(h.reports)
	escalate := pol.QuarantineAfter > 0 && n >= pol.QuarantineAfter
	restart := !escalate && (h.lastRestart.IsZero() || now.Sub(h.lastRestart) >= pol.RestartInterval)
	if restart {
		h.lastRestart = now // before the call: a concurrent report does not restart again
	}
	e.prune(now, pol.Window)
	e.mu.Unlock()

	switch {
	case escalate:
		reason := fmt.Sprintf("%d reports within %s; last: %s", n, pol.Window, r.Reason)
		return e.quarantine(ctx, log, r, m, jobID, n, reason)
	case !restart:
		log.Info("failure report: restarted recently; not restarting again", "reports_in_window", n, "restart_interval", pol.RestartInterval)
		return OutcomeRestartSkipped
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	count, err := e.cfg.Nomad.RestartAllocations(rctx, jobID)
	if err != nil {
		log.Error("failure report: restarting the model's allocations failed", "error", err)
		return OutcomeError
	}
	log.Warn("failure report: restarted the model's allocations", "allocations", count, "reports_in_window", n, "quarantine_after", pol.QuarantineAfter)
	return OutcomeRestart
}

// prune forgets models with no report within window (e.mu held), so the
// memory stays bounded by the models reported recently.
func (e *Engine) prune(now time.Time, window time.Duration) {
	if len(e.models) < 1024 {
		return
	}
	for id, h := range e.models {
		if len(h.reports) == 0 || now.Sub(h.reports[len(h.reports)-1]) >= window && now.Sub(h.lastRestart) >= window {
			delete(e.models, id)
		}
	}
}

func (e *Engine) quarantine(ctx context.Context, log hclog.Logger, r Report, m jobs.Model, jobID string, reports int, reason string) string {
	rec := Record{JobID: jobID, Key: jobs.Key(&m), Crunch: r.Crunch, ModelID: m.ModelID, Code: r.Code, Reason: shorten(reason), Reports: reports,
		Coordinator: r.Coordinator, Peer: r.Peer, At: e.cfg.Now().UTC().Truncate(time.Second), Submission: Fingerprint(m)}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := e.cfg.Store.Create(wctx, rec)
	switch {
	case errors.Is(err, ErrExists):
		return OutcomeQuarantined
	case err != nil:
		log.Error("failure report: writing the quarantine failed", "error", err)
		return OutcomeError
	}
	e.Forget(jobID)
	log.Warn("failure report: model quarantined (stopped until a new submission or an operator lifts it)", "reports", reports, "reason", rec.Reason)
	if e.cfg.OnQuarantine != nil {
		e.cfg.OnQuarantine()
	}
	return OutcomeQuarantine
}

// Forget drops what the engine remembers of a job's reports (its
// quarantine began or was lifted: counting starts over).
func (e *Engine) Forget(jobID string) {
	e.mu.Lock()
	delete(e.models, jobID)
	e.mu.Unlock()
}

// shorten bounds a coordinator's text kept in a record.
func shorten(s string) string {
	if len(s) > 300 {
		return strings.ToValidUTF8(s[:300], "") + "..."
	}
	return strings.ToValidUTF8(s, "")
}
