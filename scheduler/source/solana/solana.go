// Package solana is the scheduler's source for the chain: the program's
// Crunch, ModelAuthorization and CoordinatorCertificate accounts
// (docs/onchain.md, decoded by the onchain package below). Every account's
// content is whoever wrote it, so attacker-controlled: each authorization
// becomes a jobs.Model only through jobs.Model.Validate, and the
// scheduler's watcher applies the deployment's policy after that.
package solana

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	solana "github.com/gagliardetto/solana-go"
	"github.com/gagliardetto/solana-go/rpc"
	"github.com/gagliardetto/solana-go/rpc/ws"
	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/redact"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/scheduler/source"
	"github.com/modelnodes/modelnodes/scheduler/source/solana/onchain"
)

// Source reads the program's Crunch, ModelAuthorization and
// CoordinatorCertificate accounts (docs/onchain.md): a full listing with
// getProgramAccounts (one call per account type, and per crunch when
// Crunches is set, so no answer grows with the whole program), a
// programSubscribe websocket for low latency, and a full resync every
// Resync and after every reconnect (program subscriptions say nothing when
// an account is closed, and changes during a disconnect are not replayed).
type Source struct {
	RPCURL     string
	WSURL      string
	Program    solana.PublicKey
	Commitment rpc.CommitmentType // default finalized
	// Crunches, if set, limits authorizations to these Crunch accounts.
	Crunches []solana.PublicKey
	Resync   time.Duration // default 60 s
	Logger   hclog.Logger
	// Label names the source (default "solana").
	Label string

	mu       sync.Mutex
	crunches map[solana.PublicKey]*onchain.Crunch
	certs    map[solana.PublicKey]*onchain.CoordinatorCertificate
	auths    map[solana.PublicKey]*onchain.ModelAuthorization
	bad      map[solana.PublicKey]error
	resyncs  atomic.Int64 // full listings done (tests tell websocket updates from resyncs)
	listed   uint64       // the slot a full listing is at least as new as
}

// notified applies a websocket notification unless it is older than the
// last full listing (a notification queued while the listing ran would
// otherwise bring back an account the listing saw closed or changed).
func (s *Source) notified(u *ws.ProgramResult) {
	s.mu.Lock()
	stale := u.Context.Slot < s.listed
	s.mu.Unlock()
	if !stale {
		s.apply(u.Value.Pubkey, u.Value.Account)
	}
}

// Name implements source.Source.
func (s *Source) Name() string {
	if s.Label != "" {
		return s.Label
	}
	return "solana"
}

func (s *Source) log() hclog.Logger {
	if s.Logger == nil {
		return hclog.NewNullLogger()
	}
	return s.Logger
}

func (s *Source) commitment() rpc.CommitmentType {
	if s.Commitment == "" {
		return rpc.CommitmentFinalized
	}
	return s.Commitment
}

// Run implements source.Source.
func (s *Source) Run(ctx context.Context, report func(source.Snapshot)) error {
	if s.RPCURL == "" {
		return errors.New("solana: no RPC URL")
	}
	resync := s.Resync
	if resync <= 0 {
		resync = time.Minute
	}
	client := rpc.New(s.RPCURL)
	updates := make(chan *ws.ProgramResult, 256)
	resyncNow := make(chan struct{}, 1)
	if s.WSURL != "" {
		go s.subscribeLoop(ctx, updates, resyncNow)
	}
	ticker := time.NewTicker(resync)
	defer ticker.Stop()
	retry := time.Duration(0)
	for {
		if err := s.resync(ctx, client); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			report(source.Snapshot{Err: redact.Error(err)})
			retry = min(max(retry*2, 500*time.Millisecond), 30*time.Second)
		} else {
			report(s.snapshot())
			retry = 0
		}
		var retryC <-chan time.Time
		if retry > 0 {
			retryC = time.After(retry)
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-ticker.C:
				break wait
			case <-retryC:
				break wait
			case <-resyncNow:
				break wait
			case u := <-updates:
				s.notified(u)
				// Drain what else arrived with it (one slot often changes several accounts).
				for more := true; more; {
					select {
					case u := <-updates:
						s.notified(u)
					default:
						more = false
					}
				}
				if retry == 0 {
					report(s.snapshot())
				}
			}
		}
	}
}

