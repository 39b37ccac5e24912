package scheduler

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/scheduler/source"
)

// keysScheduler is a scheduler whose one source ("static") the test
// reports to by hand.
func keysScheduler(tb testing.TB) (*Scheduler, func(...jobs.Model)) {
	tb.Helper()
	s := &Scheduler{Sources: []source.Source{staticSource(nil)}, Reconciler: &Reconciler{Options: testOptions}}
	s.init()
	return s, func(ms ...jobs.Model) { s.Watcher().Report("static", source.Snapshot{Models: ms}) }
}

// keyedModel is a model of crunch whose authorization carries the given
// coordinator key hashes.
func keyedModel(crunch, id string, running bool, primary, secondary string) jobs.Model {
	m := testModel(crunch, id, running)
	m.CertHash, m.CertHashSecondary = primary, secondary
	return m
}

// The orchestrator WebSocket asks for a crunch's coordinator keys at every
// connection, and the answer follows the desired state: a key hash added
// on chain is admitted by the next connection, a removed one is not, and
// a crunch whose last model is revoked admits nobody. What a caller does
// with its answer changes nobody else's.
func TestCoordinatorKeysFollowTheDesiredState(t *testing.T) {
	s, report := keysScheduler(t)
	h1, h2, h3 := strings.Repeat("a1", 32), strings.Repeat("b2", 32), strings.Repeat("c3", 32)
	check := func(when, crunch string, want ...string) {
		t.Helper()
		if got := s.CoordinatorKeys(crunch); !slices.Equal(got, want) {
			t.Errorf("%s: keys of %s %v, want %v", when, crunch, got, want)
		}
	}
	if got := s.CoordinatorKeys("alpha"); len(got) != 0 {
		t.Fatalf("before any snapshot: keys %v", got)
	}
	// A stopped model's hashes count: its coordinator may still report.
	report(keyedModel("alpha", "a1", true, h2, ""), keyedModel("alpha", "a2", false, h2, h1), keyedModel("beta", "b1", true, h3, ""))
	check("first snapshot", "alpha", h1, h2)
	check("first snapshot", "beta", h3)
	check("first snapshot", "gamma")
	got := s.CoordinatorKeys("alpha")
	got[0] = h3
	check("after a caller changed its answer", "alpha", h1, h2)

	// alpha rotates (h1 dropped), beta adds a secondary key.
	report(keyedModel("alpha", "a1", true, h2, ""), keyedModel("alpha", "a2", false, h2, ""), keyedModel("beta", "b1", true, h3, h1))
	check("after a rotation", "alpha", h2)
	check("after a rotation", "beta", h1, h3)

	// beta's one model revoked.
	report(keyedModel("alpha", "a1", true, h2, ""))
	check("after beta's revocation", "beta")
	check("after beta's revocation", "alpha", h2)
}

// Connections ask while snapshots arrive: every answer is the keys of one
// snapshot or the other, never a mix, and the race detector sees no race.
func TestCoordinatorKeysUnderConcurrentChanges(t *testing.T) {
	s, report := keysScheduler(t)
	h1, h2 := strings.Repeat("a1", 32), strings.Repeat("b2", 32)
	one := []jobs.Model{keyedModel("alpha", "a1", true, h1, "")}
	two := []jobs.Model{keyedModel("alpha", "a1", true, h1, ""), keyedModel("alpha", "a2", true, h2, "")}
	report(one...)
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				got := s.CoordinatorKeys("alpha")
				if !slices.Equal(got, []string{h1}) && !slices.Equal(got, []string{h1, h2}) {
					errs <- fmt.Sprintf("keys %v", got)
					return
				}
			}
		}()
	}
	for i := range 100 {
		if i%2 == 0 {
			report(two...)
		} else {
			report(one...)
		}
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if got := s.CoordinatorKeys("alpha"); !slices.Equal(got, []string{h1}) {
		t.Fatalf("after the last snapshot: keys %v, want [%s]", got, h1)
	}
}

// One connection's lookup at 10,000 models over 100 crunches: cached (once
// per change of the desired state) and, beside it, what each connection
// cost before (a walk over the whole desired state).
func BenchmarkCoordinatorKeys(b *testing.B) {
	s, report := keysScheduler(b)
	ms := make([]jobs.Model, 0, 10_000)
	for i := range 10_000 {
		crunch := fmt.Sprintf("crunch-%02d", i%100)
		ms = append(ms, keyedModel(crunch, fmt.Sprintf("m%05d", i), true, fmt.Sprintf("%064x", i%100), ""))
	}
	report(ms...)
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			if len(s.CoordinatorKeys("crunch-42")) != 1 {
				b.Fatal("no key")
			}
		}
	})
	b.Run("walk", func(b *testing.B) {
		for b.Loop() {
			desired, _ := s.watcher.Desired()
			set := map[string]bool{}
			for _, d := range desired {
				if d.Model.Crunch == "crunch-42" && d.Model.CertHash != "" {
					set[d.Model.CertHash] = true
				}
			}
			if len(slices.Collect(maps.Keys(set))) != 1 {
				b.Fatal("no key")
			}
		}
	})
}
