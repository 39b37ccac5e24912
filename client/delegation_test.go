package client_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/mr-tron/base58"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/delegation"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	"github.com/modelnodes/modelnodes/runner"
)

// With a DelegationCheck the coordinator accepts a model's answers only from
// the runner whose TLS key the cruncher's wallet signed for that model.
func TestDelegationCheckedOnEveryCall(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "ca")
	caFile := ca.WriteCA(t, dir, "ca.crt")
	_, wallet, _ := ed25519.GenerateKey(rand.Reader)
	walletAddr := base58.Encode(wallet.Public().(ed25519.PublicKey))

	// honest: its own key signed. impostor: a valid certificate for the
	// same model name, replaying the honest runner's delegation.
	honest := ca.Issue(t, dir, testpki.Leaf{CommonName: "honest", DNSNames: []string{names.ModelServerName("m1")}, RSA: true})
	impostor := ca.Issue(t, dir, testpki.Leaf{CommonName: "impostor", DNSNames: []string{names.ModelServerName("m2")}, RSA: true})
	proof, err := delegation.Sign(wallet, delegation.Message{CertPub: delegation.CertPub(honest.Cert.RawSubjectPublicKeyInfo),
		ModelID: "m1", Hotkey: "hk", ExpiresAt: time.Now().Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	start := func(server *testpki.Issued) string {
		rl, err := tlsfiles.New(tlsfiles.Files{CertFile: server.CertFile, KeyFile: server.KeyFile, CAFile: caFile}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return startRunnerWith(t, rl, "127.0.0.1:0", func(c *runner.Config) {
			c.Delegation = func() *delegation.Proof { return proof }
		}).addr
	}
	models := []discovery.Model{{ID: "m1", Target: start(honest)}, {ID: "m2", Target: start(impostor)}}
	coordinator := ca.Issue(t, dir, testpki.Leaf{CommonName: "coordinator", Client: true})

	run := func(check client.DelegationCheck) map[string]client.Result {
		ctx := ctxTimeout(t, 30*time.Second)
		c := runClient(t, ctx, client.Config{Source: discovery.Static(models), TLS: material(t, coordinator, caFile), Delegation: check})
		waitAllServing(t, c, 2)
		out := map[string]client.Result{}
		for _, r := range c.Call(ctx, "echo", client.Request{Args: client.Positional(commonspb.String("x")), Timeout: 5 * time.Second}) {
			out[r.Model.ID] = r
		}
		return out
	}
	// The chain says: model m1 and m2 both belong to this wallet and hotkey
	// (the impostor claims m2 with m1's signature).
	res := run(func(m discovery.Model) (string, string, string, bool) { return walletAddr, m.ID, "hk", true })
	// Setup was never called: both answer FAILED_PRECONDITION, which is fine;
	// what matters is whether the answer is believed.
	if r := res["m1"]; r.Status == client.Unauthenticated {
		t.Errorf("honest runner refused: %s", r.Message)
	}
	if r := res["m2"]; r.Status != client.Unauthenticated || !strings.Contains(r.Message, "delegation") {
		t.Errorf("impostor: %s %q, want Unauthenticated naming the delegation", r.Status, r.Message)
	}
	// Announced hotkey differs: the honest runner is refused too.
	res = run(func(m discovery.Model) (string, string, string, bool) { return walletAddr, m.ID, "other-hotkey", true })
	if r := res["m1"]; r.Status != client.Unauthenticated {
		t.Errorf("hotkey mismatch: %s, want Unauthenticated", r.Status)
	}
	// Without a check, nothing is refused for it.
	res = run(nil)
	if r := res["m2"]; r.Status == client.Unauthenticated {
		t.Errorf("no check configured, yet refused: %s", r.Message)
	}
}
