// Package observer follows Nomad's allocations of the scheduler's jobs
// through the event stream: it reports each model's state (the status API's
// /v1/models) and holds crash-looping models stopped, which the scheduler's
// reconciler then honours.
package observer

import (
	"context"
	"errors"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/redact"
	"github.com/modelnodes/modelnodes/names"
)

// Model states reported by the status API and metrics.
const (
	StatePending = "pending"
	StateRunning = "running"
	StateHealthy = "healthy"
	StateFailed  = "failed"
	// StateFaulty: the model runs but cannot serve (its environment failed
	// to build); every call answers BAD_IMPLEMENTATION.
	StateFaulty  = "faulty"
	StateBackoff = "backoff"
	StateStopped = "stopped"
)

// AllStates lists every state, in the order metrics report them.
var AllStates = []string{StatePending, StateRunning, StateHealthy, StateFaulty, StateFailed, StateBackoff, StateStopped}

// NomadEvents is the part of Nomad the observer reads (nomad.Client).
type NomadEvents interface {
	// Allocations lists the allocations of the jobs whose id starts with
	// prefix, and the index the list is at.
	Allocations(ctx context.Context, prefix string) ([]*nomadapi.AllocationListStub, uint64, error)
	// Events streams Nomad's events from index on, until ctx ends or the
	// stream breaks.
	Events(ctx context.Context, index uint64) (<-chan *nomadapi.Events, error)
}

// Metrics receives the observer's measurements (the scheduler's
// Prometheus metrics implement it).
type Metrics interface {
	// ModelStates sets how many jobs are in each state, after every change.
	ModelStates(counts map[string]int)
	// CrashLoopHold counts a hold that starts.
	CrashLoopHold()
}

// Backoff holds crash-looping models stopped: Failures failed allocations
// within Window put a model on hold for Initial, doubling at each new hold
// up to Max. A model that then runs cleanly for Window starts over.
type Backoff struct {
	Failures int           // default 3
	Window   time.Duration // default 10 min
	Initial  time.Duration // default 1 min
	Max      time.Duration // default 1 h
}

func (b Backoff) withDefaults() Backoff {
	if b.Failures <= 0 {
		b.Failures = 3
	}
	if b.Window <= 0 {
		b.Window = 10 * time.Minute
	}
	if b.Initial <= 0 {
		b.Initial = time.Minute
	}
	if b.Max <= 0 {
		b.Max = time.Hour
	}
	return b
}

// ModelState is one job's observed state.
type ModelState struct {
	JobID        string    `json:"job_id"`
	State        string    `json:"state"`
	Reason       string    `json:"reason,omitempty"`
	Allocation   string    `json:"allocation,omitempty"`
	BackoffUntil time.Time `json:"backoff_until,omitzero"`
	// Rollout says how the newest version's canary stands while the
	// previous version serves: on trial, unhealthy, or failed (Nomad then
	// reverts the job to the previous version).
	Rollout string `json:"rollout,omitempty"`

	failures  map[string]time.Time // failed alloc id -> when
	holdUntil time.Time
	holds     int
	since     time.Time // failures before this are forgiven
	allocs    map[string]*nomadapi.AllocationListStub
}

// Observer follows Nomad's allocations of our jobs through the event stream
// (re-reading them after every reconnect) to report each model's state and
// to decide crash-loop holds.
type Observer struct {
	Nomad   NomadEvents
	Backoff Backoff
	Logger  hclog.Logger
	Metrics Metrics // optional
	// OnChange is called (without locks held) after a re-read, when a
	// crash-loop hold starts and when one of our jobs was deregistered by
	// someone else, so the leader reconciles.
	OnChange func()
	now      func() time.Time

	mu     sync.Mutex
	states map[string]*ModelState
	reads  atomic.Int64 // full reads of the allocations
}

// Reads counts the observer's full reads of the allocations: one when it
// starts and one after every reconnect of the event stream.
func (o *Observer) Reads() int64 { return o.reads.Load() }

func (o *Observer) clock() time.Time {
	if o.now != nil {
		return o.now()
	}
	return time.Now()
}

// Run follows the event stream until ctx ends.
func (o *Observer) Run(ctx context.Context) {
	log := o.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	delay := 500 * time.Millisecond
	for ctx.Err() == nil {
		t0 := time.Now()
		err := o.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errRelist) {
			delay = 500 * time.Millisecond
			continue
		}
		if time.Since(t0) > time.Minute {
			delay = 500 * time.Millisecond
		}
		log.Warn("nomad event stream ended; reconnecting and re-reading allocations", "error", redact.Error(err), "in", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, 15*time.Second)
	}
}

