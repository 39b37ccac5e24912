package solana

import (
	"fmt"
	"maps"
	"slices"

	solana "github.com/gagliardetto/solana-go"

	"github.com/modelnodes/modelnodes/scheduler/source"
	"github.com/modelnodes/modelnodes/scheduler/source/solana/onchain"
)

// adoption is a running job an earlier scheduler wrote from an
// authorization that this source has not read (its listings lack it): a
// restarted scheduler, or a new leader, facing a chain that lost the
// account or never had it. The account is read on its own; until a
// reading proves the authorization ended, the job stays as it is.
type adoption struct {
	job    string
	origin source.Origin
	// stop is the slot of a first reading that found the account closed
	// (0: none yet); a second one at a later slot confirms it.
	stop uint64
	// why is the newest reading's verdict, as the status API shows it.
	why string
	// gone: confirmed closed; the job may be stopped.
	gone bool
}

// Adopt implements source.Adopter: of the running jobs whose meta names an
// authorization account this source does not hold, it keeps those it has
// no evidence against, and reads their accounts on its own. The evidence is
// the same as for an authorization the source holds (docs/scheduler.md):
// the account read closed twice, at slots later than the one in the job's
// meta, on the chain the job's meta names; a reading from another chain
// (another genesis hash: a local chain restarted empty, a misconfigured
// RPC URL) is never evidence.
func (s *Source) Adopt(jobs []source.Adoptee) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	log := s.log()
	keep := map[string]string{}
	asked := map[solana.PublicKey]bool{}
	wake := false
	for _, j := range jobs {
		key, err := solana.PublicKeyFromBase58(j.Origin.Entry)
		if err != nil {
			continue // not an account: nothing to read, nothing to vouch for
		}
		asked[key] = true
		if s.ended[key] {
			continue // this source read its end itself
		}
		if a := s.accts[key]; a != nil && a.auth != nil {
			delete(s.adopted, key) // held: its own readings decide
			crunch := solana.PublicKeyFromBytes(a.auth.Crunch[:])
			if ca := s.accts[crunch]; a.auth.DesiredState == onchain.DesiredRunning && (ca == nil || ca.crunch == nil) {
				// Alive, but its model cannot be built without its crunch.
				keep[j.JobID] = fmt.Sprintf("account %s: authorizes job %s, but its crunch %s is not read", key, j.JobID, crunch)
			}
			continue
		}
		if s.adopted == nil {
			s.adopted = map[solana.PublicKey]*adoption{}
		}
		ad := s.adopted[key]
		if ad == nil || ad.job != j.JobID || ad.origin != j.Origin {
			ad = &adoption{job: j.JobID, origin: j.Origin,
				why: fmt.Sprintf("job %s was authorized by this account at slot %d; it is not in this source's readings, and is read on its own", j.JobID, j.Origin.Slot)}
			s.adopted[key] = ad
			if s.check != nil {
				s.check[key] = true
				wake = true
			}
			log.Info("reading the authorization of a running job on its own (its account is not in the listing)",
				"job", j.JobID, "account", key, "authorized_slot", j.Origin.Slot)
		}
		if !ad.gone {
			keep[j.JobID] = fmt.Sprintf("account %s: %s", key, ad.why)
		}
	}
	for key := range s.adopted {
		if !asked[key] {
			delete(s.adopted, key) // its job stopped, or its model is back
		}
	}
	for key := range s.ended {
		if !asked[key] {
			delete(s.ended, key) // its job stopped
		}
	}
	if wake {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	return keep
}

// adoptedEvidence applies to an adopted account a reading at slot that
// says the authorization ended (what); s.mu held.
func (s *Source) adoptedEvidence(key solana.PublicKey, ad *adoption, slot uint64, what string) {
	log := s.log()
	switch {
	case ad.gone:
		return
	case ad.origin.Chain != "" && s.genesis != "" && ad.origin.Chain != s.genesis:
		ad.stop = 0
		ad.why = fmt.Sprintf("a reading says %s, but on another chain (genesis %s; job %s was authorized on %s): not evidence",
			what, s.genesis, ad.job, ad.origin.Chain)
		return
	case slot <= ad.origin.Slot:
		ad.stop = 0
		ad.why = fmt.Sprintf("a reading at slot %d says %s, but job %s was authorized at slot %d: not evidence", slot, what, ad.job, ad.origin.Slot)
		return
	case ad.stop == 0 || slot <= ad.stop:
		if ad.stop == 0 {
			log.Info("a running job's authorization reads ended; confirming at a later slot", "job", ad.job, "account", key, "says", what, "slot", slot)
			ad.stop = slot
		}
		ad.why = fmt.Sprintf("a reading at slot %d says %s: job %s stays as it is until a reading at a later slot confirms it", ad.stop, what, ad.job)
		s.check[key] = true
		return
	}
	log.Info("a running job's authorization ended (confirmed)", "job", ad.job, "account", key, "says", what, "slots", fmt.Sprintf("%d,%d", ad.stop, slot))
	ad.gone = true
	ad.why = fmt.Sprintf("%s (read at slots %d and %d)", what, ad.stop, slot)
	delete(s.check, key)
}

// adoptedKept lists the adoptions still kept, for the snapshot; s.mu held.
func (s *Source) adoptedKept() []error {
	var out []error
	for _, key := range slices.SortedFunc(maps.Keys(s.adopted), comparePublicKeys) {
		if ad := s.adopted[key]; !ad.gone {
			out = append(out, &source.EntryError{Entry: "account " + key.String(), Err: fmt.Errorf("%s", ad.why)})
		}
	}
	return out
}
