package scheduler

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/modelnodes/modelnodes/scheduler/observer"
)

// Metrics are the scheduler's Prometheus metrics, on their own registry.
// A nil *Metrics records nothing. The observer records through the
// exported methods (observer.Metrics).
type Metrics struct {
	Registry *prometheus.Registry

	leader        prometheus.Gauge
	desired       prometheus.Gauge
	rollouts      *prometheus.GaugeVec
	models        *prometheus.GaugeVec
	sourceUp      *prometheus.GaugeVec
	sourceErrors  *prometheus.CounterVec
	sourceModels  *prometheus.GaugeVec
	sourceSkipped *prometheus.GaugeVec
	sourceLastOK  *prometheus.GaugeVec
	reconciles    *prometheus.CounterVec
	reconcileDur  prometheus.Histogram
	modelPasses   *prometheus.CounterVec
	modelPassDur  prometheus.Histogram
	writes        *prometheus.CounterVec
	backoffs      prometheus.Counter
	refusedTotal  *prometheus.CounterVec
	undecodableN  *prometheus.GaugeVec
	heldStops     prometheus.Gauge
	stopHolds     prometheus.Counter
	quarantined   prometheus.Gauge
	lifted        *prometheus.CounterVec
}

// NewMetrics registers the scheduler's metrics on a new registry.
func NewMetrics() *Metrics {
	const ns = "modelnodes_scheduler"
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		leader:   prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "leader", Help: "1 while this instance holds the reconcile lock."}),
		desired:  prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "desired_models", Help: "Models the sources want running."}),
		rollouts: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "rollouts",
			Help: "Models rolling out a new version (state rolling: a canary beside the serving allocation), waiting for --max-rollouts (deferred), or left on their serving version after a failed rollout (failed), as of the last pass."}, []string{"state"}),
		models: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "models",
			Help: "Models by observed state (pending, running, healthy, faulty, failed, backoff, stopped)."}, []string{"state"}),
		sourceUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "source_up",
			Help: "1 when the source's last read succeeded."}, []string{"source"}),
		sourceErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "source_errors_total",
			Help: "Failed reads of a source (its last good state stays in force)."}, []string{"source"}),
		sourceModels: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "source_models",
			Help: "Models in the source's last good snapshot."}, []string{"source"}),
		sourceSkipped: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "source_skipped_entries",
			Help: "Entries (accounts, feed entries) skipped as invalid in the last good snapshot."}, []string{"source"}),
		sourceLastOK: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "source_last_success_timestamp_seconds",
			Help: "When the source was last read successfully."}, []string{"source"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "reconciles_total",
			Help: "Reconcile passes by outcome (ok, partial, error)."}, []string{"outcome"}),
		reconcileDur: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "reconcile_duration_seconds",
			Help: "Duration of one reconcile pass.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}),
		modelPasses: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "model_passes_total",
			Help: "Passes over the models a source just changed (their jobs alone, no full listing), by outcome (ok, partial, error)."}, []string{"outcome"}),
		modelPassDur: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "model_pass_duration_seconds",
			Help: "Duration of one pass over the changed models.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "nomad_writes_total",
			Help: "Job writes to Nomad by operation (register, stop, purge)."}, []string{"op"}),
		backoffs: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "crashloop_backoffs_total",
			Help: "Times a crash-looping model was held stopped."}),
		refusedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "refused_entries_total",
			Help: "Entries (authorizations, feed entries, models) refused, counted once when they appear, by source and reason " +
				"(interpolation, entry, artifact, model_dir, invalid)."}, []string{"source", "reason"}),
		undecodableN: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "undecodable_accounts",
			Help: "Entries (accounts) whose newest reading did not decode; the last good version of each stays in force."}, []string{"source"}),
		heldStops: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "held_stops",
			Help: "Stops held because a pass would stop more than --max-stop-share of a crunch's models; alert when above 0."}),
		stopHolds: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "stop_holds_total",
			Help: "Holds of a crunch's stops started (see held_stops)."}),
		quarantined: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "quarantined_models",
			Help: "Models held stopped after their coordinator's failure reports (Consul KV), as the leader's last pass read them."}),
		lifted: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "quarantines_lifted_total",
			Help: "Quarantines ended, by why (submission: the model's authorization changed; operator: lifted through the status API)."}, []string{"reason"}),
	}
	m.Registry.MustRegister(m.leader, m.desired, m.rollouts, m.models, m.sourceUp, m.sourceErrors, m.sourceModels,
		m.sourceSkipped, m.sourceLastOK, m.reconciles, m.reconcileDur, m.modelPasses, m.modelPassDur, m.writes, m.backoffs, m.refusedTotal,
		m.undecodableN, m.heldStops, m.stopHolds, m.quarantined, m.lifted,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) setLeader(v bool) {
	if m == nil {
		return
	}
	if v {
		m.leader.Set(1)
	} else {
		m.leader.Set(0)
	}
}

