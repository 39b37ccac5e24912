// Package discovery says which models of a crunch exist and where they
// listen. A Source reports the whole membership every time it changes; the
// coordinator client diffs it against its connections, so a Source never
// has to track what the caller already knows.
//
// Implementations: Static (tests, laptops), package consul (Consul health
// API with blocking queries) and package dnssrv (Consul DNS SRV through a
// grpc-go resolver).
package discovery

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/modelnodes/modelnodes/names"
)

// Model is one callable model.
type Model struct {
	// ID is the model's short lowercase id (a DNS label): what runner job,
	// certificate and metrics are named after. Unique within a membership.
	ID string
	// Target is the gRPC target to dial: "host:port", or any target a
	// registered grpc-go resolver understands (e.g. "consul-srv://…").
	Target string
	// ServerName is the name the runner's certificate must carry;
	// names.ModelServerName(ID) when empty.
	ServerName string
	// Meta carries what the source knows beside the address: the full
	// on-chain ids (names.Meta* keys).
	Meta map[string]string
}

// TLSName returns the name the model's certificate must carry.
func (m Model) TLSName() string {
	if m.ServerName != "" {
		return m.ServerName
	}
	return names.ModelServerName(m.ID)
}

// Equal reports whether two descriptions would dial the same runner the
// same way (meta changes alone do not need a new connection).
func (m Model) Equal(o Model) bool {
	return m.ID == o.ID && m.Target == o.Target && m.TLSName() == o.TLSName()
}

// Source reports membership.
type Source interface {
	// Watch calls update with the full membership (sorted by ID, IDs
	// unique) once as soon as it is known and then after every change,
	// until ctx ends; it then returns ctx's error. A Source that cannot
	// reach its backend keeps the last membership it reported (fail
	// static) and retries; it returns early only for errors that retrying
	// cannot fix. update is never called concurrently.
	Watch(ctx context.Context, update func([]Model)) error
}

// Static is a fixed membership.
type Static []Model

// Watch reports the list once and waits for ctx.
func (s Static) Watch(ctx context.Context, update func([]Model)) error {
	ms, err := Normalize(s)
	if err != nil {
		return err
	}
	update(ms)
	<-ctx.Done()
	return ctx.Err()
}

// Normalize returns models sorted by ID, refusing empty or duplicate IDs
// and empty targets.
func Normalize(models []Model) ([]Model, error) {
	ms := slices.Clone(models)
	slices.SortFunc(ms, func(a, b Model) int { return strings.Compare(a.ID, b.ID) })
	for i, m := range ms {
		if m.ID == "" || m.Target == "" {
			return nil, fmt.Errorf("discovery: model %q at %q: id and target are both needed", m.ID, m.Target)
		}
		if i > 0 && ms[i-1].ID == m.ID {
			return nil, fmt.Errorf("discovery: model id %q listed twice", m.ID)
		}
	}
	return ms, nil
}

// ParseStatic parses "id=host:port" entries (comma separated), the form
// the CLI's --models flag takes. An entry without "id=" is named after its
// target.
func ParseStatic(list string) (Static, error) {
	var s Static
	for _, e := range strings.Split(list, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		id, target, ok := strings.Cut(e, "=")
		if !ok {
			id, target = e, e
		}
		s = append(s, Model{ID: id, Target: target})
	}
	if _, err := Normalize(s); err != nil {
		return nil, err
	}
	return s, nil
}
