// Package authz decides who may call a model: the coordinator of the model's
// crunch, as decided on chain. A caller is admitted when, beyond the mTLS
// handshake (its certificate chains to the model-call CA):
//
//   - when a revocation list source is configured: the list of the CA that
//     issued its certificate is loaded, not past its nextUpdate plus a grace
//     period, and does not name the certificate;
//   - it names the model's crunch, as the URI SAN names.CoordinatorURI(crunch);
//   - the SHA-256 of its certificate's SubjectPublicKeyInfo (DER), in
//     lowercase hex, equals the primary or the secondary on-chain hash
//     (CrunchDAO's CoordinatorCertificate account). Hashing the public key,
//     not the certificate, lets Vault renew the certificate with the same key
//     without touching the chain. No hash (none given, or all zeros) admits
//     nobody; only the development switch AnyCoordinatorKey skips the check.
//
// The checks run at the TLS handshake (VerifyConnection: a refused caller
// never gets an HTTP/2 connection, so it cannot make the runner buffer a
// request) and when a call's headers arrive (TapHandle: a policy or CRL
// change also applies to connections opened before it), both before
// anything the caller sends is read, and once more in a unary interceptor
// (defence in depth).
//
// The policy and the CRLs are files (rendered by Nomad templates) or URLs
// that are re-read when they change, so rotating the on-chain hash or
// revoking a coordinator needs no restart. A refused caller learns only that
// it was refused; the reason goes to the log.
package authz

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/modelnodes/modelnodes/internal/filewatch"
	"github.com/modelnodes/modelnodes/internal/redact"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/runner/runneropts"
)

// DefaultCRLGrace is how long past its nextUpdate a revocation list is still
// trusted. Vault's CRLs live 72 h (pki config/crl expiry) and, with
// auto_rebuild, are rebuilt 12 h before they expire: a runner that fetches
// every minute sees the new list long before nextUpdate, and the grace only
// covers a short outage of the CRL source past that. Its value lives with the
// runner's other defaults (runneropts, which the driver links without authz).
const DefaultCRLGrace = runneropts.DefaultCRLGrace

// Policy says which coordinator may call the model.
type Policy struct {
	// Crunch the caller's certificate must name. Empty admits any crunch
	// (development only; the runner warns).
	Crunch string `json:"crunch"`
	// CoordinatorCertHashes are the on-chain hashes (primary, secondary) of
	// the coordinator's public key. All-zero hashes are CrunchDAO's "none"
	// and are dropped; with none left nobody is admitted.
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
	// AnyCoordinatorKey admits the crunch's coordinator whatever its key
	// when the policy has no hash (development only: anybody holding a
	// certificate that names the crunch gets in). Without it, no hash
	// admits nobody.
	AnyCoordinatorKey bool
	// CRLFile is the CA's revocation list (PEM or DER), re-read when it
	// changes; its signature must verify against a certificate of CAFile.
	CRLFile string
	// CRLURLs are fetched every CRLRefresh, instead of CRLFile. A URL is a
	// revocation list (PEM or DER, e.g. Vault's .../v1/pki_int/crl/pem), or
	// a Vault PKI mount's issuer list, .../v1/pki_int/issuers: then every
	// issuer's list (.../issuer/<id>/crl/pem) is fetched, so the issuers a
	// rotation leaves behind keep being checked. Both are unauthenticated
	// in Vault. Signatures are checked against CAFile, so the transport
	// needs no trust.
	CRLURLs []string
	// CRLRefresh is how often CRLURLs are fetched (default a minute): a
	// revoked coordinator is refused within that long.
	CRLRefresh time.Duration
	// CRLGrace is how long past its nextUpdate a list is still used
	// (DefaultCRLGrace when 0). Past it, certificates of that list's
	// issuer are refused: a revocation list that can no longer be
	// refreshed must not freeze revocation.
	CRLGrace time.Duration
	// CAFile is the bundle that client certificates chain to.
	CAFile string
	Logger hclog.Logger
	// Registerer receives the revocation-list metrics; nil keeps them
	// private.
	Registerer prometheus.Registerer
	// Now is the clock (tests); time.Now when nil.
	Now func() time.Time
}

