package onchain

import (
	"bytes"
	"encoding/hex"
	"errors"
	"reflect"
	"testing"
)

func sampleAuth() *ModelAuthorization {
	a := &ModelAuthorization{
		ModelID: "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU", SubmissionID: "sub-42",
		ArtifactURI: "https://models.example/sub-42.tar.gz", Runtime: RuntimePython, Entry: "main",
		Hardware: HardwareGPU, CPUMHz: 2000, MemoryMB: 8192, GPUs: 1, DesiredState: DesiredRunning, Bump: 254,
	}
	a.Crunch[0], a.Cruncher[1], a.Hotkey[2], a.ArtifactSHA256[3] = 1, 2, 3, 4
	return a
}

func TestRoundTrip(t *testing.T) {
	a := sampleAuth()
	got, err := DecodeModelAuthorization(a.Encode())
	if err != nil || !reflect.DeepEqual(got, a) {
		t.Fatalf("authorization round trip: %v\n got %+v\nwant %+v", err, got, a)
	}
	// With the resources extension, and without it (an account written
	// before the extension existed, ending at bump or zero-padded there).
	r := sampleAuth()
	r.ResourcesURI, r.ResourcesSHA256[0] = "https://models.example/sub-42-resources.tar.gz", 5
	if got, err := DecodeModelAuthorization(r.Encode()); err != nil || !reflect.DeepEqual(got, r) {
		t.Fatalf("authorization with resources: %v\n got %+v\nwant %+v", err, got, r)
	}
	if len(r.Encode()) != len(a.Encode())+32+4+len(r.ResourcesURI) {
		t.Fatalf("the extension is %d bytes", len(r.Encode())-len(a.Encode()))
	}
	padded := append(a.Encode(), make([]byte, 100)...)
	if got, err := DecodeModelAuthorization(padded); err != nil || !reflect.DeepEqual(got, a) || got.ResourcesURI != "" {
		t.Fatalf("a zero-padded authorization without resources: %v %+v", err, got)
	}
	c := &Crunch{Name: "mid-one", Bump: 1}
	c.CertHash[0] = 9
	gc, err := DecodeCrunch(append(c.Encode(), 0, 0, 0)) // zero padding is allowed
	if err != nil || !reflect.DeepEqual(gc, c) {
		t.Fatalf("crunch round trip: %v %+v", err, gc)
	}
	cc := &CoordinatorCertificate{PrimaryUpdatedAt: 1700000000, SecondaryUpdatedAt: -1, Bump: 7}
	cc.CertHash[31] = 1
	b := cc.Encode()
	if len(b) != CoordinatorCertificateSize {
		t.Fatalf("CoordinatorCertificate is %d bytes, want 121", len(b))
	}
	gcc, err := DecodeCoordinatorCertificate(b)
	if err != nil || !reflect.DeepEqual(gcc, cc) {
		t.Fatalf("certificate round trip: %v %+v", err, gcc)
	}
	if HashHex(gcc.CertHashSecondary) != "" || len(HashHex(gcc.CertHash)) != 64 {
		t.Fatal("HashHex: an all-zero hash must read as empty, another as 64 hex digits")
	}
}

// The discriminator is Anchor's: sha256("account:CoordinatorCertificate")[:8].
func TestCoordinatorCertificateDiscriminator(t *testing.T) {
	// Computed independently: python3 -c 'import hashlib; print(hashlib.sha256(b"account:CoordinatorCertificate").hexdigest()[:16])'
	want := "dc40089217ab9e00"
	if got := hex.EncodeToString(CoordinatorCertificateDiscriminator[:]); got != want {
		t.Fatalf("discriminator %s, want %s", got, want)
	}
}

func TestCorruptAccounts(t *testing.T) {
	good := sampleAuth().Encode()
	for name, tc := range map[string]struct {
		data []byte
		want error
	}{
		"empty":          {nil, ErrShort},
		"other type":     {(&Crunch{Name: "x"}).Encode(), ErrDiscriminator},
		"truncated":      {good[:len(good)-2], ErrShort},
		"cut extension":  {append(append([]byte{}, good...), 1), ErrShort},
		"trailing":       {append(withResources(), 1), ErrTrailing},
		"resources uri":  {append(append([]byte{}, good...), append(make([]byte, 32), 0xff, 0xff, 0, 0)...), ErrInvalid},
		"huge string":    {append(append([]byte{}, good[:104]...), 0xff, 0xff, 0xff, 0x7f), ErrInvalid},
		"bad hardware":   {mutate(good, func(a *ModelAuthorization) { a.Hardware = 7 }), ErrInvalid},
		"bad state":      {mutate(good, func(a *ModelAuthorization) { a.DesiredState = 2 }), ErrInvalid},
		"empty model id": {mutate(good, func(a *ModelAuthorization) { a.ModelID = "" }), ErrInvalid},
		"not utf8":       {mutate(good, func(a *ModelAuthorization) { a.SubmissionID = "\xff\xfe" }), ErrInvalid},
	} {
		if _, err := DecodeModelAuthorization(tc.data); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", name, err, tc.want)
		}
	}
	if _, err := DecodeCoordinatorCertificate(make([]byte, 121)); !errors.Is(err, ErrDiscriminator) {
		t.Errorf("zeroed certificate: %v", err)
	}
	cc := (&CoordinatorCertificate{}).Encode()
	if _, err := DecodeCoordinatorCertificate(append(cc, 0)); !errors.Is(err, ErrInvalid) {
		t.Errorf("122-byte certificate: %v", err)
	}
}

func withResources() []byte {
	a := sampleAuth()
	a.ResourcesURI, a.ResourcesSHA256[9] = "https://models.example/r.tar.gz", 1
	return a.Encode()
}

func mutate(_ []byte, f func(*ModelAuthorization)) []byte {
	a := sampleAuth()
	f(a)
	return a.Encode()
}

// Decoders never panic, and whatever they accept re-encodes to an account
// that decodes to the same value.
func FuzzDecodeModelAuthorization(f *testing.F) {
	f.Add(sampleAuth().Encode())
	f.Add(withResources())
	f.Add((&Crunch{Name: "c"}).Encode())
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := DecodeModelAuthorization(data)
		if err != nil {
			return
		}
		b, err := DecodeModelAuthorization(a.Encode())
		if err != nil || !reflect.DeepEqual(a, b) {
			t.Fatalf("re-encoding changed the account: %v", err)
		}
	})
}

func FuzzDecodeCrunch(f *testing.F) {
	f.Add((&Crunch{Name: "mid-one"}).Encode())
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeCrunch(data)
		if err != nil {
			return
		}
		d, err := DecodeCrunch(c.Encode())
		if err != nil || !reflect.DeepEqual(c, d) {
			t.Fatalf("re-encoding changed the account: %v", err)
		}
	})
}

func FuzzDecodeCoordinatorCertificate(f *testing.F) {
	f.Add((&CoordinatorCertificate{Bump: 1}).Encode())
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeCoordinatorCertificate(data)
		if err != nil {
			return
		}
		if !bytes.Equal(c.Encode(), data) {
			t.Fatal("a decoded certificate re-encodes to other bytes")
		}
	})
}