func (o *Observer) follow(ctx context.Context) error {
	stubs, index, err := o.Nomad.Allocations(ctx, names.JobPrefix)
	if err != nil {
		return err
	}
	o.reads.Add(1)
	o.mu.Lock()
	if o.states == nil {
		o.states = map[string]*ModelState{}
	}
	for _, st := range o.states {
		st.allocs = map[string]*nomadapi.AllocationListStub{}
	}
	for _, a := range stubs {
		o.add(a)
	}
	// Forget jobs whose allocations are gone (purged, garbage collected),
	// unless they are on hold.
	for id, st := range o.states {
		if len(st.allocs) == 0 && o.clock().After(st.holdUntil) {
			delete(o.states, id)
		}
	}
	o.refreshAll()
	o.mu.Unlock()
	o.changed()
	// Re-read everything now and then as well: the event stream does not
	// announce allocations that Nomad garbage-collects.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	ch, err := o.Nomad.Events(sctx, index+1)
	if err != nil {
		return err
	}
	for evs := range ch {
		if evs.Err != nil {
			return evs.Err
		}
		if evs.IsHeartbeat() {
			continue
		}
		// Allocation changes only update the reported states; the leader is
		// asked to reconcile when a hold starts or a job of ours was
		// deregistered behind its back.
		kick, touched := false, false
		for _, e := range evs.Events {
			switch e.Topic {
			case nomadapi.TopicAllocation:
				a, err := e.Allocation()
				if err != nil || a == nil || !strings.HasPrefix(a.JobID, names.JobPrefix) {
					continue
				}
				o.mu.Lock()
				o.add(a.Stub())
				if o.refresh(a.JobID) {
					kick = true
				}
				o.mu.Unlock()
				touched = true
			case nomadapi.TopicJob:
				if strings.HasPrefix(e.Key, names.JobPrefix) && e.Type == "JobDeregistered" {
					kick = true
				}
			}
		}
		if touched {
			o.updateMetrics()
		}
		if kick && o.OnChange != nil {
			o.OnChange()
		}
	}
	if sctx.Err() != nil && ctx.Err() == nil {
		return errRelist
	}
	return ctx.Err()
}

var errRelist = errors.New("periodic re-read")

func (o *Observer) changed() {
	o.updateMetrics()
	if o.OnChange != nil {
		o.OnChange()
	}
}

func (o *Observer) updateMetrics() {
	o.mu.Lock()
	counts := map[string]int{}
	for _, st := range o.states {
		counts[st.State]++
	}
	o.mu.Unlock()
	if o.Metrics != nil {
		o.Metrics.ModelStates(counts)
	}
}

// add records an allocation; o.mu held.
func (o *Observer) add(a *nomadapi.AllocationListStub) {
	st := o.states[a.JobID]
	if st == nil {
		st = &ModelState{JobID: a.JobID, allocs: map[string]*nomadapi.AllocationListStub{}, failures: map[string]time.Time{}}
		o.states[a.JobID] = st
	}
	st.allocs[a.ID] = a
	// A canary that fails while the previous version serves is a failed
	// rollout, which Nomad reverts (jobs: the update block), not a crash
	// loop: holding the job stopped would stop the version that works.
	if a.ClientStatus == nomadapi.AllocClientStatusFailed && !(canary(a) && otherRunning(st, a)) {
		if _, seen := st.failures[a.ID]; !seen {
			st.failures[a.ID] = time.Unix(0, a.ModifyTime)
		}
	}
}

func (o *Observer) refreshAll() {
	for id := range o.states {
		o.refresh(id)
	}
}

