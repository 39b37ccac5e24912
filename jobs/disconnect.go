package jobs

import (
	"errors"
	"fmt"
	"strings"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
)

// Disconnect is what Nomad does with a model whose node stops answering its
// servers (missed heartbeats) while it may still be alive: a network cut,
// not a lost machine, which Nomad cannot tell apart. The zero Disconnect
// writes no disconnect block: Nomad takes the node for down once its
// heartbeat grace is over and replaces its models at once, stopping the
// originals when the node is back.
type Disconnect struct {
	// LostAfter, when positive, is how long Nomad keeps the models of a
	// node that stopped heartbeating as "unknown" (the node "disconnected")
	// before it takes them for lost. A node back within that time gets its
	// models back as they ran: nothing restarts.
	LostAfter time.Duration
	// Replace places a replacement meanwhile, on the reschedule policy's
	// delay (30 s) after the node was taken for disconnected; the original
	// stops when its node is back (reconcile = "keep_replacement"), which
	// is also the rule its runner follows (runner/supersede: a newer
	// passing instance wins). Without it the model is not replaced before
	// LostAfter has passed: a model on a machine that is really gone is
	// down for that long.
	Replace bool
}

// ReconcileKeepReplacement is the reconcile option of every disconnect
// block jobs writes. Nomad's default, best_score, may keep the original
// once its node is back, while that original's runner, having seen its
// newer replacement pass in Consul, stopped answering (runner/supersede):
// the model would answer from no runner at all.
const ReconcileKeepReplacement = nomadapi.ReconcileOptionKeepReplacement

// block is the group's disconnect block; nil when d is off.
func (d Disconnect) block() *nomadapi.DisconnectStrategy {
	if d.LostAfter <= 0 {
		return nil
	}
	return &nomadapi.DisconnectStrategy{
		LostAfter: new(d.LostAfter), Replace: new(d.Replace), Reconcile: new(ReconcileKeepReplacement),
	}
}

// String is the form ParseCrunchDisconnect reads after "crunch=".
func (d Disconnect) String() string {
	if d.LostAfter <= 0 {
		return "0"
	}
	if d.Replace {
		return d.LostAfter.String() + ":replace"
	}
	return d.LostAfter.String() + ":no-replace"
}

// DisconnectFor is the disconnect setting of m's job: its crunch's entry
// in CrunchDisconnect (by name, else by on-chain id), else Disconnect.
func (o *Options) DisconnectFor(m *Model) Disconnect {
	if d, ok := o.CrunchDisconnect[m.Crunch]; ok {
		return d
	}
	if m.CrunchID != "" {
		if d, ok := o.CrunchDisconnect[m.CrunchID]; ok {
			return d
		}
	}
	return o.Disconnect
}

// ParseCrunchDisconnect reads per-crunch disconnect settings, each
// "CRUNCH=LOST_AFTER[:replace|:no-replace]" (CRUNCH a crunch's name or
// on-chain id; LOST_AFTER a Go duration, 0 for no disconnect block; without
// a suffix, replace is defaultReplace).
func ParseCrunchDisconnect(entries []string, defaultReplace bool) (map[string]Disconnect, error) {
	out := map[string]Disconnect{}
	for _, e := range entries {
		i := strings.LastIndex(e, "=")
		if i <= 0 {
			return nil, fmt.Errorf("%q: want CRUNCH=LOST_AFTER[:replace|:no-replace]", e)
		}
		crunch, val := strings.TrimSpace(e[:i]), strings.TrimSpace(e[i+1:])
		dur, mode, _ := strings.Cut(val, ":")
		d := Disconnect{Replace: defaultReplace}
		switch mode {
		case "":
		case "replace":
			d.Replace = true
		case "no-replace":
			d.Replace = false
		default:
			return nil, fmt.Errorf("%q: %q is neither replace nor no-replace", e, mode)
		}
		var err error
		if d.LostAfter, err = time.ParseDuration(dur); err != nil {
			return nil, fmt.Errorf("%q: lost_after: %w", e, err)
		}
		if err := d.Check(); err != nil {
			return nil, fmt.Errorf("%q: %w", e, err)
		}
		if d.LostAfter == 0 {
			d = Disconnect{}
		}
		if _, dup := out[crunch]; dup {
			return nil, fmt.Errorf("crunch %q named twice", crunch)
		}
		out[crunch] = d
	}
	return out, nil
}

// Check reports a setting Nomad would refuse: a negative lost_after.
func (d Disconnect) Check() error {
	if d.LostAfter < 0 {
		return errors.New("lost_after must not be negative (0: no disconnect block)")
	}
	return nil
}
