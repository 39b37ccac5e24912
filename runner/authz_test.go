package runner_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/runner/worker"
)

type authzSetup struct {
	dir, policyFile, crlFile, caFile string
	ca, otherCA                      *testpki.CA
	auth                             *authz.Authorizer
	addr                             string
	m                                *mtlsSetup
	h                                *harness
	probe                            *testpki.Issued
}

func coordinator(t *testing.T, ca *testpki.CA, dir, name, crunch string, opts ...func(*testpki.Leaf)) *testpki.Issued {
	l := testpki.Leaf{CommonName: name, Client: true, URIs: []string{names.CoordinatorURIPrefix + crunch}}
	for _, o := range opts {
		o(&l)
	}
	return ca.Issue(t, dir, l)
}

func writePolicy(t *testing.T, path, crunch string, hashes ...string) {
	b, _ := json.Marshal(authz.Policy{Crunch: crunch, CoordinatorCertHashes: hashes})
	testpki.WriteFile(t, path, b)
}

// startAuthz runs a runner that admits crunch "alpha"'s coordinator whose key
// hashes to one of the on-chain hashes; the policy starts with the hash of
// a probe coordinator (a.probe) that the health check uses.
func startAuthz(t *testing.T, opts ...func(*authz.Config)) *authzSetup {
	dir := t.TempDir()
	a := &authzSetup{dir: dir, ca: testpki.NewCA(t, "model-calls CA"), otherCA: testpki.NewCA(t, "other CA")}
	a.caFile = a.ca.WriteCA(t, dir, "ca.crt")
	a.probe = coordinator(t, a.ca, dir, "probe", "alpha")
	a.policyFile = filepath.Join(dir, "policy.json")
	writePolicy(t, a.policyFile, "alpha", authz.SPKIHash(a.probe.Cert))
	a.crlFile = a.ca.WriteCRL(t, dir, "crl.pem")
	cfg := authz.Config{PolicyFile: a.policyFile, CRLFile: a.crlFile, CAFile: a.caFile,
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: testWriter{t}})}
	for _, o := range opts {
		o(&cfg)
	}
	var err error
	a.auth, err = authz.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	server := a.ca.Issue(t, dir, testpki.Leaf{CommonName: "runner", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, RSA: true})
	tlsr, err := tlsfiles.New(tlsfiles.Files{CertFile: server.CertFile, KeyFile: server.KeyFile, CAFile: a.caFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := &mtlsSetup{dir: dir, ca: a.ca, otherCA: a.otherCA}
	h := startConfig(t, runner.Config{TLS: tlsr, Authorizer: a.auth,
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: testWriter{t}}),
		Worker: worker.Config{Command: exampleWorker(t)}},
		m.dial(t, a.probe, a.ca))
	h.ready()
	a.addr, a.m, a.h = h.addr, m, h
	return a
}

// callAs makes a model call on a new connection with the given client
// certificate and returns its gRPC code: a caller refused at the handshake
// gets Unavailable.
func (a *authzSetup) callAs(t *testing.T, client *testpki.Issued) codes.Code {
	return a.connect(t, client).setupCode(t)
}

func (a *authzSetup) connect(t *testing.T, client *testpki.Issued) *harness {
	return dialHarness(t, nil, a.addr, a.m.dial(t, client, a.ca))
}

func (h *harness) setupCode(t *testing.T) codes.Code {
	_, err := h.ds.Setup(ctxTimeout(t, 10*time.Second), &dspb.SetupRequest{ClassName: "x.Base"})
	return status.Code(err)
}

func (a *authzSetup) policy(t *testing.T, crunch string, hashes ...string) {
	t.Helper()
	writePolicy(t, a.policyFile, crunch, hashes...)
	if _, err := a.auth.Reload(); err != nil {
		t.Fatal(err)
	}
}

// refusedAtHandshake: the runner refused the TLS handshake, so the caller
// never had a connection to send a request on.
const refusedAtHandshake = codes.Unavailable

