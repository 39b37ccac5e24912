// Package tlsfiles serves TLS material from PEM files that change on disk:
// Vault-rendered certificates are rotated by rewriting the files (Nomad
// templates, Vault agent), and a server or client must pick them up without a
// restart or a dropped call. Handshakes always use the newest good material; a
// half-written or broken file is reported and the previous material is kept.
package tlsfiles

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelnodes/modelnodes/internal/filewatch"
)

// Files names the PEM files. CAFile is optional: for a server it enables and
// anchors client authentication; for a client it anchors the server's chain.
type Files struct {
	CertFile, KeyFile, CAFile string
	// Certificate, when set, replaces CertFile and KeyFile: every
	// handshake takes what it returns (a certificate renewed in memory,
	// e.g. pki/vaultpki's Issuer), and only CAFile is watched.
	Certificate func() *tls.Certificate
}

type material struct {
	cert  *tls.Certificate
	pool  *x509.CertPool
	stamp string // what the files looked like when loaded
}

// Reloader holds the current material and reloads it when the files change.
type Reloader struct {
	files Files
	cur   atomic.Pointer[material]

	mu      sync.Mutex // one reload at a time
	lastErr error
	onLoad  func(error)
}

// New loads the files once; an error here means they are unusable now.
// onLoad, if not nil, is told the outcome of every reload after the first.
func New(files Files, onLoad func(error)) (*Reloader, error) {
	if (files.CertFile == "" || files.KeyFile == "") && files.Certificate == nil {
		return nil, errors.New("tls: both a certificate and a key file are needed")
	}
	r := &Reloader{files: files, onLoad: onLoad}
	if _, err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload re-reads the files if they changed since the last good load and
// reports whether new material is now in use.
func (r *Reloader) Reload() (bool, error) {
	changed, err := r.reload()
	if r.onLoad != nil && (changed || err != nil) {
		r.onLoad(err)
	}
	return changed, err
}

// Watch polls the files every interval until ctx ends.
func (r *Reloader) Watch(ctx context.Context, interval time.Duration) {
	filewatch.Every(ctx, interval, func() { _, _ = r.Reload() })
}

func (r *Reloader) reload() (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var watched []string
	if r.files.Certificate == nil {
		watched = append(watched, r.files.CertFile, r.files.KeyFile)
	}
	stamp, err := filewatch.Stamp(append(watched, r.files.CAFile)...)
	if err != nil {
		return false, r.remember(fmt.Errorf("tls: %w", err))
	}
	if old := r.cur.Load(); old != nil && old.stamp == stamp {
		return false, r.remember(nil)
	}
	m := &material{stamp: stamp}
	if r.files.Certificate == nil {
		cert, err := tls.LoadX509KeyPair(r.files.CertFile, r.files.KeyFile)
		if err != nil {
			return false, r.remember(fmt.Errorf("tls: load %s / %s: %w", r.files.CertFile, r.files.KeyFile, err))
		}
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return false, r.remember(fmt.Errorf("tls: parse %s: %w", r.files.CertFile, err))
		}
		m.cert = &cert
	}
	if r.files.CAFile != "" {
		pem, err := os.ReadFile(r.files.CAFile)
		if err != nil {
			return false, r.remember(fmt.Errorf("tls: %w", err))
		}
		m.pool = x509.NewCertPool()
		if !m.pool.AppendCertsFromPEM(pem) {
			return false, r.remember(fmt.Errorf("tls: %s holds no PEM certificate", r.files.CAFile))
		}
	}
	r.cur.Store(m)
	return true, r.remember(nil)
}

func (r *Reloader) remember(err error) error {
	r.lastErr = err
	return err
}

// Certificate returns the certificate in use.
func (r *Reloader) Certificate() *tls.Certificate {
	if r.files.Certificate != nil {
		return r.files.Certificate()
	}
	return r.cur.Load().cert
}

// Pool returns the CA pool in use, or nil without a CA file.
func (r *Reloader) Pool() *x509.CertPool { return r.cur.Load().pool }

// ServerConfig returns a server tls.Config that takes the newest material at
// every handshake. With a CA file, clients must present a certificate that
// chains to it.
func (r *Reloader) ServerConfig() *tls.Config { return r.ServerConfigWith(nil) }

// ServerConfigWith is ServerConfig with a last check of each client, run
// during the handshake once its certificate chain is verified: an error
// refuses the connection before any application data is read (the client
// sees a "bad certificate" alert). remote is the client's address, for logs.
// It only runs with a CA file (without one there is no client certificate).
func (r *Reloader) ServerConfigWith(verify func(remote net.Addr, cs tls.ConnectionState) error) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			m := r.cur.Load()
			c := &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*r.Certificate()},
				NextProtos:   []string{"h2"},
			}
			if m.pool != nil {
				c.ClientAuth = tls.RequireAndVerifyClientCert
				c.ClientCAs = m.pool
				if verify != nil {
					var remote net.Addr
					if hello.Conn != nil {
						remote = hello.Conn.RemoteAddr()
					}
					c.VerifyConnection = func(cs tls.ConnectionState) error { return verify(remote, cs) }
				}
			}
			return c, nil
		},
	}
}
