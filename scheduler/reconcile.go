package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/redact"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/scheduler/quarantine"
	"github.com/modelnodes/modelnodes/scheduler/source"
)

// NomadJobs is the part of Nomad the reconciler writes to (nomad.Client).
type NomadJobs interface {
	// ListJobs returns every job whose id starts with prefix, with meta, in
	// one call.
	ListJobs(ctx context.Context, prefix string) ([]nomad.JobStub, error)
	// Register writes job if it is still at modifyIndex (0: only if absent);
	// nomad.ErrConflict when it is not.
	Register(ctx context.Context, job *nomadapi.Job, modifyIndex uint64) error
	// Stop deregisters without purging; Purge removes the job.
	Stop(ctx context.Context, id string) error
	Purge(ctx context.Context, id string) error
}

// Reconciler makes Nomad's jobs match the desired state. It is level
// triggered: every pass reads all our jobs (one List call), plans from them
// and the whole desired state (Plan), then makes the writes (Apply); a
// missed event or a crash between two writes is repaired by the next pass.
// Writes use check-and-set, so two writers (which the leader lock already
// prevents) cannot duplicate a job.
type Reconciler struct {
	Nomad NomadJobs
	// Options are the deployment's job options (jobs.Build).
	Options *jobs.Options
	// PurgeAfter is how long a stopped job stays visible before it is
	// purged (default DefaultPurgeAfter).
	PurgeAfter time.Duration
	// Concurrency bounds the writes in flight (default 4).
	Concurrency int
	// Guard, when set, holds the stops of a pass that would stop too large
	// a share of a crunch's models (StopGuard).
	Guard *StopGuard
	// Sources, when set, are asked about the running jobs the desired state
	// lacks (Plan's stops "no longer authorized"): a source.Adopter named
	// by a job's meta keeps those it has no evidence against yet. Only
	// jobs whose meta carries an Origin (names.MetaAuthorization) are asked
	// about.
	Sources []source.Source
	// RolloutRetry is how long a version whose rollout failed (its canary
	// never turned healthy, and Nomad reverted the job to the version that
	// serves) waits before it is written again (default
	// DefaultRolloutRetry); a newer version is written at once. Needs a
	// Nomad that is a RolloutReader.
	RolloutRetry time.Duration
	// MaxRollouts bounds the running models rolling out a new version at
	// once (a canary beside the serving allocation, each needing room for
	// one more allocation): the updates beyond it wait for later passes.
	// 0: no bound. Starting a stopped model, or registering a new one, is
	// no rollout.
	MaxRollouts int
	// Quarantines, when set, holds the models their coordinators'
	// reports quarantined (quarantine.Store): they are kept stopped until
	// their submission changes, which ends the quarantine here.
	Quarantines QuarantineStore
	Logger      hclog.Logger
	Metrics     *Metrics
	now         func() time.Time

	mu sync.Mutex
	// rollouts holds, by job id, what Nomad said of the rollouts of the
	// jobs the last pass would have updated: a job no longer updated
	// (revoked, purged, or its new version out) has no entry, so the map
	// stays the size of one pass's updates over weeks of churn.
	rollouts map[string]failedRollout
	// rolling counts the jobs rolling out a new version as the last full
	// pass listed them, plus the rollouts passes over some models
	// (ReconcileModels) started since: their bound (MaxRollouts).
	rolling int

	qmu   sync.Mutex
	qLast map[string]quarantine.Record // the last good reading of Quarantines
	qRead bool
}

// QuarantineStore is where quarantines live (quarantine.Store, in Consul
// KV).
type QuarantineStore interface {
	// List returns every quarantine, by job id.
	List(ctx context.Context) (map[string]quarantine.Record, error)
	// Delete ends jobID's quarantine if its record is still at index.
	Delete(ctx context.Context, jobID string, index uint64) (bool, error)
}

// RolloutReader is the part of Nomad that says which version of a job
// failed its rollout (nomad.Client).
type RolloutReader interface {
	// FailedRollout returns the spec of the version whose rollout failed,
	// if the job's current version is Nomad's revert from it; "" otherwise.
	FailedRollout(ctx context.Context, jobID string) (string, error)
}