// refresh recomputes a job's state and hold, and reports whether a hold
// started; o.mu held.
func (o *Observer) refresh(jobID string) (held bool) {
	st := o.states[jobID]
	b := o.Backoff.withDefaults()
	now := o.clock()
	var latest *nomadapi.AllocationListStub
	for _, a := range st.allocs {
		if latest == nil || a.CreateIndex > latest.CreateIndex {
			latest = a
		}
	}
	st.State, st.Reason, st.Allocation, st.Rollout = StatePending, "", "", ""
	if latest != nil && canary(latest) {
		// While a new version's canary is on trial, or after its trial
		// ended (failed, or stopped by its failed deployment), the model is
		// what the previous version is doing, and the rollout is said
		// beside it.
		var serving *nomadapi.AllocationListStub
		for _, a := range st.allocs {
			if a.ID != latest.ID && a.ClientStatus == nomadapi.AllocClientStatusRunning && a.DesiredStatus == nomadapi.AllocDesiredStatusRun &&
				(serving == nil || a.CreateIndex > serving.CreateIndex) {
				serving = a
			}
		}
		if serving != nil {
			if r := rollout(latest); r != "" {
				st.Rollout = r + "; the previous version serves"
				latest = serving
			}
		}
	}
	if latest != nil {
		st.Allocation = latest.ID
		switch latest.ClientStatus {
		case nomadapi.AllocClientStatusRunning:
			st.State = StateRunning
			if latest.DeploymentStatus != nil && latest.DeploymentStatus.Healthy != nil && *latest.DeploymentStatus.Healthy {
				st.State = StateHealthy
			}
			if why := environmentFailure(latest); why != "" {
				st.State, st.Reason = StateFaulty, why
			}
		case nomadapi.AllocClientStatusFailed, nomadapi.AllocClientStatusLost:
			st.State, st.Reason = StateFailed, failureReason(latest)
		case nomadapi.AllocClientStatusComplete:
			st.State = StateStopped
		}
		if latest.DesiredStatus == nomadapi.AllocDesiredStatusStop && latest.ClientStatus != nomadapi.AllocClientStatusRunning {
			if st.State != StateFailed {
				st.State = StateStopped
			}
		}
	}
	// Crash-loop: enough recent failures since the last hold ended.
	recent := 0
	for id, at := range st.failures {
		if now.Sub(at) > b.Window && at.Before(st.since) {
			delete(st.failures, id)
			continue
		}
		if at.After(st.since) && now.Sub(at) <= b.Window {
			recent++
		}
	}
	if now.After(st.holdUntil) && recent >= b.Failures {
		d := b.Initial << min(st.holds, 20)
		if d > b.Max || d <= 0 {
			d = b.Max
		}
		st.holds++
		held = true
		st.holdUntil = now.Add(d)
		st.since = st.holdUntil
		if o.Metrics != nil {
			o.Metrics.CrashLoopHold()
		}
		if o.Logger != nil {
			o.Logger.Warn("model crash-loops; holding it stopped", "job", jobID, "failures", recent, "for", d, "reason", st.Reason)
		}
	}
	if st.State == StateHealthy && now.Sub(st.since) > b.Window && now.After(st.holdUntil) {
		st.holds = 0
	}
	if now.Before(st.holdUntil) {
		st.BackoffUntil = st.holdUntil
		if st.Reason == "" {
			st.Reason = "crash-looping"
		}
		st.State = StateBackoff
	} else {
		st.BackoffUntil = time.Time{}
	}
	return held
}

// canary says a is the canary of a deployment (a new version on trial).
func canary(a *nomadapi.AllocationListStub) bool {
	return a.DeploymentStatus != nil && a.DeploymentStatus.Canary
}

// otherRunning says another allocation of st's job than a is running.
func otherRunning(st *ModelState, a *nomadapi.AllocationListStub) bool {
	for _, b := range st.allocs {
		if b.ID != a.ID && b.ClientStatus == nomadapi.AllocClientStatusRunning {
			return true
		}
	}
	return false
}

// rollout says how a new version's canary stands, when the previous
// version still serves: "" once the canary is healthy (Nomad promotes it).
func rollout(c *nomadapi.AllocationListStub) string {
	healthy := c.DeploymentStatus.Healthy
	switch {
	case c.ClientStatus == nomadapi.AllocClientStatusPending:
		return "the new version is rolling out (its canary " + shortAlloc(c.ID) + " is starting)"
	case c.ClientStatus != nomadapi.AllocClientStatusRunning:
		if cause := failureCause(c); cause != nil {
			return "the new version failed its rollout (" + describe(cause) + ")"
		}
		if healthy == nil || !*healthy {
			// Stopped by its failed deployment (Nomad's progress deadline,
			// or an operator's `nomad deployment fail`) before its checks
			// passed.
			return "the new version failed its rollout (its canary " + shortAlloc(c.ID) + " never turned healthy)"
		}
		return "the new version failed its rollout (" + failureReason(c) + ")"
	case healthy == nil:
		return "the new version is rolling out (its canary " + shortAlloc(c.ID) + " is running, not yet healthy)"
	case !*healthy:
		why := "its checks did not pass by the healthy deadline"
		if cause := failureCause(c); cause != nil {
			why = describe(cause)
		}
		return "the new version is failing its rollout (its canary " + shortAlloc(c.ID) + " is unhealthy: " + why + ")"
	}
	return ""
}

