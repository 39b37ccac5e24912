// Package orchwstest serves the orchestrator WebSocket (package orchws) in
// tests as --orchestrator-listen does: over TLS on a loopback port. It is
// for tests only.
package orchwstest

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/scheduler/orchws"
)

// Serve serves h (an orchws.Server) over TLS on a free loopback port, with
// a certificate for 127.0.0.1 from a CA of its own, which it returns with
// the address; client certificates are verified against clientCAs. The
// server stops at the end of the test.
func Serve(tb testing.TB, h http.Handler, clientCAs *x509.CertPool) (addr string, ca *testpki.CA) {
	tb.Helper()
	ca = testpki.NewCA(tb, "orchestrator CA")
	leaf := ca.Issue(tb, tb.TempDir(), testpki.Leaf{CommonName: "orchestrator", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: orchws.ServerTLS(func() *tls.Certificate { return &cert }, func() *x509.CertPool { return clientCAs })}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	tb.Cleanup(func() { _ = hs.Close() })
	return ln.Addr().String(), ca
}
