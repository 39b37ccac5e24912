package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
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
// triggered: every pass reads all our jobs (one List call) and compares them
// with the whole desired state, so a missed event or a crash between two
// writes is repaired by the next pass; writes use check-and-set, so two
// writers (which the leader lock already prevents) cannot duplicate a job.
type Reconciler struct {
	Nomad   NomadJobs
	Options *jobs.Options
	// PurgeAfter is how long a stopped job stays visible before it is
	// purged (default 24 h).
	PurgeAfter time.Duration
	// Concurrency bounds the writes in flight (default 4).
	Concurrency int
	Logger      hclog.Logger
	Metrics     *Metrics
	now         func() time.Time
}

// Result counts what one pass did.
type Result struct {
	Registered, Updated, Stopped, Purged, Unchanged, Held int
	Errors                                                []error
}

func (r Result) String() string {
	return fmt.Sprintf("registered=%d updated=%d stopped=%d purged=%d unchanged=%d held=%d errors=%d",
		r.Registered, r.Updated, r.Stopped, r.Purged, r.Unchanged, r.Held, len(r.Errors))
}

// Reconcile runs one pass. desired maps job ids to models; held job ids are
// kept stopped (crash-loop backoff). complete says every source has been
// read: until then nothing is stopped or purged, since an absent model
// could simply not have been read yet. The pass decides every write from
// one listing, then makes the writes with bounded concurrency.
func (r *Reconciler) Reconcile(ctx context.Context, desired map[string]*Desired, held map[string]bool, complete bool) (Result, error) {
	var res Result
	log := r.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	now := time.Now
	if r.now != nil {
		now = r.now
	}
	purgeAfter := r.PurgeAfter
	if purgeAfter <= 0 {
		purgeAfter = 24 * time.Hour
	}
	existing, err := r.Nomad.ListJobs(ctx, names.JobPrefix)
	if err != nil {
		return res, err
	}
	have := make(map[string]*nomad.JobStub, len(existing))
	for i := range existing {
		have[existing[i].ID] = &existing[i]
	}
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		res.Errors = append(res.Errors, err)
		mu.Unlock()
		log.Error("reconcile", "error", redactErr(err))
	}
	var ops []func(context.Context)

	for id, d := range desired {
		cur := have[id]
		if cur != nil && cur.Meta[names.MetaManaged] != "true" {
			fail(fmt.Errorf("job %s exists but was not created by the scheduler; leaving it alone (model %s of %s)", id, d.Model.ModelID, d.Model.Crunch))
			continue
		}
		if !d.Model.Running || held[id] {
			if held[id] {
				res.Held++
			}
			continue // handled with the undesired jobs below
		}
		if cur != nil && !cur.Stop && cur.Meta[names.MetaSpec] == d.Spec {
			res.Unchanged++
			continue
		}
		ops = append(ops, func(ctx context.Context) {
			job, err := jobs.Build(&d.Model, r.Options)
			if err != nil {
				fail(err)
				return
			}
			job.Meta[names.MetaSource] = d.Source
			var index uint64
			if cur != nil {
				index = cur.JobModifyIndex
			}
			if err := r.Nomad.Register(ctx, job, index); err != nil {
				if errors.Is(err, nomad.ErrConflict) {
					log.Warn("job changed under us; the next pass decides again", "job", id)
				}
				fail(err)
				return
			}
			r.Metrics.nomadWrite("register")
			mu.Lock()
			defer mu.Unlock()
			if cur == nil {
				res.Registered++
				log.Info("registered", "job", id, "crunch", d.Model.Crunch, "model", d.Model.ModelID)
			} else {
				res.Updated++
				log.Info("updated", "job", id, "crunch", d.Model.Crunch, "model", d.Model.ModelID, "was_stopped", cur.Stop)
			}
		})
	}

	if complete {
		for id, cur := range have {
			if cur.Meta[names.MetaManaged] != "true" {
				continue
			}
			d := desired[id]
			if d != nil && d.Model.Running && !held[id] {
				continue
			}
			if !cur.Stop {
				why := "no longer authorized"
				if d != nil && held[id] {
					why = "crash-loop backoff"
				} else if d != nil {
					why = "desired state STOPPED"
				}
				ops = append(ops, func(ctx context.Context) {
					if err := r.Nomad.Stop(ctx, id); err != nil {
						fail(err)
						return
					}
					r.Metrics.nomadWrite("stop")
					mu.Lock()
					res.Stopped++
					mu.Unlock()
					log.Info("stopped", "job", id, "reason", why)
				})
				continue
			}
			if held[id] || now().Sub(cur.SubmitTime) < purgeAfter {
				continue
			}
			ops = append(ops, func(ctx context.Context) {
				if err := r.Nomad.Purge(ctx, id); err != nil {
					fail(err)
					return
				}
				r.Metrics.nomadWrite("purge")
				mu.Lock()
				res.Purged++
				mu.Unlock()
				log.Info("purged", "job", id, "stopped_for", now().Sub(cur.SubmitTime).Round(time.Second))
			})
		}
	}

	workers := r.Concurrency
	if workers <= 0 {
		workers = 4
	}
	work := make(chan func(context.Context))
	var wg sync.WaitGroup
	for range min(workers, len(ops)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for op := range work {
				op(ctx)
			}
		}()
	}
feed:
	for _, op := range ops {
		select {
		case work <- op:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, nil
}
