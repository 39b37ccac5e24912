package runner_test

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelnodes/modelnodes/internal/testpki"
	"github.com/modelnodes/modelnodes/internal/tlsfiles"
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
}

func coordinator(t *testing.T, ca *testpki.CA, dir, name, crunch string, opts ...func(*testpki.Leaf)) *testpki.Issued {
	l := testpki.Leaf{CommonName: name, Client: true, URIs: []string{authz.CrunchURIPrefix + crunch}}
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
// hashes to one of the on-chain hashes.
func startAuthz(t *testing.T, hashes ...string) *authzSetup {
	dir := t.TempDir()
	a := &authzSetup{dir: dir, ca: testpki.NewCA(t, "model-calls CA"), otherCA: testpki.NewCA(t, "other CA")}
	a.caFile = a.ca.WriteCA(t, dir, "ca.crt")
	a.policyFile = filepath.Join(dir, "policy.json")
	writePolicy(t, a.policyFile, "alpha", hashes...)
	a.crlFile = a.ca.WriteCRL(t, dir, "crl.pem")
	var err error
	a.auth, err = authz.New(authz.Config{PolicyFile: a.policyFile, CRLFile: a.crlFile, CAFile: a.caFile,
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: testWriter{t}})})
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
		m.dial(t, coordinator(t, a.ca, dir, "probe", "alpha"), a.ca))
	h.ready() // health is open to any caller that passes the handshake
	a.addr, a.m = h.addr, m
	return a
}

// callAs makes a model call with the given client certificate and returns
// its gRPC code.
func (a *authzSetup) callAs(t *testing.T, client *testpki.Issued) codes.Code {
	h := dialHarness(t, nil, a.addr, a.m.dial(t, client, a.ca))
	_, err := h.ds.Setup(ctxTimeout(t, 10*time.Second), &dspb.SetupRequest{ClassName: "x.Base"})
	return status.Code(err)
}

func TestAuthorizationMatrix(t *testing.T) {
	dir := t.TempDir()
	a := startAuthz(t)
	good := coordinator(t, a.ca, dir, "right", "alpha")
	revoked := coordinator(t, a.ca, dir, "revoked", "alpha")
	// On chain: the right coordinator's key, and the revoked one's (so only
	// the CRL stands between it and the model).
	writePolicy(t, a.policyFile, "alpha", authz.SPKIHash(good.Cert), authz.SPKIHash(revoked.Cert))
	testpki.WriteFile(t, a.crlFile, mustRead(t, a.ca.WriteCRL(t, dir, "crl-new.pem", revoked.Cert)))
	if _, err := a.auth.Reload(); err != nil {
		t.Fatal(err)
	}
	// Vault renews the coordinator's certificate with the same key: the
	// on-chain hash still matches.
	renewed := a.ca.IssueForKey(t, dir, testpki.Leaf{CommonName: "right-renewed", Client: true,
		URIs: []string{authz.CrunchURIPrefix + "alpha"}}, good.KeyPEM)

	for _, tc := range []struct {
		name   string
		client *testpki.Issued
		want   codes.Code
	}{
		{"the crunch's coordinator, key on chain", good, codes.OK},
		{"its renewed certificate, same key", renewed, codes.OK},
		{"coordinator of another crunch", coordinator(t, a.ca, dir, "beta", "beta"), codes.PermissionDenied},
		{"certificate naming no crunch", a.ca.Issue(t, dir, testpki.Leaf{CommonName: "anon", Client: true}), codes.PermissionDenied},
		{"right crunch, key not on chain", coordinator(t, a.ca, dir, "offchain", "alpha"), codes.Unauthenticated},
		{"revoked certificate", revoked, codes.Unauthenticated},
		{"certificate from another CA", coordinator(t, a.otherCA, dir, "foreign", "alpha"), codes.Unavailable},
		{"expired certificate", coordinator(t, a.ca, dir, "expired", "alpha", func(l *testpki.Leaf) { l.NotAfter = time.Now().Add(-time.Minute) }), codes.Unavailable},
		{"no certificate", nil, codes.Unavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := a.callAs(t, tc.client); got != tc.want {
				t.Errorf("code %s, want %s", got, tc.want)
			}
		})
	}
}

// Rotation on chain: the coordinator moves to a new key registered as the
// secondary hash; both work while both are on chain, the old one is refused
// once the chain drops it. No runner restart.
func TestAuthorizationFollowsHashRotation(t *testing.T) {
	dir := t.TempDir()
	a := startAuthz(t)
	oldCert := coordinator(t, a.ca, dir, "old", "alpha")
	newCert := coordinator(t, a.ca, dir, "new", "alpha")
	step := func(hashes ...string) {
		writePolicy(t, a.policyFile, "alpha", hashes...)
		if _, err := a.auth.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	step(authz.SPKIHash(oldCert.Cert), "0000000000000000000000000000000000000000000000000000000000000000")
	if got := a.callAs(t, oldCert); got != codes.OK {
		t.Fatalf("primary only: old key %s", got)
	}
	if got := a.callAs(t, newCert); got != codes.Unauthenticated {
		t.Fatalf("primary only: new key %s, want refused", got)
	}
	step(authz.SPKIHash(oldCert.Cert), authz.SPKIHash(newCert.Cert))
	if a.callAs(t, oldCert) != codes.OK || a.callAs(t, newCert) != codes.OK {
		t.Fatal("with primary and secondary both on chain, both keys must be admitted")
	}
	step(authz.SPKIHash(newCert.Cert))
	if got := a.callAs(t, oldCert); got != codes.Unauthenticated {
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
