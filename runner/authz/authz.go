// Package authz decides who may call a model: the coordinator of the model's
// crunch, as decided on chain. A caller is admitted when, beyond the mTLS
// handshake (its certificate chains to the model-call CA):
//
//   - its certificate is not on the CA's revocation list (when one is loaded);
//   - it names the model's crunch, as the URI SAN spiffe://modelnodes/crunch/<crunch>;
//   - when on-chain hashes are set, the SHA-256 of its certificate's
//     SubjectPublicKeyInfo (DER), in lowercase hex, equals the primary or the
//     secondary hash (CrunchDAO's CoordinatorCertificate account). Hashing the
//     public key, not the certificate, lets Vault renew the certificate with the
//     same key without touching the chain.
//
// The policy and the CRL are files (rendered by Nomad templates) that are
// re-read when they change, so rotating the on-chain hash or revoking a
// coordinator needs no restart. A refused caller learns only its status code;
// the reason goes to the log.
package authz

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/modelnodes/modelnodes/internal/filewatch"
)

// CrunchURIPrefix starts the URI SAN that names a coordinator's crunch.
const CrunchURIPrefix = "spiffe://modelnodes/crunch/"

// Policy says which coordinator may call the model.
type Policy struct {
	// Crunch the caller's certificate must name. Empty admits any crunch
	// (development only; the runner warns).
	Crunch string `json:"crunch"`
	// CoordinatorCertHashes are the on-chain hashes (primary, secondary) of
	// the coordinator's public key; empty skips the check.
	CoordinatorCertHashes []string `json:"coordinator_cert_hashes"`
}

func (p *Policy) normalize() error {
	for i, h := range p.CoordinatorCertHashes {
		h = strings.ToLower(strings.TrimSpace(h))
		if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
			return fmt.Errorf("coordinator_cert_hashes[%d] = %q is not a SHA-256 in hex", i, h)
		}
		p.CoordinatorCertHashes[i] = h
	}
	// All zeros is CrunchDAO's "no secondary".
	kept := p.CoordinatorCertHashes[:0]
	for _, h := range p.CoordinatorCertHashes {
		if h != strings.Repeat("0", 64) {
			kept = append(kept, h)
		}
	}
	p.CoordinatorCertHashes = kept
	return nil
}

