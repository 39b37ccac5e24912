//go:build e2e

package testcluster

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	consulapi "github.com/hashicorp/consul/api"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/modelnodes/modelnodes/internal/testing/leftovers"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// Consul alone: ACLs are enforced (the anonymous token cannot register a
// service) and the management token the helper returns can.
func TestConsulACLs(t *testing.T) {
	c := Start(t, Consul)
	if c.Vault != nil || c.Nomad != nil {
		t.Fatalf("asked for Consul only, got vault=%v nomad=%v", c.Vault != nil, c.Nomad != nil)
	}
	anon, err := consulapi.NewClient(&consulapi.Config{Address: c.Consul.Addr})
	if err != nil {
		t.Fatal(err)
	}
	reg := &consulapi.AgentServiceRegistration{Name: "acl-probe", Port: 1234}
	if err := anon.Agent().ServiceRegister(reg); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("anonymous service registration: got %v, want Permission denied", err)
	}
	if err := c.Consul.Client.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("register with the management token: %v", err)
	}
	svcs, _, err := c.Consul.Client.Catalog().Service("acl-probe", "", nil)
	if err != nil || len(svcs) != 1 || svcs[0].ServicePort != 1234 {
		t.Fatalf("catalog lookup: %v, %+v", err, svcs)
	}
}