func (m *Metrics) sourceError(s string) {
	if m == nil {
		return
	}
	m.sourceUp.WithLabelValues(s).Set(0)
	m.sourceErrors.WithLabelValues(s).Inc()
}

func (m *Metrics) sourceOK(s string, models, skipped int, at time.Time) {
	if m == nil {
		return
	}
	m.sourceUp.WithLabelValues(s).Set(1)
	m.sourceModels.WithLabelValues(s).Set(float64(models))
	m.sourceSkipped.WithLabelValues(s).Set(float64(skipped))
	m.sourceLastOK.WithLabelValues(s).Set(float64(at.Unix()))
}

// outcome is a pass's outcome label: ok, partial (some writes failed) or
// error.
func outcome(res Result, err error) string {
	if err != nil {
		return "error"
	} else if len(res.Errors) > 0 {
		return "partial"
	}
	return "ok"
}

func (m *Metrics) reconciled(res Result, err error, d time.Duration, desired int) {
	if m == nil {
		return
	}
	m.reconciles.WithLabelValues(outcome(res, err)).Inc()
	m.reconcileDur.Observe(d.Seconds())
	m.desired.Set(float64(desired))
	if err == nil {
		m.rollouts.WithLabelValues("rolling").Set(float64(res.Rolling))
		m.rollouts.WithLabelValues("deferred").Set(float64(res.DeferredRollouts))
		m.rollouts.WithLabelValues("failed").Set(float64(res.FailedRollouts))
	}
}

func (m *Metrics) modelPass(res Result, err error, d time.Duration) {
	if m == nil {
		return
	}
	m.modelPasses.WithLabelValues(outcome(res, err)).Inc()
	m.modelPassDur.Observe(d.Seconds())
}

func (m *Metrics) nomadWrite(op string) {
	if m == nil {
		return
	}
	m.writes.WithLabelValues(op).Inc()
}

// ModelStates sets the models gauge to counts, by observed state; it
// implements observer.Metrics.
func (m *Metrics) ModelStates(counts map[string]int) {
	if m == nil {
		return
	}
	for _, s := range observer.AllStates {
		m.models.WithLabelValues(s).Set(float64(counts[s]))
	}
}

// CrashLoopHold counts a crash-loop hold; it implements observer.Metrics.
func (m *Metrics) CrashLoopHold() {
	if m == nil {
		return
	}
	m.backoffs.Inc()
}

func (m *Metrics) refused(source, reason string) {
	if m == nil {
		return
	}
	m.refusedTotal.WithLabelValues(source, reason).Inc()
}

func (m *Metrics) undecodable(source string, n int) {
	if m == nil {
		return
	}
	m.undecodableN.WithLabelValues(source).Set(float64(n))
}

func (m *Metrics) stopsHeld(n int, started int) {
	if m == nil {
		return
	}
	m.heldStops.Set(float64(n))
	m.stopHolds.Add(float64(started))
}

func (m *Metrics) quarantinedModels(n int) {
	if m == nil {
		return
	}
	m.quarantined.Set(float64(n))
}

func (m *Metrics) quarantineLifted(reason string) {
	if m == nil {
		return
	}
	m.lifted.WithLabelValues(reason).Inc()
}