// crl is one issuer's revocation list in force.
type crl struct {
	issuer     string // the issuing CA's subject, for logs and metrics
	key        string // SPKI hash of the CA that signed it (+deltaSuffix for a delta list)
	delta      bool
	serials    map[string]bool
	number     *big.Int // nil when the list has none
	thisUpdate time.Time
	nextUpdate time.Time
	source     string // the file or (redacted) URL it came from
}

// crlSet holds one list per issuing CA, keyed by the SPKI hash of the CA
// certificate that verified it (Vault keeps one CRL per issuer key).
type crlSet map[string]*crl

// Authorizer admits or refuses callers.
type Authorizer struct {
	cfg     Config
	log     hclog.Logger
	now     func() time.Time
	policy  atomic.Pointer[Policy]
	crls    atomic.Pointer[crlSet]
	checked bool // a CRL source is configured: every caller's issuer needs a fresh list

	mu        sync.Mutex // one reload at a time; guards stamps, fetched, warned
	stamps    map[string]string
	fetchedAt time.Time
	warned    map[string]time.Time

	fetchFailures prometheus.Counter
	refusals      *prometheus.CounterVec
}

// New loads the policy and the CRLs; errors mean they are unusable now.
func New(cfg Config) (*Authorizer, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.CRLRefresh <= 0 {
		cfg.CRLRefresh = time.Minute
	}
	if cfg.CRLGrace <= 0 {
		cfg.CRLGrace = DefaultCRLGrace
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CRLFile != "" && len(cfg.CRLURLs) > 0 {
		return nil, errors.New("authz: a CRL file and CRL URLs exclude each other")
	}
	a := &Authorizer{cfg: cfg, log: cfg.Logger, now: cfg.Now, stamps: map[string]string{}, warned: map[string]time.Time{},
		checked: cfg.CRLFile != "" || len(cfg.CRLURLs) > 0,
		fetchFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "modelnodes_runner_crl_fetch_failures_total",
			Help: "Revocation list fetches or loads that failed (the previous lists stay in force until they expire).",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modelnodes_runner_authz_refusals_total",
			Help: "Callers refused, by where (handshake or call) and why (revoked, crl_missing, crl_expired, crunch, key, no_key, certificate).",
		}, []string{"stage", "reason"}),
	}
	a.crls.Store(&crlSet{})
	if cfg.PolicyFile == "" {
		p := cfg.Static
		p.CoordinatorCertHashes = append([]string(nil), p.CoordinatorCertHashes...)
		if err := p.normalize(); err != nil {
			return nil, err
		}
		a.policy.Store(&p)
		a.logPolicy(&p)
	}
	if _, err := a.Reload(); err != nil {
		return nil, err
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(a); err != nil {
			return nil, fmt.Errorf("authz metrics: %w", err)
		}
	}
	return a, nil
}

// Policy returns the policy in force.
func (a *Authorizer) Policy() Policy { return *a.policy.Load() }

func (a *Authorizer) logPolicy(p *Policy) {
	switch {
	case len(p.CoordinatorCertHashes) > 0:
		a.log.Info("authorization policy loaded", "crunch", p.Crunch, "cert_hashes", len(p.CoordinatorCertHashes))
	case a.cfg.AnyCoordinatorKey:
		a.log.Warn("DEVELOPMENT: no coordinator key hash, and any key is admitted: anybody with a certificate naming the crunch may call the model",
			"crunch", p.Crunch)
	default:
		a.log.Warn("no coordinator key hash on chain: nobody may call the model until one is set", "crunch", p.Crunch)
	}
}