func shortAlloc(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func describe(e *nomadapi.TaskEvent) string { return e.Type + ": " + e.DisplayMessage }

// failureReason is why an allocation failed: its cause when its events
// name one, else its last event.
func failureReason(a *nomadapi.AllocationListStub) string {
	if cause := failureCause(a); cause != nil {
		return describe(cause)
	}
	var last *nomadapi.TaskEvent
	for _, ts := range a.TaskStates {
		for _, e := range ts.Events {
			if e.DisplayMessage != "" && (last == nil || e.Time > last.Time) {
				last = e
			}
		}
	}
	if last != nil {
		return describe(last)
	}
	return a.ClientDescription
}

// allocUnhealthy is the type of the task event Nomad's client emits when
// an allocation turns unhealthy (client/allochealth: "Task not running by
// deadline", "Services not healthy by deadline").
const allocUnhealthy = "Alloc Unhealthy"

// failureCause is the event that says why an allocation failed, nil when
// none does. The cause (an artifact that cannot be fetched, a driver error,
// the task exiting on its own) is more useful than the consequences logged
// after it (unhealthy, not restarting); a task Nomad killed exited because
// it was killed, which is no cause.
func failureCause(a *nomadapi.AllocationListStub) *nomadapi.TaskEvent {
	var cause, unhealthy, fails *nomadapi.TaskEvent
	later := func(a, b *nomadapi.TaskEvent) bool { return a == nil || b.Time > a.Time }
	for _, ts := range a.TaskStates {
		// Events come in order: a Terminated after a Killing, with no
		// start between them, is the kill's.
		killed := false
		for _, e := range ts.Events {
			switch e.Type {
			case nomadapi.TaskKilling:
				killed = true
			case nomadapi.TaskStarted, nomadapi.TaskRestarting:
				killed = false
			}
			if e.DisplayMessage == "" {
				continue
			}
			exited := e.Type == nomadapi.TaskTerminated && !killed
			if (e.DownloadError != "" || e.DriverError != "" || e.SetupError != "" || e.ValidationError != "" || exited) && later(cause, e) {
				cause = e
			}
			if e.Type == allocUnhealthy && later(unhealthy, e) {
				unhealthy = e
			}
			if e.FailsTask && later(fails, e) {
				fails = e
			}
		}
	}
	switch {
	case cause != nil:
		return cause
	case unhealthy != nil:
		return unhealthy
	}
	return fails
}

// environmentFailure is why the allocation's model cannot serve when the
// driver's last word on its environment is that it failed: "environment
// failed: " and the resolver's last lines. Empty otherwise.
func environmentFailure(a *nomadapi.AllocationListStub) string {
	var last *nomadapi.TaskEvent
	for _, ts := range a.TaskStates {
		for _, e := range ts.Events {
			if e.Details[names.EventEnvironment] != "" && (last == nil || e.Time > last.Time) {
				last = e
			}
		}
	}
	if last == nil || last.Details[names.EventEnvironment] != names.EnvironmentFailed {
		return ""
	}
	msg := last.DisplayMessage
	if msg == "" {
		msg = last.DriverMessage
	}
	_, why, _ := strings.Cut(msg, ": ")
	return "environment failed: " + why
}

// Held returns the jobs on crash-loop hold now, and when the next hold ends
// (zero if none), so the leader reconciles then.
func (o *Observer) Held() (map[string]bool, time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.clock()
	held := map[string]bool{}
	var next time.Time
	for id, st := range o.states {
		if now.Before(st.holdUntil) {
			held[id] = true
			if next.IsZero() || st.holdUntil.Before(next) {
				next = st.holdUntil
			}
		}
	}
	return held, next
}

// States returns the observed state of every job seen, sorted by job id.
func (o *Observer) States() []ModelState {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]ModelState, 0, len(o.states))
	now := o.clock()
	for _, st := range o.states {
		c := ModelState{JobID: st.JobID, State: st.State, Reason: st.Reason, Allocation: st.Allocation, Rollout: st.Rollout}
		if now.Before(st.holdUntil) {
			c.BackoffUntil = st.holdUntil
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].JobID < out[j].JobID })
	return out
}