// subscribeLoop keeps one program subscription open, reconnecting with
// backoff, and asks for a resync after each (re)connect.
func (s *Source) subscribeLoop(ctx context.Context, updates chan<- *ws.ProgramResult, resyncNow chan<- struct{}) {
	delay := 250 * time.Millisecond
	for ctx.Err() == nil {
		err := s.subscribeOnce(ctx, updates, resyncNow)
		if ctx.Err() != nil {
			return
		}
		s.log().Warn("solana websocket lost; reconnecting", "error", redact.Error(err), "in", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, 15*time.Second)
	}
}

func (s *Source) subscribeOnce(ctx context.Context, updates chan<- *ws.ProgramResult, resyncNow chan<- struct{}) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := ws.Connect(cctx, s.WSURL)
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close()
	sub, err := conn.ProgramSubscribeWithOpts(s.Program, s.commitment(), solana.EncodingBase64, nil)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	// A subscribe call returns before the server registered it: resync now
	// and once more shortly after, so no change falls in between.
	kick := func() {
		select {
		case resyncNow <- struct{}{}:
		default:
		}
	}
	kick()
	go func() {
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
			kick()
		}
	}()
	for {
		res, err := sub.Recv(ctx)
		if err != nil {
			return err
		}
		select {
		case updates <- res:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// resync lists every account the source reads and replaces its state.
func (s *Source) resync(ctx context.Context, client *rpc.Client) error {
	list := func(filters ...rpc.RPCFilter) (rpc.GetProgramAccountsResult, error) {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return client.GetProgramAccountsWithOpts(cctx, s.Program, &rpc.GetProgramAccountsOpts{
			Commitment: s.commitment(), Encoding: solana.EncodingBase64, Filters: filters,
		})
	}
	disc := func(d [8]byte) rpc.RPCFilter {
		return rpc.RPCFilter{Memcmp: &rpc.RPCFilterMemcmp{Offset: 0, Bytes: d[:]}}
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	slot, err := client.GetSlot(sctx, s.commitment())
	cancel()
	if err != nil {
		return fmt.Errorf("solana: get slot: %w", err)
	}
	crunches, err := list(disc(onchain.CrunchDiscriminator))
	if err != nil {
		return fmt.Errorf("solana: list crunches: %w", err)
	}
	certs, err := list(disc(onchain.CoordinatorCertificateDiscriminator), rpc.RPCFilter{DataSize: onchain.CoordinatorCertificateSize})
	if err != nil {
		return fmt.Errorf("solana: list coordinator certificates: %w", err)
	}
	var auths rpc.GetProgramAccountsResult
	if len(s.Crunches) == 0 {
		if auths, err = list(disc(onchain.ModelAuthorizationDiscriminator)); err != nil {
			return fmt.Errorf("solana: list model authorizations: %w", err)
		}
	} else {
		for _, c := range s.Crunches {
			page, err := list(disc(onchain.ModelAuthorizationDiscriminator),
				rpc.RPCFilter{Memcmp: &rpc.RPCFilterMemcmp{Offset: 8, Bytes: c[:]}})
			if err != nil {
				return fmt.Errorf("solana: list model authorizations of crunch %s: %w", c, err)
			}
			auths = append(auths, page...)
		}
	}
	s.resyncs.Add(1)
	s.mu.Lock()
	s.crunches = map[solana.PublicKey]*onchain.Crunch{}
	s.certs = map[solana.PublicKey]*onchain.CoordinatorCertificate{}
	s.auths = map[solana.PublicKey]*onchain.ModelAuthorization{}
	s.bad = map[solana.PublicKey]error{}
	s.listed = slot
	s.mu.Unlock()
	for _, group := range []rpc.GetProgramAccountsResult{crunches, certs, auths} {
		for _, ka := range group {
			s.apply(ka.Pubkey, ka.Account)
		}
	}
	return nil
}

// apply updates the state with one account as the chain now has it.
func (s *Source) apply(key solana.PublicKey, acct *rpc.Account) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.auths == nil {
		return // no full listing yet; the first resync reads it
	}
	delete(s.crunches, key)
	delete(s.certs, key)
	delete(s.auths, key)
	delete(s.bad, key)
	if acct == nil || acct.Lamports == 0 || !acct.Owner.Equals(s.Program) || acct.Data == nil {
		return // closed, or no longer ours
	}
	data := acct.Data.GetBinary()
	if len(data) < 8 {
		s.bad[key] = fmt.Errorf("%d bytes: %w", len(data), onchain.ErrShort)
		return
	}
	var d [8]byte
	copy(d[:], data)
	var err error
	switch d {
	case onchain.CrunchDiscriminator:
		var c *onchain.Crunch
		if c, err = onchain.DecodeCrunch(data); err == nil {
			s.crunches[key] = c
		}
	case onchain.CoordinatorCertificateDiscriminator:
		var c *onchain.CoordinatorCertificate
		if c, err = onchain.DecodeCoordinatorCertificate(data); err == nil {
			s.certs[key] = c
		}
	case onchain.ModelAuthorizationDiscriminator:
		var a *onchain.ModelAuthorization
		if a, err = onchain.DecodeModelAuthorization(data); err == nil {
			if len(s.Crunches) > 0 && !containsKey(s.Crunches, solana.PublicKeyFromBytes(a.Crunch[:])) {
				return
			}
			s.auths[key] = a
		}
	default:
		return // another account type of the program
	}
	if err != nil {
		s.bad[key] = err
	}
}

func containsKey(keys []solana.PublicKey, k solana.PublicKey) bool {
	for _, x := range keys {
		if x.Equals(k) {
			return true
		}
	}
	return false
}

// snapshot joins authorizations with their crunch (and the coordinator's
// certificate account, which wins over the hashes in the crunch).
func (s *Source) snapshot() source.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	var snap source.Snapshot
	certOf := map[solana.PublicKey]*onchain.CoordinatorCertificate{}
	for _, c := range s.certs {
		certOf[solana.PublicKeyFromBytes(c.Coordinator[:])] = c
	}
	for key, err := range s.bad {
		snap.Skipped = append(snap.Skipped, &source.EntryError{Entry: "account " + key.String(), Err: err})
	}
	for key, a := range s.auths {
		crunchKey := solana.PublicKeyFromBytes(a.Crunch[:])
		c := s.crunches[crunchKey]
		if c == nil {
			snap.Skipped = append(snap.Skipped, &source.EntryError{Entry: "account " + key.String(),
				Err: fmt.Errorf("its crunch %s is not a Crunch account of the program", crunchKey)})
			continue
		}
		m := jobs.Model{
			Crunch: c.Name, CrunchID: crunchKey.String(), ModelID: a.ModelID,
			Cruncher: solana.PublicKeyFromBytes(a.Cruncher[:]).String(), Hotkey: solana.PublicKeyFromBytes(a.Hotkey[:]).String(),
			SubmissionID: a.SubmissionID, ArtifactURL: a.ArtifactURI, ArtifactSHA256: onchain.HashHex(a.ArtifactSHA256),
			ResourcesURL: a.ResourcesURI, ResourcesSHA256: onchain.HashHex(a.ResourcesSHA256),
			Entry: a.Entry, Hardware: jobs.CPU, CPU: int(a.CPUMHz), MemoryMB: int(a.MemoryMB), GPUs: int(a.GPUs),
			Coordinator: solana.PublicKeyFromBytes(c.Coordinator[:]).String(),
			CertHash:    onchain.HashHex(c.CertHash), CertHashSecondary: onchain.HashHex(c.CertHashSecondary),
			Running: a.DesiredState == onchain.DesiredRunning,
		}
		if a.Runtime == onchain.RuntimeExecutable {
			m.Runtime = "executable"
		}
		if a.Hardware == onchain.HardwareGPU {
			m.Hardware = jobs.GPU
		}
		// The certificate account holds the coordinator's current keys
		// and replaces the crunch's as a whole (its empty secondary means
		// none), but only when it names a key: an all-zero certificate
		// (just created, or zeroed) never overrides nor blanks the
		// crunch's hashes.
		if cert := certOf[solana.PublicKeyFromBytes(c.Coordinator[:])]; cert != nil && !cert.Empty() {
			m.CertHash, m.CertHashSecondary = onchain.HashHex(cert.CertHash), onchain.HashHex(cert.CertHashSecondary)
		}
		if err := m.Validate(); err != nil {
			snap.Skipped = append(snap.Skipped, &source.EntryError{Entry: "account " + key.String(), Err: err})
			continue
		}
		snap.Models = append(snap.Models, m)
	}
	source.SortModels(snap.Models)
	sort.Slice(snap.Skipped, func(i, j int) bool { return snap.Skipped[i].Error() < snap.Skipped[j].Error() })
	return snap
}