// Reload re-reads the files that changed and fetches the CRL URLs when they
// are due; on error the previous state stays (lists until they expire).
func (a *Authorizer) Reload() (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	changed := false
	var policyErr error
	// Until a policy is loaded, keep trying (a missing file has the stamp a
	// never-read one has): check needs one.
	if a.cfg.PolicyFile != "" && (a.policy.Load() == nil || a.fileChanged(a.cfg.PolicyFile)) {
		p, err := loadPolicy(a.cfg.PolicyFile)
		if err != nil {
			policyErr = err
		} else {
			a.policy.Store(p)
			a.remember(a.cfg.PolicyFile)
			changed = true
			a.logPolicy(p)
		}
	}
	var crlErrs []error
	// A new CA bundle (a template re-rendered after a rotation) may verify
	// lists the old one could not: fetch at once, not a refresh later.
	if len(a.cfg.CRLURLs) > 0 && (a.now().Sub(a.fetchedAt) >= a.cfg.CRLRefresh || a.fileChanged(a.cfg.CAFile)) {
		a.fetchedAt = a.now()
		a.remember(a.cfg.CAFile)
		var got []*crl
		for _, u := range a.cfg.CRLURLs {
			lists, err := a.fetchAll(u)
			got = append(got, lists...)
			crlErrs = append(crlErrs, err)
		}
		changed = a.merge(got) || changed
	}
	if a.cfg.CRLFile != "" && (a.fileChanged(a.cfg.CRLFile) || a.fileChanged(a.cfg.CAFile)) {
		raw, err := os.ReadFile(a.cfg.CRLFile)
		var c *crl
		if err == nil {
			c, err = a.parseCRL(raw, a.cfg.CRLFile)
		}
		if err != nil {
			crlErrs = append(crlErrs, fmt.Errorf("crl: %w", err))
		} else {
			a.merge([]*crl{c})
			a.remember(a.cfg.CRLFile)
			a.remember(a.cfg.CAFile)
			changed = true
		}
	}
	crlErr := errors.Join(crlErrs...)
	if crlErr != nil {
		a.fetchFailures.Inc()
	}
	a.warnExpiring()
	err := errors.Join(policyErr, crlErr)
	if a.policy.Load() == nil && err != nil {
		return false, err
	}
	if a.checked && len(*a.crls.Load()) == 0 && err != nil {
		return false, err
	}
	// Say which input failed: a revocation list that could not be fetched
	// (Vault down) is not a changed file, and an operator reading the log
	// during an outage must not go looking for one.
	if policyErr != nil {
		a.log.Error("the authorization policy file changed but cannot be used; keeping the previous policy",
			"file", a.cfg.PolicyFile, "error", policyErr)
	}
	if crlErr != nil {
		a.log.Error("the revocation lists could not be fetched or read; keeping the lists in force until they expire",
			"error", crlErr, "grace", a.cfg.CRLGrace)
	}
	return changed, err
}

// merge puts lists in force, one per issuer. A list older than the one in
// force (by CRL number, else thisUpdate) is ignored: a replayed old list
// must not take back a revocation.
func (a *Authorizer) merge(lists []*crl) bool {
	if len(lists) == 0 {
		return false
	}
	old := *a.crls.Load()
	next := make(crlSet, len(old)+len(lists))
	for k, v := range old {
		next[k] = v
	}
	changed := false
	for _, c := range lists {
		cur := next[c.key]
		if cur != nil && !newer(c, cur) {
			// A source answering with an older list than one already
			// seen is replaying it (or a CA was restored from backup).
			a.log.Warn("ignoring a revocation list older than the one in force", "issuer", c.issuer, "source", c.source,
				"number", c.number, "in_force", cur.number)
			continue
		}
		if cur == nil || !cur.thisUpdate.Equal(c.thisUpdate) || len(cur.serials) != len(c.serials) {
			a.log.Info("revocation list in force", "issuer", c.issuer, "revoked", len(c.serials), "number", c.number, "source", c.source,
				"next_update", c.nextUpdate.UTC(), "refused_after", c.nextUpdate.Add(a.cfg.CRLGrace).UTC())
			changed = true
		}
		next[c.key] = c
	}
	a.crls.Store(&next)
	return changed
}

func newer(c, cur *crl) bool {
	if c.number != nil && cur.number != nil {
		return c.number.Cmp(cur.number) >= 0
	}
	return !c.thisUpdate.Before(cur.thisUpdate)
}

