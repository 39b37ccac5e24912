package authz_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/names"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/runner/authz"
)

// coordinator issues a client certificate from ca naming the given URIs.
func coordinator(t *testing.T, ca *testpki.CA, dir, name string, uris ...string) *testpki.Issued {
	t.Helper()
	return ca.Issue(t, dir, testpki.Leaf{CommonName: name, Client: true, URIs: uris})
}

// decide asks auth about a caller presenting cert, verified up to issuer,
// at the handshake and at a call. It returns the call's gRPC code and the
// reason the refusal metric counted ("" when admitted); the handshake must
// agree with the call.
func decide(t *testing.T, auth *authz.Authorizer, reg *prometheus.Registry, cert *testpki.Issued, issuer *testpki.CA) (codes.Code, string) {
	t.Helper()
	cs := tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert.Cert, issuer.Cert}}}
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4000}
	handshake := auth.VerifyConnection(addr, cs)
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: addr, AuthInfo: credentials.TLSInfo{State: cs}})
	code := status.Code(auth.Authorize(ctx))
	if (handshake == nil) != (code == codes.OK) {
		t.Errorf("the handshake (%v) and the call (%s) disagree", handshake, code)
	}
	got := refusals(t, reg)
	reason := ""
	for k := range got {
		if r, ok := strings.CutPrefix(k, "call/"); ok {
			reason = r
		}
	}
	if want := map[string]float64{"handshake/" + reason: 1, "call/" + reason: 1}; reason != "" && !maps.Equal(got, want) || reason == "" && len(got) != 0 {
		t.Errorf("refusals counted %v: want the handshake's and the call's reason once each", got)
	}
	return code, reason
}

// refusals returns what modelnodes_runner_authz_refusals_total counted, by
// stage/reason.
func refusals(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "modelnodes_runner_authz_refusals_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if v := m.GetCounter().GetValue(); v > 0 {
				out[labels["stage"]+"/"+labels["reason"]] = v
			}
		}
	}
	return out
}

