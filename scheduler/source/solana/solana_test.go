//go:build e2e

package solana

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"
	"github.com/gagliardetto/solana-go/programs/system"
	"github.com/gagliardetto/solana-go/rpc"
	"github.com/gagliardetto/solana-go/rpc/ws"
	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/testing/solanatest"
	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/scheduler"
	"github.com/modelnodes/modelnodes/scheduler/source"
	"github.com/modelnodes/modelnodes/scheduler/source/solana/onchain"
)

// collector keeps a source's snapshots.
type collector struct {
	mu    sync.Mutex
	cond  *sync.Cond
	last  source.Snapshot
	good  int
	fails int
}

func newCollector() *collector {
	c := &collector{}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *collector) report(s source.Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.Err != nil {
		c.fails++
	} else {
		c.last, c.good = s, c.good+1
	}
	c.cond.Broadcast()
}

// wait returns the first good snapshot satisfying ok within d.
func (c *collector) wait(t testing.TB, d time.Duration, what string, ok func(source.Snapshot) bool) source.Snapshot {
	t.Helper()
	deadline := time.Now().Add(d)
	go func() { time.Sleep(d); c.mu.Lock(); c.cond.Broadcast(); c.mu.Unlock() }()
	c.mu.Lock()
	defer c.mu.Unlock()
	for !(c.good > 0 && ok(c.last)) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen within %s; last snapshot: %d models, skipped %v", what, d, len(c.last.Models), c.last.Skipped)
		}
		c.cond.Wait()
	}
	return c.last
}

func modelByID(s source.Snapshot, id string) *jobs.Model {
	for i := range s.Models {
		if s.Models[i].ModelID == id {
			return &s.Models[i]
		}
	}
	return nil
}

func runSource(t testing.TB, src *Source) *collector {
	col := newCollector()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(ctx, col.report) }()
	t.Cleanup(func() { cancel(); <-done })
	return col
}