// warnExpiring logs, at most every ten minutes per issuer, when a list comes
// within a quarter of its lifetime (at least the grace) of being refused.
func (a *Authorizer) warnExpiring() {
	now := a.now()
	for _, c := range *a.crls.Load() {
		refuseAt := c.nextUpdate.Add(a.cfg.CRLGrace)
		window := max(c.nextUpdate.Sub(c.thisUpdate)/4, a.cfg.CRLGrace)
		expired := now.After(refuseAt)
		// Once about to expire, once expired: each at most every ten minutes.
		key := c.issuer + map[bool]string{true: " expired", false: ""}[expired]
		if now.Before(refuseAt.Add(-window)) || now.Sub(a.warned[key]) < 10*time.Minute {
			continue
		}
		a.warned[key] = now
		if expired {
			a.log.Error("revocation list expired: certificates of its issuer are refused until a fresh list is loaded",
				"issuer", c.issuer, "next_update", c.nextUpdate.UTC(), "grace", a.cfg.CRLGrace, "source", c.source)
			continue
		}
		a.log.Warn("revocation list is about to expire and has not been refreshed: certificates of its issuer will be refused then",
			"issuer", c.issuer, "refused_after", refuseAt.UTC(), "in", refuseAt.Sub(now).Round(time.Second))
	}
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

// fetchAll returns the lists behind one URL: the list itself, or every
// issuer's when the URL is a Vault PKI mount's issuers list. What could be
// fetched is returned beside the errors of what could not.
func (a *Authorizer) fetchAll(u string) ([]*crl, error) {
	if !strings.HasSuffix(strings.TrimSuffix(u, "/"), "/issuers") {
		raw, err := fetch(http.MethodGet, u)
		if err != nil {
			return nil, err
		}
		c, err := a.parseCRL(raw, redact.URL(u))
		if err != nil {
			return nil, err
		}
		out := []*crl{c}
		if p, err := url.Parse(u); err == nil && strings.HasSuffix(p.Path, "/crl/pem") {
			p.Path = strings.TrimSuffix(p.Path, "/crl/pem") + "/crl/delta/pem"
			d, err := a.fetchDelta(p.String())
			if err != nil {
				return out, err
			}
			out = append(out, d...)
		}
		return out, nil
	}
	// Vault: LIST <mount>/issuers answers {"data": {"keys": [id, ...],
	// "key_info": {id: {"key_id": ...}}}} without a token. An issuer
	// without a key (the root's certificate, imported with the signed
	// intermediate) signs nothing and has no CRL.
	base := strings.TrimSuffix(strings.TrimSuffix(u, "/"), "/issuers")
	raw, err := fetch("LIST", u)
	if err != nil {
		return nil, err
	}
	var list struct {
		Data struct {
			Keys    []string `json:"keys"`
			KeyInfo map[string]struct {
				KeyID *string `json:"key_id"`
			} `json:"key_info"`
		} `json:"data"`
	}
	if err := json.Unmarshal(raw, &list); err != nil || len(list.Data.Keys) == 0 {
		return nil, fmt.Errorf("crl: LIST %s: no issuers in the answer (%v)", redact.URL(u), err)
	}
	var out []*crl
	var errs []error
	for _, id := range list.Data.Keys {
		if info, ok := list.Data.KeyInfo[id]; ok && info.KeyID != nil && *info.KeyID == "" {
			continue
		}
		if id == "" || strings.ContainsAny(id, "/?#%") {
			errs = append(errs, fmt.Errorf("crl: LIST %s: odd issuer id %q", redact.URL(u), id))
			continue
		}
		src := base + "/issuer/" + id + "/crl/pem"
		raw, err := fetch(http.MethodGet, src)
		var c *crl
		if err == nil {
			c, err = a.parseCRL(raw, redact.URL(src))
		}
		if err == nil {
			var d []*crl
			d, err = a.fetchDelta(base + "/issuer/" + id + "/crl/delta/pem")
			out = append(out, d...)
		}
		if errors.Is(err, errUnknownIssuer) {
			// An issuer whose CA is not in our bundle issues nothing the
			// handshake accepts: its list does not matter here.
			a.log.Debug("skipping the revocation list of an issuer outside the CA bundle", "source", redact.URL(src))
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, c)
	}
	return out, errors.Join(errs...)
}

// fetchDelta gets a Vault delta CRL. With auto_rebuild (which keeps the
// full lists from expiring) Vault no longer rebuilds the full list on each
// revocation: new revocations appear in the delta list within its
// delta_rebuild_interval. Missing (delta lists disabled) is not an error.
func (a *Authorizer) fetchDelta(u string) ([]*crl, error) {
	raw, err := fetch(http.MethodGet, u)
	if errors.Is(err, errNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(strings.TrimSpace(string(raw))) == 0 {
		return nil, nil // Vault answers an empty body while no delta exists
	}
	c, err := a.parseCRL(raw, redact.URL(u))
	if err != nil {
		return nil, err
	}
	if !c.delta {
		return nil, fmt.Errorf("crl %s: not a delta list", redact.URL(u))
	}
	return []*crl{c}, nil
}

var errNotFound = errors.New("not found")

// fetch gets a URL, bounded in time and size.
func fetch(method, u string) ([]byte, error) {
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return nil, fmt.Errorf("crl: %w", err)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL may carry credentials: name it redacted
		}
		return nil, fmt.Errorf("crl: %s %s: %w", method, redact.URL(u), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("crl: %s %s: %w", method, redact.URL(u), errNotFound)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("crl: %s %s: %s", method, redact.URL(u), resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 64<<20))
}

var errUnknownIssuer = errors.New("not signed by any CA in the bundle")

// oidDeltaCRLIndicator marks a delta CRL (RFC 5280, 5.2.4).
var oidDeltaCRLIndicator = asn1.ObjectIdentifier{2, 5, 29, 27}

const deltaSuffix = "+delta"

// parseCRL reads a PEM or DER CRL and checks it is signed by a CA of the
// bundle; the result's source is the key of that CA (see crlSet), and what
// names the source in logs goes into issuer.
func (a *Authorizer) parseCRL(raw []byte, what string) (*crl, error) {
	if block, _ := pem.Decode(raw); block != nil {
		raw = block.Bytes
	}
	list, err := x509.ParseRevocationList(raw)
	if err != nil {
		return nil, fmt.Errorf("crl %s: %w", what, err)
	}
	if list.NextUpdate.IsZero() {
		return nil, fmt.Errorf("crl %s: no nextUpdate, so its freshness cannot be checked", what)
	}
	caPEM, err := os.ReadFile(a.cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("crl: the CA bundle: %w", err)
	}
	var signer *x509.Certificate
	for rest := caPEM; signer == nil; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		ca, err := x509.ParseCertificate(block.Bytes)
		if err == nil && list.CheckSignatureFrom(ca) == nil {
			signer = ca
		}
	}
	if signer == nil {
		return nil, fmt.Errorf("crl %s: %w %s", what, errUnknownIssuer, a.cfg.CAFile)
	}
	key := SPKIHash(signer)
	name := signer.Subject.CommonName
	if name == "" {
		name = signer.Subject.String()
	}
	// Two issuers may share a name: the key tells them apart.
	c := &crl{issuer: name + " [" + key[:12] + "]", key: key, serials: map[string]bool{}, source: what,
		number: list.Number, thisUpdate: list.ThisUpdate, nextUpdate: list.NextUpdate}
	for _, e := range list.Extensions {
		if e.Id.Equal(oidDeltaCRLIndicator) {
			// A delta list adds to its issuer's full list: kept beside it.
			c.delta, c.key, c.issuer = true, key+deltaSuffix, c.issuer+" delta"
		}
	}
	for _, e := range list.RevokedCertificateEntries {
		c.serials[e.SerialNumber.String()] = true
	}
	return c, nil
}