// SPKIHash is the hash a coordinator's certificate is admitted by: SHA-256 of
// its SubjectPublicKeyInfo DER, lowercase hex.
func SPKIHash(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// Config names the authorizer's inputs.
type Config struct {
	// Static is the policy when no PolicyFile is given.
	Static Policy
	// PolicyFile is a JSON Policy, re-read when it changes.
	PolicyFile string
	// CRLFile is the CA's revocation list (PEM or DER), re-read when it
	// changes; its signature must verify against a certificate of CAFile.
	CRLFile string
	// CRLURL is fetched instead of CRLFile, e.g. Vault's
	// https://vault:8200/v1/pki_int/crl/pem; Watch re-fetches it. The
	// signature is checked the same way, so the transport needs no trust.
	CRLURL string
	// CRLRefresh is how often CRLURL is fetched (default a minute): a
	// revoked coordinator is refused within that long.
	CRLRefresh time.Duration
	// CAFile is the bundle that client certificates chain to.
	CAFile string
	Logger hclog.Logger
}

type revocations struct {
	serials    map[string]bool // issuer subject + serial
	number     string          // the CRL number
	nextUpdate time.Time
}

// Authorizer admits or refuses callers.
type Authorizer struct {
	cfg     Config
	log     hclog.Logger
	policy  atomic.Pointer[Policy]
	revoked atomic.Pointer[revocations]

	mu        sync.Mutex // one reload at a time; guards stamps and fetched
	stamps    map[string]string
	fetchedAt time.Time
}

// New loads the policy and the CRL; errors mean they are unusable now.
func New(cfg Config) (*Authorizer, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.CRLRefresh <= 0 {
		cfg.CRLRefresh = time.Minute
	}
	a := &Authorizer{cfg: cfg, log: cfg.Logger, stamps: map[string]string{}}
	if cfg.PolicyFile == "" {
		p := cfg.Static
		p.CoordinatorCertHashes = append([]string(nil), p.CoordinatorCertHashes...)
		if err := p.normalize(); err != nil {
			return nil, err
		}
		a.policy.Store(&p)
	}
	if _, err := a.Reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Policy returns the policy in force.
func (a *Authorizer) Policy() Policy { return *a.policy.Load() }

// Reload re-reads the files that changed; on error the previous state stays.
func (a *Authorizer) Reload() (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	changed := false
	var errs []error
	if a.cfg.PolicyFile != "" && a.fileChanged(a.cfg.PolicyFile) {
		p, err := loadPolicy(a.cfg.PolicyFile)
		if err != nil {
			errs = append(errs, err)
		} else {
			a.policy.Store(p)
			a.remember(a.cfg.PolicyFile)
			changed = true
			a.log.Info("authorization policy loaded", "crunch", p.Crunch, "cert_hashes", len(p.CoordinatorCertHashes))
		}
	}
	if a.cfg.CRLURL != "" && time.Since(a.fetchedAt) >= a.cfg.CRLRefresh {
		a.fetchedAt = time.Now()
		raw, err := fetch(a.cfg.CRLURL)
		var r *revocations
		if err == nil {
			r, err = parseCRL(raw, a.cfg.CRLURL, a.cfg.CAFile)
		}
		if err != nil {
			errs = append(errs, err)
		} else if old := a.revoked.Load(); old == nil || old.number != r.number || len(old.serials) != len(r.serials) {
			a.revoked.Store(r)
			changed = true
			a.log.Info("revocation list fetched", "url", a.cfg.CRLURL, "revoked", len(r.serials), "next_update", r.nextUpdate)
		}
	}
	if a.cfg.CRLFile != "" && (a.fileChanged(a.cfg.CRLFile) || a.fileChanged(a.cfg.CAFile)) {
		r, err := loadCRL(a.cfg.CRLFile, a.cfg.CAFile)
		if err != nil {
			errs = append(errs, err)
		} else {
			a.revoked.Store(r)
			a.remember(a.cfg.CRLFile)
			a.remember(a.cfg.CAFile)
			changed = true
			a.log.Info("revocation list loaded", "revoked", len(r.serials), "next_update", r.nextUpdate)
		}
	}
	if a.policy.Load() == nil && len(errs) > 0 {
		return false, errors.Join(errs...)
	}
	if (a.cfg.CRLFile != "" || a.cfg.CRLURL != "") && a.revoked.Load() == nil && len(errs) > 0 {
		return false, errors.Join(errs...)
	}
	if len(errs) > 0 {
		a.log.Error("authorization files changed but cannot be used; keeping the previous ones", "error", errors.Join(errs...))
	}
	return changed, errors.Join(errs...)
}

// Watch re-reads changed files every interval until ctx ends.
func (a *Authorizer) Watch(ctx context.Context, interval time.Duration) {
	filewatch.Every(ctx, interval, func() { _, _ = a.Reload() })
}

func stamp(path string) string {
	s, _ := filewatch.Stamp(path)
	return s
}

func (a *Authorizer) fileChanged(path string) bool {
	return path != "" && a.stamps[path] != stamp(path)
}
func (a *Authorizer) remember(path string) {
	if path != "" {
		a.stamps[path] = stamp(path)
	}
}

func loadPolicy(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("authz policy: %w", err)
	}
	var p Policy
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("authz policy %s: %w", path, err)
	}
	if err := p.normalize(); err != nil {
		return nil, fmt.Errorf("authz policy %s: %w", path, err)
	}
	return &p, nil
}

// fetch gets a CRL over HTTP(S), bounded in time and size.
func fetch(url string) ([]byte, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, fmt.Errorf("crl: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("crl: GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 64<<20))
}

