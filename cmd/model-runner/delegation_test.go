package main_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gagliardetto/solana-go"

	"github.com/modelnodes/modelnodes/internal/delegation"
	"github.com/modelnodes/modelnodes/internal/testpki"
)

// A cruncher signs with a solana-keygen keypair; what it writes verifies
// against its wallet address and the runner's key.
func TestDelegationSignTool(t *testing.T) {
	dir := t.TempDir()
	wallet, err := solana.NewRandomPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	ints := make([]int, len(wallet))
	for i, b := range wallet {
		ints[i] = int(b)
	}
	keyJSON, _ := json.Marshal(ints)
	keypair := filepath.Join(dir, "id.json")
	if err := os.WriteFile(keypair, keyJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	runnerCert := testpki.NewCA(t, "ca").Issue(t, dir, testpki.Leaf{CommonName: "runner", RSA: true})
	out := filepath.Join(dir, "delegation.json")
	cmd := exec.Command(binary(t), "delegation", "sign", "--keypair", keypair, "--runner-key", runnerCert.CertFile,
		"--model-id", "m-7", "--hotkey", "hk-7", "--ttl", "1h", "--out", out)
	if b, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(b), wallet.PublicKey().String()) {
		t.Fatalf("delegation sign: %v\n%s", err, b)
	}
	proof, err := delegation.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	m, err := proof.Verify(delegation.Expect{Wallet: wallet.PublicKey().String(), ModelID: "m-7", Hotkey: "hk-7",
		ConnSPKI: runnerCert.Cert.RawSubjectPublicKeyInfo})
	if err != nil {
		t.Fatalf("the signed delegation does not verify: %v (%+v)", err, m)
	}
	// Missing inputs are named.
	b, err := exec.Command(binary(t), "delegation", "sign", "--keypair", keypair).CombinedOutput()
	if err == nil || !strings.Contains(string(b), "--runner-key") {
		t.Fatalf("sign without a runner key: %v %s", err, b)
	}
}