// Refusals, as callers see them at call time: no detail.
var (
	errUnauthenticated = status.Error(codes.Unauthenticated, "the caller is not authenticated for this model")
	errDenied          = status.Error(codes.PermissionDenied, "the caller may not call this model")
)

// refusal is why a caller is refused.
type refusal struct {
	code   codes.Code
	reason string // metric label
	detail string // log
}

// check decides on a verified chain under the policy in force; nil admits.
func (a *Authorizer) check(chains [][]*x509.Certificate) *refusal {
	return a.checkFor(chains, a.policy.Load())
}

// checkFor decides on a verified chain under pol; nil admits.
func (a *Authorizer) checkFor(chains [][]*x509.Certificate, pol *Policy) *refusal {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return &refusal{codes.Unauthenticated, "certificate", "no verified client certificate"}
	}
	leaf := chains[0][0]
	if a.checked {
		issuer := leaf
		if len(chains[0]) > 1 {
			issuer = chains[0][1]
		}
		set := *a.crls.Load()
		key := SPKIHash(issuer)
		if set[key] == nil {
			return &refusal{codes.Unauthenticated, "crl_missing", "no revocation list from the certificate's issuer " + issuer.Subject.String() + " is loaded"}
		}
		for _, c := range []*crl{set[key], set[key+deltaSuffix]} {
			switch {
			case c == nil:
			case a.now().After(c.nextUpdate.Add(a.cfg.CRLGrace)):
				return &refusal{codes.Unauthenticated, "crl_expired", fmt.Sprintf("the revocation list of issuer %s expired (next update %s, grace %s): it could not be refreshed",
					c.issuer, c.nextUpdate.UTC().Format(time.RFC3339), a.cfg.CRLGrace)}
			case c.serials[leaf.SerialNumber.String()]:
				return &refusal{codes.Unauthenticated, "revoked", "certificate revoked (serial " + leaf.SerialNumber.Text(16) + ")"}
			}
		}
	}
	if pol.Crunch != "" && !namesCrunch(leaf, pol.Crunch) {
		return &refusal{codes.PermissionDenied, "crunch", fmt.Sprintf("certificate names crunch %v, not %q (%s)", crunchesOf(leaf), names.Crunch(pol.Crunch), pol.Crunch)}
	}
	if len(pol.CoordinatorCertHashes) == 0 {
		if a.cfg.AnyCoordinatorKey {
			return nil
		}
		return &refusal{codes.Unauthenticated, "no_key", "no coordinator key hash is on chain for this crunch: nobody is admitted"}
	}
	h := SPKIHash(leaf)
	for _, want := range pol.CoordinatorCertHashes {
		if h == want {
			return nil
		}
	}
	return &refusal{codes.Unauthenticated, "key", "public key hash " + h + " is not on chain for this crunch"}
}

