package solana

import (
	"bytes"
	"strings"
	"testing"

	solana "github.com/gagliardetto/solana-go"
	"github.com/gagliardetto/solana-go/rpc"

	"github.com/modelnodes/modelnodes/internal/testing/solanatest"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/scheduler/source"
	"github.com/modelnodes/modelnodes/scheduler/source/solana/onchain"
)

// readingSource is a Source fed by hand with readings at chosen slots, as
// its listings, notifications and single reads would.
type readingSource struct {
	*Source
	chain *solanatest.Chain
}

func newReadingSource(t *testing.T) *readingSource {
	t.Helper()
	program, crunch, coord := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	src := &Source{Program: program}
	src.accts, src.check = map[solana.PublicKey]*account{}, map[solana.PublicKey]bool{}
	rs := &readingSource{Source: src, chain: &solanatest.Chain{Program: program, Crunch: crunch, Coord: coord}}
	cr := &onchain.Crunch{Name: "mid-one", Bump: 255}
	copy(cr.Coordinator[:], coord[:])
	cr.CertHash[0] = 0xaa
	rs.put(crunch, cr.Encode(), 1)
	return rs
}

func (rs *readingSource) put(key solana.PublicKey, data []byte, slot uint64) {
	rs.apply(key, &rpc.Account{Owner: rs.chain.Program, Lamports: 1, Data: rpc.DataBytesOrJSONFromBytes(data)}, slot)
}

func (rs *readingSource) gone(key solana.PublicKey, slot uint64) { rs.apply(key, nil, slot) }

func (rs *readingSource) running(t *testing.T, id string) bool {
	t.Helper()
	for _, m := range rs.snapshot().Models {
		if m.ModelID == id {
			return m.Running
		}
	}
	return false
}

// Only positive evidence about its own authorization, read twice at
// increasing slots, stops a model: a closed account or a STOPPED state at
// a slot no newer than what authorized it is ignored (a node that
// restarted empty), the first newer one waits (and says so), the second
// one at a later slot takes effect.
func TestStopNeedsTwoNewerReadings(t *testing.T) {
	rs := newReadingSource(t)
	a, b := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	rs.put(a, rs.chain.Auth("model-a", true, 0).Encode(), 100)
	rs.put(b, rs.chain.Auth("model-b", true, 0).Encode(), 100)

	rs.gone(a, 7) // a chain that restarted empty: an older slot
	rs.put(b, rs.chain.Auth("model-b", false, 0).Encode(), 100)
	s := rs.snapshot()
	if !rs.running(t, "model-a") || !rs.running(t, "model-b") || len(s.Kept) != 2 || rs.checking() {
		t.Fatalf("readings not newer than the authorization stopped a model or queued a read: %+v", s)
	}
	if !strings.Contains(s.Kept[0].Error()+s.Kept[1].Error(), "not evidence") {
		t.Fatalf("the kept entries do not say why: %v", s.Kept)
	}

	rs.gone(a, 101)
	rs.put(b, rs.chain.Auth("model-b", false, 0).Encode(), 101)
	s = rs.snapshot()
	if !rs.running(t, "model-a") || !rs.running(t, "model-b") || len(s.Kept) != 2 || !rs.checking() {
		t.Fatalf("one reading stopped a model, or no confirming read is queued: %+v", s)
	}
	rs.gone(a, 101) // the same slot again confirms nothing
	rs.put(b, rs.chain.Auth("model-b", false, 0).Encode(), 101)
	if !rs.running(t, "model-a") || !rs.running(t, "model-b") {
		t.Fatal("a second reading at the same slot confirmed a stop")
	}

	rs.gone(a, 102)
	rs.put(b, rs.chain.Auth("model-b", false, 0).Encode(), 102)
	s = rs.snapshot()
	if len(s.Models) != 1 || s.Models[0].ModelID != "model-b" || s.Models[0].Running || len(s.Kept) != 0 || rs.checking() {
		t.Fatalf("confirmed close and stop not applied: %+v", s)
	}
	// STOPPED to RUNNING needs no confirmation.
	rs.put(b, rs.chain.Auth("model-b", true, 0).Encode(), 103)
	if !rs.running(t, "model-b") {
		t.Fatal("model-b not running again")
	}
	// A reading alive again between the two drops the evidence.
	rs.gone(b, 104)
	rs.put(b, rs.chain.Auth("model-b", true, 0).Encode(), 105)
	rs.gone(b, 106)
	if !rs.running(t, "model-b") {
		t.Fatal("two readings of a closed account with the account alive in between stopped the model")
	}
}

