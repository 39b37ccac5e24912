//go:build e2e

package vaultpki_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/pki/vaultpki"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Main(m)) }

// onboard runs the security team's onboarding for crunch and returns its
// AppRole credentials.
func onboard(t *testing.T, cl *testcluster.Cluster, crunch string) vaultpki.AppRole {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := cl.RunScript(ctx, "deploy/vault/setup", "coordinator", crunch)
	if err != nil {
		t.Fatalf("deploy/vault/setup coordinator %s: %v\n%s", crunch, err, out)
	}
	var a vaultpki.AppRole
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "role_id="); ok {
			a.RoleID = v
		}
		if v, ok := strings.CutPrefix(line, "secret_id="); ok {
			a.SecretID = v
		}
	}
	if a.RoleID == "" || a.SecretID == "" {
		t.Fatalf("no role_id/secret_id in:\n%s", out)
	}
	return a
}

// A coordinator logs in with its AppRole, gets a client certificate naming
// its crunch that chains to Vault's root, renews it before expiry with the
// same key, and cannot get one naming another crunch.
func TestIssueAndRenewFromVault(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Vault)
	role := onboard(t, cl, "alpha")
	vc, err := cl.Vault.Client.Clone()
	if err != nil {
		t.Fatal(err)
	}
	vc.ClearToken() // only the AppRole login may be used
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	cn, uris := vaultpki.CoordinatorNames("alpha")
	iss, err := vaultpki.New(ctx, vaultpki.Config{Client: vc, Login: role, CommonName: cn, URISANs: uris, TTL: 6 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	leaf := iss.Certificate().Leaf
	if leaf.Subject.CommonName != cn || len(leaf.URIs) != 1 || leaf.URIs[0].String() != uris[0] {
		t.Errorf("certificate names CN=%q URIs=%v, want %q %v", leaf.Subject.CommonName, leaf.URIs, cn, uris)
	}
	verify := func(leaf *x509.Certificate) {
		t.Helper()
		inter := x509.NewCertPool()
		for _, der := range iss.Certificate().Certificate[1:] {
			c, _ := x509.ParseCertificate(der)
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: iss.Pool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("the certificate does not chain to Vault's root for client auth: %v", err)
		}
	}
	verify(leaf)
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life > time.Minute {
		t.Errorf("lifetime %v, asked for 6s", life)
	}

	go iss.Run(ctx)
	deadline := time.Now().Add(15 * time.Second)
	for iss.Certificate().Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the certificate was not renewed within 15s of a 6s lifetime")
		}
		time.Sleep(100 * time.Millisecond)
	}
	renewed := iss.Certificate().Leaf
	if now := time.Now(); !now.Before(leaf.NotAfter) {
		t.Errorf("renewed only at %v, after the old certificate expired at %v", now, leaf.NotAfter)
	}
	if !bytes.Equal(renewed.RawSubjectPublicKeyInfo, leaf.RawSubjectPublicKeyInfo) {
		t.Error("renewal changed the key: runners admitting the coordinator by key hash would refuse it")
	}
	verify(renewed)

	// Crunch alpha's coordinator cannot be named after crunch beta.
	cnB, urisB := vaultpki.CoordinatorNames("beta")
	if _, err := vaultpki.New(ctx, vaultpki.Config{Client: vc, Login: role, CommonName: cnB, URISANs: urisB}); err == nil {
		t.Error("alpha's AppRole obtained a certificate naming crunch beta")
	} else {
		t.Logf("beta refused: %v", err)
	}
	// Wrong credentials: no certificate.
	if _, err := vaultpki.New(ctx, vaultpki.Config{Client: vc, Login: vaultpki.AppRole{RoleID: role.RoleID, SecretID: "wrong"}, CommonName: cn}); err == nil {
		t.Error("a wrong secret id obtained a certificate")
	}
}