// VerifyConnection refuses, during the TLS handshake, a client that may not
// call the model: it never gets an HTTP/2 connection, so nothing it sends is
// read. Use it as tls.Config.VerifyConnection of a server that requires and
// verifies client certificates (see tlsfiles.Reloader.ServerConfigWith).
func (a *Authorizer) VerifyConnection(remote net.Addr, cs tls.ConnectionState) error {
	r := a.check(cs.VerifiedChains)
	if r == nil {
		return nil
	}
	a.logRefusal("handshake", r, remote)
	return fmt.Errorf("authz: %s", r.detail)
}

// ErrUnauthenticated and ErrDenied are what AuthorizeCrunch refuses with
// (wrapped): no acceptable certificate, or one of another crunch.
var (
	ErrUnauthenticated = errors.New("authz: the caller is not authenticated")
	ErrDenied          = errors.New("authz: the caller is not this crunch's coordinator")
)

// AuthorizeCrunch decides, as VerifyConnection does, on a client's verified
// chains (tls.ConnectionState.VerifiedChains), for the coordinator of crunch
// instead of the policy's crunch; the policy's key hashes, the key switch
// and the revocation lists apply as for a model's callers. It serves a
// server that answers several crunches and learns which one from the
// request (the orchestrator WebSocket). An empty crunch admits nobody. The
// reason goes to the log; the error wraps ErrUnauthenticated or ErrDenied.
func (a *Authorizer) AuthorizeCrunch(remote net.Addr, chains [][]*x509.Certificate, crunch string) error {
	pol := *a.policy.Load()
	return a.authorizeCrunch(remote, chains, crunch, &pol)
}

// AuthorizeCrunchKeys is AuthorizeCrunch with the crunch's on-chain key
// hashes (primary, secondary; lowercase hex SHA-256 of the coordinator's
// SubjectPublicKeyInfo) in place of the policy's: a server that answers
// several crunches learns each crunch's hashes from its own desired state,
// as each runner learns its model's from its job. Hashes that are not
// SHA-256 in hex, and CrunchDAO's all-zero "none", are dropped; with none
// left nobody is admitted (unless Config.AnyCoordinatorKey).
func (a *Authorizer) AuthorizeCrunchKeys(remote net.Addr, chains [][]*x509.Certificate, crunch string, hashes []string) error {
	pol := Policy{}
	for _, h := range hashes {
		one := Policy{CoordinatorCertHashes: []string{h}}
		if one.normalize() == nil {
			pol.CoordinatorCertHashes = append(pol.CoordinatorCertHashes, one.CoordinatorCertHashes...)
		}
	}
	return a.authorizeCrunch(remote, chains, crunch, &pol)
}

