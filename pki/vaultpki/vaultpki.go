// Package vaultpki gets a certificate straight from Vault PKI and renews it
// before it expires, without dropping calls: it signs a CSR of a key that
// stays the same across renewals, and every new handshake takes the newest
// certificate. Coordinators use it for their client certificate (runners
// that admit a coordinator by the hash of its public key, as CrunchDAO's do,
// keep admitting it); runners for their server certificate (a cruncher's
// wallet delegation names the runner's public key, so it must outlive
// renewals; see runner/vaultkey).
//
// The Issuer implements client/credentials.Material. It logs in with the
// Vault client's token, with a token file re-read at each signing (a Nomad
// task's secrets/vault_token), or with AppRole or JWT credentials before each
// signing (coordinator tokens are short-lived; a certificate lives for days).
package vaultpki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/modelnodes/modelnodes/names"
)

// Login obtains a Vault token.
type Login interface {
	// Login returns a client token; c is the configured client.
	Login(ctx context.Context, c *vaultapi.Client) (string, error)
}

// AppRole logs in with a role id and secret id (what deploy/vault/setup
// coordinator CRUNCH prints).
type AppRole struct {
	RoleID, SecretID string
	// Mount is the auth mount; default "approle".
	Mount string
}

// Login implements Login.
func (a AppRole) Login(ctx context.Context, c *vaultapi.Client) (string, error) {
	return login(ctx, c, "auth/"+orDefault(a.Mount, "approle")+"/login", map[string]any{"role_id": a.RoleID, "secret_id": a.SecretID})
}

// TokenFile uses the token in a file, read again at each signing: Nomad
// rewrites a task's secrets/vault_token when it derives a new token.
type TokenFile string

// Login implements Login.
func (f TokenFile) Login(ctx context.Context, c *vaultapi.Client) (string, error) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return "", fmt.Errorf("vaultpki: reading the Vault token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("vaultpki: the Vault token file %s is empty", f)
	}
	return tok, nil
}

// JWT logs in with a signed JWT (a workload identity).
type JWT struct {
	Role string
	// Token returns the JWT; called at each login so a rotated identity
	// file is re-read.
	Token func() (string, error)
	// Mount is the auth mount; default "jwt".
	Mount string
}

// Login implements Login.
func (j JWT) Login(ctx context.Context, c *vaultapi.Client) (string, error) {
	jwt, err := j.Token()
	if err != nil {
		return "", fmt.Errorf("vaultpki: reading the JWT: %w", err)
	}
	return login(ctx, c, "auth/"+orDefault(j.Mount, "jwt")+"/login", map[string]any{"role": j.Role, "jwt": jwt})
}