func TestAuthorizationMatrix(t *testing.T) {
	dir := t.TempDir()
	a := startAuthz(t)
	good := coordinator(t, a.ca, dir, "right", "alpha")
	revoked := coordinator(t, a.ca, dir, "revoked", "alpha")
	beta := coordinator(t, a.ca, dir, "beta", "beta")
	anon := a.ca.Issue(t, dir, testpki.Leaf{CommonName: "anon", Client: true})
	// On chain: the right coordinator's key, and the revoked one's (so only
	// the CRL stands between it and the model), and, to show the crunch
	// check holds alone, the keys of beta's coordinator and of a
	// certificate naming no crunch.
	a.policy(t, "alpha", authz.SPKIHash(good.Cert), authz.SPKIHash(revoked.Cert), authz.SPKIHash(beta.Cert), authz.SPKIHash(anon.Cert))
	testpki.WriteFile(t, a.crlFile, mustRead(t, a.ca.WriteCRL(t, dir, "crl-new.pem", revoked.Cert)))
	if _, err := a.auth.Reload(); err != nil {
		t.Fatal(err)
	}
	// Vault renews the coordinator's certificate with the same key: the
	// on-chain hash still matches.
	renewed := a.ca.IssueForKey(t, dir, testpki.Leaf{CommonName: "right-renewed", Client: true,
		URIs: []string{names.CoordinatorURIPrefix + "alpha"}}, good.KeyPEM)

	for _, tc := range []struct {
		name   string
		client *testpki.Issued
		want   codes.Code
	}{
		{"the crunch's coordinator, key on chain", good, codes.OK},
		{"its renewed certificate, same key", renewed, codes.OK},
		{"coordinator of another crunch", beta, refusedAtHandshake},
		{"certificate naming no crunch", anon, refusedAtHandshake},
		{"right crunch, key not on chain", coordinator(t, a.ca, dir, "offchain", "alpha"), refusedAtHandshake},
		{"revoked certificate", revoked, refusedAtHandshake},
		{"certificate from another CA", coordinator(t, a.otherCA, dir, "foreign", "alpha"), refusedAtHandshake},
		{"expired certificate", coordinator(t, a.ca, dir, "expired", "alpha", func(l *testpki.Leaf) { l.NotAfter = time.Now().Add(-time.Minute) }), refusedAtHandshake},
		{"no certificate", nil, refusedAtHandshake},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := a.callAs(t, tc.client); got != tc.want {
				t.Errorf("code %s, want %s", got, tc.want)
			}
		})
	}
}

// A connection admitted at the handshake is checked again at every call,
// before its request is read: the chain dropping the key, a revocation or
// a crunch change refuse the next call on the same connection, with a
// status that says why.
func TestAuthorizationAppliesToOpenConnections(t *testing.T) {
	dir := t.TempDir()
	a := startAuthz(t)
	good := coordinator(t, a.ca, dir, "right", "alpha")
	a.policy(t, "alpha", authz.SPKIHash(good.Cert))
	conn := a.connect(t, good)
	if got := conn.setupCode(t); got != codes.OK {
		t.Fatalf("admitted coordinator: %s", got)
	}
	a.policy(t, "alpha", authz.SPKIHash(a.probe.Cert))
	if got := conn.setupCode(t); got != codes.Unauthenticated {
		t.Fatalf("same connection after the chain dropped the key: %s, want Unauthenticated", got)
	}
	a.policy(t, "beta", authz.SPKIHash(good.Cert))
	if got := conn.setupCode(t); got != codes.PermissionDenied {
		t.Fatalf("same connection after the model moved to crunch beta: %s, want PermissionDenied", got)
	}
	a.policy(t, "alpha", authz.SPKIHash(good.Cert))
	if got := conn.setupCode(t); got != codes.OK {
		t.Fatalf("key back on chain: %s", got)
	}
	testpki.WriteFile(t, a.crlFile, mustRead(t, a.ca.WriteCRL(t, dir, "crl-new.pem", good.Cert)))
	if _, err := a.auth.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := conn.setupCode(t); got != codes.Unauthenticated {
		t.Fatalf("same connection after revocation: %s, want Unauthenticated", got)
	}
}

// No hash on chain means nobody may call: neither an empty list nor
// CrunchDAO's all-zero "no hash" opens the model to every key naming the
// crunch. Only the development switch does.
func TestNoHashAdmitsNobody(t *testing.T) {
	dir := t.TempDir()
	zero := strings.Repeat("0", 64)
	a := startAuthz(t)
	good := coordinator(t, a.ca, dir, "right", "alpha")
	for _, hashes := range [][]string{nil, {zero}, {zero, zero}} {
		a.policy(t, "alpha", hashes...)
		if got := a.callAs(t, good); got != refusedAtHandshake {
			t.Errorf("hashes %q: the crunch's coordinator got %s, want refused", hashes, got)
		}
	}
	// The static policy (flags) behaves the same.
	static, err := authz.New(authz.Config{Static: authz.Policy{Crunch: "alpha", CoordinatorCertHashes: []string{zero}},
		CRLFile: a.crlFile, CAFile: a.caFile})
	if err != nil {
		t.Fatal(err)
	}
	if err := static.VerifyConnection(nil, tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{good.Cert, a.ca.Cert}}}); err == nil {
		t.Error("a static policy with an all-zero hash admitted a key")
	}

	dev := startAuthz(t, func(c *authz.Config) { c.AnyCoordinatorKey = true })
	dev.policy(t, "alpha", zero)
	if got := dev.callAs(t, coordinator(t, dev.ca, dir, "any", "alpha")); got != codes.OK {
		t.Errorf("with the development switch, no hash: %s, want any key admitted", got)
	}
	if got := dev.callAs(t, coordinator(t, dev.ca, dir, "other", "beta")); got != refusedAtHandshake {
		t.Errorf("with the development switch, another crunch: %s, want refused", got)
	}
}