// Who is admitted, and why not: the crunch named in the certificate's URI
// SAN, the key hash on chain, the revocation list of its issuer. A refused
// caller gets Unauthenticated, or PermissionDenied when only the crunch is
// wrong; the metric says why.
func TestDecisions(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "model-calls CA")
	caFile := ca.WriteCA(t, dir, "ca.crt")
	alpha := names.CoordinatorURIPrefix + "alpha"
	certs := map[string]*testpki.Issued{
		"good":      coordinator(t, ca, dir, "good", alpha),
		"secondary": coordinator(t, ca, dir, "secondary", alpha),
		"revoked":   coordinator(t, ca, dir, "revoked", alpha),
		"offchain":  coordinator(t, ca, dir, "offchain", alpha),
		"beta":      coordinator(t, ca, dir, "beta", names.CoordinatorURIPrefix+"beta"),
		"anon":      coordinator(t, ca, dir, "anon"),
		"prefix":    coordinator(t, ca, dir, "prefix", names.CoordinatorURIPrefix+"alphabet"),
		"subpath":   coordinator(t, ca, dir, "subpath", alpha+"/x"),
		"elsewhere": coordinator(t, ca, dir, "elsewhere", "spiffe://elsewhere/crunch/alpha"),
		"both":      coordinator(t, ca, dir, "both", names.CoordinatorURIPrefix+"beta", alpha),
	}
	// Everybody's key is on chain unless a case says otherwise: the crunch
	// and revocation checks must hold alone.
	everyKey := []string{"good", "secondary", "revoked", "beta", "anon", "prefix", "subpath", "elsewhere", "both"}
	now := time.Now()
	crls := map[string]string{
		"fresh":   ca.WriteCRL(t, dir, "fresh.pem"),
		"revokes": ca.WriteCRL(t, dir, "revokes.pem", certs["revoked"].Cert),
		// Past nextUpdate by 30s and by 2m; the grace is a minute.
		"late":    ca.WriteCRLValid(t, dir, "late.pem", now.Add(-time.Hour), now.Add(-30*time.Second)),
		"expired": ca.WriteCRLValid(t, dir, "expired.pem", now.Add(-time.Hour), now.Add(-2*time.Minute)),
		"none":    "",
	}
	zero := strings.Repeat("0", 64)

	for _, tc := range []struct {
		name   string
		client string
		crunch string   // the policy's crunch
		keys   []string // whose key hashes are on chain; "zero" is the all-zero hash
		crl    string   // the revocation list in force (see crls)
		anyKey bool     // the development switch AnyCoordinatorKey
		want   codes.Code
		reason string
	}{
		{"the crunch's coordinator, key on chain", "good", "alpha", []string{"good"}, "fresh", false, codes.OK, ""},
		{"key is the secondary hash", "secondary", "alpha", []string{"good", "secondary"}, "fresh", false, codes.OK, ""},
		{"key hash on chain in upper case", "good", "alpha", []string{"GOOD"}, "fresh", false, codes.OK, ""},
		{"key not on chain", "offchain", "alpha", everyKey, "fresh", false, codes.Unauthenticated, "key"},
		{"no hash on chain admits nobody", "good", "alpha", nil, "fresh", false, codes.Unauthenticated, "no_key"},
		{"all-zero hashes are no hash", "good", "alpha", []string{"zero", "zero"}, "fresh", false, codes.Unauthenticated, "no_key"},
		{"no hash, development switch: any key", "good", "alpha", nil, "fresh", true, codes.OK, ""},
		{"development switch still checks the crunch", "beta", "alpha", nil, "fresh", true, codes.PermissionDenied, "crunch"},
		{"another crunch", "beta", "alpha", everyKey, "fresh", false, codes.PermissionDenied, "crunch"},
		{"no crunch URI", "anon", "alpha", everyKey, "fresh", false, codes.PermissionDenied, "crunch"},
		{"crunch name with the right prefix", "prefix", "alpha", everyKey, "fresh", false, codes.PermissionDenied, "crunch"},
		{"crunch URI with a path after the name", "subpath", "alpha", everyKey, "fresh", false, codes.PermissionDenied, "crunch"},
		{"crunch URI of another trust domain", "elsewhere", "alpha", everyKey, "fresh", false, codes.PermissionDenied, "crunch"},
		{"one of several URIs names the crunch", "both", "alpha", everyKey, "fresh", false, codes.OK, ""},
		{"empty policy crunch admits any crunch (development)", "beta", "", everyKey, "fresh", false, codes.OK, ""},
		{"empty policy crunch still checks the key", "offchain", "", everyKey, "fresh", false, codes.Unauthenticated, "key"},
		{"revoked", "revoked", "alpha", everyKey, "revokes", false, codes.Unauthenticated, "revoked"},
		{"not revoked, list revokes another", "good", "alpha", everyKey, "revokes", false, codes.OK, ""},
		{"list past nextUpdate, within the grace", "good", "alpha", everyKey, "late", false, codes.OK, ""},
		{"list past nextUpdate and the grace", "good", "alpha", everyKey, "expired", false, codes.Unauthenticated, "crl_expired"},
		{"revoked, but no revocation source configured", "revoked", "alpha", everyKey, "none", false, codes.OK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hashes []string
			for _, k := range tc.keys {
				switch {
				case k == "zero":
					hashes = append(hashes, zero)
				case k == strings.ToUpper(k):
					hashes = append(hashes, strings.ToUpper(authz.SPKIHash(certs[strings.ToLower(k)].Cert)))
				default:
					hashes = append(hashes, authz.SPKIHash(certs[k].Cert))
				}
			}
			reg := prometheus.NewRegistry()
			auth, err := authz.New(authz.Config{Static: authz.Policy{Crunch: tc.crunch, CoordinatorCertHashes: hashes},
				AnyCoordinatorKey: tc.anyKey, CRLFile: crls[tc.crl], CRLGrace: time.Minute, CAFile: caFile, Registerer: reg})
			if err != nil {
				t.Fatal(err)
			}
			code, reason := decide(t, auth, reg, certs[tc.client], ca)
			if code != tc.want || reason != tc.reason {
				t.Errorf("code %s, refusal %q; want %s, %q", code, reason, tc.want, tc.reason)
			}
		})
	}
}

// A caller without a verified certificate, or without TLS at all, is
// refused whatever the policy.
func TestNoCertificateIsRefused(t *testing.T) {
	reg := prometheus.NewRegistry()
	auth, err := authz.New(authz.Config{Static: authz.Policy{Crunch: "alpha"}, AnyCoordinatorKey: true, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := auth.VerifyConnection(nil, tls.ConnectionState{}); err == nil {
		t.Error("a handshake without a verified chain was admitted")
	}
	for name, ctx := range map[string]context.Context{
		"no peer": context.Background(),
		"no TLS":  peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{}}),
	} {
		if code := status.Code(auth.Authorize(ctx)); code != codes.Unauthenticated {
			t.Errorf("%s: %s, want Unauthenticated", name, code)
		}
	}
	if got, want := refusals(t, reg), map[string]float64{"handshake/certificate": 1, "call/certificate": 2}; !maps.Equal(got, want) {
		t.Errorf("refusals counted %v, want %v", got, want)
	}
}

