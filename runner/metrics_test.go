package runner_test

import (
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	"github.com/modelnodes/modelnodes/runner"
)

// An operator's alert on certificates near expiry (deploy/monitoring) reads
// how long the certificate a runner serves has left; a plaintext runner has
// no such series.
func TestCertificateExpiryMetric(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "model-calls CA")
	cert := ca.Issue(t, dir, testpki.Leaf{CommonName: "runner", RSA: true, NotAfter: time.Now().Add(2 * time.Hour)})
	tlsr, err := tlsfiles.New(tlsfiles.Files{CertFile: cert.CertFile, KeyFile: cert.KeyFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	expiry := func(cfg runner.Config) (float64, bool) {
		reg := prometheus.NewRegistry()
		cfg.Registerer = reg
		runner.New(cfg)
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			if f.GetName() == "modelnodes_runner_certificate_expiry_seconds" {
				return f.GetMetric()[0].GetGauge().GetValue(), true
			}
		}
		return 0, false
	}
	if v, ok := expiry(runner.Config{TLS: tlsr}); !ok || math.Abs(v-7200) > 120 {
		t.Errorf("certificate expiry: %v (present %v), want about 7200 s", v, ok)
	}
	if v, ok := expiry(runner.Config{}); ok {
		t.Errorf("a plaintext runner reports a certificate expiry (%v)", v)
	}
}