func TestSolanaSource(t *testing.T) {
	f := solanatest.StartFront(t)
	c := solanatest.NewChain(t, f)
	keyA, keyB, keyBad := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	f.SetAccount(t, keyA, c.Program, c.Auth("model-a", true, 0).Encode())
	f.SetAccount(t, keyB, c.Program, c.Auth("model-b", false, 0).Encode())
	garbage := append(onchain.ModelAuthorizationDiscriminator[:], 0xde, 0xad, 0xbe, 0xef)
	f.SetAccount(t, keyBad, c.Program, garbage)
	cert := &onchain.CoordinatorCertificate{Bump: 1}
	copy(cert.Coordinator[:], c.Coord[:])
	cert.CertHash[0], cert.CertHashSecondary[0] = 0xcc, 0xdd
	f.SetAccount(t, solana.NewWallet().PublicKey(), c.Program, cert.Encode())
	// An account of another program is never read.
	f.SetAccount(t, solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey(), c.Auth("other", true, 0).Encode())

	src := &Source{RPCURL: f.RPC, WSURL: f.WS, Program: c.Program, Commitment: rpc.CommitmentConfirmed, Resync: time.Minute}
	col := runSource(t, src)

	s := col.wait(t, 10*time.Second, "initial listing", func(s source.Snapshot) bool { return len(s.Models) == 2 })
	a := modelByID(s, "model-a")
	if a == nil || !a.Running || a.Crunch != "mid-one" || a.CrunchID != c.Crunch.String() ||
		!strings.HasPrefix(a.CertHash, "cc") || !strings.HasPrefix(a.CertHashSecondary, "dd") {
		t.Fatalf("model-a: %+v (the CoordinatorCertificate's hashes win over the crunch's)", a)
	}
	if b := modelByID(s, "model-b"); b == nil || b.Running {
		t.Fatalf("model-b must be desired STOPPED: %+v", b)
	}
	if len(s.Skipped) != 1 || !strings.Contains(s.Skipped[0].Error(), keyBad.String()) {
		t.Fatalf("the corrupt account must be skipped with its address: %v", s.Skipped)
	}
	f.WaitSubscribed(t, 1)

	// A change reaches the source over the websocket, not by a resync.
	time.Sleep(1200 * time.Millisecond) // past the post-subscribe resync
	before := src.resyncs.Load()
	t0 := time.Now()
	f.SetAccount(t, keyB, c.Program, c.Auth("model-b", true, 2048).Encode())
	col.wait(t, 2*time.Second, "model-b running over the websocket", func(s source.Snapshot) bool {
		b := modelByID(s, "model-b")
		return b != nil && b.Running && b.MemoryMB == 2048
	})
	if src.resyncs.Load() != before {
		t.Fatal("the change came through a resync, not the websocket")
	}
	t.Logf("websocket change seen in %s", time.Since(t0).Round(time.Millisecond))

	// A real signed transaction in the SVM: the System program creates an
	// account owned by the program (zeroed: not an authorization, ignored).
	payer := solana.NewWallet()
	client := rpc.New(f.RPC)
	ctx := context.Background()
	if _, err := client.RequestAirdrop(ctx, payer.PublicKey(), 10_000_000_000, rpc.CommitmentFinalized); err != nil {
		t.Fatal(err)
	}
	created := solana.NewWallet()
	bh, err := client.GetLatestBlockhash(ctx, rpc.CommitmentFinalized)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := solana.NewTransaction([]solana.Instruction{
		system.NewCreateAccountInstruction(10_000_000, 300, c.Program, payer.PublicKey(), created.PublicKey()).Build(),
	}, bh.Value.Blockhash, solana.TransactionPayer(payer.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Sign(func(k solana.PublicKey) *solana.PrivateKey {
		for _, w := range []*solana.Wallet{payer, created} {
			if w.PublicKey().Equals(k) {
				return &w.PrivateKey
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.SendTransactionWithOpts(ctx, tx, rpc.TransactionOpts{SkipPreflight: true}); err != nil {
		t.Fatalf("send a signed transaction to the SVM: %v", err)
	}
	info, err := client.GetAccountInfo(ctx, created.PublicKey())
	if err != nil || !info.Value.Owner.Equals(c.Program) || len(info.Value.Data.GetBinary()) != 300 {
		t.Fatalf("account created by the transaction: %v %+v", err, info)
	}
	// The same transaction again is refused by the SVM (already processed / account in use).
	if _, err := client.SendTransactionWithOpts(ctx, tx, rpc.TransactionOpts{SkipPreflight: true}); err == nil {
		t.Fatal("the SVM accepted the same transaction twice")
	}

}

// Faults: the RPC goes down for a while (the source reports errors, the
// watcher keeps the last good state, a change made meanwhile is read on
// recovery); the websocket drops (the source resubscribes, logs the
// reconnect, and a change made while it was disconnected is not missed);
// garbage over a good account keeps its last good version; the front
// restarts empty (nothing is dropped: its slots are older); a closed
// account disappears once a second reading at a later slot confirms it.
func TestSolanaSourceFaults(t *testing.T) {
	// The watcher applies the deployment's policy: the fixture's artifacts
	// are on models.example.
	watcherOptions := &jobs.Options{ArtifactHosts: []string{"models.example"}, CRLURL: "https://vault.example:8200/v1/pki_int/issuers"}
	f := solanatest.StartFront(t)
	c := solanatest.NewChain(t, f)
	keyA, keyB := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	f.SetAccount(t, keyA, c.Program, c.Auth("model-a", true, 0).Encode())
	f.SetAccount(t, keyB, c.Program, c.Auth("model-b", true, 0).Encode())
	var logs syncbuf.Buffer
	src := &Source{RPCURL: f.RPC, WSURL: f.WS, Program: c.Program, Resync: 2 * time.Second,
		Logger: hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})}
	col := runSource(t, src)
	w := scheduler.NewWatcher([]string{"solana"}, watcherOptions, nil)
	col.wait(t, 10*time.Second, "initial listing", func(s source.Snapshot) bool { return len(s.Models) == 2 })
	f.WaitSubscribed(t, 1)

	// RPC down for 5 s: a change made meanwhile shows up after recovery.
	// (5 s, not less: on a loaded machine a resync every 2 s may not fall
	// in a shorter outage.)
	f.Outage(t, 5*time.Second)
	f.SetAccount(t, keyB, c.Program, c.Auth("model-b", true, 4096).Encode())
	deadline := time.Now().Add(8 * time.Second)
	for {
		col.mu.Lock()
		fails := col.fails
		col.mu.Unlock()
		if fails > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the outage was never reported as a source error")
		}
		time.Sleep(50 * time.Millisecond)
	}
	w.Report("solana", col.last)
	w.Report("solana", source.Snapshot{Err: context.DeadlineExceeded})
	if d, ready := w.Desired(); len(d) != 2 || !ready {
		t.Fatalf("fail static: the desired state changed while the RPC was down: %d models", len(d))
	}
	col.wait(t, 20*time.Second, "the change made during the outage", func(s source.Snapshot) bool {
		b := modelByID(s, "model-b")
		return b != nil && b.MemoryMB == 4096
	})
	f.WaitSubscribed(t, 1)

	// Websocket dropped: the change made while disconnected is not missed,
	// and the reconnect is logged with its attempt and the error.
	reconnects := src.resubbed.Load()
	f.DropWebsockets(t)
	f.SetAccount(t, keyB, c.Program, c.Auth("model-b", true, 2048).Encode())
	col.wait(t, 10*time.Second, "the change made while the websocket was down", func(s source.Snapshot) bool {
		b := modelByID(s, "model-b")
		return b != nil && b.MemoryMB == 2048
	})
	f.WaitSubscribed(t, 1)
	if src.resubbed.Load() == reconnects {
		t.Fatal("no websocket reconnect counted")
	}
	if line := grepLine(logs.String(), "solana websocket reconnected"); !strings.Contains(line, "[INFO]") ||
		!strings.Contains(line, "attempt=1") || !strings.Contains(line, "error=\"websocket: close") {
		t.Fatalf("the reconnect is not logged at info with its attempt and error: %q\n%s", line, logs.String())
	}

	// Garbage written over a good account: its last good version stays,
	// and the account is reported undecodable.
	f.SetAccount(t, keyB, c.Program, append(onchain.ModelAuthorizationDiscriminator[:], make([]byte, 7)...))
	s := col.wait(t, 5*time.Second, "corrupt account reported", func(s source.Snapshot) bool { return len(s.Undecodable) == 1 })
	if b := modelByID(s, "model-b"); b == nil || !b.Running || b.MemoryMB != 2048 || !strings.Contains(s.Undecodable[0].Error(), keyB.String()) {
		t.Fatalf("after corrupting model-b: models %v undecodable %v", s.Models, s.Undecodable)
	}
	f.SetAccount(t, keyB, c.Program, c.Auth("model-b", true, 2048).Encode())
	col.wait(t, 5*time.Second, "model-b decodes again", func(s source.Snapshot) bool { return len(s.Undecodable) == 0 })

	// The front restarts empty: its listings are empty and its slots older
	// than those that authorized the models: not evidence, nothing goes.
	before := f.Slot(t)
	f.Reset(t)
	reads := src.reads.Load()
	deadline = time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) && f.Slot(t) < before { // the restarted front's slots stay older
		col.mu.Lock()
		s := col.last
		col.mu.Unlock()
		if len(s.Models) != 2 {
			t.Fatalf("the empty front dropped models: %+v", s)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if src.reads.Load() == reads {
		t.Fatal("the accounts missing from the empty listings were never read on their own")
	}
	if s := col.wait(t, time.Second, "kept", func(source.Snapshot) bool { return true }); len(s.Kept) != 2 {
		t.Fatalf("the kept models are not reported: %v", s.Kept)
	}

	// Back with the same accounts; then a closed account goes, once a
	// second reading at a later slot confirms it.
	c = solanatest.NewChainWith(t, f, c.Program, c.Crunch, c.Coord)
	f.SetAccount(t, keyA, c.Program, c.Auth("model-a", true, 0).Encode())
	f.SetAccount(t, keyB, c.Program, c.Auth("model-b", true, 2048).Encode())
	col.wait(t, 10*time.Second, "the accounts back", func(s source.Snapshot) bool { return len(s.Kept) == 0 && len(s.Models) == 2 })
	f.CloseAccount(t, keyA)
	col.wait(t, 10*time.Second, "closed account removed", func(s source.Snapshot) bool { return modelByID(s, "model-a") == nil })
	if !strings.Contains(logs.String(), "authorization stops its model (confirmed)") {
		t.Fatalf("the confirmed closing is not logged:\n%s", logs.String())
	}
}

// grepLine returns the last line of s that contains sub.
func grepLine(s, sub string) string {
	last := ""
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			last = l
		}
	}
	return last
}

// A notification older than the last full listing (it was queued while the
// listing ran) must not bring back what the listing saw.
func TestSolanaSourceIgnoresStaleNotifications(t *testing.T) {
	f := solanatest.StartFront(t)
	c := solanatest.NewChain(t, f)
	key := solana.NewWallet().PublicKey()
	old := c.Auth("model-a", true, 0).Encode()
	f.SetAccount(t, key, c.Program, old)
	f.CloseAccount(t, key)
	src := &Source{RPCURL: f.RPC, Program: c.Program}
	if err := src.resync(context.Background(), rpc.New(f.RPC)); err != nil {
		t.Fatal(err)
	}
	if len(src.snapshot().Models) != 0 {
		t.Fatal("closed account listed")
	}
	stale := &ws.ProgramResult{}
	stale.Context.Slot = src.listed - 1
	stale.Value.Pubkey = key
	stale.Value.Account = &rpc.Account{Owner: c.Program, Lamports: 1, Data: rpc.DataBytesOrJSONFromBytes(old)}
	src.notified(stale)
	if n := len(src.snapshot().Models); n != 0 {
		t.Fatalf("a notification older than the listing resurrected a closed account (%d models)", n)
	}
	fresh := *stale
	fresh.Context.Slot = src.listed + 1
	src.notified(&fresh)
	if n := len(src.snapshot().Models); n != 1 {
		t.Fatalf("a newer notification was ignored (%d models)", n)
	}
}
