// Package scheduler keeps Nomad running exactly the models that are
// authorized. Sources of desired state (package source and the packages
// below it: Solana program accounts, CrunchDAO's HTTP feed, a YAML file)
// report snapshots to a Watcher, which merges them (fail static: a source
// that cannot be read keeps its last good snapshot). While this instance
// leads (an Elector, such as leader.ConsulLock), a level-triggered,
// idempotent Reconciler registers, updates, stops and purges one job per
// model: a pure Plan from the desired state and Nomad's jobs, then Apply,
// whose stops a StopGuard holds when a pass would stop too large a share of
// a crunch's models.
// An observer of Nomad's event stream (package observer) reports each
// model's state and holds crash-looping models stopped. The status API
// (Handler) serves both views. See docs/scheduler.md.
package scheduler

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/redact"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/scheduler/inspect"
	"github.com/modelnodes/modelnodes/scheduler/observer"
	"github.com/modelnodes/modelnodes/scheduler/quarantine"
	"github.com/modelnodes/modelnodes/scheduler/source"
)

// Scheduler runs the sources, the observer and, while this instance leads,
// the reconcile loop.
type Scheduler struct {
	Sources    []source.Source
	Reconciler *Reconciler
	Observer   *observer.Observer // optional
	Elector    Elector            // default AlwaysLead
	// Inspector, when set, reads each running model's code archive before
	// its job is written (package inspect): the job is then constrained to
	// the nodes that have the Python the submission asks for.
	Inspector *inspect.Inspector
	// Placements, when set with an Observer, tells why Nomad does not place
	// a pending model (its evaluation's placement failure: no node has the
	// Python it asks for, memory exhausted...; nomad.Client), so that the
	// status API says why instead of showing it pending.
	Placements NomadPlacements
	// Resync bounds the time between two reconcile passes when nothing
	// happens (default 30 s).
	Resync time.Duration
	// Debounce gathers bursts of changes into one pass (default 20 ms).
	Debounce time.Duration
	// HashedNames names every model by its key (jobs.Key), as before
	// model ids named their own jobs: set it to keep the jobs of a
	// deployment that predates jobs.AssignNames under their names.
	HashedNames bool
	// Quarantine, when set, keeps the models their coordinators' failure
	// reports quarantined (package quarantine, Consul KV): the reconciler
	// holds them stopped, the status API lists and lifts them, and a
	// change written by any instance starts a pass.
	Quarantine *quarantine.Store
	// AdminToken authenticates the status API's write endpoints (POST
	// /v1/stop-holds/confirm, /v1/quarantines/lift) as a bearer token;
	// empty: they are refused.
	AdminToken string
	Logger     hclog.Logger
	Metrics    *Metrics
	// OnReconcile, if set, is called after each full pass (tests,
	// benchmarks); not after a pass over changed models.
	OnReconcile func(Result, error)

	once    sync.Once
	watcher *Watcher
	kick    chan struct{}
	mu      sync.Mutex
	leading bool
	last    *lastPass
	notes   map[string]pythonNote // by job id, from the last pass
	blocked map[string]string     // by job id: why Nomad does not place it
	placed  chan struct{}         // a pass wrote jobs (watchPlacements)
	// stateMetrics receive the models gauge (the Observer's Metrics),
	// recounted on recountC (countModels).
	stateMetrics observer.Metrics
	recountC     chan struct{}
}

type lastPass struct {
	At       time.Time `json:"at"`
	Duration string    `json:"duration"`
	Result   string    `json:"result"`
	Error    string    `json:"error,omitempty"`
	Errors   []string  `json:"errors,omitempty"`
}

// Watcher returns the merged desired state (valid once Run started).
func (s *Scheduler) Watcher() *Watcher { return s.watcher }

func (s *Scheduler) init() { s.once.Do(s.setup) }

func (s *Scheduler) setup() {
	var names []string
	for _, src := range s.Sources {
		names = append(names, src.Name())
	}
	s.watcher = NewWatcher(names, s.Reconciler.Options, s.Metrics)
	s.watcher.HashedNames = s.HashedNames
	if s.Quarantine != nil && s.Reconciler.Quarantines == nil {
		s.Reconciler.Quarantines = s.Quarantine
	}
	if s.Reconciler.Sources == nil {
		s.Reconciler.Sources = s.Sources // they vouch for their jobs (source.Adopter)
	}
	s.kick = make(chan struct{}, 1)
	s.placed = make(chan struct{}, 1)
	s.recountC = make(chan struct{}, 1)
	if s.Logger == nil {
		s.Logger = hclog.NewNullLogger()
	}
	s.watcher.Logger = s.Logger
	if s.Inspector != nil {
		prev := s.Inspector.OnDone
		s.Inspector.OnDone = func() {
			s.Kick()
			if prev != nil {
				prev()
			}
		}
	}
	if s.Elector == nil {
		s.Elector = AlwaysLead{}
	}
	if s.Observer != nil {
		// The models gauge counts the desired models Nomad has no
		// allocation of as well (countModels): the observer's counts only
		// ask for a recount.
		if s.Observer.Metrics != nil {
			s.stateMetrics = s.Observer.Metrics
			s.Observer.Metrics = recount{Metrics: s.Observer.Metrics, s: s}
		}
		prev := s.Observer.OnChange
		s.Observer.OnChange = func() {
			s.Kick()
			if prev != nil {
				prev()
			}
		}
	}
}

