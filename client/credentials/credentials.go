// Package credentials builds the coordinator's side of mTLS to a runner.
//
// The client certificate and the CA come from a Material that may change at
// any time (files rewritten by Vault agent, or package vaultpki renewing
// from Vault): every handshake takes the newest, and established
// connections keep working, so a renewal never drops a call.
//
// A runner is trusted only if its certificate chains to the CA and names
// the model being called (model-node-<id>.crunchdao.internal): a runner
// holding a valid certificate for another model is refused. There is no
// fallback to plaintext or to unverified TLS.
package credentials

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc/credentials"
)

// Material is the coordinator's current TLS material. *tlsfiles.Reloader
// and *vaultpki.Issuer implement it.
type Material interface {
	// Certificate returns the client certificate to present now, with
	// its Leaf parsed.
	Certificate() *tls.Certificate
	// Pool returns the CAs a runner's certificate must chain to; never
	// nil for a coordinator (a nil pool refuses every runner).
	Pool() *x509.CertPool
}

// ErrNoCA is returned by every handshake when the material has no CA.
var ErrNoCA = errors.New("credentials: no CA configured to verify runners")

// Config returns a tls.Config for calling the runner that must be named
// serverName. Verification is done in VerifyConnection, against the pool
// current at handshake time (crypto/tls would otherwise freeze RootCAs).
func Config(m Material, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: serverName,
		NextProtos: []string{"h2"},
		// Not a downgrade: VerifyConnection below does the full chain
		// and name verification on every handshake, and fails closed.
		InsecureSkipVerify: true, //nolint:gosec
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return m.Certificate(), nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return Verify(m.Pool(), serverName, cs.PeerCertificates, time.Now())
		},
	}
}

// Verify checks that chain (leaf first) chains to pool for server
// authentication at time now and that the leaf names serverName.
func Verify(pool *x509.CertPool, serverName string, chain []*x509.Certificate, now time.Time) error {
	if pool == nil {
		return ErrNoCA
	}
	if len(chain) == 0 {
		return errors.New("credentials: the runner sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		DNSName:       serverName,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("credentials: runner certificate refused for %s: %w", serverName, err)
	}
	return nil
}

// Check reports why the client certificate cannot be used now (expired or
// not yet valid), so a call can be failed as unauthenticated with a clear
// reason instead of a handshake the runner aborts.
func Check(m Material, now time.Time) error {
	c := m.Certificate()
	if c == nil || c.Leaf == nil {
		return errors.New("credentials: no client certificate")
	}
	if now.After(c.Leaf.NotAfter) {
		return fmt.Errorf("credentials: client certificate %q expired at %s", c.Leaf.Subject.CommonName, c.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(c.Leaf.NotBefore) {
		return fmt.Errorf("credentials: client certificate %q not valid before %s", c.Leaf.Subject.CommonName, c.Leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// Transport returns gRPC transport credentials for the runner named
// serverName.
func Transport(m Material, serverName string) credentials.TransportCredentials {
	return firstRecord{credentials.NewTLS(Config(m, serverName))}
}

// firstRecordTimeout bounds the wait for the runner's first bytes after a
// TLS 1.3 handshake (within the connect deadline).
const firstRecordTimeout = 5 * time.Second

// firstRecord makes a runner's refusal of our certificate visible at
// handshake time. In TLS 1.3 the server verifies the client certificate
// after the client considers the handshake done, so its alert only shows on
// the first read, and grpc-go, writing first, often sees "broken pipe"
// instead: an unauthenticated call would look like an unreachable runner.
// A gRPC server speaks first (its SETTINGS frame), so the first record is
// read here: the alert, or bytes kept for gRPC.
type firstRecord struct {
	credentials.TransportCredentials
}

func (f firstRecord) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := f.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		return nil, nil, err
	}
	if ti, ok := info.(credentials.TLSInfo); !ok || ti.State.Version < tls.VersionTLS13 {
		return conn, info, nil
	}
	deadline := time.Now().Add(firstRecordTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetReadDeadline(deadline)
	buf := make([]byte, 1024)
	n, err := conn.Read(buf)
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("credentials: the runner closed the connection after the TLS handshake (it refused our certificate?): %w", err)
	}
	return &prefixConn{Conn: conn, prefix: buf[:n]}, info, nil
}

func (f firstRecord) Clone() credentials.TransportCredentials {
	return firstRecord{f.TransportCredentials.Clone()}
}

// prefixConn returns prefix before reading on.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		if len(c.prefix) == 0 {
			c.prefix = nil // let the buffer go
		}
		return n, nil
	}
	return c.Conn.Read(b)
}
