//go:build e2e

package runner_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/runner/worker"
)

// Coordinators get their certificates from the real Vault (AppRole per
// crunch, pki_int/sign/coordinator); the runner admits crunch alpha's, refuses
// beta's, and refuses alpha's once the security team revokes it, as soon as
// it fetches Vault's next CRL.
func TestVaultCoordinatorsAndRevocation(t *testing.T) {
	cl := testcluster.Start(t, testcluster.Vault)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// Callers chain to Vault's intermediate, which also signs the CRL.
	caFile, _ := cl.Vault.WriteCAChain(t, ctx, dir)
	alpha := mustCoordinator(t, ctx, cl, "alpha")
	beta := mustCoordinator(t, ctx, cl, "beta")
	connect, auth := startVaultAuthorizedRunner(t, dir, caFile, cl.Vault.Addr+"/v1/pki_int/crl/pem", alpha, alpha.Leaf)
	callAs := func(c *tls.Certificate) codes.Code { return connect(c).setupCode(t) }
	if got := callAs(alpha); got != codes.OK {
		t.Fatalf("alpha's coordinator: %s", got)
	}
	// Runners enforce nextUpdate: Vault must rebuild the lists before they
	// expire even when nobody is revoked (deploy/vault/setup sets it).
	crlCfg, err := cl.Vault.Client.Logical().ReadWithContext(ctx, "pki_int/config/crl")
	if err != nil || crlCfg == nil || crlCfg.Data["auto_rebuild"] != true {
		t.Errorf("pki_int/config/crl: %v %v, want auto_rebuild = true", crlCfg, err)
	}
	if got := callAs(beta); got != refusedAtHandshake {
		t.Fatalf("beta's coordinator calling alpha's model: %s, want refused at the handshake", got)
	}

	if out, err := cl.RunScript(ctx, "deploy/vault/setup", "revoke-coordinator", "alpha"); err != nil {
		t.Fatalf("revoke-coordinator alpha: %v\n%s", err, out)
	}
	t0 := time.Now()
	for callAs(alpha) != refusedAtHandshake {
		if time.Since(t0) > 20*time.Second {
			t.Fatal("alpha's revoked certificate is still admitted 20s after revocation")
		}
		_, _ = auth.Reload()
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("revoked certificate refused %s after revocation", time.Since(t0).Round(time.Millisecond))
}

func dialAs(serverCA *testpki.CA, c *tls.Certificate) grpc.DialOption {
	pool := x509.NewCertPool()
	pool.AddCert(serverCA.Cert)
	return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{*c}}))
}

