package runner

import (
	"context"
	"crypto/x509"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelnodes/modelnodes/pki/tlsfiles"
)

// metrics are the runner's Prometheus series, registered on the registry the
// caller passes (so tests and several runners in one process don't collide).
type metrics struct {
	calls    *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	restarts prometheus.Counter
	up       prometheus.Gauge
	inflight prometheus.Gauge
	tlsLoads *prometheus.CounterVec

	admissionWaits *prometheus.CounterVec
	admissionWait  prometheus.Histogram
	admittedBytes  prometheus.Gauge

	restartHolds    *prometheus.CounterVec
	restartHoldWait prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modelnodes_runner_calls_total",
			Help: "Model calls by RPC and outcome (a CrunchDAO status code such as SUCCESS or MODEL_FAILED, or a gRPC code such as DEADLINE_EXCEEDED).",
		}, []string{"rpc", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "modelnodes_runner_call_duration_seconds",
			Help: "Time from a call's arrival to its answer, by RPC.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
				5, 10, 30, 60},
		}, []string{"rpc"}),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "modelnodes_runner_worker_restarts_total",
			Help: "Times the model worker was started again after it exited, hung or broke the protocol.",
		}),
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "modelnodes_runner_worker_up",
			Help: "1 while a model worker is ready to take calls.",
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "modelnodes_runner_calls_in_flight",
			Help: "Calls being handled or queued for the model worker.",
		}),
		tlsLoads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modelnodes_runner_tls_reloads_total",
			Help: "Reloads of the TLS files after they changed on disk, by result (ok or error).",
		}, []string{"result"}),
		admissionWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modelnodes_runner_request_admissions_total",
			Help: "Model calls whose request was admitted into the request-byte budget, or refused after waiting (result admitted or refused).",
		}, []string{"result"}),
		admissionWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "modelnodes_runner_request_admission_wait_seconds",
			Help:    "Time a call waited for the request-byte budget before its request was read.",
			Buckets: []float64{.00001, .0001, .001, .01, .1, 1, 10, 60},
		}),
		admittedBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "modelnodes_runner_request_bytes_held",
			Help: "Request bytes reserved by calls being received (the largest request each) or held by calls queued or running.",
		}),
		restartHolds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modelnodes_runner_restart_held_calls_total",
			Help: "Model calls that waited for a restarting worker, by how the wait ended (resumed: the new worker took the call; deadline: the call's time ran out; down: the worker crash-looped or the runner stopped).",
		}, []string{"result"}),
		restartHoldWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "modelnodes_runner_restart_hold_seconds",
			Help:    "Time a model call waited for a restarting worker.",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
	}
	if reg != nil {
		reg.MustRegister(m.calls, m.latency, m.restarts, m.up, m.inflight, m.tlsLoads, m.admissionWaits, m.admissionWait, m.admittedBytes,
			m.restartHolds, m.restartHoldWait)
	}
	return m
}

// held records a call that waited for a restarting worker (worker.Config.OnHeld).
func (m *metrics) held(waited time.Duration, err error) {
	result := "resumed"
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		result = "deadline"
	case err != nil:
		result = "down"
	}
	m.restartHolds.WithLabelValues(result).Inc()
	m.restartHoldWait.Observe(waited.Seconds())
}

// descCertExpiry is the certificate's remaining life, computed at scrape time
// so that it is right however long ago the certificate was loaded.
var descCertExpiry = prometheus.NewDesc("modelnodes_runner_certificate_expiry_seconds",
	"Seconds until the certificate the runner serves expires (negative: expired). Absent when the runner serves plaintext.",
	nil, nil)

// certExpiry exports descCertExpiry for the certificate in use, whether it
// was read from files or signed by Vault for the runner's own key.
type certExpiry struct {
	tls *tlsfiles.Reloader
	now func() time.Time
}

// Describe implements prometheus.Collector.
func (c certExpiry) Describe(ch chan<- *prometheus.Desc) { ch <- descCertExpiry }

// Collect implements prometheus.Collector.
func (c certExpiry) Collect(ch chan<- prometheus.Metric) {
	if c.tls == nil {
		return
	}
	cert := c.tls.Certificate()
	if cert == nil || len(cert.Certificate) == 0 {
		return
	}
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return
		}
	}
	ch <- prometheus.MustNewConstMetric(descCertExpiry, prometheus.GaugeValue, leaf.NotAfter.Sub(c.now()).Seconds())
}
