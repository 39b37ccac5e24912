package main_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gagliardetto/solana-go"

	"github.com/modelnodes/modelnodes/delegation"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
)

// A cruncher signs with a solana-keygen keypair; what it writes verifies
// against its wallet address and the runner's key.
func TestDelegationSignTool(t *testing.T) {
	dir := t.TempDir()
	keypair, wallet := walletFile(t, dir)
	runnerCert := testpki.NewCA(t, "ca").Issue(t, dir, testpki.Leaf{CommonName: "runner", RSA: true})
	out := filepath.Join(dir, "delegation.json")
	cmd := exec.Command(binary(t), "delegation", "sign", "--keypair", keypair, "--runner-key", runnerCert.CertFile,
		"--model-id", "m-7", "--hotkey", "hk-7", "--ttl", "1h", "--out", out)
	if b, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(b), wallet) {
		t.Fatalf("delegation sign: %v\n%s", err, b)
	}
	proof, err := delegation.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	m, err := proof.Verify(delegation.Expect{Wallet: wallet, ModelID: "m-7", Hotkey: "hk-7",
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

// `delegation key` reads a running runner's public key from its TLS
// handshake, even though the runner demands a client certificate the tool
// does not have, and only after checking the runner's certificate; `sign
// --cert-pub` signs for that key.
func TestDelegationKeyFromARunner(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "vault")
	const name = "model-node-7.crunchdao.internal"
	srv := ca.Issue(t, dir, testpki.Leaf{CommonName: name, DNSNames: []string{name}, RSA: true})
	pair, err := tls.X509KeyPair(srv.CertPEM, srv.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	clients := x509.NewCertPool()
	clients.AppendCertsFromPEM(testpki.NewCA(t, "coordinators").PEM())
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clients})
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); _ = c.Close() }()
		}
	}()
	caFile := ca.WriteCA(t, dir, "ca.pem")
	keyCmd := func(name string) (string, error) {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(binary(t), "delegation", "key", "--runner-addr", lis.Addr().String(),
			"--runner-ca", caFile, "--runner-name", name)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return strings.TrimSpace(stdout.String()), fmt.Errorf("%v: %s", err, stderr.String())
	}
	got, err := keyCmd(name)
	if got != delegation.CertPub(srv.Cert.RawSubjectPublicKeyInfo) {
		t.Fatalf("delegation key: %v\n%s", err, got)
	}
	certPub := delegation.CertPub(srv.Cert.RawSubjectPublicKeyInfo)
	if out, err := keyCmd("model-node-8.crunchdao.internal"); out != "" || !strings.Contains(err.Error(), "model-node-8") {
		t.Fatalf("a runner answering for another model's name: %v\n%s", err, out)
	}

	keypair, wallet := walletFile(t, dir)
	out := filepath.Join(dir, "delegation.json")
	if b, err := exec.Command(binary(t), "delegation", "sign", "--keypair", keypair, "--cert-pub", certPub,
		"--model-id", "m-7", "--hotkey", "hk-7", "--out", out).CombinedOutput(); err != nil {
		t.Fatalf("sign --cert-pub: %v\n%s", err, b)
	}
	proof, err := delegation.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := proof.Verify(delegation.Expect{Wallet: wallet, ModelID: "m-7", Hotkey: "hk-7",
		ConnSPKI: srv.Cert.RawSubjectPublicKeyInfo}); err != nil {
		t.Fatalf("the delegation signed for the fetched key does not verify: %v", err)
	}
	if b, err := exec.Command(binary(t), "delegation", "sign", "--keypair", keypair, "--cert-pub", "bm90IGEga2V5",
		"--model-id", "m-7", "--hotkey", "hk-7").CombinedOutput(); err == nil || !strings.Contains(string(b), "no public key") {
		t.Fatalf("sign for garbage --cert-pub: %v %s", err, b)
	}
}

// walletFile writes a new solana-keygen keypair file and returns its path
// and the wallet's base58 public key.
func walletFile(t *testing.T, dir string) (path, wallet string) {
	t.Helper()
	key, err := solana.NewRandomPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	ints := make([]int, len(key))
	for i, b := range key {
		ints[i] = int(b)
	}
	keyJSON, _ := json.Marshal(ints)
	path = filepath.Join(dir, "id.json")
	if err := os.WriteFile(path, keyJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, key.PublicKey().String()
}