// Kick asks the leader for a reconcile pass soon.
func (s *Scheduler) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run runs until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	s.init()
	var wg sync.WaitGroup
	for _, src := range s.Sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := src.Name()
			// The watcher logs errors and newly skipped entries (redacted).
			err := src.Run(ctx, func(snap source.Snapshot) { s.watcher.Report(name, snap) })
			if err != nil && ctx.Err() == nil {
				s.Logger.Error("source stopped", "source", name, "error", redact.Error(err))
				s.watcher.Report(name, source.Snapshot{Err: err})
			}
		}()
	}
	if s.Observer != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.Observer.Run(ctx) }()
	}
	if s.Placements != nil && s.Observer != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.watchPlacements(ctx) }()
	}
	if s.Quarantine != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.Quarantine.Watch(ctx, s.Kick) }()
	}
	if s.stateMetrics != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.countModels(ctx) }()
	}
	for ctx.Err() == nil {
		lctx, release, err := s.Elector.Lead(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			s.Logger.Error("cannot contend for leadership; retrying", "error", redact.Error(err))
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
			continue
		}
		s.setLeading(true)
		s.Logger.Info("leading: reconciling")
		s.lead(lctx)
		release()
		s.setLeading(false)
		if ctx.Err() == nil {
			s.Logger.Warn("lost leadership; waiting to lead again")
		}
	}
	wg.Wait()
	return nil
}

func (s *Scheduler) setLeading(v bool) {
	s.mu.Lock()
	s.leading = v
	s.mu.Unlock()
	s.Metrics.setLeader(v)
}

// Leading reports whether this instance holds the lock.
func (s *Scheduler) Leading() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leading
}

func (s *Scheduler) lead(ctx context.Context) {
	resync := s.Resync
	if resync <= 0 {
		resync = 30 * time.Second
	}
	debounce := s.Debounce
	if debounce <= 0 {
		debounce = 20 * time.Millisecond
	}
	backoff := 100 * time.Millisecond
	s.Reconciler.Guard.Reset()
	var (
		last         map[string]*Desired // the desired state of the last pass
		lastComplete bool
		woken        bool      // by a change of the desired state
		nextFull     time.Time // when the next full pass is due
	)
	for {
		changed := s.watcher.Changed()
		desired, complete := s.watcher.Desired()
		var held map[string]bool
		var nextHoldEnd time.Time
		if s.Observer != nil {
			held, nextHoldEnd = s.Observer.Held()
		}
		s.readPythons(ctx, desired)
		full := true
		if woken && last != nil && complete == lastComplete {
			if ids, ok := changedModels(last, desired); ok {
				full = !s.reconcileModels(ctx, desired, ids, held)
				if ctx.Err() != nil {
					return
				}
			}
		}
		last, lastComplete = desired, complete
		if full {
			wait, stop := s.fullPass(ctx, desired, held, complete, resync, &backoff)
			if stop {
				return
			}
			nextFull = time.Now().Add(wait)
		}
		wait := time.Until(nextFull)
		for _, next := range []time.Time{nextHoldEnd, s.Reconciler.Guard.NextRelease()} {
			if !next.IsZero() {
				wait = min(wait, time.Until(next)+10*time.Millisecond)
			}
		}
		timer := time.NewTimer(wait)
		woken = false
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-changed:
			woken = true
		case <-s.kick:
		case <-timer.C:
		}
		timer.Stop()
		// Gather a burst (several accounts in one slot) into one pass.
		select {
		case <-ctx.Done():
			return
		case <-time.After(debounce):
		}
	}
}

// fullPass runs a pass over every model (Reconciler.Reconcile), records
// and logs it, and returns how long until the next one is due (resync, or
// the backoff after a failure, which it doubles), and whether ctx ended.
func (s *Scheduler) fullPass(ctx context.Context, desired map[string]*Desired, held map[string]bool, complete bool, resync time.Duration, backoff *time.Duration) (time.Duration, bool) {
	t0 := time.Now()
	res, err := s.Reconciler.Reconcile(ctx, desired, held, complete)
	if ctx.Err() != nil {
		return 0, true
	}
	d := time.Since(t0)
	s.Metrics.reconciled(res, err, d, len(desired))
	if res.Registered+res.Updated > 0 {
		s.jobsWritten()
	}
	s.record(res, err, d)
	if err != nil {
		s.Logger.Error("reconcile failed; retrying", "error", redact.Error(err), "in", *backoff)
	} else if res.Registered+res.Updated+res.Stopped+res.Purged > 0 || len(res.Errors) > 0 {
		s.Logger.Info("reconciled", "result", res.String(), "took", d.Round(time.Millisecond), "complete", complete)
	}
	if s.OnReconcile != nil {
		s.OnReconcile(res, err)
	}
	wait := resync
	if err != nil || len(res.Errors) > 0 {
		wait = *backoff
		*backoff = min(*backoff*2, 10*time.Second)
	} else {
		*backoff = 100 * time.Millisecond
	}
	if res.DeferredRollouts > 0 {
		// Rollouts finish in seconds (a canary turns healthy, is
		// promoted): look again soon rather than at the next resync.
		wait = min(wait, 5*time.Second)
	}
	return wait, false
}

