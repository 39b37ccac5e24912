// Package solana is the scheduler's source for the chain: the program's
// Crunch, ModelAuthorization and CoordinatorCertificate accounts
// (docs/onchain.md, decoded by the onchain package below). Every account's
// content is whoever wrote it, so attacker-controlled: each authorization
// becomes a jobs.Model only through jobs.Model.Validate, and the
// scheduler's watcher applies the deployment's policy after that.
//
// The source fails static (docs/scheduler.md, "Fail static"): a model
// leaves the snapshot, or turns STOPPED, only on positive evidence about
// its own authorization (its account closed, or its desired state no
// longer RUNNING) read twice, the second time at a later slot than the
// first, and the first at a later slot than the reading that authorized it.
// An authorization missing from a listing is read on its own
// (getMultipleAccounts) rather than dropped; an undecodable account keeps
// its last good version; crunches and coordinator certificates keep their
// last good version.
package solana

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
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
// Authorizations a listing lacks, and those whose newest reading would
// stop their model, are read again on their own (getMultipleAccounts with
// its context slot) before anything changes.
type Source struct {
	RPCURL     string
	WSURL      string
	Program    solana.PublicKey
	Commitment rpc.CommitmentType // default finalized
	// Crunches, if set, limits authorizations to these Crunch accounts.
	Crunches []solana.PublicKey
	Resync   time.Duration // default 60 s
	// ConfirmAfter is how long after a reading that would stop a model its
	// account is read again (default 500 ms: a slot lasts about 400 ms);
	// the wait doubles, up to Resync, while the chain's slot does not
	// advance.
	ConfirmAfter time.Duration
	Logger       hclog.Logger
	// Label names the source (default "solana").
	Label string

	mu       sync.Mutex
	accts    map[solana.PublicKey]*account // nil until the first full listing
	check    map[solana.PublicKey]bool     // authorizations to read on their own
	resyncs  atomic.Int64                  // full listings done (tests tell websocket updates from resyncs)
	reads    atomic.Int64                  // getMultipleAccounts calls done
	listed   uint64                        // the slot a full listing is at least as new as
	resubbed atomic.Int64                  // websocket reconnects (tests)
	// genesis is the chain's genesis hash, read with every full listing:
	// readings from another chain are no evidence about an authorization
	// read on this one (adoptions).
	genesis string
	adopted map[solana.PublicKey]*adoption // running jobs whose account no listing had (Adopt)
	// ended are the authorizations whose end this source confirmed itself
	// (closed, or another crunch's now): Adopt never vouches for their jobs.
	ended map[solana.PublicKey]bool
	wake  chan struct{} // Adopt queued reads
}

// kind is an account type of the program.
type kind uint8

const (
	kindOther kind = iota // another account type of the program: ignored
	kindCrunch
	kindCert
	kindAuth
)

func (k kind) String() string {
	return [...]string{"other", "Crunch", "CoordinatorCertificate", "ModelAuthorization"}[k]
}

// account is what the source holds of one account of the program: the
// version in force (its last good decoding) and what the newest readings
// said about it.
type account struct {
	kind   kind
	crunch *onchain.Crunch
	cert   *onchain.CoordinatorCertificate
	auth   *onchain.ModelAuthorization
	// slot is the slot of the newest reading that confirmed the version in
	// force: evidence against it must be newer.
	slot uint64
	// bad is why the newest reading did not decode (the version in force,
	// if any, stays); badSlot is that reading's slot.
	bad     error
	badSlot uint64
	// stop is a reading that would stop the authorization's model, waiting
	// for its confirmation at a later slot.
	stop *stopEvidence
	// stale is the newest reading that would have stopped the model but is
	// not newer than the version in force (a lagging node, or a chain that
	// restarted empty): not evidence, only reported.
	stale string
}

// good reports whether a version of the account is in force.
func (a *account) good() bool { return a.crunch != nil || a.cert != nil || a.auth != nil }

// stopEvidence is one reading that would stop an authorization's model.
type stopEvidence struct {
	slot uint64
	// next is the version to put in force once confirmed (desired state
	// STOPPED); nil: the account is closed.
	next *onchain.ModelAuthorization
	what string
}

