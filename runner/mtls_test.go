package runner_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/worker"
)

type mtlsSetup struct {
	dir         string
	ca, otherCA *testpki.CA
	server      *testpki.Issued
	reloader    *tlsfiles.Reloader
	h           *harness
}

func startMTLS(t *testing.T) *mtlsSetup {
	dir := t.TempDir()
	m := &mtlsSetup{dir: dir, ca: testpki.NewCA(t, "model-calls CA"), otherCA: testpki.NewCA(t, "someone else's CA")}
	m.server = m.ca.Issue(t, dir, testpki.Leaf{CommonName: "runner", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, RSA: true})
	caFile := m.ca.WriteCA(t, dir, "ca.crt")
	var err error
	m.reloader, err = tlsfiles.New(tlsfiles.Files{CertFile: m.server.CertFile, KeyFile: m.server.KeyFile, CAFile: caFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := runner.Config{
		TLS:    m.reloader,
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: testWriter{t}}),
		Worker: worker.Config{Command: exampleWorker(t)},
	}
	client := m.ca.Issue(t, dir, testpki.Leaf{CommonName: "coordinator", Client: true})
	m.h = startConfig(t, cfg, m.dial(t, client, m.ca))
	return m
}

func (m *mtlsSetup) dial(t *testing.T, client *testpki.Issued, trust *testpki.CA) grpc.DialOption {
	pool := x509.NewCertPool()
	pool.AddCert(trust.Cert)
	c := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if client != nil {
		pair, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(c))
}

func TestMTLSRefusesCallersWithoutTheRightCertificate(t *testing.T) {
	m := startMTLS(t)
	m.h.ready() // the right coordinator certificate gets in
	for name, client := range map[string]*testpki.Issued{
		"no client certificate":            nil,
		"certificate from another CA":      m.otherCA.Issue(t, m.dir, testpki.Leaf{CommonName: "intruder", Client: true}),
		"expired certificate from our CA":  m.ca.Issue(t, m.dir, testpki.Leaf{CommonName: "expired", Client: true, NotAfter: time.Now().Add(-time.Minute)}),
		"server certificate used a client": m.ca.Issue(t, m.dir, testpki.Leaf{CommonName: "wrong-usage"}),
	} {
		h := dialHarness(t, nil, m.h.addr, m.dial(t, client, m.ca))
		_, err := h.ds.Call(ctxTimeout(t, 5*time.Second), &dspb.CallRequest{MethodName: "echo"})
		if code := status.Code(err); code != codes.Unavailable {
			t.Errorf("%s: %v, want the handshake refused (Unavailable)", name, err)
		}
	}
}

func TestMTLSPicksUpRotatedCertificateWithoutRestart(t *testing.T) {
	m := startMTLS(t)
	m.h.ready()
	first := servedCert(t, m.h)
	if !first.Equal(m.server.Cert) {
		t.Fatal("the runner does not serve its configured certificate")
	}
	// Vault renews: new key pair, same files.
	renewed := m.ca.Issue(t, t.TempDir(), testpki.Leaf{CommonName: "runner", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, RSA: true})
	testpki.WriteFile(t, m.server.KeyFile, renewed.KeyPEM)
	testpki.WriteFile(t, m.server.CertFile, renewed.CertPEM)
	if changed, err := m.reloader.Reload(); err != nil || !changed {
		t.Fatalf("Reload() = %v, %v; want the new files taken", changed, err)
	}
	// The old connection keeps working; a new one sees the new certificate.
	m.h.ready()
	fresh := dialHarness(t, nil, m.h.addr, m.dial(t, m.ca.Issue(t, m.dir, testpki.Leaf{CommonName: "coordinator2", Client: true}), m.ca))
	if got := servedCert(t, fresh); !got.Equal(renewed.Cert) {
		t.Fatalf("after rotation the runner serves serial %v, want the renewed %v", got.SerialNumber, renewed.Cert.SerialNumber)
	}
	// A half-written file is refused and the good material kept.
	testpki.WriteFile(t, m.server.CertFile, []byte("-----BEGIN CERTIFICATE-----\ntruncated"))
	if _, err := m.reloader.Reload(); err == nil {
		t.Fatal("a corrupt certificate file was accepted")
	}
	again := dialHarness(t, nil, m.h.addr, m.dial(t, m.ca.Issue(t, m.dir, testpki.Leaf{CommonName: "coordinator3", Client: true}), m.ca))
	if got := servedCert(t, again); !got.Equal(renewed.Cert) {
		t.Fatal("a corrupt rewrite replaced the good certificate")
	}
}

func TestTLSWatchNoticesChangeOnDisk(t *testing.T) {
	m := startMTLS(t)
	ctx := ctxTimeout(t, 30*time.Second)
	go m.reloader.Watch(ctx, 50*time.Millisecond)
	renewed := m.ca.Issue(t, t.TempDir(), testpki.Leaf{CommonName: "runner", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	testpki.WriteFile(t, m.server.KeyFile, renewed.KeyPEM)
	testpki.WriteFile(t, m.server.CertFile, renewed.CertPEM)
	deadline := time.Now().Add(10 * time.Second)
	for !m.reloader.Certificate().Leaf.Equal(renewed.Cert) {
		if time.Now().After(deadline) {
			t.Fatal("the watcher never loaded the renewed certificate")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// servedCert returns the certificate the runner presented on h's connection.
func servedCert(t *testing.T, h *harness) *x509.Certificate {
	t.Helper()
	var p peer.Peer
	if _, err := h.health.Check(ctxTimeout(t, 10*time.Second), &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		t.Fatal("no TLS peer certificate")
	}
	return info.State.PeerCertificates[0]
}