// Vault alone: deploy/vault/setup ran (the policies of deploy/vault/policies,
// a root and an intermediate CA). An admin (admin + operator policies, not
// root) can re-run all of it. Then the security team's day, with an
// operator token and no code: re-apply the PKI, onboard a crunch's
// coordinator, which gets a client certificate for its crunch only; rotate
// the intermediate (old certificates keep validating); revoke the
// coordinator; delete a runner key.
func TestVaultCoordinatorLifecycle(t *testing.T) {
	c := Start(t, Vault)
	ctx := t.Context()
	files, _ := filepath.Glob(filepath.Join(c.root, "deploy", "vault", "policies", "*.hcl"))
	if len(files) < 5 {
		t.Fatalf("expected the admin, runner, coordinator, scheduler and operator policies, found %v", files)
	}
	// Policies that template on the Nomad JWT and AppRole mounts name them
	// by accessor; setup fills them in.
	auths, err := c.Vault.Client.Sys().ListAuthWithContext(ctx)
	if err != nil || auths["jwt-nomad/"] == nil || auths["approle/"] == nil {
		t.Fatalf("the Nomad JWT and AppRole auth mounts: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".hcl")
		want, _ := os.ReadFile(f)
		want = bytes.ReplaceAll(want, []byte("JWT_ACCESSOR"), []byte(auths["jwt-nomad/"].Accessor))
		want = bytes.ReplaceAll(want, []byte("APPROLE_ACCESSOR"), []byte(auths["approle/"].Accessor))
		got, err := c.Vault.Client.Sys().GetPolicyWithContext(ctx, name)
		if err != nil || strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
			t.Errorf("policy %s in Vault differs from %s (err %v)", name, f, err)
		}
	}

	admin := tokenWithPolicies(t, c, "admin", "operator")
	if _, err := c.RunScriptEnv(ctx, []string{"VAULT_TOKEN=" + admin}, "deploy/vault/setup"); err != nil {
		t.Fatalf("admin re-running setup: %v", err)
	}
	opToken := tokenWithPolicies(t, c, "operator")
	asOperator := []string{"VAULT_TOKEN=" + opToken}
	operator := clientWithToken(t, c, opToken)
	if _, err := c.RunScriptEnv(ctx, asOperator, "deploy/vault/setup", "pki"); err != nil {
		t.Fatalf("operator re-applying the PKI: %v", err)
	}
	// Runner keys: the security team deletes one to rotate it, never reads it.
	if _, err := c.Vault.Client.KVv2("runner-keys").Put(ctx, "model-node-x", map[string]any{"private_key": "k"}); err != nil {
		t.Fatal(err)
	}
	if _, err := operator.KVv2("runner-keys").Get(ctx, "model-node-x"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("operator reading a runner key: %v, want permission denied", err)
	}
	if err := operator.KVv2("runner-keys").DeleteMetadata(ctx, "model-node-x"); err != nil {
		t.Errorf("operator deleting a runner key: %v", err)
	}

	out, err := c.RunScriptEnv(ctx, asOperator, "deploy/vault/setup", "coordinator", "alpha")
	if err != nil {
		t.Fatal(err)
	}
	creds := keyValues(out)
	if creds["role_id"] == "" || creds["secret_id"] == "" {
		t.Fatalf("setup coordinator printed no credentials: %q", out)
	}
	coord := clientWithToken(t, c, "")
	login, err := coord.Logical().WriteWithContext(ctx, "auth/approle/login", map[string]any{
		"role_id": creds["role_id"], "secret_id": creds["secret_id"],
	})
	if err != nil {
		t.Fatalf("approle login: %v", err)
	}
	coord.SetToken(login.Auth.ClientToken)

	roots := rootPool(t, c)
	before, err := signCoordinator(ctx, coord, "alpha")
	if err != nil {
		t.Fatalf("coordinator alpha signing its own CSR: %v", err)
	}
	if got := before.leaf.URIs; len(got) != 1 || got[0].String() != "spiffe://modelnodes/crunch/alpha" {
		t.Errorf("URI SANs = %v, want spiffe://modelnodes/crunch/alpha", got)
	}
	verifyClientCert(t, before, roots)
	if _, err := signCoordinator(ctx, coord, "beta"); err == nil {
		t.Error("coordinator of crunch alpha obtained a certificate for crunch beta")
	}
	if _, err := coord.Logical().WriteWithContext(ctx, "pki_int/issue/runner", map[string]any{
		"common_name": "model-node-x.crunchdao.internal",
	}); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("coordinator token issuing a runner certificate: got %v, want permission denied", err)
	}
	if _, err := coord.KVv2("runner-keys").Get(ctx, "model-node-x"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("coordinator token reading runner keys: got %v, want permission denied", err)
	}

	// Staged rotation: the new issuer is listed (runners' CA bundles render
	// every listed issuer) but signs nothing until it is activated.
	out, err = c.RunScriptEnv(ctx, asOperator, "deploy/vault/setup", "stage-intermediate")
	if err != nil {
		t.Fatalf("stage-intermediate: %v\n%s", err, out)
	}
	staged := keyValues(out)["staged_issuer"]
	ids, err := c.Vault.Client.Logical().ListWithContext(ctx, "pki_int/issuers")
	if err != nil || ids == nil || !slices.Contains(ids.Data["keys"].([]any), any(staged)) {
		t.Fatalf("the staged issuer %q is not in pki_int's issuer list (%v): runners would never learn it", staged, err)
	}
	// Runners fetch every listed issuer's revocation list, unauthenticated.
	if resp, err := http.Get(c.Vault.Addr + "/v1/pki_int/issuer/" + staged + "/crl/pem"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("the staged issuer's CRL: %v %v, want 200", resp, err)
	} else {
		resp.Body.Close()
	}
	during, err := signCoordinator(ctx, coord, "alpha")
	if err != nil {
		t.Fatalf("signing while an issuer is staged: %v", err)
	}
	if !bytes.Equal(during.leaf.AuthorityKeyId, before.leaf.AuthorityKeyId) {
		t.Error("a staged issuer signed a certificate before it was activated")
	}
	out, err = c.RunScriptEnv(ctx, asOperator, "deploy/vault/setup", "activate-intermediate", staged)
	if err != nil {
		t.Fatalf("activate-intermediate: %v\n%s", err, out)
	}
	activated, err := signCoordinator(ctx, coord, "alpha")
	if err != nil {
		t.Fatalf("signing after activation: %v", err)
	}
	if bytes.Equal(activated.leaf.AuthorityKeyId, before.leaf.AuthorityKeyId) {
		t.Errorf("after activate-intermediate %s the certificate is still signed by the old intermediate", staged)
	}
	verifyClientCert(t, activated, roots)
	if _, err := c.RunScriptEnv(ctx, asOperator, "deploy/vault/setup", "activate-intermediate"); err == nil {
		t.Error("activate-intermediate without an issuer id succeeded")
	}

	// Rotation: a new intermediate issues from now on; the old one's
	// certificates still chain to the (unchanged) root.
	out, err = c.RunScriptEnv(ctx, asOperator, "deploy/vault/setup", "rotate-intermediate")
	if err != nil {
		t.Fatal(err)
	}
	rot := keyValues(out)
	after, err := signCoordinator(ctx, coord, "alpha")
	if err != nil {
		t.Fatalf("signing after rotation: %v", err)
	}
	if bytes.Equal(after.leaf.AuthorityKeyId, before.leaf.AuthorityKeyId) {
		t.Errorf("after rotate-intermediate (%v) the certificate is still signed by the old intermediate", rot)
	}
	verifyClientCert(t, after, roots)
	verifyClientCert(t, before, roots)

	// Revocation: both certificates land on the CRL, the coordinator's
	// token stops working.
	args := []string{"revoke-coordinator", "alpha"}
	if _, err := exec.LookPath("openssl"); err != nil {
		args = append(args, before.serial, after.serial) // the script finds them itself with openssl
	}
	out, err = c.RunScriptEnv(ctx, asOperator, "deploy/vault/setup", args...)
	if err != nil {
		t.Fatal(err)
	}
	for _, serial := range []string{before.serial, after.serial} {
		sec, err := c.Vault.Client.Logical().ReadWithContext(ctx, "pki_int/cert/"+serial)
		if err != nil || sec == nil {
			t.Fatalf("read certificate %s: %v", serial, err)
		}
		if rt, _ := sec.Data["revocation_time"].(json.Number).Int64(); rt == 0 {
			t.Errorf("certificate %s not revoked; revoke-coordinator printed %q", serial, out)
		}
	}
	if _, err := signCoordinator(ctx, coord, "alpha"); err == nil {
		t.Error("a revoked coordinator's token still obtains certificates")
	}
}

