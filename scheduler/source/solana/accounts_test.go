package solana

import (
	"strings"
	"testing"

	solana "github.com/gagliardetto/solana-go"
	"github.com/gagliardetto/solana-go/rpc"

	"github.com/modelnodes/modelnodes/internal/testing/solanatest"
	"github.com/modelnodes/modelnodes/scheduler/source/solana/onchain"
)

// A CoordinatorCertificate account that names no key (just created, or
// zeroed by whoever controls it) must not replace the crunch's hashes: the
// runner would then get no hash at all (issue 13 item 3). One that names a
// key replaces the crunch's hashes as a whole.
func TestZeroCoordinatorCertificateNeverOverrides(t *testing.T) {
	src, put, program, crunch, coord := accountsSource()
	cr := &onchain.Crunch{Name: "mid-one", Bump: 255}
	copy(cr.Coordinator[:], coord[:])
	cr.CertHash[0], cr.CertHashSecondary[0] = 0xaa, 0xbb
	put(crunch, cr.Encode())
	c := &solanatest.Chain{Program: program, Crunch: crunch, Coord: coord}
	put(solana.NewWallet().PublicKey(), c.Auth("model-a", true, 0).Encode())
	certKey := solana.NewWallet().PublicKey()
	cert := &onchain.CoordinatorCertificate{Bump: 1}
	copy(cert.Coordinator[:], coord[:])

	hashes := func() (string, string) {
		s := src.snapshot()
		if len(s.Models) != 1 {
			t.Fatalf("snapshot: %+v", s)
		}
		return s.Models[0].CertHash, s.Models[0].CertHashSecondary
	}
	put(certKey, cert.Encode()) // all zero
	if p, s := hashes(); !strings.HasPrefix(p, "aa") || !strings.HasPrefix(s, "bb") {
		t.Fatalf("an all-zero certificate replaced the crunch's hashes: primary %q secondary %q", p, s)
	}
	cert.CertHash[0] = 0xcc // names a key: it wins, its empty secondary means none
	put(certKey, cert.Encode())
	if p, s := hashes(); !strings.HasPrefix(p, "cc") || s != "" {
		t.Fatalf("the certificate's key did not replace the crunch's: primary %q secondary %q", p, s)
	}
	cert.CertHash[0] = 0 // zeroed again: back to the crunch's
	put(certKey, cert.Encode())
	if p, s := hashes(); !strings.HasPrefix(p, "aa") || !strings.HasPrefix(s, "bb") {
		t.Fatalf("a zeroed certificate blanked the hashes: primary %q secondary %q", p, s)
	}
}

// An authorization's resources archive (the account's extension) reaches
// the model with its digest; one written before the extension has none.
func TestResourcesReachTheModel(t *testing.T) {
	src, put, program, crunch, coord := accountsSource()
	cr := &onchain.Crunch{Name: "mid-one", Bump: 255}
	copy(cr.Coordinator[:], coord[:])
	put(crunch, cr.Encode())
	c := &solanatest.Chain{Program: program, Crunch: crunch, Coord: coord}
	with := c.Auth("model-a", true, 0)
	with.ResourcesURI, with.ResourcesSHA256[31] = "https://models.example/model-a-resources.tar.gz", 0xee
	put(solana.NewWallet().PublicKey(), with.Encode())
	put(solana.NewWallet().PublicKey(), c.Auth("model-b", true, 0).Encode())
	got := map[string][2]string{}
	for _, m := range src.snapshot().Models {
		got[m.ModelID] = [2]string{m.ResourcesURL, m.ResourcesSHA256}
	}
	if r := got["model-a"]; r[0] != with.ResourcesURI || !strings.HasSuffix(r[1], "ee") || len(r[1]) != 64 {
		t.Errorf("model-a's resources: %q", r)
	}
	if r, ok := got["model-b"]; !ok || r != [2]string{} {
		t.Errorf("model-b (no extension): %q %v", r, ok)
	}
}

// accountsSource is a Source fed by hand, account by account, as its
// subscription would: put applies an account of the program at key.
func accountsSource() (src *Source, put func(key solana.PublicKey, data []byte), program, crunch, coord solana.PublicKey) {
	program, crunch, coord = solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	src = &Source{Program: program}
	src.accts, src.check = map[solana.PublicKey]*account{}, map[solana.PublicKey]bool{}
	slot := uint64(0)
	put = func(key solana.PublicKey, data []byte) {
		slot++
		src.apply(key, &rpc.Account{Owner: program, Lamports: 1, Data: rpc.DataBytesOrJSONFromBytes(data)}, slot)
	}
	return src, put, program, crunch, coord
}