func mustCoordinator(t *testing.T, ctx context.Context, c *testcluster.Cluster, crunch string) *tls.Certificate {
	cert, err := c.CoordinatorCert(ctx, crunch)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// After `deploy/vault/setup rotate-intermediate`, certificates the previous
// intermediate issued stay valid (overlap), so its revocations must still be
// seen: the runner fetches every issuer's CRL through Vault's
// unauthenticated issuer list, and a coordinator certificate issued before
// the rotation and revoked after it is refused. A runner that fetches only
// the default issuer's CRL refuses that issuer's certificates (no list for
// their issuer) instead of admitting them.
func TestVaultRevocationAfterIntermediateRotation(t *testing.T) {
	cl := testcluster.Start(t, testcluster.Vault)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()

	before := mustCoordinator(t, ctx, cl, "alpha") // signed by the first intermediate
	if out, err := cl.RunScript(ctx, "deploy/vault/setup", "rotate-intermediate"); err != nil {
		t.Fatalf("rotate-intermediate: %v\n%s", err, out)
	}
	after := mustCoordinator(t, ctx, cl, "alpha") // signed by the new default issuer
	beforeLeaf, afterLeaf := leafOf(t, before), leafOf(t, after)
	if string(beforeLeaf.RawIssuer) == string(afterLeaf.RawIssuer) {
		t.Fatal("the rotation did not change the issuer of new coordinator certificates")
	}

	// What a job's CA template renders (jobs.CATemplate): the root and
	// pki_int/cert/ca_chain. Report whether the previous intermediate is
	// in it: if not, the handshake itself refuses its certificates.
	rendered := vaultField(t, ctx, cl, "pki/cert/ca", "certificate") + "\n" + vaultField(t, ctx, cl, "pki_int/cert/ca_chain", "ca_chain")
	t.Logf("pki_int/cert/ca_chain after rotation holds the previous intermediate: %v", chainHolds(t, []byte(rendered), beforeLeaf))

	// The runner's bundle: the root and every issuer of pki_int.
	caFile := filepath.Join(dir, "ca.pem")
	bundle := vaultField(t, ctx, cl, "pki/cert/ca", "certificate") + "\n"
	for _, id := range vaultList(t, ctx, cl, "pki_int/issuers") {
		bundle += vaultField(t, ctx, cl, "pki_int/issuer/"+id+"/json", "certificate") + "\n"
	}
	testpki.WriteFile(t, caFile, []byte(bundle))
	if !chainHolds(t, []byte(bundle), beforeLeaf) || !chainHolds(t, []byte(bundle), afterLeaf) {
		t.Fatal("the bundle of every issuer does not verify both certificates")
	}

	connect, auth := startVaultAuthorizedRunner(t, dir, caFile, cl.Vault.Addr+"/v1/pki_int/issuers", after, beforeLeaf, afterLeaf)
	callAs := func(c *tls.Certificate) codes.Code { return connect(c).setupCode(t) }
	if got := callAs(before); got != codes.OK {
		t.Fatalf("certificate of the previous intermediate, not revoked: %s", got)
	}
	open := connect(before)
	if got := open.setupCode(t); got != codes.OK {
		t.Fatalf("open connection: %s", got)
	}

	serial := strings.TrimPrefix(fmt.Sprintf("% x", beforeLeaf.SerialNumber.Bytes()), "")
	serial = strings.ReplaceAll(serial, " ", ":")
	if out, err := cl.RunScript(ctx, "deploy/vault/setup", "revoke-coordinator", "alpha", serial); err != nil {
		t.Fatalf("revoke-coordinator alpha %s: %v\n%s", serial, err, out)
	}
	t0 := time.Now()
	for callAs(before) != refusedAtHandshake {
		if time.Since(t0) > 20*time.Second {
			t.Fatal("a certificate of the previous intermediate is still admitted 20s after its revocation")
		}
		_, _ = auth.Reload()
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("revoked certificate of the previous issuer refused %s after revocation", time.Since(t0).Round(time.Millisecond))
	if got := open.setupCode(t); got != codes.Unauthenticated {
		t.Errorf("the revoked coordinator's open connection: %s, want Unauthenticated", got)
	}
	if got := callAs(after); got != codes.OK {
		t.Errorf("the new issuer's certificate, not revoked: %s", got)
	}

	// Only the default issuer's CRL: the previous issuer's certificates are
	// refused for want of their list, never admitted unchecked.
	only, err := authz.New(authz.Config{
		Static:  authz.Policy{Crunch: "alpha", CoordinatorCertHashes: []string{authz.SPKIHash(beforeLeaf), authz.SPKIHash(afterLeaf)}},
		CRLURLs: []string{cl.Vault.Addr + "/v1/pki_int/crl/pem"}, CAFile: caFile,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := only.VerifyConnection(nil, tls.ConnectionState{VerifiedChains: verify(t, []byte(bundle), beforeLeaf)}); err == nil || !strings.Contains(err.Error(), "no revocation list") {
		t.Errorf("default CRL only, previous issuer's certificate: %v, want refused for want of its list", err)
	}
	if err := only.VerifyConnection(nil, tls.ConnectionState{VerifiedChains: verify(t, []byte(bundle), afterLeaf)}); err != nil {
		t.Errorf("default CRL only, new issuer's certificate: %v", err)
	}
}

// startVaultAuthorizedRunner starts a runner that admits crunch alpha's
// coordinators with one of keys, checks them against caFile and the CRLs at
// crlURL (refreshed every 100 ms), and is probed (ready) as probe. It
// returns a function that connects to it as a coordinator, and the
// runner's authorizer.
func startVaultAuthorizedRunner(t *testing.T, dir, caFile, crlURL string, probe *tls.Certificate, keys ...*x509.Certificate) (connect func(*tls.Certificate) *harness, auth *authz.Authorizer) {
	t.Helper()
	var hashes []string
	for _, k := range keys {
		hashes = append(hashes, authz.SPKIHash(k))
	}
	var err error
	auth, err = authz.New(authz.Config{
		Static:     authz.Policy{Crunch: "alpha", CoordinatorCertHashes: hashes},
		CRLURLs:    []string{crlURL},
		CRLRefresh: 100 * time.Millisecond,
		CAFile:     caFile,
		Logger:     hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: testWriter{t}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	runnerCA := testpki.NewCA(t, "runner CA")
	server := runnerCA.Issue(t, dir, testpki.Leaf{CommonName: "runner", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, RSA: true})
	tlsr, err := tlsfiles.New(tlsfiles.Files{CertFile: server.CertFile, KeyFile: server.KeyFile, CAFile: caFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := startConfig(t, runner.Config{TLS: tlsr, Authorizer: auth, Logger: hclog.NewNullLogger(),
		Worker: worker.Config{Command: exampleWorker(t)}}, dialAs(runnerCA, probe))
	h.ready()
	return func(c *tls.Certificate) *harness { return dialHarness(t, nil, h.addr, dialAs(runnerCA, c)) }, auth
}

func leafOf(t *testing.T, c *tls.Certificate) *x509.Certificate {
	t.Helper()
	if c.Leaf != nil {
		return c.Leaf
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// verify returns the client chains of leaf in bundle (first certificate
// self-signed = root).
func verify(t *testing.T, bundle []byte, leaf *x509.Certificate) [][]*x509.Certificate {
	t.Helper()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for rest := bundle; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if string(c.RawIssuer) == string(c.RawSubject) {
			roots.AddCert(c)
		} else {
			inter.AddCert(c)
		}
	}
	chains, _ := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return chains
}

func chainHolds(t *testing.T, bundle []byte, leaf *x509.Certificate) bool {
	return len(verify(t, bundle, leaf)) > 0
}

// vaultField reads one data field of an unauthenticated Vault path.
func vaultField(t *testing.T, ctx context.Context, cl *testcluster.Cluster, path, field string) string {
	t.Helper()
	resp := vaultDo(t, ctx, http.MethodGet, cl.Vault.Addr+"/v1/"+path)
	v, _ := resp[field].(string)
	if v == "" {
		t.Fatalf("vault %s: no %s in %v", path, field, resp)
	}
	return v
}

func vaultList(t *testing.T, ctx context.Context, cl *testcluster.Cluster, path string) []string {
	t.Helper()
	resp := vaultDo(t, ctx, "LIST", cl.Vault.Addr+"/v1/"+path)
	var out []string
	keys, _ := resp["keys"].([]any)
	for _, k := range keys {
		out = append(out, fmt.Sprint(k))
	}
	if len(out) == 0 {
		t.Fatalf("vault LIST %s: no keys in %v", path, resp)
	}
	return out
}

// vaultDo calls Vault without a token (what a runner can do) and returns
// the answer's data.
func vaultDo(t *testing.T, ctx context.Context, method, url string) map[string]any {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Data map[string]any `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("vault %s %s without a token: status %d, %v", method, url, resp.StatusCode, err)
	}
	return body.Data
}

// An operator who revokes with Vault's own API (no CRL rebuild forced):
// Vault, set up with auto_rebuild so its CRLs never lapse, publishes the
// revocation in its delta CRL, which runners fetch beside each full list; the
// revoked coordinator is refused within Vault's periodic rebuild (about a
// minute with delta_rebuild_interval=30s, as deploy/vault/setup sets).
func TestVaultRevocationReachesRunnersThroughTheDeltaCRL(t *testing.T) {
	cl := testcluster.Start(t, testcluster.Vault)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	caFile, chain := cl.Vault.WriteCAChain(t, ctx, dir)
	alpha := mustCoordinator(t, ctx, cl, "alpha")
	leaf := leafOf(t, alpha)
	auth, err := authz.New(authz.Config{
		Static:  authz.Policy{Crunch: "alpha", CoordinatorCertHashes: []string{authz.SPKIHash(leaf)}},
		CRLURLs: []string{cl.Vault.Addr + "/v1/pki_int/issuers"}, CRLRefresh: time.Second, CAFile: caFile,
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: testWriter{t}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	state := tls.ConnectionState{VerifiedChains: verify(t, chain, leaf)}
	if err := auth.VerifyConnection(nil, state); err != nil {
		t.Fatalf("before revocation: %v", err)
	}
	serial := strings.ReplaceAll(fmt.Sprintf("% x", leaf.SerialNumber.Bytes()), " ", ":")
	if _, err := cl.Vault.Client.Logical().WriteWithContext(ctx, "pki_int/revoke", map[string]any{"serial_number": serial}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	for auth.VerifyConnection(nil, state) == nil {
		if time.Since(t0) > 200*time.Second {
			t.Fatal("a certificate revoked through Vault's API is still admitted after 200s: the delta CRL is not used")
		}
		time.Sleep(time.Second)
		_, _ = auth.Reload()
	}
	t.Logf("revoked through the API, refused %s later (from the delta CRL)", time.Since(t0).Round(time.Second))
}