// Garbage over a good authorization (or over its crunch) keeps the last
// good version, and the account is reported undecodable; an account that
// never decoded is skipped as before.
func TestUndecodableKeepsTheLastGoodVersion(t *testing.T) {
	rs := newReadingSource(t)
	a, fresh := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	rs.put(a, rs.chain.Auth("model-a", true, 512).Encode(), 10)
	for _, garbage := range [][]byte{
		append(onchain.ModelAuthorizationDiscriminator[:], 0xde, 0xad), // its type, cut
		bytes.Repeat([]byte{0x5a}, 200),                                // another discriminator
		{1, 2, 3},                                                      // shorter than a discriminator
	} {
		rs.put(a, garbage, 11)
		rs.put(rs.chain.Crunch, garbage, 11)
		s := rs.snapshot()
		if len(s.Models) != 1 || !s.Models[0].Running || s.Models[0].MemoryMB != 512 || s.Models[0].Crunch != "mid-one" {
			t.Fatalf("garbage %x: the last good version is not kept: %+v", garbage[:3], s)
		}
		if len(s.Undecodable) != 2 || !strings.Contains(s.Undecodable[0].Error()+s.Undecodable[1].Error(), a.String()) || len(s.Skipped) != 0 {
			t.Fatalf("garbage %x: undecodable accounts not reported: %v (skipped %v)", garbage[:3], s.Undecodable, s.Skipped)
		}
	}
	rs.put(fresh, append(onchain.ModelAuthorizationDiscriminator[:], 1), 12)
	if s := rs.snapshot(); len(s.Skipped) != 1 || len(s.Undecodable) != 3 {
		t.Fatalf("a new corrupt account: skipped %v undecodable %v", s.Skipped, s.Undecodable)
	}
	rs.put(a, rs.chain.Auth("model-a", true, 1024).Encode(), 13)
	if s := rs.snapshot(); len(s.Undecodable) != 2 || s.Models[0].MemoryMB != 1024 {
		t.Fatalf("a good version after garbage: %+v", s)
	}
}

// Two authorizations of one model id: the lowest account address that
// wants it running is used, the same every time whatever order the
// accounts arrive in, and the others are reported naming both accounts.
func TestDuplicateModelIDsResolveByAddress(t *testing.T) {
	keys := []solana.PublicKey{solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()}
	low := 0 // index of the lowest address
	for i, k := range keys {
		if bytes.Compare(k[:], keys[low][:]) < 0 {
			low = i
		}
	}
	for _, order := range [][]int{{0, 1, 2}, {2, 1, 0}, {1, 2, 0}} {
		rs := newReadingSource(t)
		for _, i := range order {
			rs.put(keys[i], rs.chain.Auth("model-a", true, uint32(100+i)).Encode(), 5)
		}
		for range 20 { // the accounts sit in a map: its order must not matter
			s := rs.snapshot()
			if len(s.Models) != 1 || s.Models[0].MemoryMB != 100+low || len(s.Duplicates) != 2 {
				t.Fatalf("order %v: the lowest address (memory %d) is not the one used: %+v", order, 100+low, s)
			}
			for _, d := range s.Duplicates {
				msg := d.Error()
				if d.Used != "account "+keys[low].String() || !strings.Contains(msg, keys[low].String()) || !strings.Contains(msg, d.Entry) {
					t.Fatalf("duplicate not named with both accounts: %s", msg)
				}
			}
		}
	}
	// A STOPPED duplicate never wins over a RUNNING one.
	rs := newReadingSource(t)
	for i, k := range keys {
		rs.put(k, rs.chain.Auth("model-a", i != low, 0).Encode(), 5)
	}
	if s := rs.snapshot(); len(s.Models) != 1 || !s.Models[0].Running {
		t.Fatalf("a STOPPED duplicate won: %+v", s)
	}
}

