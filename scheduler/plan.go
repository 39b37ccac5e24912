package scheduler

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/scheduler/quarantine"
)

// Op is what an Action does to a job.
type Op string

// The writes a pass makes, in the order a plan lists them.
const (
	// OpRegister creates the job, with check-and-set index 0: it fails if
	// another writer created it meanwhile.
	OpRegister Op = "register"
	// OpUpdate rewrites a job whose spec changed, or that was stopped, at
	// its listed modify index.
	OpUpdate Op = "update"
	// OpStop deregisters the job without purging it.
	OpStop Op = "stop"
	// OpQuarantine writes a quarantined model's job stopped, with the
	// quarantine in its meta (names.MetaQuarantine*), at its listed modify
	// index: a running job stops, a stopped one gets the reason.
	OpQuarantine Op = "quarantine"
	// OpPurge removes a job stopped for longer than the purge delay.
	OpPurge Op = "purge"
)

// ReasonCrashLoop is the Reason of a stop that holds a crash-looping model
// (the observer's decision, which the StopGuard never holds).
const ReasonCrashLoop = "crash-loop backoff"

// ReasonQuarantine starts the Reason of a quarantine's stop.
const ReasonQuarantine = "quarantined"

var opOrder = map[Op]int{OpRegister: 0, OpUpdate: 1, OpStop: 2, OpQuarantine: 2, OpPurge: 3}

// Action is one write to Nomad that a plan decides.
type Action struct {
	Op    Op
	JobID string
	// Desired is the model a register or update writes.
	Desired *Desired
	// Index is an update's check-and-set index: the job's modify index as
	// listed, so that a write racing with another one fails as a conflict
	// instead of overwriting it.
	Index uint64
	// WasStopped says an update starts a stopped job again.
	WasStopped bool
	// Reason says why a job is stopped: "no longer authorized", "desired
	// state STOPPED" or "crash-loop backoff".
	Reason string
	// StoppedFor is how long a purged job had been stopped.
	StoppedFor time.Duration
	// Quarantine is the hold an OpQuarantine records.
	Quarantine *quarantine.Record
}

// replacesServing says the action writes a new version of a running job:
// Nomad rolls it out as a canary beside the serving version (jobs' update
// block), which needs room for one more allocation, may fail its rollout,
// and must not turn healthy unless its model loads.
func (a Action) replacesServing() bool { return a.Op == OpUpdate && !a.WasStopped }

// Want is the desired side of a pass, as the Watcher merges it.
type Want struct {
	// Models are the desired models by job id.
	Models map[string]*Desired
	// Complete says every source has delivered a good snapshot. Until then
	// an absent model may simply not have been read yet, so nothing is
	// stopped or purged; this is how a source that is down never stops
	// models.
	Complete bool
	// Keep are running jobs no model of Models names that a source vouches
	// for (source.Adopter: their authorization is being read again), by job
	// id, with why: they are left running.
	Keep map[string]string
}

// Actual is Nomad's side of a pass, read before planning.
type Actual struct {
	// Jobs are the jobs whose id starts with names.JobPrefix, with meta.
	Jobs []nomad.JobStub
	// Held are the job ids on crash-loop hold (observer.Observer.Held):
	// they are kept stopped, and not purged while the hold lasts.
	Held map[string]bool
	// Quarantined are the models quarantined after their coordinator's
	// reports, by job id (quarantine.Store): kept stopped whatever the
	// sources say, and not purged.
	Quarantined map[string]quarantine.Record
	// Now is when Jobs were read; it dates stopped jobs for purging.
	Now time.Time
}

