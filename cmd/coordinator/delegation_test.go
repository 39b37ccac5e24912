//go:build e2e

package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/mr-tron/base58"

	"github.com/modelnodes/modelnodes/delegation"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	"github.com/modelnodes/modelnodes/runner"
)

// --verify-delegation: the CLI believes a model's answer only when its runner
// presents the cruncher's wallet delegation for its own TLS key, matching the
// wallet, model and hotkey its Consul service announces (what the
// scheduler's jobs put there). An impostor with a valid certificate replaying
// the honest runner's delegation is refused; without the flag both answer.
func TestVerifyDelegation(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Consul)
	dir := t.TempDir()
	ca := testpki.NewCA(t, "model-call CA")
	caFile := ca.WriteCA(t, dir, "ca.crt")
	pub, wallet, _ := ed25519.GenerateKey(rand.Reader)

	honest := ca.Issue(t, dir, testpki.Leaf{CommonName: "honest", DNSNames: []string{names.ModelServerName("dg-honest")}, RSA: true})
	impostor := ca.Issue(t, dir, testpki.Leaf{CommonName: "impostor", DNSNames: []string{names.ModelServerName("dg-impostor")}, RSA: true})
	proof, err := delegation.Sign(wallet, delegation.Message{CertPub: delegation.CertPub(honest.Cert.RawSubjectPublicKeyInfo),
		ModelID: "FullModel1", Hotkey: "hk-1", ExpiresAt: time.Now().Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	serve := func(server *testpki.Issued) string {
		rl, err := tlsfiles.New(tlsfiles.Files{CertFile: server.CertFile, KeyFile: server.KeyFile, CAFile: caFile}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return startRunnerWith(t, runner.Config{TLS: rl, Delegation: func() *delegation.Proof { return proof }})
	}
	agent := cl.Consul.Client.Agent()
	register := func(id, addr, model string) {
		t.Helper()
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		if err := agent.ServiceRegister(&consulapi.AgentServiceRegistration{
			ID: "model-node-" + id, Name: names.Service("dg"), Address: host, Port: p,
			Meta: map[string]string{names.MetaModelID: id, names.MetaModel: model, names.MetaCrunch: "dg",
				names.MetaCruncher: base58.Encode(pub), names.MetaHotkey: "hk-1"},
			Check: &consulapi.AgentServiceCheck{TTL: "10m", Status: consulapi.HealthPassing},
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = agent.ServiceDeregister("model-node-" + id) })
	}
	// The impostor claims its own model with the honest runner's signature.
	register("dg-honest", serve(honest), "FullModel1")
	register("dg-impostor", serve(impostor), "FullModel1")

	coordinator := ca.Issue(t, dir, testpki.Leaf{CommonName: "coordinator", Client: true})
	t.Setenv("COORDINATOR_CONSUL_ADDR", cl.Consul.Addr)
	t.Setenv("COORDINATOR_CONSUL_TOKEN", cl.Consul.Token)
	call := func(extra ...string) (int, string) {
		t.Helper()
		args := append([]string{"call", "echo", "--crunch", "dg", "--tls-cert", coordinator.CertFile, "--tls-key", coordinator.KeyFile,
			"--tls-ca", caFile, "--setup", "m.Base", "--args", `["x"]`, "--timeout", "10s"}, extra...)
		// (The workers may still be starting: retry while a runner says so.)
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			code, out, stderr := runCLI(t, args...)
			if !strings.Contains(out, "UNAVAILABLE") || time.Now().After(deadline) {
				return code, out + stderr
			}
		}
	}
	code, out := call()
	if code != 0 || strings.Count(out, "success") != 2 {
		t.Fatalf("without --verify-delegation both runners answer: exit %d\n%s", code, out)
	}
	code, out = call("--verify-delegation")
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			lines[f[0]] = l
		}
	}
	if code != 3 || !strings.Contains(lines["dg-honest"], "success") ||
		!strings.Contains(lines["dg-impostor"], "UNAUTHENTICATED") || !strings.Contains(lines["dg-impostor"], "delegation") {
		t.Fatalf("--verify-delegation: exit %d, want the honest runner believed and the impostor refused:\n%s", code, out)
	}
	if code, _, stderr := runCLI(t, "call", "echo", "--plaintext", "--models", "a=127.0.0.1:1", "--verify-delegation"); code != 2 ||
		!strings.Contains(stderr, "--verify-delegation") {
		t.Errorf("--verify-delegation with --plaintext: exit %d %s", code, stderr)
	}
}