// A revocation list past its nextUpdate plus the grace is not trusted any
// more: every certificate of its issuer is refused until a fresh list comes,
// so a CRL source that stops answering cannot freeze revocation.
func TestExpiredCRLRefusesCallers(t *testing.T) {
	dir := t.TempDir()
	a := startAuthz(t, func(c *authz.Config) { c.CRLGrace = time.Minute })
	good := coordinator(t, a.ca, dir, "right", "alpha")
	a.policy(t, "alpha", authz.SPKIHash(good.Cert), authz.SPKIHash(a.probe.Cert))
	conn := a.connect(t, good)
	if got := conn.setupCode(t); got != codes.OK {
		t.Fatalf("fresh list: %s", got)
	}
	// Within the grace: still admitted.
	testpki.WriteFile(t, a.crlFile, mustRead(t, a.ca.WriteCRLValid(t, dir, "late.pem", time.Now().Add(-time.Hour), time.Now().Add(-30*time.Second))))
	if _, err := a.auth.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := a.callAs(t, good); got != codes.OK {
		t.Fatalf("list past nextUpdate but within the grace: %s, want admitted", got)
	}
	// Past it: refused at the handshake, and on the open connection.
	testpki.WriteFile(t, a.crlFile, mustRead(t, a.ca.WriteCRLValid(t, dir, "stale.pem", time.Now().Add(-time.Hour), time.Now().Add(-2*time.Minute))))
	if _, err := a.auth.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := a.callAs(t, good); got != refusedAtHandshake {
		t.Errorf("new connection, list expired: %s, want refused", got)
	}
	if got := conn.setupCode(t); got != codes.Unauthenticated {
		t.Errorf("open connection, list expired: %s, want Unauthenticated", got)
	}
	// A fresh list restores calls.
	testpki.WriteFile(t, a.crlFile, mustRead(t, a.ca.WriteCRL(t, dir, "fresh.pem")))
	if _, err := a.auth.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := a.callAs(t, good); got != codes.OK {
		t.Errorf("fresh list again: %s", got)
	}
}

// A CRL URL that stops answering keeps the last list only until it
// expires: then the issuer's certificates are refused, with the failures
// and the time left in the metrics.
func TestUnreachableCRLURLEventuallyRefuses(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "model-calls CA")
	caFile := ca.WriteCA(t, dir, "ca.crt")
	good := coordinator(t, ca, dir, "right", "alpha")
	// The list the server hands out expires a second from now.
	crlPEM := mustRead(t, ca.WriteCRLValid(t, dir, "crl.pem", time.Now().Add(-time.Hour), time.Now().Add(time.Second)))
	up := true
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case !up:
			http.Error(w, "down", http.StatusServiceUnavailable)
		case strings.HasSuffix(r.URL.Path, "/crl/delta/pem"):
			http.NotFound(w, r) // as Vault without delta lists
		default:
			_, _ = w.Write(crlPEM)
		}
	}))
	defer srv.Close()
	reg := prometheus.NewRegistry()
	var logs syncbuf.Buffer
	auth, err := authz.New(authz.Config{Static: authz.Policy{Crunch: "alpha", CoordinatorCertHashes: []string{authz.SPKIHash(good.Cert)}},
		CRLURLs: []string{srv.URL + "/v1/pki_int/crl/pem?token=secret"}, CRLRefresh: time.Millisecond, CRLGrace: time.Second,
		CAFile: caFile, Registerer: reg, Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: io.MultiWriter(testWriter{t}, &logs)})})
	if err != nil {
		t.Fatal(err)
	}
	chain := tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{good.Cert, ca.Cert}}}
	if err := auth.VerifyConnection(nil, chain); err != nil {
		t.Fatalf("fresh list: %v", err)
	}
	mu.Lock()
	up = false
	mu.Unlock()
	time.Sleep(5 * time.Millisecond)
	if _, err := auth.Reload(); err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("a failed fetch: %v, want an error without the URL's query", err)
	}
	if err := auth.VerifyConnection(nil, chain); err != nil {
		t.Fatalf("source down, last list still valid: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for auth.VerifyConnection(nil, chain) == nil {
		if time.Now().After(deadline) {
			t.Fatal("the last list is still trusted 10s after nextUpdate + grace: revocation is frozen")
		}
		_, _ = auth.Reload()
		time.Sleep(50 * time.Millisecond)
	}
	_, _ = auth.Reload() // the watcher's next tick
	for _, want := range []string{"revocation list is about to expire", "revocation list expired", "caller refused"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the runner never logged %q", want)
		}
	}
	if strings.Contains(logs.String(), "secret") {
		t.Error("the CRL URL's query reached the log")
	}
	metrics := gather(t, reg)
	if !strings.Contains(metrics, "modelnodes_runner_crl_fetch_failures_total") || !regexp.MustCompile(`modelnodes_runner_crl_expiry_seconds\{issuer="model-calls CA \[[0-9a-f]+\]"\} -`).MatchString(metrics) {
		t.Errorf("metrics lack the failures or a negative expiry:\n%s", metrics)
	}
}