// failedRollout caches a job's failed rollout at the job's modify index
// (the revert that followed it wrote the job): Nomad is asked once per
// revert, not once per pass.
type failedRollout struct {
	index uint64
	spec  string
	// at is when this scheduler first saw the revert: the retry counts
	// from it. Nomad records no time for a revert: it keeps the served
	// version's SubmitTime, and the deployment it failed has no
	// ModifyTime. A new leader starts the count again, so a failover
	// delays a retry rather than hastening it.
	at     time.Time
	logged bool
}

// DefaultRolloutRetry is how long a version whose rollout failed waits
// before it is written again when Reconciler.RolloutRetry is not set.
const DefaultRolloutRetry = 30 * time.Minute

// DefaultPurgeAfter is how long a stopped job stays before it is purged
// when Reconciler.PurgeAfter is not set.
const DefaultPurgeAfter = 24 * time.Hour

// Result counts what one pass did.
type Result struct {
	Registered, Updated, Stopped, Purged, Unchanged, Held int
	// Waiting counts models left as they are until their code is inspected
	// (Desired.Wait).
	Waiting int
	// Duplicates counts running jobs left as they are because two entries
	// name their model (Desired.Duplicate).
	Duplicates int
	// HeldStops counts the stops the StopGuard held this pass.
	HeldStops int
	// Kept counts running jobs the desired state lacks that a source kept
	// running until it reads their authorization again (source.Adopter).
	Kept int
	// FailedRollouts counts running jobs left on their serving version
	// because the desired version failed its rollout (RolloutRetry).
	FailedRollouts int
	// Rolling counts the jobs rolling out a new version (two allocations
	// running or starting), DeferredRollouts the updates left for a later
	// pass by MaxRollouts.
	Rolling, DeferredRollouts int
	// Quarantined counts the desired models held stopped by a quarantine,
	// Lifted the quarantines this pass ended for a new submission.
	Quarantined, Lifted int
	Errors              []error
}

func (r Result) String() string {
	return fmt.Sprintf("registered=%d updated=%d stopped=%d purged=%d unchanged=%d held=%d waiting=%d duplicates=%d held_stops=%d kept=%d failed_rollouts=%d rolling=%d deferred_rollouts=%d quarantined=%d lifted=%d errors=%d",
		r.Registered, r.Updated, r.Stopped, r.Purged, r.Unchanged, r.Held, r.Waiting, r.Duplicates, r.HeldStops, r.Kept, r.FailedRollouts,
		r.Rolling, r.DeferredRollouts, r.Quarantined, r.Lifted, len(r.Errors))
}

// add counts other's writes and errors into r.
func (r *Result) add(other Result) {
	r.Registered += other.Registered
	r.Updated += other.Updated
	r.Stopped += other.Stopped
	r.Purged += other.Purged
	r.Unchanged += other.Unchanged
	r.Held += other.Held
	r.Waiting += other.Waiting
	r.Duplicates += other.Duplicates
	r.HeldStops += other.HeldStops
	r.Kept += other.Kept
	r.FailedRollouts += other.FailedRollouts
	r.Rolling += other.Rolling
	r.DeferredRollouts += other.DeferredRollouts
	r.Quarantined += other.Quarantined
	r.Lifted += other.Lifted
	r.Errors = append(r.Errors, other.Errors...)
}

func (r *Reconciler) log() hclog.Logger {
	if r.Logger == nil {
		return hclog.NewNullLogger()
	}
	return r.Logger
}