func login(ctx context.Context, c *vaultapi.Client, path string, data map[string]any) (string, error) {
	s, err := c.Logical().WriteWithContext(ctx, path, data)
	if err != nil {
		return "", fmt.Errorf("vaultpki: login at %s: %w", path, err)
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return "", fmt.Errorf("vaultpki: login at %s returned no token", path)
	}
	return s.Auth.ClientToken, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// Config configures an Issuer.
type Config struct {
	// Client reaches Vault (address, TLS, and the token unless Login).
	Client *vaultapi.Client
	// Login, if set, obtains a fresh token before each signing.
	Login Login
	// Mount and Role name the signing endpoint: <Mount>/sign/<Role>;
	// defaults "pki_int" and "coordinator" (docs/vault.md).
	Mount, Role string
	// CommonName and URISANs are requested in the certificate; for crunch
	// c: "c.coordinator.modelnodes.internal" and
	// "spiffe://modelnodes/crunch/c" (CoordinatorNames).
	CommonName string
	URISANs    []string
	// TTL is the certificate lifetime asked for; 0 takes the role's.
	TTL time.Duration
	// Key is the coordinator's long-lived key; a fresh ECDSA P-256 key
	// when nil (then the key lives as long as the Issuer).
	Key crypto.Signer
	// CAPEM is the trust anchor for runners; when empty it is read from
	// <CAMount>/ca/pem (the root, default mount "pki").
	CAPEM   []byte
	CAMount string
	// RenewAt is the fraction of the lifetime after which the certificate
	// is renewed; default 2/3 (with up to 5 % jitter, so a fleet does not
	// renew at once).
	RenewAt float64
	// What names the certificate in logs (default "coordinator").
	What   string
	Logger hclog.Logger
}

// CoordinatorNames returns the names the coordinator role allows for crunch
// (names.CoordinatorCommonName and names.CoordinatorURI).
func CoordinatorNames(crunch string) (commonName string, uriSANs []string) {
	return names.CoordinatorCommonName(crunch), []string{names.CoordinatorURI(crunch)}
}

type material struct {
	cert *tls.Certificate
	pool *x509.CertPool
	// issued is when Vault signed it; Vault backdates NotBefore (30 s by
	// default), so the lifetime to renew within starts here.
	issued time.Time
}

// Issuer holds the current certificate and renews it.
type Issuer struct {
	cfg Config
	log hclog.Logger
	cur atomic.Pointer[material]
}

// New signs the first certificate; an error means no certificate now.
func New(ctx context.Context, cfg Config) (*Issuer, error) {
	if cfg.Client == nil {
		return nil, errors.New("vaultpki: a Vault client is needed")
	}
	if cfg.CommonName == "" {
		return nil, errors.New("vaultpki: a common name is needed")
	}
	cfg.Mount = orDefault(cfg.Mount, "pki_int")
	cfg.Role = orDefault(cfg.Role, "coordinator")
	cfg.CAMount = orDefault(cfg.CAMount, "pki")
	cfg.What = orDefault(cfg.What, "coordinator")
	if cfg.RenewAt <= 0 || cfg.RenewAt >= 1 {
		cfg.RenewAt = 2.0 / 3
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		cfg.Key = k
	}
	i := &Issuer{cfg: cfg, log: cfg.Logger}
	if err := i.Renew(ctx); err != nil {
		return nil, err
	}
	return i, nil
}

// Certificate returns the current certificate (with Leaf).
func (i *Issuer) Certificate() *tls.Certificate { return i.cur.Load().cert }

// Pool returns the CA pool runners must chain to.
func (i *Issuer) Pool() *x509.CertPool { return i.cur.Load().pool }

// Renew signs a new certificate now.
func (i *Issuer) Renew(ctx context.Context) error {
	c, err := i.cfg.Client.Clone()
	if err != nil {
		return err
	}
	c.SetToken(i.cfg.Client.Token())
	if i.cfg.Login != nil {
		tok, err := i.cfg.Login.Login(ctx, c)
		if err != nil {
			return err
		}
		c.SetToken(tok)
	}
	pool, err := i.pool(ctx, c)
	if err != nil {
		return err
	}
	// Vault's sign endpoint takes the SANs from the CSR (use_csr_sans).
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: i.cfg.CommonName}}
	for _, u := range i.cfg.URISANs {
		pu, err := url.Parse(u)
		if err != nil {
			return fmt.Errorf("vaultpki: URI SAN %q: %w", u, err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	issued := time.Now()
	csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, i.cfg.Key)
	if err != nil {
		return fmt.Errorf("vaultpki: CSR: %w", err)
	}
	data := map[string]any{
		"csr":         string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})),
		"common_name": i.cfg.CommonName,
		"format":      "pem",
	}
	if len(i.cfg.URISANs) > 0 {
		data["uri_sans"] = strings.Join(i.cfg.URISANs, ",")
	}
	if i.cfg.TTL > 0 {
		data["ttl"] = fmt.Sprintf("%ds", int(math.Ceil(i.cfg.TTL.Seconds())))
	}
	path := i.cfg.Mount + "/sign/" + i.cfg.Role
	s, err := c.Logical().WriteWithContext(ctx, path, data)
	if err != nil {
		return fmt.Errorf("vaultpki: %s: %w", path, err)
	}
	if s == nil || s.Data == nil {
		return fmt.Errorf("vaultpki: %s returned nothing", path)
	}
	cert, err := chain(s.Data, i.cfg.Key)
	if err != nil {
		return err
	}
	i.cur.Store(&material{cert: cert, pool: pool, issued: issued})
	i.log.Info(i.cfg.What+" certificate issued", "serial", s.Data["serial_number"], "not_after", cert.Leaf.NotAfter)
	return nil
}