// notified applies a websocket notification unless it is older than the
// last full listing (a notification queued while the listing ran would
// otherwise bring back an account the listing saw closed or changed).
func (s *Source) notified(u *ws.ProgramResult) {
	s.mu.Lock()
	stale := u.Context.Slot < s.listed
	s.mu.Unlock()
	if !stale {
		s.apply(u.Value.Pubkey, u.Value.Account, u.Context.Slot)
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
	confirmAfter := s.ConfirmAfter
	if confirmAfter <= 0 {
		confirmAfter = 500 * time.Millisecond
	}
	client := rpc.New(s.RPCURL)
	s.mu.Lock()
	if s.wake == nil {
		s.wake = make(chan struct{}, 1)
	}
	wake := s.wake
	s.mu.Unlock()
	updates := make(chan *ws.ProgramResult, 256)
	resyncNow := make(chan struct{}, 1)
	if s.WSURL != "" {
		go s.subscribeLoop(ctx, updates, resyncNow)
	}
	ticker := time.NewTicker(resync)
	defer ticker.Stop()
	retry := time.Duration(0)
	// The reads of single accounts: armed while some wait, backing off
	// while the chain's slot does not advance or the reads fail.
	var checkT *time.Timer
	var checkC <-chan time.Time
	checkDelay := confirmAfter
	armCheck := func() {
		if checkC == nil && s.checking() {
			checkT = time.NewTimer(checkDelay)
			checkC = checkT.C
		}
	}
	defer func() {
		if checkT != nil {
			checkT.Stop()
		}
	}()
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
			armCheck()
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
			case <-wake:
				armCheck()
			case <-checkC:
				checkC = nil
				pending, err := s.readChecks(ctx, client)
				switch {
				case ctx.Err() != nil:
					return nil
				case err != nil:
					s.log().Warn("solana: cannot read single accounts; retrying", "error", redact.Error(err), "in", checkDelay)
					checkDelay = min(checkDelay*2, resync)
				case pending:
					checkDelay = min(checkDelay*2, resync)
				default:
					checkDelay = confirmAfter
				}
				if retry == 0 {
					report(s.snapshot())
				}
				armCheck()
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
					armCheck()
				}
			}
		}
	}
}

// subscribeLoop keeps one program subscription open, reconnecting with
// backoff, and asks for a resync after each (re)connect.
func (s *Source) subscribeLoop(ctx context.Context, updates chan<- *ws.ProgramResult, resyncNow chan<- struct{}) {
	delay := 250 * time.Millisecond
	attempt := 0
	var lost error
	for ctx.Err() == nil {
		err := s.subscribeOnce(ctx, updates, resyncNow, func() {
			if attempt > 0 {
				s.resubbed.Add(1)
				s.log().Info("solana websocket reconnected", "attempt", attempt, "error", redact.Error(lost))
			}
			attempt, delay = 0, 250*time.Millisecond
		})
		if ctx.Err() != nil {
			return
		}
		if attempt++; attempt == 1 {
			lost = err // what broke the connection, rather than a failed redial
		}
		s.log().Warn("solana websocket lost; reconnecting", "attempt", attempt, "error", redact.Error(err), "in", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, 15*time.Second)
	}
}

