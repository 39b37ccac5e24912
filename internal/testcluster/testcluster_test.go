package testcluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	consulapi "github.com/hashicorp/consul/api"
	vaultapi "github.com/hashicorp/vault/api"
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

// Vault alone: deploy/vault/setup ran (policies from deploy/vault/policies,
// a root and an intermediate CA), and a coordinator onboarded for one crunch
// gets a client certificate for that crunch only.
func TestVaultCoordinatorCertificates(t *testing.T) {
	c := Start(t, Vault)
	ctx := t.Context()
	files, _ := filepath.Glob(filepath.Join(c.root, "deploy", "vault", "policies", "*.hcl"))
	if len(files) < 4 {
		t.Fatalf("expected the runner, coordinator, scheduler and operator policies, found %v", files)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".hcl")
		want, _ := os.ReadFile(f)
		got, err := c.Vault.Client.Sys().GetPolicyWithContext(ctx, name)
		if err != nil || strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
			t.Errorf("policy %s in Vault differs from %s (err %v)", name, f, err)
		}
	}

	out, err := c.RunScript(ctx, "deploy/vault/setup", "coordinator", "alpha")
	if err != nil {
		t.Fatal(err)
	}
	creds := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(line, "=")
		creds[k] = v
	}
	if creds["role_id"] == "" || creds["secret_id"] == "" {
		t.Fatalf("setup coordinator printed no credentials: %q", out)
	}
	coord, err := c.Vault.Client.Clone()
	if err != nil {
		t.Fatal(err)
	}
	coord.ClearToken()
	login, err := coord.Logical().WriteWithContext(ctx, "auth/approle/login", map[string]any{
		"role_id": creds["role_id"], "secret_id": creds["secret_id"],
	})
	if err != nil {
		t.Fatalf("approle login: %v", err)
	}
	coord.SetToken(login.Auth.ClientToken)

	roots := rootPool(t, c)
	cert, err := signCoordinator(ctx, coord, "alpha")
	if err != nil {
		t.Fatalf("coordinator alpha signing its own CSR: %v", err)
	}
	if got := cert.leaf.URIs; len(got) != 1 || got[0].String() != "spiffe://modelnodes/crunch/alpha" {
		t.Errorf("URI SANs = %v, want spiffe://modelnodes/crunch/alpha", got)
	}
	if _, err := cert.leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: cert.intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Errorf("coordinator certificate does not chain to the root CA as a client certificate: %v", err)
	}
	if _, err := signCoordinator(ctx, coord, "beta"); err == nil {
		t.Error("coordinator of crunch alpha obtained a certificate for crunch beta")
	}
	if _, err := coord.Logical().WriteWithContext(ctx, "pki_int/issue/runner", map[string]any{
		"common_name": "model-node-x.crunchdao.internal",
	}); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("coordinator token issuing a runner certificate: got %v, want permission denied", err)
	}
}

type issued struct {
	leaf          *x509.Certificate
	intermediates *x509.CertPool
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
	return &issued{leaf: leaf, intermediates: pool}, nil
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