// Plan decides one pass from the desired state and Nomad's: which jobs to
// register, update, stop and purge. It reads nothing but its arguments (no
// I/O, no clock), so the same inputs give the same actions, in the same
// order: by Op, then by job id. The result it returns counts what needs no
// write (Unchanged, Held) and holds an error for each model whose job id is
// taken by a job the scheduler did not create: Plan never touches a job
// without the meta names.MetaManaged = "true", whatever it is.
//
//	desired                   in Nomad                            action
//	running                   absent                              register
//	running                   spec differs, or stopped            update
//	running                   same spec, running                  none
//	running, a duplicate      running (any spec)                  none
//	running, waiting (Wait)   anything                            none
//	stopped, absent, or held  running                             stop (only when Complete)
//	stopped, absent, or held  stopped for purgeAfter (not held)   purge (only when Complete)
//	running, quarantined      running, or stopped without the     quarantine (written stopped, the
//	                          quarantine in its meta              reason in its meta)
//	absent, quarantined       running                             stop (only when Complete)
func Plan(want Want, actual Actual, purgeAfter time.Duration) ([]Action, Result) {
	var res Result
	var actions []Action
	have := make(map[string]*nomad.JobStub, len(actual.Jobs))
	for i := range actual.Jobs {
		have[actual.Jobs[i].ID] = &actual.Jobs[i]
	}
	held := actual.Held

	for _, id := range slices.Sorted(maps.Keys(want.Models)) {
		d := want.Models[id]
		cur := have[id]
		if cur != nil && cur.Meta[names.MetaManaged] != "true" {
			res.Errors = append(res.Errors, fmt.Errorf("job %s exists but was not created by the scheduler; leaving it alone (model %s of %s)",
				id, d.Model.ModelID, d.Model.Crunch))
			continue
		}
		if _, q := actual.Quarantined[id]; q && d.Model.Running {
			res.Quarantined++
			if cur != nil && (!cur.Stop || !quarantineRecorded(cur, actual.Quarantined[id])) {
				rec := actual.Quarantined[id]
				actions = append(actions, Action{Op: OpQuarantine, JobID: id, Desired: d, Index: cur.JobModifyIndex,
					WasStopped: cur.Stop, Reason: ReasonQuarantine + " (" + rec.Code + ")", Quarantine: &rec})
			}
			continue // and neither stopped nor purged below
		}
		if d.Wait != "" && d.Model.Running && !held[id] {
			res.Waiting++
			continue // and not stopped below
		}
		if !d.Model.Running || held[id] {
			if held[id] {
				res.Held++
			}
			continue // stopped with the undesired jobs below
		}
		switch {
		case cur == nil:
			actions = append(actions, Action{Op: OpRegister, JobID: id, Desired: d})
		case !cur.Stop && cur.Meta[names.MetaSpec] == d.Spec:
			res.Unchanged++
		case !cur.Stop && d.Duplicate != "":
			// Another entry names the same model: whichever the job runs,
			// a duplicate never replaces a running job.
			res.Duplicates++
		default:
			actions = append(actions, Action{Op: OpUpdate, JobID: id, Desired: d, Index: cur.JobModifyIndex, WasStopped: cur.Stop})
		}
	}

	if want.Complete {
		for _, id := range slices.Sorted(maps.Keys(have)) {
			cur := have[id]
			if cur.Meta[names.MetaManaged] != "true" {
				continue
			}
			d := want.Models[id]
			rec, quarantined := actual.Quarantined[id]
			if d != nil && d.Model.Running && (!held[id] || quarantined) {
				continue // running, or quarantined above
			}
			if _, keep := want.Keep[id]; keep && d == nil && !cur.Stop && !quarantined {
				res.Kept++
				continue
			}
			if !cur.Stop {
				why := "no longer authorized"
				if quarantined {
					why = ReasonQuarantine + " (" + rec.Code + ")"
				} else if d != nil && held[id] {
					why = ReasonCrashLoop
				} else if d != nil {
					why = "desired state STOPPED"
				}
				actions = append(actions, Action{Op: OpStop, JobID: id, Reason: why})
				continue
			}
			if stopped := actual.Now.Sub(cur.SubmitTime); !held[id] && !quarantined && stopped >= purgeAfter {
				actions = append(actions, Action{Op: OpPurge, JobID: id, StoppedFor: stopped})
			}
		}
	}
	sort.SliceStable(actions, func(i, j int) bool { return opOrder[actions[i].Op] < opOrder[actions[j].Op] })
	return actions, res
}

// quarantineRecorded reports whether job's meta already records rec.
func quarantineRecorded(job *nomad.JobStub, rec quarantine.Record) bool {
	return job.Meta[names.MetaQuarantineAt] == rec.At.UTC().Format(time.RFC3339) && job.Meta[names.MetaQuarantineCode] == rec.Code
}
