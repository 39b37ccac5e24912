//go:build e2e

package client_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	"github.com/modelnodes/modelnodes/pki/vaultpki"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

// A coordinator whose client certificate comes straight from the real Vault
// (AppRole login, pki_int/sign/coordinator) calls a runner that trusts
// Vault's root for its callers.
func TestCallWithVaultIssuedCertificate(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Vault)
	ctx := ctxTimeout(t, time.Minute)
	out, err := cl.RunScript(ctx, "deploy/vault/setup", "coordinator", "alpha")
	if err != nil {
		t.Fatalf("onboarding crunch alpha: %v\n%s", err, out)
	}
	var role vaultpki.AppRole
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "role_id="); ok {
			role.RoleID = v
		}
		if v, ok := strings.CutPrefix(line, "secret_id="); ok {
			role.SecretID = v
		}
	}
	root, err := cl.Vault.CACertPEM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The runner: a server certificate naming m1 (from a test CA: Vault's
	// runner role only issues to Nomad workload identities), callers must
	// chain to Vault's root.
	dir := t.TempDir()
	runnerCA := testpki.NewCA(t, "runner CA")
	srv := runnerCA.Issue(t, dir, testpki.Leaf{CommonName: "m1", DNSNames: []string{names.ModelServerName("m1")}, RSA: true})
	rootFile := filepath.Join(dir, "vault-root.pem")
	if err := os.WriteFile(rootFile, root, 0o600); err != nil {
		t.Fatal(err)
	}
	rl, err := tlsfiles.New(tlsfiles.Files{CertFile: srv.CertFile, KeyFile: srv.KeyFile, CAFile: rootFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := startRunner(t, rl)

	vc, err := cl.Vault.Client.Clone()
	if err != nil {
		t.Fatal(err)
	}
	vc.ClearToken()
	cn, uris := vaultpki.CoordinatorNames("alpha")
	iss, err := vaultpki.New(ctx, vaultpki.Config{Client: vc, Login: role, CommonName: cn, URISANs: uris, CAPEM: runnerCA.PEM()})
	if err != nil {
		t.Fatal(err)
	}
	c := runClient(t, ctx, client.Config{Source: discovery.Static{{ID: "m1", Target: r.addr}}, TLS: iss})
	waitAllServing(t, c, 1)
	if res := c.Setup(ctx, "test.Model", client.Request{Timeout: 5 * time.Second})[0]; !res.OK() {
		t.Fatalf("setup: %s %s", res.Status, res.Message)
	}
	res := c.Call(ctx, "echo", client.Request{Args: client.Positional(commonspb.String("vault")), Timeout: 5 * time.Second})[0]
	if got, _ := res.Value.AsString(); !res.OK() || got != "vault" {
		t.Fatalf("call with a Vault-issued certificate: %s %s %q", res.Status, res.Message, got)
	}
	// Renewed mid-use: the next handshake takes the new certificate; calls
	// on the open connection go on.
	if err := iss.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if res := c.Call(ctx, "echo", client.Request{Timeout: 5 * time.Second})[0]; !res.OK() {
		t.Fatalf("call after renewal: %s %s", res.Status, res.Message)
	}
}