// tokenWithPolicies returns a root-made token with exactly these policies.
func tokenWithPolicies(t *testing.T, c *Cluster, policies ...string) string {
	t.Helper()
	return c.Vault.TokenWithPolicies(t, policies...)
}

func clientWithToken(t *testing.T, c *Cluster, token string) *vaultapi.Client {
	t.Helper()
	client, err := c.Vault.Client.Clone()
	if err != nil {
		t.Fatal(err)
	}
	client.SetToken(token)
	return client
}

func keyValues(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

func verifyClientCert(t *testing.T, cert *issued, roots *x509.CertPool) {
	t.Helper()
	if _, err := cert.leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: cert.intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Errorf("coordinator certificate %s does not chain to the root CA as a client certificate: %v", cert.serial, err)
	}
}

type issued struct {
	leaf          *x509.Certificate
	intermediates *x509.CertPool
	serial        string // Vault's form, aa:bb:...
}

func signCoordinator(ctx context.Context, client *vaultapi.Client, crunch string) (*issued, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	uri, _ := url.Parse("spiffe://modelnodes/crunch/" + crunch)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: crunch + ".coordinator.modelnodes.internal"},
		URIs:    []*url.URL{uri},
	}, key)
	if err != nil {
		return nil, err
	}
	sec, err := client.Logical().WriteWithContext(ctx, "pki_int/sign/coordinator", map[string]any{
		"csr":         string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})),
		"common_name": crunch + ".coordinator.modelnodes.internal",
		"uri_sans":    uri.String(),
	})
	if err != nil {
		return nil, err
	}
	leaf, err := parseCert([]byte(sec.Data["certificate"].(string)))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(sec.Data["issuing_ca"].(string)))
	return &issued{leaf: leaf, intermediates: pool, serial: sec.Data["serial_number"].(string)}, nil
}

func parseCert(pemBytes []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, os.ErrInvalid
	}
	return x509.ParseCertificate(block.Bytes)
}

func rootPool(t *testing.T, c *Cluster) *x509.CertPool {
	t.Helper()
	ca, err := c.Vault.CACertPEM(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatalf("root CA is not PEM: %q", ca)
	}
	return pool
}

// Nomad's dev agent is up with the drivers and integrations jobs rely on.
func TestNomadNode(t *testing.T) {
	c := Shared(t, All)
	nodes, _, err := c.Nomad.Client.Nodes().List(nil)
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes: %v, %+v", err, nodes)
	}
	node, _, err := c.Nomad.Client.Nodes().Info(nodes[0].ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, attr := range []string{"consul.version", "vault.version"} {
		if node.Attributes[attr] == "" {
			t.Errorf("node attribute %s is missing: Nomad does not see its %s", attr, strings.Split(attr, ".")[0])
		}
	}
	for _, driver := range []string{"raw_exec"} {
		if d := node.Drivers[driver]; d == nil || !d.Healthy {
			t.Errorf("driver %s is not healthy: %+v", driver, d)
		}
	}
	for attr := range node.Attributes {
		if strings.Contains(attr, "platform.aws") || strings.Contains(attr, "platform.gce") {
			t.Errorf("cloud fingerprinter ran despite the denylist: %s", attr)
		}
	}
}

// An agent that fails to start is named, with the tail of its log, and the
// agents already started are stopped.
func TestStartReportsFailedAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real Consul agent; skipped with -short")
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	versions, err := pinnedVersions(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := findBinary("consul", versions["consul"]); err != nil {
		t.Skip("testcluster: " + err.Error())
	}
	fake := filepath.Join(t.TempDir(), "vault")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'error: storage is on fire' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_BIN", fake)
	dir := t.TempDir()
	_, err = start(dir, Consul|Vault, Options{}, t.Logf)
	if err == nil {
		t.Fatal("start succeeded with a Vault that exits at once")
	}
	for _, want := range []string{"vault exited before it was ready", "storage is on fire"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if pids := leftovers.Kill(leftovers.Processes(dir)); len(pids) > 0 {
		t.Errorf("Consul was left running after Vault failed: pids %v", pids)
	}
}
