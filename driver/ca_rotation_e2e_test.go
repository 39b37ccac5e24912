//go:build e2e

package driver_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mr-tron/base58"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/modelnodes/modelnodes/jobs"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	"github.com/modelnodes/modelnodes/runner/authz"
)

// `deploy/vault/setup rotate-intermediate` on the real agents, with the jobs
// jobs.Build makes (the scheduler's): the coordinator keeps its key and its
// certificate of the previous intermediate, which stays valid until it
// expires. A runner started after the rotation renders its client-CA bundle
// (jobs.CATemplate) then; it must still admit that certificate, which needs
// the previous issuer in the bundle to verify that issuer's revocation list
// (without a verified list the runner refuses, fail closed). A runner started
// before the rotation keeps admitting it. Once revoked, the certificate is
// refused by both; the coordinator's certificate from the new issuer (same
// key, so the same on-chain hash) is admitted by the new runner.
func TestE2ERunnerAfterIntermediateRotation(t *testing.T) {
	start := time.Now()
	c := startModelboxCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	coordinator, err := c.CoordinatorIssuer(ctx, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	before := coordinator.Certificate() // signed by the first intermediate
	roots := vaultRoots(t, ctx, c)

	modelDir := hostileModel(t)
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	// Every issuer's revocation list, as the scheduler's --crl-url
	// recommends.
	opts := &jobs.Options{CRLURL: c.Vault.Addr + "/v1/pki_int/issuers", AllowHostModelDirs: true}
	run := func(modelID string) (addr, name, caFile string) {
		t.Helper()
		m := &jobs.Model{Crunch: "alpha", ModelID: modelID, Cruncher: base58.Encode(pub), Hotkey: "hk-1", ModelDir: modelDir,
			Runtime: "python", Hardware: jobs.CPU, CPU: 200, MemoryMB: 256, CertHash: authz.SPKIHash(before.Leaf)}
		job, err := jobs.Build(m, opts)
		if err != nil {
			t.Fatal(err)
		}
		job.TaskGroups[0].Update.MinHealthyTime = ptr(time.Second)
		if _, _, err := c.Nomad.Client.Jobs().Register(job, nil); err != nil {
			t.Fatal(err)
		}
		alloc := waitHealthyAlloc(t, c.Nomad.Client, *job.ID)
		t.Cleanup(func() { stopJob(t, c.Nomad.Client, *job.ID, alloc) })
		caFile = filepath.Join(c.Nomad.DataDir, "alloc", alloc.ID, jobs.TaskName, jobs.ClientCA)
		return portAddr(alloc, jobs.PortLabel), *job.ID + ".crunchdao.internal", caFile
	}
	// call makes one model call on a new connection: OK, or Unavailable
	// when the runner refuses the certificate at the handshake.
	call := func(addr, name string, cert *tls.Certificate) (codes.Code, error) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: roots, ServerName: name, Certificates: []tls.Certificate{*cert}})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		_, err = dspb.NewDynamicSubclassServiceClient(conn).Setup(cctx, &dspb.SetupRequest{ClassName: "base.Base"})
		return status.Code(err), err
	}

	oldAddr, oldName, _ := run("rotation-old-runner")
	if got, err := call(oldAddr, oldName, before); got != codes.OK {
		t.Fatalf("before the rotation, the runner refuses the coordinator: %v", err)
	}
	t.Logf("runner before rotation up, coordinator admitted (%.0fs)", time.Since(start).Seconds())

	out, err := c.RunScript(ctx, "deploy/vault/setup", "rotate-intermediate")
	if err != nil {
		t.Fatalf("rotate-intermediate: %v\n%s", err, out)
	}
	// The coordinator renews: same key, a certificate of the new issuer.
	if err := coordinator.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	after := coordinator.Certificate()
	if bytes.Equal(after.Leaf.RawIssuer, before.Leaf.RawIssuer) && bytes.Equal(after.Leaf.AuthorityKeyId, before.Leaf.AuthorityKeyId) {
		t.Fatal("the rotation did not change the issuer of the coordinator's new certificate")
	}

	newAddr, newName, newCA := run("rotation-new-runner")
	// The bundle the new runner got holds both issuers.
	bundle, err := os.ReadFile(newCA)
	if err != nil {
		t.Fatal(err)
	}
	for what, leaf := range map[string]*x509.Certificate{"previous": before.Leaf, "new": after.Leaf} {
		if !issuerIn(bundle, leaf) {
			t.Errorf("the client-CA bundle a runner renders after the rotation lacks the %s issuer (%s)", what, leaf.Issuer)
		}
	}
	if got, err := call(newAddr, newName, before); got != codes.OK {
		t.Fatalf("a runner started after the rotation refuses the coordinator's still-valid certificate of the previous issuer: %v", err)
	}
	if got, err := call(newAddr, newName, after); got != codes.OK {
		t.Fatalf("a runner started after the rotation refuses the coordinator's certificate of the new issuer: %v", err)
	}
	if got, err := call(oldAddr, oldName, before); got != codes.OK {
		t.Fatalf("after the rotation, the runner started before it refuses the coordinator's certificate of the previous issuer: %v", err)
	}
	// Until its CA template re-reads Vault's issuer list (every 5 minutes),
	// the running runner cannot verify the new issuer's list: reported,
	// not waited for.
	_, err = call(oldAddr, oldName, after)
	t.Logf("runner started before the rotation, new issuer's certificate, before its CA template re-renders: %v", err)

	// Revoke the previous issuer's certificate (as the runbook does): both
	// runners refuse it within their CRL refresh (a minute), and the new
	// certificate stays admitted.
	serial := strings.ReplaceAll(fmt.Sprintf("% x", before.Leaf.SerialNumber.Bytes()), " ", ":")
	if out, err := c.RunScript(ctx, "deploy/vault/setup", "revoke-coordinator", "alpha", serial); err != nil {
		t.Fatalf("revoke-coordinator: %v\n%s", err, out)
	}
	t0 := time.Now()
	refused := map[string]bool{}
	for len(refused) < 2 {
		if time.Since(t0) > 90*time.Second {
			t.Fatalf("the revoked certificate of the previous issuer is still admitted 90s after its revocation (refused by %v)", refused)
		}
		for _, r := range []struct{ what, addr, name string }{{"new", newAddr, newName}, {"old", oldAddr, oldName}} {
			if refused[r.what] {
				continue
			}
			switch got, err := call(r.addr, r.name, before); got {
			case codes.OK:
			// Refused at the handshake (Unavailable), or, when the runner
			// loads the new list between this call's handshake and its
			// headers, by the per-call check (Unauthenticated).
			case codes.Unavailable, codes.Unauthenticated:
				refused[r.what] = true
				t.Logf("%s runner refuses the revoked certificate %.0fs after its revocation (%s)", r.what, time.Since(t0).Seconds(), got)
			default:
				t.Fatalf("%s runner, revoked certificate: %v; want OK until refused (Unavailable at the handshake or Unauthenticated per call)", r.what, err)
			}
		}
		time.Sleep(time.Second)
	}
	if got, err := call(newAddr, newName, after); got != codes.OK {
		t.Errorf("after the revocation of the previous certificate, the new issuer's certificate: %v", err)
	}
	t.Logf("total %.0fs", time.Since(start).Seconds())
}

// issuerIn reports whether bundle holds a CA certificate that signed leaf.
func issuerIn(bundle []byte, leaf *x509.Certificate) bool {
	for rest := bundle; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return false
		}
		if ca, err := x509.ParseCertificate(block.Bytes); err == nil && leaf.CheckSignatureFrom(ca) == nil {
			return true
		}
	}
}