func loadCRL(crlPath, caPath string) (*revocations, error) {
	raw, err := os.ReadFile(crlPath)
	if err != nil {
		return nil, fmt.Errorf("crl: %w", err)
	}
	return parseCRL(raw, crlPath, caPath)
}

// parseCRL reads a PEM or DER CRL and checks it is signed by a CA of caPath.
func parseCRL(raw []byte, crlPath, caPath string) (*revocations, error) {
	if block, _ := pem.Decode(raw); block != nil {
		raw = block.Bytes
	}
	crl, err := x509.ParseRevocationList(raw)
	if err != nil {
		return nil, fmt.Errorf("crl %s: %w", crlPath, err)
	}
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		return nil, fmt.Errorf("crl: the CA bundle: %w", err)
	}
	verified := false
	for rest := caPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		ca, err := x509.ParseCertificate(block.Bytes)
		if err == nil && crl.CheckSignatureFrom(ca) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return nil, fmt.Errorf("crl %s: not signed by any CA in %s", crlPath, caPath)
	}
	r := &revocations{serials: map[string]bool{}, nextUpdate: crl.NextUpdate}
	if crl.Number != nil {
		r.number = crl.Number.String()
	}
	for _, e := range crl.RevokedCertificateEntries {
		r.serials[string(crl.RawIssuer)+"/"+e.SerialNumber.String()] = true
	}
	return r, nil
}

// Refusals, as callers see them: no detail.
var (
	errUnauthenticated = status.Error(codes.Unauthenticated, "the caller is not authenticated for this model")
	errDenied          = status.Error(codes.PermissionDenied, "the caller may not call this model")
)

// Authorize admits the caller of ctx or returns the gRPC status to refuse it
// with (the reason is logged).
func (a *Authorizer) Authorize(ctx context.Context) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return a.refuse(errUnauthenticated, "no peer", nil)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return a.refuse(errUnauthenticated, "no verified client certificate", p)
	}
	leaf := info.State.VerifiedChains[0][0]
	if r := a.revoked.Load(); r != nil && r.serials[string(leaf.RawIssuer)+"/"+leaf.SerialNumber.String()] {
		return a.refuse(errUnauthenticated, "certificate revoked (serial "+leaf.SerialNumber.Text(16)+")", p)
	}
	pol := a.policy.Load()
	if pol.Crunch != "" && !namesCrunch(leaf, pol.Crunch) {
		return a.refuse(errDenied, fmt.Sprintf("certificate names crunch %v, not %q", crunchesOf(leaf), pol.Crunch), p)
	}
	if len(pol.CoordinatorCertHashes) > 0 {
		h := SPKIHash(leaf)
		match := false
		for _, want := range pol.CoordinatorCertHashes {
			match = match || h == want
		}
		if !match {
			return a.refuse(errUnauthenticated, "public key hash "+h+" is not on chain for this crunch", p)
		}
	}
	return nil
}

func (a *Authorizer) refuse(err error, reason string, p *peer.Peer) error {
	addr := ""
	if p != nil && p.Addr != nil {
		addr = p.Addr.String()
	}
	a.log.Warn("call refused", "reason", reason, "peer", addr, "code", status.Code(err))
	return err
}

func namesCrunch(cert *x509.Certificate, crunch string) bool {
	for _, c := range crunchesOf(cert) {
		if c == crunch {
			return true
		}
	}
	return false
}

func crunchesOf(cert *x509.Certificate) []string {
	var out []string
	for _, u := range cert.URIs {
		if s := u.String(); strings.HasPrefix(s, CrunchURIPrefix) {
			out = append(out, strings.TrimPrefix(s, CrunchURIPrefix))
		}
	}
	return out
}

// UnaryInterceptor authorizes calls whose full method protect selects (the
// model's services); others (health, reflection) pass.
func (a *Authorizer) UnaryInterceptor(protect func(fullMethod string) bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if protect(info.FullMethod) {
			if err := a.Authorize(ctx); err != nil {
				return nil, err
			}
		}
		return handler(ctx, req)
	}
}