// A server answering several crunches (the orchestrator WebSocket) asks
// for the crunch the request names: the crunch's coordinator is admitted,
// another crunch's is denied, a chain without a certificate is
// unauthenticated, and no crunch admits nobody, whatever the policy's
// crunch.
func TestAuthorizeCrunch(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "model-calls CA")
	alpha := coordinator(t, ca, dir, "alpha", names.CoordinatorURI("alpha"))
	auth, err := authz.New(authz.Config{Static: authz.Policy{Crunch: "beta"}, AnyCoordinatorKey: true})
	if err != nil {
		t.Fatal(err)
	}
	chains := [][]*x509.Certificate{{alpha.Cert, ca.Cert}}
	for _, c := range []struct {
		crunch string
		chains [][]*x509.Certificate
		want   error
	}{
		{"alpha", chains, nil},
		{"beta", chains, authz.ErrDenied},
		{"", chains, authz.ErrDenied},
		{"alpha", nil, authz.ErrUnauthenticated},
	} {
		err := auth.AuthorizeCrunch(nil, c.chains, c.crunch)
		if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("crunch %q, %d chains: %v, want %v", c.crunch, len(c.chains), err, c.want)
		}
	}
}

// The orchestrator WebSocket's check: a certificate naming the crunch is
// admitted only with a key whose hash is one of the crunch's (primary or
// secondary); another key, no hash, or only CrunchDAO's all-zero "none"
// admits nobody, whatever the policy says.
func TestAuthorizeCrunchKeys(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "model-calls CA")
	alpha := coordinator(t, ca, dir, "alpha", names.CoordinatorURI("alpha"))
	thief := coordinator(t, ca, dir, "thief", names.CoordinatorURI("alpha"))
	auth, err := authz.New(authz.Config{})
	if err != nil {
		t.Fatal(err)
	}
	zero := strings.Repeat("0", 64)
	h := authz.SPKIHash(alpha.Cert)
	for _, c := range []struct {
		what   string
		cert   *testpki.Issued
		hashes []string
		want   error
	}{
		{"the primary", alpha, []string{h}, nil},
		{"the secondary, in upper case", alpha, []string{zero, strings.ToUpper(h)}, nil},
		{"a key not on chain", thief, []string{h}, authz.ErrUnauthenticated},
		{"no hash", alpha, nil, authz.ErrUnauthenticated},
		{"only none", alpha, []string{zero, "not hex"}, authz.ErrUnauthenticated},
	} {
		err := auth.AuthorizeCrunchKeys(nil, [][]*x509.Certificate{{c.cert.Cert, ca.Cert}}, "alpha", c.hashes)
		if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.what, err, c.want)
		}
	}
}

// Vault keeps one revocation list per issuer. With the issuers list as the
// source, each certificate is checked against its own issuer's list: a
// revocation by one issuer does not reach another's certificates, and an
// issuer of the CA bundle whose list is not published refuses its
// certificates (crl_missing). Issuers that sign nothing (no key) and lists
// signed by a CA outside the bundle are skipped, not errors.
func TestEachIssuerHasItsOwnList(t *testing.T) {
	dir := t.TempDir()
	first, second, unlisted, foreign := testpki.NewCA(t, "intermediate 1"), testpki.NewCA(t, "intermediate 2"),
		testpki.NewCA(t, "intermediate 0"), testpki.NewCA(t, "not in the bundle")
	caFile := filepath.Join(dir, "ca.crt")
	testpki.WriteFile(t, caFile, append(append(first.PEM(), second.PEM()...), unlisted.PEM()...))
	alpha := names.CoordinatorURIPrefix + "alpha"
	fromFirst, revokedByFirst := coordinator(t, first, dir, "c1", alpha), coordinator(t, first, dir, "r1", alpha)
	fromSecond, fromUnlisted := coordinator(t, second, dir, "c2", alpha), coordinator(t, unlisted, dir, "c0", alpha)
	lists := map[string][]byte{
		"first":   mustRead(t, first.WriteCRL(t, dir, "first.pem", revokedByFirst.Cert)),
		"second":  mustRead(t, second.WriteCRL(t, dir, "second.pem")),
		"foreign": mustRead(t, foreign.WriteCRL(t, dir, "foreign.pem", fromSecond.Cert)),
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "LIST" && r.URL.Path == "/v1/pki_int/issuers" {
			_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{
				"keys": []string{"first", "second", "foreign", "root"},
				"key_info": map[string]any{"first": map[string]any{"key_id": "k1"}, "second": map[string]any{"key_id": "k2"},
					"foreign": map[string]any{"key_id": "k3"}, "root": map[string]any{"key_id": ""}},
			}})
			return
		}
		id, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/v1/pki_int/issuer/"), "/crl/pem")
		if list := lists[id]; ok && list != nil {
			_, _ = w.Write(list)
			return
		}
		http.NotFound(w, r) // no delta lists; "root" has none
	}))
	defer srv.Close()
	var hashes []string
	for _, c := range []*testpki.Issued{fromFirst, revokedByFirst, fromSecond, fromUnlisted} {
		hashes = append(hashes, authz.SPKIHash(c.Cert))
	}
	for _, tc := range []struct {
		name   string
		client *testpki.Issued
		issuer *testpki.CA
		reason string
	}{
		{"first issuer's certificate", fromFirst, first, ""},
		{"revoked by the first issuer", revokedByFirst, first, "revoked"},
		{"second issuer's certificate, named by a foreign list", fromSecond, second, ""},
		{"issuer without a published list", fromUnlisted, unlisted, "crl_missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			auth, err := authz.New(authz.Config{Static: authz.Policy{Crunch: "alpha", CoordinatorCertHashes: hashes},
				CRLURLs: []string{srv.URL + "/v1/pki_int/issuers"}, CAFile: caFile, Registerer: reg})
			if err != nil {
				t.Fatalf("loading the issuers' lists: %v", err)
			}
			if _, reason := decide(t, auth, reg, tc.client, tc.issuer); reason != tc.reason {
				t.Errorf("refusal %q, want %q", reason, tc.reason)
			}
		})
	}
}