// Vault with auto_rebuild publishes new revocations in the delta list
// first: a certificate named only there is refused.
func TestDeltaCRLRevokes(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "model-calls CA")
	caFile := ca.WriteCA(t, dir, "ca.crt")
	good := coordinator(t, ca, dir, "right", "alpha")
	other := coordinator(t, ca, dir, "other", "alpha")
	full := mustRead(t, ca.WriteCRL(t, dir, "crl.pem"))
	var delta []byte
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if strings.HasSuffix(r.URL.Path, "/crl/delta/pem") {
			_, _ = w.Write(delta)
			return
		}
		_, _ = w.Write(full)
	}))
	defer srv.Close()
	auth, err := authz.New(authz.Config{Static: authz.Policy{Crunch: "alpha", CoordinatorCertHashes: []string{authz.SPKIHash(good.Cert), authz.SPKIHash(other.Cert)}},
		CRLURLs: []string{srv.URL + "/v1/pki_int/crl/pem"}, CRLRefresh: time.Millisecond, CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	state := func(c *testpki.Issued) tls.ConnectionState {
		return tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c.Cert, ca.Cert}}}
	}
	if err := auth.VerifyConnection(nil, state(good)); err != nil {
		t.Fatalf("no delta yet: %v", err)
	}
	mu.Lock()
	delta = ca.DeltaCRLPEM(t, 1, good.Cert)
	mu.Unlock()
	time.Sleep(2 * time.Millisecond)
	if _, err := auth.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := auth.VerifyConnection(nil, state(good)); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("revoked in the delta list: %v, want refused", err)
	}
	if err := auth.VerifyConnection(nil, state(other)); err != nil {
		t.Errorf("another certificate: %v", err)
	}
}

// A CRL source that answers with an older list (a replay) cannot take back
// a revocation.
func TestOlderCRLDoesNotTakeBackARevocation(t *testing.T) {
	dir := t.TempDir()
	a := startAuthz(t)
	good := coordinator(t, a.ca, dir, "right", "alpha")
	a.policy(t, "alpha", authz.SPKIHash(good.Cert), authz.SPKIHash(a.probe.Cert))
	older := mustRead(t, a.ca.WriteCRL(t, dir, "older.pem"))
	time.Sleep(time.Millisecond)
	testpki.WriteFile(t, a.crlFile, mustRead(t, a.ca.WriteCRL(t, dir, "newer.pem", good.Cert)))
	if _, err := a.auth.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := a.callAs(t, good); got != refusedAtHandshake {
		t.Fatalf("revoked: %s", got)
	}
	testpki.WriteFile(t, a.crlFile, older)
	if _, err := a.auth.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := a.callAs(t, good); got != refusedAtHandshake {
		t.Errorf("after an older list without the revocation was served: %s, want still refused", got)
	}
}

func gather(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := ""
			for _, l := range m.GetLabel() {
				labels += fmt.Sprintf("%s=%q", l.GetName(), l.GetValue())
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			fmt.Fprintf(&b, "%s{%s} %g\n", mf.GetName(), labels, v)
		}
	}
	return b.String()
}