// maxModelPass bounds the models a pass over the changed models takes:
// more at once (a source's first reading, a crunch's mass change) is a
// full pass's work.
const maxModelPass = 256

// changedModels returns the job ids of the models whose desired job
// changed between two desired states (added, another spec, a duplicate or
// a wait that came or went), and whether a pass over them alone does all
// the change asks for: only models desired running, none gone, and not
// too many (maxModelPass). A change that stops a model is the full pass's
// (the stop guard weighs it against the crunch's other models).
func changedModels(last, now map[string]*Desired) ([]string, bool) {
	var ids []string
	for id, d := range now {
		p := last[id]
		if p != nil && p.Spec == d.Spec && p.Model.Running == d.Model.Running && p.Wait == d.Wait && p.Duplicate == d.Duplicate {
			continue
		}
		if !d.Model.Running || len(ids) == maxModelPass {
			return nil, false
		}
		ids = append(ids, id)
	}
	for id := range last {
		if now[id] == nil {
			return nil, false
		}
	}
	slices.Sort(ids)
	return ids, len(ids) > 0
}

// reconcileModels runs a pass over the models ids (Reconciler.
// ReconcileModels), and reports whether it did all they need: when it did
// not (an error, a write that failed, a quarantine, a rollout deferred),
// the full pass runs at once.
func (s *Scheduler) reconcileModels(ctx context.Context, desired map[string]*Desired, ids []string, held map[string]bool) bool {
	t0 := time.Now()
	res, err := s.Reconciler.ReconcileModels(ctx, desired, ids, held)
	d := time.Since(t0)
	s.Metrics.modelPass(res, err, d)
	if res.Registered+res.Updated > 0 {
		s.jobsWritten()
	}
	switch {
	case err != nil:
		s.Logger.Warn("the pass over the changed models failed; running a full pass", "models", len(ids), "error", redact.Error(err))
		return false
	case res.Registered+res.Updated > 0 || len(res.Errors) > 0:
		s.Logger.Info("reconciled the changed models", "models", len(ids), "result", res.String(), "took", d.Round(time.Millisecond))
	}
	return len(res.Errors) == 0 && res.Quarantined == 0 && res.DeferredRollouts == 0
}

func (s *Scheduler) record(res Result, err error, d time.Duration) {
	p := &lastPass{At: time.Now(), Duration: d.Round(time.Microsecond).String(), Result: res.String()}
	if err != nil {
		p.Error = redact.URLsIn(err.Error())
	}
	for i, e := range res.Errors {
		if i == 20 {
			break
		}
		p.Errors = append(p.Errors, redact.URLsIn(e.Error()))
	}
	s.mu.Lock()
	s.last = p
	s.mu.Unlock()
}

// Elector decides which scheduler instance reconciles (leader.ConsulLock
// among several instances).
type Elector interface {
	// Lead blocks until this instance leads (or ctx ends), then returns a
	// context that is cancelled when leadership is lost or ctx ends, and a
	// function that gives leadership up.
	Lead(ctx context.Context) (context.Context, func(), error)
}

// AlwaysLead is the Elector of a single instance without Consul.
type AlwaysLead struct{}

// Lead implements Elector.
func (AlwaysLead) Lead(ctx context.Context) (context.Context, func(), error) {
	c, cancel := context.WithCancel(ctx)
	return c, cancel, nil
}

// DesiredModel returns the model the desired state has for a job id (valid
// once Run started).
func (s *Scheduler) DesiredModel(jobID string) (jobs.Model, bool) {
	s.init()
	desired, _ := s.watcher.Desired()
	if d := desired[jobID]; d != nil {
		return d.Model, true
	}
	return jobs.Model{}, false
}

// CoordinatorKeys returns the key hashes the desired state gives the
// coordinator of crunch (its name): every on-chain primary and secondary
// hash its models carry, sorted; none when the crunch has no model or no
// hash. The sets are computed once per change of the desired state, not
// per call (the orchestrator WebSocket asks at every connection); a key
// added or removed on chain is seen by the next call after the watcher has
// the new snapshot.
func (s *Scheduler) CoordinatorKeys(crunch string) []string {
	s.init()
	return s.watcher.coordinatorKeys(crunch)
}