// Reconcile runs one pass: it lists our jobs, plans (Plan) and applies the
// plan (Apply). desired maps job ids to models; held job ids are kept
// stopped (crash-loop backoff). complete says every source has been read:
// until then nothing is stopped or purged, since an absent model could
// simply not have been read yet. An error is the listing's or ctx's; the
// writes' own errors are in the result.
func (r *Reconciler) Reconcile(ctx context.Context, desired map[string]*Desired, held map[string]bool, complete bool) (Result, error) {
	purgeAfter := r.PurgeAfter
	if purgeAfter <= 0 {
		purgeAfter = DefaultPurgeAfter
	}
	existing, err := r.Nomad.ListJobs(ctx, names.JobPrefix)
	if err != nil {
		return Result{}, err
	}
	quarantined, lifted, err := r.quarantines(ctx, desired)
	if err != nil {
		return Result{}, err
	}
	at := r.clock()
	var keep map[string]string
	if complete {
		keep = r.adopt(existing, desired)
	}
	actions, res := Plan(Want{Models: desired, Complete: complete, Keep: keep},
		Actual{Jobs: existing, Held: held, Quarantined: quarantined, Now: at}, purgeAfter)
	res.Lifted = lifted
	actions, res.FailedRollouts = r.skipFailedRollouts(ctx, actions, existing, at, false)
	res.Rolling = countRolling(existing)
	actions, res.DeferredRollouts = limitRollouts(actions, res.Rolling, r.MaxRollouts)
	actions, res.HeldStops = r.Guard.filter(actions, existing, at)
	for _, err := range res.Errors {
		r.log().Error("reconcile", "error", redact.Error(err))
	}
	r.mu.Lock()
	r.rolling = res.Rolling + rollouts(actions)
	r.mu.Unlock()
	done, err := r.Apply(ctx, actions)
	res.add(done)
	return res, err
}

// ReconcileModels runs a pass over some of the desired models only (those
// a source just changed), for a change to reach Nomad without a full pass,
// whose listing of every job costs seconds at 10,000 models: it lists
// each of their jobs alone (by id prefix) and makes only their
// registrations and updates, under the full pass's rules (Plan, crash-loop
// holds, the quarantines as last read, failed rollouts, MaxRollouts).
// Stops, purges and quarantines are left to the full pass (Reconcile): it
// alone sees every job, which the stop guard's share of a crunch and the
// adoption of running jobs need. Before the quarantines were first read it
// writes nothing, as the full pass does. ids absent from desired are
// skipped.
func (r *Reconciler) ReconcileModels(ctx context.Context, desired map[string]*Desired, ids []string, held map[string]bool) (Result, error) {
	quarantined := map[string]quarantine.Record{}
	if r.Quarantines != nil {
		r.qmu.Lock()
		last, read := r.qLast, r.qRead
		r.qmu.Unlock()
		if !read {
			return Result{}, nil
		}
		quarantined = byCurrentJob(last, desired)
	}
	want := make(map[string]*Desired, len(ids))
	var existing []nomad.JobStub
	for _, id := range ids {
		d := desired[id]
		if d == nil {
			continue
		}
		want[id] = d
		list, err := r.Nomad.ListJobs(ctx, id)
		if err != nil {
			return Result{}, err
		}
		for _, j := range list {
			if j.ID == id { // the prefix lists longer ids too
				existing = append(existing, j)
			}
		}
	}
	at := r.clock()
	actions, res := Plan(Want{Models: want}, Actual{Jobs: existing, Held: held, Quarantined: quarantined, Now: at}, 0)
	writes := actions[:0:0]
	for _, a := range actions {
		if a.Op == OpRegister || a.Op == OpUpdate {
			writes = append(writes, a)
		}
	}
	writes, res.FailedRollouts = r.skipFailedRollouts(ctx, writes, existing, at, true)
	r.mu.Lock()
	res.Rolling = r.rolling
	writes, res.DeferredRollouts = limitRollouts(writes, r.rolling, r.MaxRollouts)
	r.rolling += rollouts(writes)
	r.mu.Unlock()
	for _, err := range res.Errors {
		r.log().Error("reconcile", "error", redact.Error(err))
	}
	done, err := r.Apply(ctx, writes)
	res.add(done)
	return res, err
}

// clock is the time now (r.now in tests).
func (r *Reconciler) clock() time.Time {
	if r.now != nil {
		return r.now()
	}
	return time.Now()
}

// countRolling counts the jobs rolling out a new version: two allocations
// running or starting, a canary beside the serving one.
func countRolling(existing []nomad.JobStub) int {
	rolling := 0
	for _, j := range existing {
		if !j.Stop && j.Allocs > 1 && j.Meta[names.MetaManaged] == "true" {
			rolling++
		}
	}
	return rolling
}