func (i *Issuer) pool(ctx context.Context, c *vaultapi.Client) (*x509.CertPool, error) {
	pemBytes := i.cfg.CAPEM
	if len(pemBytes) == 0 {
		if old := i.cur.Load(); old != nil {
			return old.pool, nil // the trust anchor is fetched once
		}
		resp, err := c.Logical().ReadRawWithContext(ctx, i.cfg.CAMount+"/ca/pem")
		if err != nil {
			return nil, fmt.Errorf("vaultpki: reading %s/ca/pem: %w", i.cfg.CAMount, err)
		}
		defer resp.Body.Close()
		if pemBytes, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20)); err != nil {
			return nil, fmt.Errorf("vaultpki: reading %s/ca/pem: %w", i.cfg.CAMount, err)
		}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, errors.New("vaultpki: the CA holds no PEM certificate")
	}
	return pool, nil
}

// chain builds the tls.Certificate from a sign response: the leaf, then
// its issuing chain (so the runner can verify up to the root it trusts).
func chain(data map[string]any, key crypto.Signer) (*tls.Certificate, error) {
	leafPEM, _ := data["certificate"].(string)
	var pems []string
	pems = append(pems, leafPEM)
	if ca, ok := data["ca_chain"].([]any); ok && len(ca) > 0 {
		for _, c := range ca {
			if s, ok := c.(string); ok {
				pems = append(pems, s)
			}
		}
	} else if s, ok := data["issuing_ca"].(string); ok {
		pems = append(pems, s)
	}
	cert := &tls.Certificate{PrivateKey: key}
	for _, p := range pems {
		rest := []byte(p)
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type == "CERTIFICATE" {
				cert.Certificate = append(cert.Certificate, b.Bytes)
			}
		}
	}
	if len(cert.Certificate) == 0 {
		return nil, errors.New("vaultpki: the response holds no certificate")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("vaultpki: %w", err)
	}
	cert.Leaf = leaf
	return cert, nil
}

// Run renews the certificate at RenewAt of its lifetime until ctx ends. A
// failed renewal is retried with backoff (1 s doubling to 1 min) while the
// current certificate is still valid; calls keep using it meanwhile.
func (i *Issuer) Run(ctx context.Context) {
	backoff := time.Duration(0)
	for {
		wait := i.renewIn(time.Now())
		if backoff > 0 {
			wait = backoff
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := i.Renew(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = min(max(2*backoff, time.Second), time.Minute)
			i.log.Error("renewing the "+i.cfg.What+" certificate failed; keeping the current one", "error", err,
				"expires", i.Certificate().Leaf.NotAfter, "retry_in", backoff)
			continue
		}
		backoff = 0
	}
}

// renewIn is how long until the current certificate should be renewed.
func (i *Issuer) renewIn(now time.Time) time.Duration {
	m := i.cur.Load()
	life := m.cert.Leaf.NotAfter.Sub(m.issued)
	frac := i.cfg.RenewAt - 0.05*mrand.Float64()
	at := m.issued.Add(time.Duration(float64(life) * frac))
	return max(at.Sub(now), 0)
}

// KeyFile returns the coordinator's long-lived key kept in a PEM file,
// creating it (ECDSA P-256, mode 0600) when the file does not exist; created
// says which. The key must outlive the process: runners that admit a
// coordinator by the hash of its public key (recorded on chain) refuse any
// other key, and a renewal signs the same key again.
func KeyFile(path string) (key crypto.Signer, created bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, false, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, false, err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, false, fmt.Errorf("vaultpki: creating the key file: %w", err)
		}
		if err := errors.Join(pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}), f.Close()); err != nil {
			return nil, false, fmt.Errorf("vaultpki: writing %s: %w", path, err)
		}
		return k, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("vaultpki: %w", err)
	}
	signer, err := ParseKey(b)
	if err != nil {
		return nil, false, fmt.Errorf("vaultpki: %s: %w", path, err)
	}
	return signer, false, nil
}

// ParseKey reads a PEM private key (PKCS #8, SEC 1 EC or PKCS #1 RSA).
func ParseKey(pemData []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(pemData)
	if block == nil {
		return nil, errors.New("holds no PEM key")
	}
	var parsed any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		parsed, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("holds a %q block, not a private key", block.Type)
	}
	if err != nil {
		return nil, err
	}
	signer, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%T cannot sign", parsed)
	}
	return signer, nil
}