// subscribeOnce connects and subscribes (then calls subscribed), and
// passes notifications on until the connection fails.
func (s *Source) subscribeOnce(ctx context.Context, updates chan<- *ws.ProgramResult, resyncNow chan<- struct{}, subscribed func()) error {
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
	subscribed()
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

// resync lists every account the source reads. Listed accounts are applied
// as read; an authorization the listing lacks is not dropped but queued for
// a read of its own (absence from a listing is not evidence: a node that
// restarted empty, or that lost the crunch, lists nothing).
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
	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	genesis, err := client.GetGenesisHash(gctx)
	cancel()
	if err != nil {
		return fmt.Errorf("solana: get genesis hash: %w", err)
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
	if s.accts == nil {
		s.accts, s.check = map[solana.PublicKey]*account{}, map[solana.PublicKey]bool{}
	}
	s.listed = slot
	if g := genesis.String(); g != s.genesis {
		if s.genesis != "" {
			s.log().Warn("the chain's genesis hash changed: this RPC endpoint serves another chain now", "was", s.genesis, "now", g)
		}
		s.genesis = g
	}
	s.mu.Unlock()
	listed := map[solana.PublicKey]bool{}
	for _, group := range []rpc.GetProgramAccountsResult{crunches, certs, auths} {
		for _, ka := range group {
			listed[ka.Pubkey] = true
			s.apply(ka.Pubkey, ka.Account, slot)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for key, a := range s.accts {
		switch {
		case listed[key]:
		case !a.good():
			delete(s.accts, key) // never decoded, and gone: nothing to keep
			delete(s.check, key)
		case a.kind == kindAuth:
			s.check[key] = true
		}
		// A crunch or certificate the listing lacks keeps its last good
		// version: its authorizations are the authority on its models.
	}
	for key, ad := range s.adopted {
		if !ad.gone && !listed[key] {
			s.check[key] = true
		}
	}
	return nil
}

// checking reports whether accounts wait for a read of their own.
func (s *Source) checking() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.check) > 0
}

// readChecks reads the queued authorizations on their own, 100 per
// getMultipleAccounts call, and applies each at the answer's context slot.
// pending says some still wait for a reading at a later slot.
func (s *Source) readChecks(ctx context.Context, client *rpc.Client) (pending bool, err error) {
	s.mu.Lock()
	keys := slices.SortedFunc(maps.Keys(s.check), comparePublicKeys)
	s.mu.Unlock()
	for batch := range slices.Chunk(keys, 100) {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res, err := client.GetMultipleAccountsWithOpts(cctx, batch, &rpc.GetMultipleAccountsOpts{
			Commitment: s.commitment(), Encoding: solana.EncodingBase64,
		})
		cancel()
		if err != nil {
			return true, fmt.Errorf("solana: get multiple accounts: %w", err)
		}
		s.reads.Add(1)
		if len(res.Value) != len(batch) {
			return true, fmt.Errorf("solana: get multiple accounts: %d answers for %d accounts", len(res.Value), len(batch))
		}
		for i, key := range batch {
			s.mu.Lock()
			delete(s.check, key) // apply queues it again while it waits
			s.mu.Unlock()
			s.apply(key, res.Value[i], res.Context.Slot)
		}
	}
	return s.checking(), nil
}

func comparePublicKeys(a, b solana.PublicKey) int { return bytes.Compare(a[:], b[:]) }

// decode decodes an account of the program by its discriminator; kindOther
// (and no error) for another account type.
func decode(data []byte) (kind, any, error) {
	if len(data) < 8 {
		return kindOther, nil, fmt.Errorf("%d bytes: %w", len(data), onchain.ErrShort)
	}
	switch [8]byte(data[:8]) {
	case onchain.CrunchDiscriminator:
		c, err := onchain.DecodeCrunch(data)
		return kindCrunch, c, err
	case onchain.CoordinatorCertificateDiscriminator:
		c, err := onchain.DecodeCoordinatorCertificate(data)
		return kindCert, c, err
	case onchain.ModelAuthorizationDiscriminator:
		a, err := onchain.DecodeModelAuthorization(data)
		return kindAuth, a, err
	}
	return kindOther, nil, nil
}

// apply updates the state with one reading of an account at slot: acct is
// the account as read (nil: it does not exist).
func (s *Source) apply(key solana.PublicKey, acct *rpc.Account, slot uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.accts == nil {
		return // no full listing yet; the first resync reads it
	}
	a := s.accts[key]
	if acct == nil || acct.Lamports == 0 || !acct.Owner.Equals(s.Program) || acct.Data == nil {
		s.closed(key, a, slot) // closed, or no longer ours
		return
	}
	data := acct.Data.GetBinary()
	k, v, err := decode(data)
	if err == nil && a != nil && a.good() && k != a.kind {
		err = fmt.Errorf("%w: no longer a %s account (discriminator %x)", onchain.ErrInvalid, a.kind, data[:8])
	}
	if err != nil {
		if a == nil {
			a = &account{kind: k}
			s.accts[key] = a
		}
		a.bad, a.badSlot = err, slot
		return
	}
	if k == kindOther {
		if a != nil {
			delete(s.accts, key) // an undecodable account that never decoded, now another type
		}
		return
	}
	if k == kindAuth && len(s.Crunches) > 0 {
		if crunch := v.(*onchain.ModelAuthorization).Crunch; !slices.ContainsFunc(s.Crunches, func(c solana.PublicKey) bool { return c == solana.PublicKey(crunch) }) {
			if a != nil && a.auth != nil {
				s.evidence(key, a, slot, nil, "it authorizes another crunch now")
			} else if ad := s.adopted[key]; ad != nil {
				s.adoptedEvidence(key, ad, slot, "it authorizes another crunch now")
			}
			return
		}
	}
	if ad := s.adopted[key]; ad != nil && k == kindAuth && (a == nil || !a.good()) {
		if v.(*onchain.ModelAuthorization).DesiredState != onchain.DesiredRunning {
			s.adoptedEvidence(key, ad, slot, "its desired state is STOPPED")
			return
		}
		delete(s.adopted, key) // read alive: held from now on
	}
	if a == nil || !a.good() {
		a = &account{kind: k}
		s.accts[key] = a
		delete(s.ended, key) // alive again
	}
	a.bad = nil
	switch k {
	case kindCrunch:
		a.crunch, a.slot = v.(*onchain.Crunch), slot
	case kindCert:
		a.cert, a.slot = v.(*onchain.CoordinatorCertificate), slot
	case kindAuth:
		next := v.(*onchain.ModelAuthorization)
		if a.auth != nil && a.auth.DesiredState == onchain.DesiredRunning && next.DesiredState != onchain.DesiredRunning {
			s.evidence(key, a, slot, next, "its desired state is STOPPED")
			return
		}
		a.auth, a.slot, a.stop, a.stale = next, slot, nil, ""
		delete(s.check, key)
	}
}

// closed applies a reading that shows the account closed (or no longer
// owned by the program); s.mu held.
func (s *Source) closed(key solana.PublicKey, a *account, slot uint64) {
	switch {
	case a == nil || !a.good():
		if a != nil {
			delete(s.accts, key)
			delete(s.check, key)
		}
		if ad := s.adopted[key]; ad != nil {
			s.adoptedEvidence(key, ad, slot, "its account is closed")
		}
	case a.kind == kindAuth:
		s.evidence(key, a, slot, nil, "its account is closed")
	}
	// A closed crunch or certificate keeps its last good version: only an
	// authorization's own account can stop its model.
}

// evidence records a reading at slot that would stop an authorization's
// model (next: its STOPPED version; nil: closed). The first such reading
// newer than the version in force waits; a second one at a later slot puts
// it into effect. s.mu held.
func (s *Source) evidence(key solana.PublicKey, a *account, slot uint64, next *onchain.ModelAuthorization, what string) {
	log := s.log()
	if slot <= a.slot {
		// Not newer than what authorized the model: a lagging node, or a
		// chain that restarted empty. Not evidence.
		note := fmt.Sprintf("a reading at slot %d says %s, but the version in force was read at slot %d: not evidence", slot, what, a.slot)
		if a.stale == "" {
			log.Warn("ignoring a reading older than the authorization in force", "account", key, "says", what, "slot", slot, "in_force_slot", a.slot)
		}
		a.stale = note
		delete(s.check, key)
		return
	}
	a.stale = ""
	if a.stop == nil || slot <= a.stop.slot {
		if a.stop == nil {
			log.Info("authorization would stop its model; confirming at a later slot", "account", key, "says", what, "slot", slot)
			a.stop = &stopEvidence{slot: slot}
		}
		a.stop.next, a.stop.what = next, what
		s.check[key] = true
		return
	}
	log.Info("authorization stops its model (confirmed)", "account", key, "says", what, "slots", fmt.Sprintf("%d,%d", a.stop.slot, slot))
	delete(s.check, key)
	if next == nil {
		delete(s.accts, key)
		if s.ended == nil {
			s.ended = map[solana.PublicKey]bool{}
		}
		s.ended[key] = true
		return
	}
	a.auth, a.slot, a.stop = next, slot, nil
}

// snapshot joins authorizations with their crunch (and the coordinator's
// certificate account, which wins over the hashes in the crunch), in the
// order of their account addresses, so that duplicates resolve the same
// way every time (source.Dedupe: the lowest address that wants the model
// running).
func (s *Source) snapshot() source.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	var snap source.Snapshot
	keys := slices.SortedFunc(maps.Keys(s.accts), comparePublicKeys)
	certOf := map[solana.PublicKey]*onchain.CoordinatorCertificate{}
	for _, key := range keys {
		if c := s.accts[key].cert; c != nil {
			coord := solana.PublicKeyFromBytes(c.Coordinator[:])
			if _, dup := certOf[coord]; !dup { // the lowest address wins
				certOf[coord] = c
			}
		}
	}
	var models []jobs.Model
	var entries []string
	var origins []source.Origin // of models[i]
	for _, key := range keys {
		a := s.accts[key]
		entry := "account " + key.String()
		if a.bad != nil {
			if a.good() {
				snap.Undecodable = append(snap.Undecodable, &source.EntryError{Entry: entry,
					Err: fmt.Errorf("%w (at slot %d; keeping its %s read at slot %d)", a.bad, a.badSlot, a.kind, a.slot)})
			} else {
				snap.Undecodable = append(snap.Undecodable, &source.EntryError{Entry: entry, Err: fmt.Errorf("%w (at slot %d; no earlier version)", a.bad, a.badSlot)})
				snap.Skipped = append(snap.Skipped, &source.EntryError{Entry: entry, Err: a.bad})
			}
		}
		if a.auth == nil {
			continue
		}
		switch {
		case a.stop != nil:
			snap.Kept = append(snap.Kept, &source.EntryError{Entry: entry, Err: fmt.Errorf(
				"a reading at slot %d says %s: its model stays as it is until a reading at a later slot confirms it", a.stop.slot, a.stop.what)})
		case a.stale != "":
			snap.Kept = append(snap.Kept, &source.EntryError{Entry: entry, Err: errors.New(a.stale)})
		}
		crunchKey := solana.PublicKeyFromBytes(a.auth.Crunch[:])
		ca := s.accts[crunchKey]
		if ca == nil || ca.crunch == nil {
			snap.Skipped = append(snap.Skipped, &source.EntryError{Entry: entry,
				Err: fmt.Errorf("its crunch %s is not a Crunch account of the program", crunchKey)})
			continue
		}
		m := model(a.auth, crunchKey, ca.crunch, certOf)
		if err := m.Validate(); err != nil {
			snap.Skipped = append(snap.Skipped, &source.EntryError{Entry: entry, Err: err})
			continue
		}
		models = append(models, m)
		entries = append(entries, entry)
		origins = append(origins, source.Origin{Entry: key.String(), Slot: a.slot, Chain: s.genesis})
	}
	snap.Models, snap.Duplicates = source.Dedupe(models, entries)
	snap.Origins = map[string]source.Origin{}
	leftOut := map[string]bool{}
	for _, d := range snap.Duplicates {
		leftOut[d.Entry] = true
	}
	for i := range models {
		if !leftOut[entries[i]] {
			snap.Origins[jobs.Key(&models[i])] = origins[i]
		}
	}
	snap.Kept = append(snap.Kept, s.adoptedKept()...)
	source.SortModels(snap.Models)
	sort.Slice(snap.Skipped, func(i, j int) bool { return snap.Skipped[i].Error() < snap.Skipped[j].Error() })
	return snap
}

// model is the model an authorization asks for in its crunch.
func model(a *onchain.ModelAuthorization, crunchKey solana.PublicKey, c *onchain.Crunch, certOf map[solana.PublicKey]*onchain.CoordinatorCertificate) jobs.Model {
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
	// The certificate account holds the coordinator's current keys and
	// replaces the crunch's as a whole (its empty secondary means none),
	// but only when it names a key: an all-zero certificate (just created,
	// or zeroed) never overrides nor blanks the crunch's hashes.
	if cert := certOf[solana.PublicKeyFromBytes(c.Coordinator[:])]; cert != nil && !cert.Empty() {
		m.CertHash, m.CertHashSecondary = onchain.HashHex(cert.CertHash), onchain.HashHex(cert.CertHashSecondary)
	}
	return m
}
