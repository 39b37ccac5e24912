package runner_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/mr-tron/base58"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/modelnodes/modelnodes/delegation"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/worker"
)

// The runner presents the cruncher's wallet delegation on every model call;
// a coordinator verifies it against the key of the connection it is on, so a
// runner replaying another runner's delegation is caught.
func TestRunnerPresentsWalletDelegation(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "ca")
	caFile := ca.WriteCA(t, dir, "ca.crt")
	_, wallet, _ := ed25519.GenerateKey(rand.Reader)
	expect := delegation.Expect{Wallet: base58.Encode(wallet.Public().(ed25519.PublicKey)), ModelID: "m-1", Hotkey: "hk"}

	start := func(name string, signedFor *testpki.Issued) (*harness, *testpki.Issued) {
		server := ca.Issue(t, dir, testpki.Leaf{CommonName: name, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, RSA: true})
		if signedFor == nil {
			signedFor = server
		}
		proof, err := delegation.Sign(wallet, delegation.Message{CertPub: delegation.CertPub(signedFor.Cert.RawSubjectPublicKeyInfo),
			ModelID: "m-1", Hotkey: "hk", ExpiresAt: time.Now().Add(time.Hour).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		tlsr, err := tlsfiles.New(tlsfiles.Files{CertFile: server.CertFile, KeyFile: server.KeyFile, CAFile: caFile}, nil)
		if err != nil {
			t.Fatal(err)
		}
		m := &mtlsSetup{}
		h := startConfig(t, runner.Config{TLS: tlsr, Delegation: func() *delegation.Proof { return proof },
			Logger: hclog.NewNullLogger(), Worker: worker.Config{Command: exampleWorker(t)}},
			m.dial(t, ca.Issue(t, dir, testpki.Leaf{CommonName: "coord-" + name, Client: true}), ca))
		return h.ready(), server
	}
	verify := func(h *harness) error {
		var hdr metadata.MD
		var p peer.Peer
		if _, err := h.ds.Setup(ctxTimeout(t, 10*time.Second), &dspb.SetupRequest{ClassName: "x.Base"}, grpc.Header(&hdr), grpc.Peer(&p)); err != nil {
			t.Fatal(err)
		}
		proof, err := delegation.FromHeaders(hdr)
		if err != nil {
			return err
		}
		e := expect
		e.ConnSPKI = p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].RawSubjectPublicKeyInfo
		_, err = proof.Verify(e)
		return err
	}

	honest, honestCert := start("honest", nil)
	if err := verify(honest); err != nil {
		t.Fatalf("the honest runner's delegation: %v", err)
	}
	// Another runner with a valid certificate from the same CA replays the
	// honest runner's delegation: the coordinator refuses it.
	impostor, _ := start("impostor", honestCert)
	if err := verify(impostor); !errors.Is(err, delegation.ErrWrongKey) {
		t.Fatalf("a replayed delegation: %v, want ErrWrongKey", err)
	}
}