func (a *Authorizer) authorizeCrunch(remote net.Addr, chains [][]*x509.Certificate, crunch string, pol *Policy) error {
	pol.Crunch = crunch
	r := &refusal{codes.PermissionDenied, "crunch", "no crunch named"}
	if crunch != "" {
		r = a.checkFor(chains, pol)
	}
	if r == nil {
		return nil
	}
	a.logRefusal("request", r, remote)
	if r.code == codes.PermissionDenied {
		return fmt.Errorf("%w: %s", ErrDenied, r.detail)
	}
	return fmt.Errorf("%w: %s", ErrUnauthenticated, r.detail)
}

// Authorize admits the caller of ctx or returns the gRPC status to refuse it
// with (the reason is logged).
func (a *Authorizer) Authorize(ctx context.Context) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return a.refuse(&refusal{codes.Unauthenticated, "certificate", "no peer"}, nil)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return a.refuse(&refusal{codes.Unauthenticated, "certificate", "no TLS"}, p.Addr)
	}
	if r := a.check(info.State.VerifiedChains); r != nil {
		return a.refuse(r, p.Addr)
	}
	return nil
}

func (a *Authorizer) refuse(r *refusal, addr net.Addr) error {
	a.logRefusal("call", r, addr)
	if r.code == codes.PermissionDenied {
		return errDenied
	}
	return errUnauthenticated
}

func (a *Authorizer) logRefusal(stage string, r *refusal, addr net.Addr) {
	a.refusals.WithLabelValues(stage, r.reason).Inc()
	peerAddr := ""
	if addr != nil {
		peerAddr = addr.String()
	}
	a.log.Warn("caller refused", "stage", stage, "reason", r.detail, "peer", peerAddr, "code", r.code)
}

// namesCrunch reports whether cert carries crunch's URI SAN
// (names.CoordinatorURI: the crunch's name mapped to its DNS label, as Vault's
// coordinator role writes it).
func namesCrunch(cert *x509.Certificate, crunch string) bool {
	want := names.CoordinatorURI(crunch)
	for _, u := range cert.URIs {
		if u.String() == want {
			return true
		}
	}
	return false
}

func crunchesOf(cert *x509.Certificate) []string {
	var out []string
	for _, u := range cert.URIs {
		if label, ok := strings.CutPrefix(u.String(), names.CoordinatorURIPrefix); ok {
			out = append(out, label)
		}
	}
	return out
}

// TapHandle authorizes a call whose full method protect selects when its
// headers arrive, before its message is read (grpc.InTapHandle): a caller
// admitted at the handshake is refused here once the chain or the CRL
// drops it.
func (a *Authorizer) TapHandle(protect func(fullMethod string) bool) tap.ServerInHandle {
	return func(ctx context.Context, info *tap.Info) (context.Context, error) {
		if protect(info.FullMethodName) {
			if err := a.Authorize(ctx); err != nil {
				return nil, err
			}
		}
		return ctx, nil
	}
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

var (
	descExpiry = prometheus.NewDesc("modelnodes_runner_crl_expiry_seconds",
		"Seconds until the issuer's revocation list is past nextUpdate plus the grace and its certificates are refused (negative: refused now).",
		[]string{"issuer"}, nil)
	descAge = prometheus.NewDesc("modelnodes_runner_crl_age_seconds",
		"Seconds since the thisUpdate of the issuer's revocation list in force.", []string{"issuer"}, nil)
)

// Describe implements prometheus.Collector.
func (a *Authorizer) Describe(ch chan<- *prometheus.Desc) {
	ch <- descExpiry
	ch <- descAge
	a.fetchFailures.Describe(ch)
	a.refusals.Describe(ch)
}

// Collect implements prometheus.Collector: the lists' ages are computed at
// scrape time.
func (a *Authorizer) Collect(ch chan<- prometheus.Metric) {
	now := a.now()
	for _, c := range *a.crls.Load() {
		ch <- prometheus.MustNewConstMetric(descExpiry, prometheus.GaugeValue, c.nextUpdate.Add(a.cfg.CRLGrace).Sub(now).Seconds(), c.issuer)
		ch <- prometheus.MustNewConstMetric(descAge, prometheus.GaugeValue, now.Sub(c.thisUpdate).Seconds(), c.issuer)
	}
	a.fetchFailures.Collect(ch)
	a.refusals.Collect(ch)
}
