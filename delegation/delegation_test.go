package delegation

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mr-tron/base58"
	"google.golang.org/grpc/metadata"
)

func fixture(t testing.TB) (ed25519.PrivateKey, []byte, *Proof, Expect) {
	_, wallet, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tlsKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(&tlsKey.PublicKey)
	p, err := Sign(wallet, Message{CertPub: CertPub(spki), ModelID: "m-42", Hotkey: "hot", ExpiresAt: time.Now().Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	return wallet, spki, p, Expect{Wallet: base58.Encode(wallet.Public().(ed25519.PublicKey)), ModelID: "m-42", Hotkey: "hot", ConnSPKI: spki}
}

func TestRoundTripThroughHeaders(t *testing.T) {
	_, _, p, want := fixture(t)
	got, err := FromHeaders(p.Headers())
	if err != nil {
		t.Fatal(err)
	}
	m, err := got.Verify(want)
	if err != nil || m.ModelID != "m-42" {
		t.Fatalf("Verify = %+v, %v", m, err)
	}
}

// Each way a proof can lie is refused with its own error.
func TestVerifyRefuses(t *testing.T) {
	wallet, spki, p, want := fixture(t)
	_, otherWallet, _ := ed25519.GenerateKey(rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherSPKI, _ := x509.MarshalPKIXPublicKey(&other.PublicKey)

	tampered := *p
	tampered.Message = append([]byte(nil), p.Message...)
	tampered.Message[len(tampered.Message)-3] ^= 1
	byOther, _ := Sign(otherWallet, mustDecode(t, p))
	expired, _ := Sign(wallet, Message{CertPub: CertPub(spki), ModelID: "m-42", Hotkey: "hot", ExpiresAt: time.Now().Add(-time.Second).Unix()})

	for name, tc := range map[string]struct {
		proof  *Proof
		expect func(*Expect)
		want   error
	}{
		"tampered message":          {&tampered, nil, ErrBadSignature},
		"signed by another wallet":  {byOther, nil, ErrWrongWallet},
		"expected another model":    {p, func(e *Expect) { e.ModelID = "m-43" }, ErrWrongModel},
		"expected another hotkey":   {p, func(e *Expect) { e.Hotkey = "cold" }, ErrWrongHotkey},
		"expired":                   {expired, nil, ErrExpired},
		"another key on the socket": {p, func(e *Expect) { e.ConnSPKI = otherSPKI }, ErrWrongKey},
	} {
		e := want
		if tc.expect != nil {
			tc.expect(&e)
		}
		if _, err := tc.proof.Verify(e); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
}

func TestFromHeadersRefusesMalformed(t *testing.T) {
	_, _, p, _ := fixture(t)
	good := p.Headers()
	for name, md := range map[string]metadata.MD{
		"no headers":        {},
		"bad base64":        with(good, HeaderMessage, "%%%"),
		"short signature":   with(good, HeaderSignature, base64.StdEncoding.EncodeToString([]byte("short"))),
		"wallet not base58": with(good, HeaderWallet, "0OIl"),
		"duplicate header":  func() metadata.MD { m := good.Copy(); m.Append(HeaderWallet, good.Get(HeaderWallet)[0]); return m }(),
	} {
		if _, err := FromHeaders(md); !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrMissing) {
			t.Errorf("%s: %v, want ErrMalformed or ErrMissing", name, err)
		}
	}
}

func TestFileRoundTrip(t *testing.T) {
	_, _, p, want := fixture(t)
	path := filepath.Join(t.TempDir(), "delegation.json")
	b, _ := json.Marshal(p.ToFile())
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := got.Verify(want); err != nil {
		t.Fatal(err)
	}
	f := p.ToFile()
	f.Wallet = base58.Encode(make([]byte, 32))
	b, _ = json.Marshal(f)
	_ = os.WriteFile(path, b, 0o600)
	if _, err := Load(path); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("a file whose signature does not match its wallet: %v", err)
	}
}

func with(md metadata.MD, k, v string) metadata.MD {
	m := md.Copy()
	m.Set(k, v)
	return m
}

func mustDecode(t *testing.T, p *Proof) Message {
	m, err := p.Decode()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func FuzzFromHeaders(f *testing.F) {
	_, _, p, _ := fixture(f)
	h := p.Headers()
	f.Add(h.Get(HeaderMessage)[0], h.Get(HeaderSignature)[0], h.Get(HeaderWallet)[0])
	f.Add("e30=", "", "11111111111111111111111111111111")
	f.Fuzz(func(t *testing.T, msg, sig, wallet string) {
		proof, err := FromHeaders(metadata.Pairs(HeaderMessage, msg, HeaderSignature, sig, HeaderWallet, wallet))
		if err != nil {
			return
		}
		// Whatever parses must verify only if it really is signed.
		if _, err := proof.Verify(Expect{Wallet: wallet, Now: time.Unix(0, 0)}); err == nil {
			if !ed25519.Verify(proof.Wallet, proof.Message, proof.Signature) {
				t.Fatal("an unsigned proof verified")
			}
		}
	})
}