// Inputs that cannot be used are refused when the runner starts, not
// discovered at the first call.
func TestUnusableInputsAreRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	ca, other := testpki.NewCA(t, "ca"), testpki.NewCA(t, "other")
	caFile := ca.WriteCA(t, dir, "ca.crt")
	brokenPolicy := filepath.Join(dir, "policy.json")
	testpki.WriteFile(t, brokenPolicy, []byte(`{"crunch": "alpha", "coordinator_cert_hashes": ["abc"]}`))
	unknownField := filepath.Join(dir, "unknown.json")
	testpki.WriteFile(t, unknownField, []byte(`{"crunch": "alpha", "hashes": []}`))
	for name, cfg := range map[string]authz.Config{
		"hash not hex":            {Static: authz.Policy{CoordinatorCertHashes: []string{"xyz"}}},
		"hash too short":          {Static: authz.Policy{CoordinatorCertHashes: []string{"abcd"}}},
		"policy file, short hash": {PolicyFile: brokenPolicy},
		"policy file, odd field":  {PolicyFile: unknownField},
		// It used to start, then panic at the first caller (no policy).
		"policy file missing":      {PolicyFile: filepath.Join(dir, "missing.json")},
		"CRL file and URLs":        {CRLFile: ca.WriteCRL(t, dir, "crl.pem"), CRLURLs: []string{"http://127.0.0.1:1/crl"}, CAFile: caFile},
		"CRL signed by another CA": {CRLFile: other.WriteCRL(t, dir, "other.pem"), CAFile: caFile},
	} {
		if _, err := authz.New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A revocation list that cannot be fetched (Vault down) is logged as what it
// is, not as a changed file, and the list in force stays until it expires.
func TestFailedFetchIsLoggedAsSuch(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "ca")
	caFile := ca.WriteCA(t, dir, "ca.crt")
	list := mustRead(t, ca.WriteCRL(t, dir, "crl.pem"))
	up := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up {
			http.Error(w, "Vault is sealed", http.StatusServiceUnavailable)
			return
		}
		if strings.Contains(r.URL.Path, "/delta/") {
			http.NotFound(w, r) // no delta list
			return
		}
		_, _ = w.Write(list)
	}))
	defer srv.Close()
	var logs strings.Builder
	now := time.Now()
	auth, err := authz.New(authz.Config{Static: authz.Policy{Crunch: "alpha", CoordinatorCertHashes: []string{strings.Repeat("ab", 32)}},
		CRLURLs: []string{srv.URL + "/v1/pki_int/crl/pem"}, CAFile: caFile, CRLRefresh: time.Minute,
		Now:    func() time.Time { return now },
		Logger: hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Error})})
	if err != nil {
		t.Fatal(err)
	}
	up = false
	now = now.Add(2 * time.Minute)
	if _, err := auth.Reload(); err == nil {
		t.Fatal("Reload with the CRL URL answering 503: no error")
	}
	got := logs.String()
	if !strings.Contains(got, "revocation lists could not be fetched") || strings.Contains(got, "changed") {
		t.Errorf("a failed fetch logged as:\n%s\nwant it named as a failed fetch, with no word of a change", got)
	}
}
