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
	// Err means the source could not be read at all: the previous good
	// snapshot stays in force.
	Err error
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
// content compare equal.
func SortModels(ms []jobs.Model) {
	sort.Slice(ms, func(i, j int) bool {
		if ms[i].Crunch != ms[j].Crunch {
			return ms[i].Crunch < ms[j].Crunch
		}
		return ms[i].ModelID < ms[j].ModelID
	})
}
