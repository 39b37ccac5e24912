package client_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

type pki struct {
	dir            string
	ca, other      *testpki.CA
	caFile         string
	otherFile      string
	runnerM1       *testRunner // serves model m1 with a certificate naming m1
	plainRunner    *testRunner
	clientCert     *testpki.Issued
	expiredCert    *testpki.Issued
	foreignCert    *testpki.Issued // client certificate from another CA
	runnerReloader *tlsfiles.Reloader
}

func newPKI(t *testing.T) *pki {
	dir := t.TempDir()
	p := &pki{dir: dir, ca: testpki.NewCA(t, "model-calls CA"), other: testpki.NewCA(t, "someone else's CA")}
	p.caFile = p.ca.WriteCA(t, dir, "ca.crt")
	p.otherFile = p.other.WriteCA(t, dir, "other-ca.crt")
	srv := p.ca.Issue(t, dir, testpki.Leaf{CommonName: "m1", DNSNames: []string{names.ModelServerName("m1")}, RSA: true})
	var err error
	p.runnerReloader, err = tlsfiles.New(tlsfiles.Files{CertFile: srv.CertFile, KeyFile: srv.KeyFile, CAFile: p.caFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.runnerM1 = startRunner(t, p.runnerReloader)
	p.plainRunner = startRunner(t, nil)
	p.clientCert = p.ca.Issue(t, dir, testpki.Leaf{CommonName: "coordinator", Client: true})
	p.expiredCert = p.ca.Issue(t, dir, testpki.Leaf{CommonName: "expired", Client: true,
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	p.foreignCert = p.other.Issue(t, dir, testpki.Leaf{CommonName: "foreign", Client: true})
	return p
}

func material(t *testing.T, cert *testpki.Issued, caFile string) *tlsfiles.Reloader {
	t.Helper()
	r, err := tlsfiles.New(tlsfiles.Files{CertFile: cert.CertFile, KeyFile: cert.KeyFile, CAFile: caFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// callOnce makes a client for models, sets them up and calls echo once.
// While the runner answers UNAVAILABLE (its worker is starting), Setup is
// retried for up to wait.
func callOnce(t *testing.T, m *tlsfiles.Reloader, plaintext bool, wait time.Duration, models ...discovery.Model) []client.Result {
	t.Helper()
	ctx := ctxTimeout(t, 30*time.Second)
	cfg := client.Config{Source: discovery.Static(models), Plaintext: plaintext}
	if m != nil {
		cfg.TLS = m
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	go func() { _ = c.Run(runCtx) }()
	if err := c.WaitMembership(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for {
		res := c.Setup(ctx, "test.Model", client.Request{Timeout: 5 * time.Second})
		if res[0].Status != client.Unavailable || time.Now().After(deadline) {
			if !res[0].OK() {
				return res
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c.Call(ctx, "echo", client.Request{Args: client.Positional(commonspb.String("hi")), Timeout: 5 * time.Second})
}

// Every way a TLS peer can be wrong is refused with a clear status; none
// falls back to something weaker.
func TestMTLSRefusals(t *testing.T) {
	p := newPKI(t)
	m1 := discovery.Model{ID: "m1", Target: p.runnerM1.addr}

	if res := callOnce(t, material(t, p.clientCert, p.caFile), false, 20*time.Second, m1); !res[0].OK() {
		t.Fatalf("the right certificates: %s %s %s", res[0].Status, res[0].Code, res[0].Message)
	}
	for _, tc := range []struct {
		name      string
		material  *tlsfiles.Reloader
		plaintext bool
		model     discovery.Model
		want      client.Status
		mention   string
	}{
		{"client trusts another CA", material(t, p.clientCert, p.otherFile), false, m1, client.Unauthenticated, "certificate signed by unknown authority"},
		{"expired client certificate", material(t, p.expiredCert, p.caFile), false, m1, client.Unauthenticated, "expired"},
		{"client certificate from another CA", material(t, p.foreignCert, p.caFile), false, m1, client.Unauthenticated, "certificate"},
		{"runner certificate names another model", material(t, p.clientCert, p.caFile), false,
			discovery.Model{ID: "m2", Target: p.runnerM1.addr}, client.Unauthenticated, "model-node-m2.crunchdao.internal"},
		{"TLS client, plaintext runner", material(t, p.clientCert, p.caFile), false,
			discovery.Model{ID: "m1", Target: p.plainRunner.addr}, client.Unauthenticated, "tls"},
		{"plaintext client, TLS runner", nil, true, m1, client.Unavailable, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := callOnce(t, tc.material, tc.plaintext, 0, tc.model)[0]
			t.Logf("%s: %s %s", r.Status, r.Code, r.Message)
			if r.Status != tc.want {
				t.Errorf("status %s (%s %s), want %s", r.Status, r.Code, r.Message, tc.want)
			}
			if !strings.Contains(r.Message, tc.mention) {
				t.Errorf("message %q does not mention %q", r.Message, tc.mention)
			}
		})
	}
}

// The client certificate is renewed on disk while calls flow: no call fails,
// and a connection made after the first certificate expired uses the new one.
func TestClientCertificateRenewalDropsNoCall(t *testing.T) {
	p := newPKI(t)
	short := p.ca.Issue(t, p.dir, testpki.Leaf{CommonName: "renewed", Client: true,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(3 * time.Second)})
	m, err := tlsfiles.New(tlsfiles.Files{CertFile: short.CertFile, KeyFile: short.KeyFile, CAFile: p.caFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxTimeout(t, time.Minute)
	go m.Watch(ctx, 50*time.Millisecond)
	var src discovery.Manual
	_ = src.Set([]discovery.Model{{ID: "m1", Target: p.runnerM1.addr}})
	c := runClient(t, ctx, client.Config{Source: &src, TLS: m})
	waitAllServing(t, c, 1)
	if r := c.Setup(ctx, "test.Model", client.Request{Timeout: 5 * time.Second})[0]; !r.OK() {
		t.Fatalf("setup: %s %s", r.Status, r.Message)
	}
	renewed := false
	calls := 0
	for start := time.Now(); time.Since(start) < 4500*time.Millisecond; calls++ {
		if !renewed && time.Since(start) > time.Second {
			// Vault agent renewing: same name, new validity, new key.
			long := p.ca.Issue(t, "", testpki.Leaf{CommonName: "renewed", Client: true})
			testpki.WriteFile(t, short.KeyFile, long.KeyPEM)
			testpki.WriteFile(t, short.CertFile, long.CertPEM)
			renewed = true
		}
		r := c.Call(ctx, "echo", client.Request{Args: client.Positional(commonspb.Int(int64(calls))), Timeout: 2 * time.Second})[0]
		if !r.OK() {
			t.Fatalf("call %d at %v failed during renewal: %s %s", calls, time.Now(), r.Status, r.Message)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A new connection (the model moved) handshakes with the new certificate:
	// the first one has expired by now.
	changed := c.Changed()
	_ = src.Set([]discovery.Model{{ID: "m1", Target: strings.Replace(p.runnerM1.addr, "127.0.0.1", "localhost", 1)}})
	<-changed
	if r := c.Call(ctx, "echo", client.Request{Args: client.Positional(commonspb.Int(1)), Timeout: 5 * time.Second})[0]; !r.OK() {
		t.Fatalf("call on a new connection after the old certificate expired: %s %s", r.Status, r.Message)
	}
	t.Logf("%d calls during renewal, none failed", calls)
}
