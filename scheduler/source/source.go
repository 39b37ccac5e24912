// Package source defines what the scheduler's sources of desired state
// deliver: complete snapshots of the models they authorize. The sources
// themselves live in the packages below (solana, feed, yamlfile); the
// scheduler's Watcher merges their snapshots (fail static: a source that
// cannot be read keeps its last good snapshot).
package source

import (
	"context"
	"fmt"
	"sort"

	"github.com/modelnodes/modelnodes/jobs"
)

// Source produces the complete desired state of its models, again and
// again: each Snapshot replaces the previous one of the same source (level,
// not deltas). A source that cannot read its data reports Err and the
// watcher keeps its last good snapshot (fail static).
type Source interface {
	// Name identifies the source in logs, status and metrics.
	Name() string
	// Run reports snapshots until ctx ends. It returns only when ctx ends
	// or on a configuration error; transient failures are reported as
	// snapshots with Err and retried.
	Run(ctx context.Context, report func(Snapshot)) error
}

// Snapshot is one complete reading of a source.
type Snapshot struct {
	Models []jobs.Model
	// Skipped lists entries that could not be used (a corrupt account, an
	// invalid feed entry), each error naming the entry; the others count.
	Skipped []error
	// Undecodable lists entries whose newest reading could not be decoded
	// (an account overwritten with garbage). Undecodable is not revoked:
	// the entry's last good version, when there is one, stays in Models.
	Undecodable []error
	// Kept lists entries kept in Models from an earlier reading although
	// this one lacks them or says they stop, for want of positive evidence
	// (a closing or stop awaiting its confirmation at a later slot, a
	// crunch the feed listed empty), each error saying why.
	Kept []error
	// Duplicates lists the entries left out because an earlier one names
	// the same model (Dedupe).
	Duplicates []Duplicate
	// Origins says, by model key (jobs.Key), which entry authorized each
	// model and when: the scheduler writes it into the job's meta, so that
	// a later scheduler (restarted, or a new leader) that does not find the
	// entry can tell the source what to look for (Adopter). Optional.
	Origins map[string]Origin
	// Err means the source could not be read at all: the previous good
	// snapshot stays in force.
	Err error
}

// Origin is the entry that authorized a model, as a source can find it
// again: for the chain, the authorization's account address, the slot of
// the reading that put its version in force, and the chain's genesis hash.
type Origin struct {
	Entry string
	Slot  uint64
	Chain string
}

// Adopter is a source that can vouch for jobs it has no entry for: jobs an
// earlier scheduler wrote from its entries (their meta names the source
// and the Origin) that its own readings lack so far. Absence is not
// evidence: Adopt returns those it keeps running until it has positive
// evidence that their authorization ended (by job id, why), and reads
// their entries on its own. A job it does not return may be stopped.
type Adopter interface {
	Adopt(jobs []Adoptee) map[string]string
}

// Adoptee is a running job of the source that its snapshot lacks.
type Adoptee struct {
	JobID  string
	Origin Origin
}

// Duplicate is an entry that names the same model (the same crunch and
// model id, so the same key and job) as the entry used instead.
type Duplicate struct {
	// Model is the left-out entry's model.
	Model jobs.Model
	// Entry names the left-out entry, Used the entry used.
	Entry, Used string
}

func (d Duplicate) Error() string {
	return fmt.Sprintf("%s names model %q of crunch %q, as %s does: %s is used", d.Entry, d.Model.ModelID, d.Model.Crunch, d.Used, d.Used)
}

// Dedupe keeps one model per key (jobs.Key: the same crunch and model id)
// whatever names the entries claim: models[i] comes from the
// entry entries[i], and the order of the input decides, so a source passes
// its entries in a stable order (the chain by account address, a list in
// its own order). Of the entries naming one model, the first that wants it
// running is used, else the first; the others are returned as
// Duplicates, in input order. Models keeps the input order.
func Dedupe(models []jobs.Model, entries []string) ([]jobs.Model, []Duplicate) {
	chosen := map[string]int{} // key -> index in models
	for i := range models {
		id := jobs.Key(&models[i])
		j, seen := chosen[id]
		if !seen || (models[i].Running && !models[j].Running) {
			chosen[id] = i
		}
	}
	var out []jobs.Model
	var dups []Duplicate
	for i := range models {
		j := chosen[jobs.Key(&models[i])]
		if j == i {
			out = append(out, models[i])
			continue
		}
		dups = append(dups, Duplicate{Model: models[i], Entry: entries[i], Used: entries[j]})
	}
	return out, dups
}

// EntryError is a skipped entry: the entry named as an operator finds it
// (an account address, a feed entry's index, a YAML list item) and why.
// The entry's strings are the source's, so attacker-controlled: name them
// quoted (%q).
type EntryError struct {
	Entry string
	Err   error
}

func (e *EntryError) Error() string { return fmt.Sprintf("%s: %v", e.Entry, e.Err) }
func (e *EntryError) Unwrap() error { return e.Err }

// SortModels orders models by crunch and id, so snapshots of the same
// content compare equal. The sort is stable: models of the same crunch and
// id (which Dedupe leaves none of) keep their input order.
func SortModels(ms []jobs.Model) {
	sort.SliceStable(ms, func(i, j int) bool {
		if ms[i].Crunch != ms[j].Crunch {
			return ms[i].Crunch < ms[j].Crunch
		}
		return ms[i].ModelID < ms[j].ModelID
	})
}
