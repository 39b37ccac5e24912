// Package failures keeps per-model call accounting for the coordinator:
// consecutive failures and timeouts, totals, last error. It exports them as
// Prometheus metrics and calls a hook once when a model crosses the failing
// threshold (CrunchDAO's client reports a model after 3 failures in a row),
// so the coordinator can report or stop a persistently failing model.
package failures

import (
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcome classifies one call for accounting.
type Outcome int

const (
	Success Outcome = iota
	// Failure is any unsuccessful call that is not a timeout (model
	// error, unavailable, unauthenticated).
	Failure
	// Timeout is a call that did not answer by its deadline.
	Timeout
)

// Stats is one model's accounting.
type Stats struct {
	Calls, Failures, Timeouts int64
	// ConsecutiveFailures counts unsuccessful calls (timeouts included)
	// since the last success; ConsecutiveTimeouts only timeouts.
	ConsecutiveFailures, ConsecutiveTimeouts int
	LastError                                string
	LastSuccess, LastFailure                 time.Time
}

// Config configures a Tracker.
type Config struct {
	// Threshold is how many consecutive failures make a model failing;
	// default 3.
	Threshold int
	// OnFailing, if set, is called (in its own goroutine) when a model's
	// consecutive failures reach Threshold; again only after a success
	// reset the count.
	OnFailing func(model string, s Stats)
	// Registerer receives the metrics; nil keeps them private.
	Registerer prometheus.Registerer
}

// Tracker accounts for calls. It is safe for concurrent use.
type Tracker struct {
	cfg   Config
	mu    sync.Mutex
	stats map[string]*Stats

	calls       *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	consecutive *prometheus.GaugeVec
	failing     prometheus.Gauge
}

// New returns a Tracker.
func New(cfg Config) *Tracker {
	if cfg.Threshold <= 0 {
		cfg.Threshold = 3
	}
	t := &Tracker{
		cfg:   cfg,
		stats: map[string]*Stats{},
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modelnodes_client_calls_total",
			Help: "Calls to models by model, RPC and result status.",
		}, []string{"model", "rpc", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "modelnodes_client_call_duration_seconds",
			Help:    "Latency of calls to models by RPC (all models together).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
		}, []string{"rpc"}),
		consecutive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "modelnodes_client_consecutive_failures",
			Help: "Unsuccessful calls to a model since its last success.",
		}, []string{"model"}),
		failing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "modelnodes_client_failing_models",
			Help: "Models whose consecutive failures reached the threshold.",
		}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(t.calls, t.latency, t.consecutive, t.failing)
	}
	return t
}

// Record accounts for one call. status is the result status shown in the
// metrics (e.g. "success", "timeout").
func (t *Tracker) Record(model, rpc, status string, o Outcome, latency time.Duration, errText string) {
	t.calls.WithLabelValues(model, rpc, status).Inc()
	t.latency.WithLabelValues(rpc).Observe(latency.Seconds())
	now := time.Now()
	t.mu.Lock()
	s := t.stats[model]
	if s == nil {
		s = &Stats{}
		t.stats[model] = s
	}
	s.Calls++
	wasFailing := s.ConsecutiveFailures >= t.cfg.Threshold
	switch o {
	case Success:
		s.ConsecutiveFailures, s.ConsecutiveTimeouts = 0, 0
		s.LastSuccess = now
	case Timeout:
		s.Timeouts++
		s.ConsecutiveTimeouts++
		fallthrough
	default:
		s.Failures++
		s.ConsecutiveFailures++
		s.LastFailure, s.LastError = now, clip(errText)
		if o != Timeout {
			s.ConsecutiveTimeouts = 0
		}
	}
	isFailing := s.ConsecutiveFailures >= t.cfg.Threshold
	snapshot := *s
	t.consecutive.WithLabelValues(model).Set(float64(s.ConsecutiveFailures))
	switch {
	case isFailing && !wasFailing:
		t.failing.Inc()
	case !isFailing && wasFailing:
		t.failing.Dec()
	}
	t.mu.Unlock()
	if isFailing && !wasFailing && t.cfg.OnFailing != nil {
		go t.cfg.OnFailing(model, snapshot)
	}
}

// Stats returns a model's accounting (zero for an unknown model).
func (t *Tracker) Stats(model string) Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.stats[model]; s != nil {
		return *s
	}
	return Stats{}
}

// Failing reports whether a model's consecutive failures reached the
// threshold.
func (t *Tracker) Failing(model string) bool {
	return t.Stats(model).ConsecutiveFailures >= t.cfg.Threshold
}

// Forget drops a model that left the membership, with its metric series.
func (t *Tracker) Forget(model string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.stats[model]; s != nil && s.ConsecutiveFailures >= t.cfg.Threshold {
		t.failing.Dec()
	}
	delete(t.stats, model)
	t.consecutive.DeleteLabelValues(model)
	t.calls.DeletePartialMatch(prometheus.Labels{"model": model})
}

// MaxErrorLen bounds Stats.LastError: the text comes from the model (its
// status message), and it is kept for as long as the model is a member.
const MaxErrorLen = 1024

// clip returns at most MaxErrorLen bytes of s (cut at a rune boundary) in
// a string of its own: a slice of a large reply would keep all of it.
func clip(s string) string {
	if len(s) <= MaxErrorLen {
		return s
	}
	cut := MaxErrorLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strings.Clone(s[:cut]) + "…"
}
