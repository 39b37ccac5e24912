package discovery

import (
	"context"
	"sync"
)

// Manual is a membership the program sets itself (from the chain, from
// CrunchDAO's orchestrator feed, from a test). The zero value is empty and
// reports nothing until the first Set.
type Manual struct {
	mu      sync.Mutex
	models  []Model
	set     bool
	changed chan struct{}
}

// Set replaces the membership; watchers see it promptly.
func (m *Manual) Set(models []Model) error {
	ms, err := Normalize(models)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.models, m.set = ms, true
	if m.changed != nil {
		close(m.changed)
	}
	m.changed = make(chan struct{})
	return nil
}

func (m *Manual) current() ([]Model, bool, chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.changed == nil {
		m.changed = make(chan struct{})
	}
	return m.models, m.set, m.changed
}

// Watch implements Source. Quick successive Sets may be reported as one.
func (m *Manual) Watch(ctx context.Context, update func([]Model)) error {
	for {
		models, set, changed := m.current()
		if set {
			update(models)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}