// rollouts counts the actions that start a rollout.
func rollouts(actions []Action) int {
	n := 0
	for _, a := range actions {
		if a.replacesServing() {
			n++
		}
	}
	return n
}

// limitRollouts keeps at most max running models rolling out at once:
// rolling jobs are already, and the updates of running jobs beyond the
// rest are dropped for a later pass, in job id order (Plan's). Each
// rollout needs room for one more allocation until its canary is promoted:
// a change to every job at once (a job option, an upgrade) would otherwise
// need a whole fleet's worth. It returns the remaining actions and how
// many updates it deferred.
func limitRollouts(actions []Action, rolling, max int) ([]Action, int) {
	if max <= 0 {
		return actions, 0
	}
	budget := max - rolling
	out := actions[:0:0]
	deferred := 0
	for _, a := range actions {
		if a.replacesServing() {
			if budget <= 0 {
				deferred++
				continue
			}
			budget--
		}
		out = append(out, a)
	}
	return out, deferred
}

// skipFailedRollouts drops the updates that would write again, before
// RolloutRetry, a version whose rollout failed: its canary never turned
// healthy and Nomad reverted the job to the version that serves; writing
// it again at every pass would put it back on trial in a loop. It returns
// the remaining actions and how many it dropped. A Nomad that cannot say
// (not a RolloutReader, or an error) drops nothing. A partial pass (some
// models only) keeps what it knows of the others.
func (r *Reconciler) skipFailedRollouts(ctx context.Context, actions []Action, existing []nomad.JobStub, now time.Time, partial bool) ([]Action, int) {
	rr, ok := r.Nomad.(RolloutReader)
	if !ok {
		return actions, 0
	}
	retry := r.RolloutRetry
	if retry <= 0 {
		retry = DefaultRolloutRetry
	}
	jobs := make(map[string]*nomad.JobStub, len(existing))
	for i := range existing {
		jobs[existing[i].ID] = &existing[i]
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Only this pass's updates are kept: an entry of a job that is no
	// longer desired, or whose desired version is the one it runs, would
	// never be read again.
	prev := r.rollouts
	if !partial || r.rollouts == nil {
		r.rollouts = map[string]failedRollout{}
	}
	out := actions[:0:0]
	skipped := 0
	for _, a := range actions {
		cur := jobs[a.JobID]
		if !a.replacesServing() || cur == nil {
			out = append(out, a)
			continue
		}
		f, ok := prev[a.JobID]
		if !ok || f.index != cur.JobModifyIndex {
			spec, err := rr.FailedRollout(ctx, a.JobID)
			if err != nil {
				r.log().Warn("cannot read the job's last rollout; updating it", "job", a.JobID, "error", redact.Error(err))
				out = append(out, a)
				continue
			}
			f = failedRollout{index: cur.JobModifyIndex, spec: spec, at: now}
		}
		if f.spec == "" || f.spec != a.Desired.Spec || now.Sub(f.at) >= retry {
			r.rollouts[a.JobID] = f
			out = append(out, a)
			continue
		}
		if !f.logged {
			r.log().Warn("this version of the model failed its rollout (Nomad reverted the job); the previous version serves until it is retried",
				"job", a.JobID, "model", a.Desired.Model.ModelID, "crunch", a.Desired.Model.Crunch,
				"retry_at", f.at.Add(retry).UTC().Format(time.RFC3339))
			f.logged = true
		}
		r.rollouts[a.JobID] = f
		skipped++
	}
	return out, skipped
}

// quarantines reads the quarantines (the last good reading when Consul
// cannot be read; an error when it never could: no model is started
// blind) and ends those whose model's submission changed since. It
// returns the quarantines in force and how many it ended.
func (r *Reconciler) quarantines(ctx context.Context, desired map[string]*Desired) (map[string]quarantine.Record, int, error) {
	if r.Quarantines == nil {
		return nil, 0, nil
	}
	recs, err := r.Quarantines.List(ctx)
	r.qmu.Lock()
	if err != nil {
		last, read := r.qLast, r.qRead
		r.qmu.Unlock()
		if !read {
			return nil, 0, fmt.Errorf("quarantines not read yet: %w", err)
		}
		r.log().Warn("cannot read the quarantines; keeping the last reading", "error", redact.Error(err))
		return last, 0, nil
	}
	r.qLast, r.qRead = recs, true
	r.qmu.Unlock()
	recs = byCurrentJob(recs, desired)
	lifted := 0
	for id, rec := range recs {
		d := desired[id]
		if d == nil || rec.Submission == "" || rec.Submission == quarantine.Fingerprint(d.Model) {
			continue
		}
		ok, err := r.Quarantines.Delete(ctx, rec.JobID, rec.Index)
		if err != nil || !ok {
			r.log().Warn("a quarantined model's submission changed, but ending its quarantine failed; retrying next pass", "job", id, "error", err)
			continue
		}
		delete(recs, id)
		lifted++
		r.Metrics.quarantineLifted("submission")
		r.log().Info("quarantine ended: the model's submission changed", "job", id, "crunch", rec.Crunch, "model", rec.ModelID, "code", rec.Code, "since", rec.At)
	}
	r.Metrics.quarantinedModels(len(recs))
	return recs, lifted, nil
}

// byCurrentJob keys the quarantines by the job id their model has now: a
// record names the job id the model had when it was quarantined, and its
// key (jobs.Key) the model itself, whose job may have been renamed since
// (a model id another crunch contests, or no longer does): renaming must
// not release it. Records of models the desired state lacks stay under
// their own job id.
func byCurrentJob(recs map[string]quarantine.Record, desired map[string]*Desired) map[string]quarantine.Record {
	byKey := make(map[string]string, len(recs)) // model key -> record's job id
	for id, rec := range recs {
		if rec.Key != "" {
			byKey[rec.Key] = id
		}
	}
	out := make(map[string]quarantine.Record, len(recs))
	moved := map[string]bool{}
	for jobID, d := range desired {
		if id, ok := byKey[jobs.Key(&d.Model)]; ok {
			out[jobID] = recs[id]
			moved[id] = true
		}
	}
	for id, rec := range recs {
		if _, taken := out[id]; !taken && !moved[id] {
			out[id] = rec
		}
	}
	return out
}

// adopt asks the sources that can vouch for jobs they have no entry for
// (source.Adopter) about the running jobs the desired state lacks: it
// returns those they keep, by job id, with why.
func (r *Reconciler) adopt(existing []nomad.JobStub, desired map[string]*Desired) map[string]string {
	bySource := map[string][]source.Adoptee{}
	for _, j := range existing {
		if j.Stop || j.Meta[names.MetaManaged] != "true" || j.Meta[names.MetaAuthorization] == "" || desired[j.ID] != nil {
			continue
		}
		slot, err := strconv.ParseUint(j.Meta[names.MetaAuthorizedSlot], 10, 64)
		if err != nil {
			slot = 0 // no slot: any reading is newer
		}
		name := j.Meta[names.MetaSource]
		bySource[name] = append(bySource[name], source.Adoptee{JobID: j.ID, Origin: source.Origin{
			Entry: j.Meta[names.MetaAuthorization], Slot: slot, Chain: j.Meta[names.MetaAuthorizedChain]}})
	}
	keep := map[string]string{}
	for _, src := range r.Sources {
		a, ok := src.(source.Adopter)
		if !ok {
			continue
		}
		// Asked every pass, with nothing too: the source forgets the
		// jobs it is no longer asked about.
		for id, why := range a.Adopt(bySource[src.Name()]) {
			keep[id] = why
		}
	}
	return keep
}

// Apply makes the writes of a plan, Concurrency at a time (default 4), so
// that a first pass over thousands of models does not wait for each write
// in turn. Each write stands alone: a failed one is logged and recorded in
// the result's Errors, and the others go on. When ctx ends, the writes not
// yet started are dropped and Apply returns ctx's error with what was done.
func (r *Reconciler) Apply(ctx context.Context, actions []Action) (Result, error) {
	var res Result
	var mu sync.Mutex
	work := make(chan Action)
	workers := r.Concurrency
	if workers <= 0 {
		workers = 4
	}
	var wg sync.WaitGroup
	for range min(workers, len(actions)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for a := range work {
				err := r.apply(ctx, a)
				mu.Lock()
				res.count(a, err)
				mu.Unlock()
			}
		}()
	}
feed:
	for _, a := range actions {
		select {
		case work <- a:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	return res, ctx.Err()
}

// count records the outcome of one action.
func (r *Result) count(a Action, err error) {
	switch {
	case err != nil:
		r.Errors = append(r.Errors, err)
	case a.Op == OpRegister:
		r.Registered++
	case a.Op == OpUpdate:
		r.Updated++
	case a.Op == OpStop, a.Op == OpQuarantine && !a.WasStopped:
		r.Stopped++
	case a.Op == OpPurge:
		r.Purged++
	}
}

// apply makes one write, and logs and counts it.
func (r *Reconciler) apply(ctx context.Context, a Action) error {
	log := r.log()
	var err error
	switch a.Op {
	case OpRegister, OpUpdate:
		err = r.register(ctx, a)
	case OpQuarantine:
		err = r.register(ctx, a)
	case OpStop:
		if err = r.Nomad.Stop(ctx, a.JobID); err == nil {
			r.Metrics.nomadWrite("stop")
			log.Info("stopped", "job", a.JobID, "reason", a.Reason)
		}
	case OpPurge:
		if err = r.Nomad.Purge(ctx, a.JobID); err == nil {
			r.Metrics.nomadWrite("purge")
			log.Info("purged", "job", a.JobID, "stopped_for", a.StoppedFor.Round(time.Second))
		}
	default:
		err = fmt.Errorf("job %s: unknown action %q", a.JobID, a.Op)
	}
	if err != nil {
		log.Error("reconcile", "error", redact.Error(err))
	}
	return err
}

func (r *Reconciler) register(ctx context.Context, a Action) error {
	log := r.log()
	m := &a.Desired.Model
	job, err := jobs.Build(m, r.Options)
	if err != nil {
		return err
	}
	job.Meta[names.MetaSource] = a.Desired.Source
	if o := a.Desired.Origin; o.Entry != "" {
		job.Meta[names.MetaAuthorization] = o.Entry
		job.Meta[names.MetaAuthorizedSlot] = strconv.FormatUint(o.Slot, 10)
		if o.Chain != "" {
			job.Meta[names.MetaAuthorizedChain] = o.Chain
		}
	}
	if err := jobs.ConstrainPython(job, a.Desired.Python); err != nil {
		return fmt.Errorf("job %s: %w", a.JobID, err)
	}
	if a.replacesServing() {
		// It replaces a serving version through a canary, which must not
		// turn healthy unless its model loads.
		jobs.CheckLoaded(job)
	}
	job.Meta[names.MetaSpec] = jobs.SpecWithPython(job.Meta[names.MetaSpec], a.Desired.Python) // as Desired.Spec
	if q := a.Quarantine; q != nil {
		// Written stopped: Nomad stops its allocations, and the job says
		// why (the codes are checked, the rest is ours).
		job.Stop = new(true)
		job.Meta[names.MetaQuarantineCode] = q.Code
		job.Meta[names.MetaQuarantineAt] = q.At.UTC().Format(time.RFC3339)
		job.Meta[names.MetaQuarantineBy] = q.Coordinator
	}
	if err := r.Nomad.Register(ctx, job, a.Index); err != nil {
		if errors.Is(err, nomad.ErrConflict) {
			log.Warn("job changed under us; the next pass decides again", "job", a.JobID)
		}
		return err
	}
	r.Metrics.nomadWrite("register")
	switch {
	case a.Quarantine != nil:
		log.Warn("quarantined: written stopped", "job", a.JobID, "crunch", m.Crunch, "model", m.ModelID, "code", a.Quarantine.Code,
			"coordinator", a.Quarantine.Coordinator, "was_stopped", a.WasStopped)
	case a.Op == OpRegister:
		log.Info("registered", "job", a.JobID, "crunch", m.Crunch, "model", m.ModelID)
	default:
		log.Info("updated", "job", a.JobID, "crunch", m.Crunch, "model", m.ModelID, "was_stopped", a.WasStopped)
	}
	return nil
}
