//go:build e2e

package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/authz"
)

// A coordinator with a Vault certificate is admitted by runners that check
// its on-chain key hash only if it keeps its key: --vault-key creates the key
// once, says its hash, and signs the same key on every later run; a run
// without it brings a new key and is refused.
func TestVaultKeyFileKeepsTheOnChainHash(t *testing.T) {
	cl := testcluster.Start(t, testcluster.Vault)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	role, err := cl.CoordinatorAppRole(ctx, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	// The runner: coordinators chain to Vault's intermediate; who may call
	// is a policy file, as a job's on-chain hashes would be.
	clientCA, _ := cl.Vault.WriteCAChain(t, ctx, dir)
	policy := filepath.Join(dir, "authz.json")
	// (All zeros would mean "no hash recorded": admit the crunch's any key.)
	testpki.WriteFile(t, policy, []byte(`{"crunch": "alpha", "coordinator_cert_hashes": ["`+strings.Repeat("ab", 32)+`"]}`))
	runnerCA := testpki.NewCA(t, "runner CA")
	server := runnerCA.Issue(t, dir, testpki.Leaf{CommonName: "model-node-a.crunchdao.internal",
		DNSNames: []string{"model-node-a.crunchdao.internal"}, RSA: true})
	az, err := authz.New(authz.Config{PolicyFile: policy, CAFile: clientCA})
	if err != nil {
		t.Fatal(err)
	}
	tlsr, err := tlsfiles.New(tlsfiles.Files{CertFile: server.CertFile, KeyFile: server.KeyFile, CAFile: clientCA}, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := startRunnerWith(t, runner.Config{TLS: tlsr, Authorizer: az})

	key := filepath.Join(dir, "coordinator.key")
	call := func(extra ...string) (int, string, string) {
		args := append([]string{"call", "echo", "--crunch", "alpha", "--models", "a=" + addr,
			"--vault-addr", cl.Vault.Addr, "--vault-role-id", role.RoleID, "--vault-secret-id", role.SecretID,
			"--tls-ca", runnerCA.WriteCA(t, dir, "runner-ca.pem"), "--setup", "m.Base", "--args", "[1]", "--timeout", "10s"}, extra...)
		return runCLI(t, args...)
	}
	// First run: the key is created and its hash printed; it is not on
	// chain yet, so the runner refuses.
	code, out, stderr := call("--vault-key", key)
	hash := regexp.MustCompile(`cert_hash=([0-9a-f]{64})`).FindStringSubmatch(stderr)
	if hash == nil {
		t.Fatalf("the new key's hash is not shown: exit %d\n%s%s", code, out, stderr)
	}
	if code == 0 || !strings.Contains(out, "UNAUTHENTICATED") {
		t.Fatalf("a key whose hash is not on chain: exit %d\n%s", code, out)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	// The hash goes on chain; the next run with the same key file is admitted.
	testpki.WriteFile(t, policy, []byte(`{"crunch": "alpha", "coordinator_cert_hashes": ["`+hash[1]+`"]}`))
	if _, err := az.Reload(); err != nil {
		t.Fatal(err)
	}
	// (The worker may still be starting: retry while the runner says so.)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		code, out, stderr := call("--vault-key", key)
		if code == 0 && strings.Contains(out, "success") {
			break
		}
		if !strings.Contains(out, "UNAVAILABLE") || time.Now().After(deadline) {
			t.Fatalf("same key, hash on chain: exit %d\n%s%s", code, out, stderr)
		}
	}
	// Without the key file: a fresh key, refused, and the CLI says why.
	code, out, stderr = call()
	if code == 0 || !strings.Contains(out, "UNAUTHENTICATED") || !strings.Contains(stderr, "--vault-key") {
		t.Fatalf("a run without --vault-key: exit %d\n%s%s", code, out, stderr)
	}
	// A file that holds no key is an error, not a new key.
	bad := filepath.Join(dir, "bad.key")
	testpki.WriteFile(t, bad, []byte("not a key"))
	if code, _, stderr := call("--vault-key", bad); code == 0 || !strings.Contains(stderr, "holds no PEM key") {
		t.Fatalf("a corrupt key file: exit %d\n%s", code, stderr)
	}
	if b, _ := os.ReadFile(bad); string(b) != "not a key" {
		t.Fatal("the corrupt key file was overwritten")
	}
}
