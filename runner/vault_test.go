package runner_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/modelnodes/modelnodes/internal/testcluster"
	"github.com/modelnodes/modelnodes/internal/testpki"
	"github.com/modelnodes/modelnodes/internal/tlsfiles"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
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
	chain, err := cl.Vault.CAChainPEM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca-chain.pem")
	if err := os.WriteFile(caFile, chain, 0o600); err != nil {
		t.Fatal(err)
	}
	runnerCA := testpki.NewCA(t, "runner CA")
	server := runnerCA.Issue(t, dir, testpki.Leaf{CommonName: "runner", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, RSA: true})

	alpha := mustCoordinator(t, ctx, cl, "alpha")
	beta := mustCoordinator(t, ctx, cl, "beta")
	auth, err := authz.New(authz.Config{
		Static:     authz.Policy{Crunch: "alpha", CoordinatorCertHashes: []string{authz.SPKIHash(alpha.Leaf)}},
		CRLURLs:    []string{cl.Vault.Addr + "/v1/pki_int/crl/pem"},
		CRLRefresh: 100 * time.Millisecond,
		CAFile:     caFile,
		Logger:     hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: testWriter{t}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	tlsr, err := tlsfiles.New(tlsfiles.Files{CertFile: server.CertFile, KeyFile: server.KeyFile, CAFile: caFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := startConfig(t, runner.Config{TLS: tlsr, Authorizer: auth, Logger: hclog.NewNullLogger(),
		Worker: worker.Config{Command: exampleWorker(t)}}, dialAs(runnerCA, alpha))
	h.ready()
	callAs := func(c *tls.Certificate) codes.Code {
		hh := dialHarness(t, nil, h.addr, dialAs(runnerCA, c))
		_, err := hh.ds.Setup(ctxTimeout(t, 10*time.Second), &dspb.SetupRequest{ClassName: "x.Base"})
		return status.Code(err)
	}
	if got := callAs(alpha); got != codes.OK {
		t.Fatalf("alpha's coordinator: %s", got)
	}
	if got := callAs(beta); got != codes.PermissionDenied {
		t.Fatalf("beta's coordinator calling alpha's model: %s, want PermissionDenied", got)
	}

	if out, err := cl.RunScript(ctx, "deploy/vault/setup", "revoke-coordinator", "alpha"); err != nil {
		t.Fatalf("revoke-coordinator alpha: %v\n%s", err, out)
	}
	t0 := time.Now()
	for callAs(alpha) != codes.Unauthenticated {
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