// Rotation on chain: the coordinator moves to a new key registered as the
// secondary hash; both work while both are on chain, the old one is refused
// once the chain drops it. No runner restart.
func TestAuthorizationFollowsHashRotation(t *testing.T) {
	dir := t.TempDir()
	a := startAuthz(t)
	oldCert := coordinator(t, a.ca, dir, "old", "alpha")
	newCert := coordinator(t, a.ca, dir, "new", "alpha")
	step := func(hashes ...string) { a.policy(t, "alpha", hashes...) }
	step(authz.SPKIHash(oldCert.Cert), "0000000000000000000000000000000000000000000000000000000000000000")
	if got := a.callAs(t, oldCert); got != codes.OK {
		t.Fatalf("primary only: old key %s", got)
	}
	if got := a.callAs(t, newCert); got != refusedAtHandshake {
		t.Fatalf("primary only: new key %s, want refused", got)
	}
	step(authz.SPKIHash(oldCert.Cert), authz.SPKIHash(newCert.Cert))
	if a.callAs(t, oldCert) != codes.OK || a.callAs(t, newCert) != codes.OK {
		t.Fatal("with primary and secondary both on chain, both keys must be admitted")
	}
	step(authz.SPKIHash(newCert.Cert))
	if got := a.callAs(t, oldCert); got != refusedAtHandshake {
		t.Fatalf("after the old hash left the chain: old key %s, want refused", got)
	}
	if got := a.callAs(t, newCert); got != codes.OK {
		t.Fatalf("after rotation: new key %s", got)
	}
	// A broken policy file keeps the last good policy.
	testpki.WriteFile(t, a.policyFile, []byte(`{"crunch": "alpha", "coordinator_cert_hashes": ["nothex"]}`))
	if _, err := a.auth.Reload(); err == nil {
		t.Fatal("a malformed hash was accepted")
	}
	if got := a.callAs(t, newCert); got != codes.OK {
		t.Fatalf("after a broken policy write: %s, want the last good policy kept", got)
	}
}

func TestCRLMustBeSignedByTheCA(t *testing.T) {
	dir := t.TempDir()
	ca, other := testpki.NewCA(t, "ca"), testpki.NewCA(t, "other")
	_, err := authz.New(authz.Config{CRLFile: other.WriteCRL(t, dir, "crl.pem"), CAFile: ca.WriteCA(t, dir, "ca.pem")})
	if err == nil {
		t.Fatal("a revocation list signed by another CA was accepted")
	}
}

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// After a rotation the runner's CA bundle is re-rendered with the new
// issuer: the lists it signs must count at once, not a --crl-refresh later
// (until then its certificates are refused for want of a verified list).
func TestNewCABundleRefetchesTheLists(t *testing.T) {
	dir := t.TempDir()
	oldCA, newCA := testpki.NewCA(t, "old intermediate"), testpki.NewCA(t, "new intermediate")
	caFile := oldCA.WriteCA(t, dir, "ca.crt")
	good := coordinator(t, newCA, dir, "right", "alpha")
	// Vault's issuer list gains the new issuer when the bundle does; here
	// one URL serves the old issuer's list, then the new one's.
	oldList, newList := mustRead(t, oldCA.WriteCRL(t, dir, "old.pem")), mustRead(t, newCA.WriteCRL(t, dir, "new.pem"))
	var mu sync.Mutex
	serve := oldList
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if strings.HasSuffix(r.URL.Path, "/crl/pem") {
			_, _ = w.Write(serve)
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	auth, err := authz.New(authz.Config{Static: authz.Policy{Crunch: "alpha", CoordinatorCertHashes: []string{authz.SPKIHash(good.Cert)}},
		CRLURLs: []string{srv.URL + "/crl/pem"}, CRLRefresh: time.Hour,
		CAFile: caFile, Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: testWriter{t}})})
	if err != nil {
		t.Fatal(err)
	}
	chain := tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{good.Cert, newCA.Cert}}}
	if err := auth.VerifyConnection(nil, chain); err == nil {
		t.Fatal("a certificate whose issuer's list could not be verified was admitted")
	}
	mu.Lock()
	serve = newList
	mu.Unlock()
	testpki.WriteFile(t, caFile, append(oldCA.PEM(), newCA.PEM()...))
	_, _ = auth.Reload() // the watcher's next tick
	if err := auth.VerifyConnection(nil, chain); err != nil {
		t.Fatalf("the new issuer's list was not fetched when the CA bundle gained it: %v", err)
	}
}