// A restarted scheduler (or a new leader) whose readings lack a running
// job's authorization keeps the job until the account, read on its own, is
// closed twice at slots later than the job's meta says it was authorized
// at, on the chain its meta names. A reading from another chain (a node
// restarted empty: another genesis hash) or an older slot is no evidence;
// the account read alive makes its model the source's again; a job no
// longer asked about is forgotten.
func TestAdoptedJobsNeedEvidence(t *testing.T) {
	rs := newReadingSource(t)
	rs.genesis = "chain-1"
	a, b, c, d := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	jobsAsked := []source.Adoptee{
		{JobID: "model-node-a", Origin: source.Origin{Entry: a.String(), Slot: 100, Chain: "chain-1"}},
		{JobID: "model-node-b", Origin: source.Origin{Entry: b.String(), Slot: 100, Chain: "chain-0"}},
		{JobID: "model-node-c", Origin: source.Origin{Entry: c.String(), Slot: 100, Chain: "chain-1"}},
		{JobID: "model-node-d", Origin: source.Origin{Entry: d.String(), Slot: 100, Chain: "chain-1"}},
		{JobID: "model-node-x", Origin: source.Origin{Entry: "not an account", Slot: 100}},
	}
	keep := rs.Adopt(jobsAsked)
	if len(keep) != 4 || keep["model-node-x"] != "" {
		t.Fatalf("first Adopt kept %v, want the four jobs with an account", keep)
	}
	for _, k := range []solana.PublicKey{a, b, c, d} {
		if !rs.check[k] {
			t.Fatalf("account %s is not queued for a read of its own", k)
		}
	}
	// Older readings, and readings of another chain, are no evidence.
	rs.gone(a, 50)
	rs.gone(b, 500)
	rs.gone(b, 501)
	keep = rs.Adopt(jobsAsked)
	if len(keep) != 4 || !strings.Contains(keep["model-node-a"], "not evidence") || !strings.Contains(keep["model-node-b"], "another chain") {
		t.Fatalf("a stale reading or another chain's stopped a job: %v", keep)
	}
	// Two newer readings on the same chain: c may stop; one is not enough.
	rs.gone(c, 101)
	if keep = rs.Adopt(jobsAsked); keep["model-node-c"] == "" || !rs.check[c] {
		t.Fatalf("one reading stopped job c, or no confirming read is queued: %v", keep)
	}
	rs.gone(c, 101) // the same slot confirms nothing
	if keep = rs.Adopt(jobsAsked); keep["model-node-c"] == "" {
		t.Fatal("a second reading at the same slot confirmed a stop")
	}
	rs.gone(c, 102)
	keep = rs.Adopt(jobsAsked)
	if _, kept := keep["model-node-c"]; kept || len(keep) != 3 {
		t.Fatalf("two newer readings of a closed account did not release job c: %v", keep)
	}
	// d read alive: held, its model in the snapshot, no longer adopted.
	rs.put(d, rs.chain.Auth("model-d", true, 0).Encode(), 101)
	if keep = rs.Adopt(jobsAsked); keep["model-node-d"] != "" || !rs.running(t, "model-d") {
		t.Fatalf("job d read alive: kept %v, running %v", keep, rs.running(t, "model-d"))
	}
	s := rs.snapshot()
	if o := s.Origins[jobs.Key(&s.Models[0])]; o.Entry != d.String() || o.Slot != 101 || o.Chain != "chain-1" {
		t.Fatalf("the snapshot's origin of model-d is %+v", o)
	}
	if len(s.Kept) != 2 {
		t.Fatalf("the snapshot's kept entries are %v, want the two adopted jobs (a, b)", s.Kept)
	}
	// A job no longer asked about (stopped by hand) is forgotten.
	if keep = rs.Adopt(jobsAsked[:1]); len(keep) != 1 || len(rs.adopted) != 1 {
		t.Fatalf("after asking about job a alone: kept %v, %d adoptions", keep, len(rs.adopted))
	}
}

// An authorization whose closing the source confirmed itself is never
// adopted back: its job, which the desired state now lacks, may stop.
func TestConfirmedEndIsNotAdopted(t *testing.T) {
	rs := newReadingSource(t)
	rs.genesis = "chain-2" // the job was written on another chain: no reading of this one is evidence
	a := solana.NewWallet().PublicKey()
	rs.put(a, rs.chain.Auth("model-a", true, 0).Encode(), 100)
	rs.gone(a, 101)
	rs.gone(a, 102)
	if rs.running(t, "model-a") {
		t.Fatal("the confirmed closing did not end model-a")
	}
	asked := []source.Adoptee{{JobID: "model-node-a", Origin: source.Origin{Entry: a.String(), Slot: 100, Chain: "chain-1"}}}
	if keep := rs.Adopt(asked); len(keep) != 0 {
		t.Fatalf("the source vouches for a job whose end it read itself: %v", keep)
	}
	// Alive again: its model is the source's again, and a later end is
	// confirmed as any other.
	rs.put(a, rs.chain.Auth("model-a", true, 0).Encode(), 103)
	if !rs.running(t, "model-a") || rs.ended[a] {
		t.Fatal("model-a read alive again is not running")
	}
}
