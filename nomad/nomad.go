// Package nomad is the small adapter the scheduler uses over
// github.com/hashicorp/nomad/api: list the scheduler's jobs with their meta
// in one call, register with check-and-set, stop, purge, list allocations
// and follow the event stream. Every call takes a context.
package nomad

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/names"
)

// ErrConflict is returned by Register when the job changed (or appeared)
// since the modify index the caller passed: somebody else wrote it; re-read
// and decide again.
var ErrConflict = errors.New("job changed since it was read (check-and-set failed)")

// Client talks to one Nomad region and namespace.
type Client struct {
	api       *nomadapi.Client
	namespace string
}

// Config selects the Nomad API to talk to.
type Config struct {
	Address   string // default $NOMAD_ADDR or http://127.0.0.1:4646
	Token     string // default $NOMAD_TOKEN
	Region    string
	Namespace string
	// TLS files for an HTTPS API.
	CACert, ClientCert, ClientKey string
	// Timeout bounds one HTTP request (default 30 s; event streams are not bounded).
	Timeout time.Duration
}

// New returns a client for cfg.
func New(cfg Config) (*Client, error) {
	c := nomadapi.DefaultConfig()
	if cfg.Address != "" {
		c.Address = cfg.Address
	}
	if cfg.Token != "" {
		c.SecretID = cfg.Token
	}
	if cfg.Region != "" {
		c.Region = cfg.Region
	}
	if cfg.Namespace != "" {
		c.Namespace = cfg.Namespace
	}
	if cfg.CACert != "" || cfg.ClientCert != "" {
		c.TLSConfig = &nomadapi.TLSConfig{CACert: cfg.CACert, ClientCert: cfg.ClientCert, ClientKey: cfg.ClientKey}
	}
	api, err := nomadapi.NewClient(c)
	if err != nil {
		return nil, fmt.Errorf("nomad client: %w", err)
	}
	return &Client{api: api, namespace: cfg.Namespace}, nil
}

// Wrap adapts an existing API client.
func Wrap(api *nomadapi.Client) *Client { return &Client{api: api} }

// API returns the underlying client.
func (c *Client) API() *nomadapi.Client { return c.api }

// JobStub is what the reconciler needs to know of an existing job.
type JobStub struct {
	ID     string
	Stop   bool   // stopped (deregistered without purge)
	Status string // pending, running, dead
	// JobModifyIndex is the index a check-and-set update must name.
	JobModifyIndex uint64
	// SubmitTime is when the current version was submitted (for a stopped
	// job: when it was stopped).
	SubmitTime time.Time
	Meta       map[string]string
	// Allocs counts the job's allocations that are running or starting
	// (its summary): more than one for a model's job while a new version's
	// canary runs beside the old one.
	Allocs int
}

func (c *Client) q(ctx context.Context) *nomadapi.QueryOptions {
	return (&nomadapi.QueryOptions{Namespace: c.namespace}).WithContext(ctx)
}

func (c *Client) w(ctx context.Context) *nomadapi.WriteOptions {
	return (&nomadapi.WriteOptions{Namespace: c.namespace}).WithContext(ctx)
}

// ListJobs returns the jobs whose id starts with prefix, with their meta,
// in one API call.
func (c *Client) ListJobs(ctx context.Context, prefix string) ([]JobStub, error) {
	q := c.q(ctx)
	q.Prefix = prefix
	stubs, _, err := c.api.Jobs().ListOptions(&nomadapi.JobListOptions{Fields: &nomadapi.JobListFields{Meta: true}}, q)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	out := make([]JobStub, 0, len(stubs))
	for _, s := range stubs {
		js := JobStub{
			ID: s.ID, Stop: s.Stop, Status: s.Status, JobModifyIndex: s.JobModifyIndex,
			SubmitTime: time.Unix(0, s.SubmitTime), Meta: s.Meta,
		}
		if s.JobSummary != nil {
			for _, g := range s.JobSummary.Summary {
				js.Allocs += g.Running + g.Starting
			}
		}
		out = append(out, js)
	}
	return out, nil
}

// Register writes job if it is still at modifyIndex (0: only if no job of
// that id exists). A lost race returns ErrConflict.
func (c *Client) Register(ctx context.Context, job *nomadapi.Job, modifyIndex uint64) error {
	_, _, err := c.api.Jobs().RegisterOpts(job, &nomadapi.RegisterOptions{EnforceIndex: true, ModifyIndex: modifyIndex}, c.w(ctx))
	if err != nil {
		if strings.Contains(err.Error(), "Enforcing job modify index") {
			return fmt.Errorf("register %s: %w", *job.ID, ErrConflict)
		}
		return fmt.Errorf("register %s: %w", *job.ID, err)
	}
	return nil
}

// Stop deregisters a job without purging it: its allocations stop, the job
// stays visible (and restartable) until purged.
func (c *Client) Stop(ctx context.Context, id string) error {
	if _, _, err := c.api.Jobs().DeregisterOpts(id, &nomadapi.DeregisterOptions{}, c.w(ctx)); err != nil {
		return fmt.Errorf("stop %s: %w", id, err)
	}
	return nil
}

// Purge removes a job from Nomad.
func (c *Client) Purge(ctx context.Context, id string) error {
	if _, _, err := c.api.Jobs().DeregisterOpts(id, &nomadapi.DeregisterOptions{Purge: true}, c.w(ctx)); err != nil {
		return fmt.Errorf("purge %s: %w", id, err)
	}
	return nil
}

// Allocations lists the allocations of jobs whose id starts with prefix, and
// the index of the answer (to resume an event stream from).
func (c *Client) Allocations(ctx context.Context, prefix string) ([]*nomadapi.AllocationListStub, uint64, error) {
	q := c.q(ctx)
	q.Prefix = ""
	q.Filter = fmt.Sprintf("JobID matches %q", "^"+prefix)
	stubs, meta, err := c.api.Allocations().List(q)
	if err != nil {
		return nil, 0, fmt.Errorf("list allocations: %w", err)
	}
	return stubs, meta.LastIndex, nil
}

// Events streams Job and Allocation events from index on. The channel
// closes when ctx ends or the stream breaks (the last item then carries the
// error): reconnect and re-read state.
func (c *Client) Events(ctx context.Context, index uint64) (<-chan *nomadapi.Events, error) {
	topics := map[nomadapi.Topic][]string{
		nomadapi.TopicJob:        {"*"},
		nomadapi.TopicAllocation: {"*"},
	}
	ch, err := c.api.EventStream().Stream(ctx, topics, index, c.q(ctx))
	if err != nil {
		return nil, fmt.Errorf("event stream: %w", err)
	}
	return ch, nil
}

// PlacementFailure returns why Nomad's newest finished evaluation of the
// job could not place a group (its metrics: nodes evaluated, and how many
// each constraint filtered), or nil when it placed everything. The blocked
// evaluation Nomad keeps waiting for a better node carries no metrics; the
// one that failed does. Needs only read-job.
func (c *Client) PlacementFailure(ctx context.Context, jobID string) (*nomadapi.AllocationMetric, error) {
	evals, _, err := c.api.Jobs().Evaluations(jobID, c.q(ctx))
	if err != nil {
		return nil, fmt.Errorf("evaluations of %s: %w", jobID, err)
	}
	var newest *nomadapi.Evaluation
	for _, e := range evals {
		if e.Status == nomadapi.EvalStatusBlocked || e.Status == nomadapi.EvalStatusPending {
			continue
		}
		if newest == nil || e.CreateIndex > newest.CreateIndex {
			newest = e
		}
	}
	if newest == nil {
		return nil, nil
	}
	for _, m := range newest.FailedTGAllocs {
		return m, nil // a model's job has one group
	}
	return nil, nil
}

// FailedRollout returns the spec (the meta names.MetaSpec) of the version
// Nomad reverted the job from: when the job's current version follows a
// version whose deployment failed (its canary never turned healthy, and
// Nomad's auto-revert wrote the last stable version back as a new version:
// jobs' update block); "" otherwise. Not the latest deployment's status:
// the revert is a deployment of its own (Nomad moves the serving
// allocation to the new version in place), which succeeds. Needs only
// read-job.
func (c *Client) FailedRollout(ctx context.Context, jobID string) (string, error) {
	versions, _, _, err := c.api.Jobs().Versions(jobID, false, c.q(ctx))
	if err != nil {
		return "", fmt.Errorf("versions of %s: %w", jobID, err)
	}
	var cur *nomadapi.Job
	for _, v := range versions {
		if v.Version != nil && (cur == nil || *v.Version > *cur.Version) {
			cur = v
		}
	}
	if cur == nil || *cur.Version == 0 {
		return "", nil
	}
	var prev *nomadapi.Job
	for _, v := range versions {
		if v.Version != nil && *v.Version == *cur.Version-1 {
			prev = v
		}
	}
	if prev == nil {
		return "", nil // Nomad no longer keeps it
	}
	deployments, _, err := c.api.Jobs().Deployments(jobID, false, c.q(ctx))
	if err != nil {
		return "", fmt.Errorf("deployments of %s: %w", jobID, err)
	}
	var last *nomadapi.Deployment
	for _, d := range deployments {
		if d.JobVersion == *prev.Version && (last == nil || d.CreateIndex > last.CreateIndex) {
			last = d
		}
	}
	if last == nil || last.Status != nomadapi.DeploymentStatusFailed {
		return "", nil
	}
	return prev.Meta[names.MetaSpec], nil
}

// RestartAllocations restarts, in place, the tasks of the job's running
// allocations (Nomad's allocation restart; the token needs the namespace's
// alloc-lifecycle capability) and returns how many it restarted. The first
// failure ends it.
func (c *Client) RestartAllocations(ctx context.Context, jobID string) (int, error) {
	allocs, _, err := c.api.Jobs().Allocations(jobID, false, c.q(ctx))
	if err != nil {
		return 0, fmt.Errorf("allocations of %s: %w", jobID, err)
	}
	n := 0
	for _, a := range allocs {
		if a.ClientStatus != nomadapi.AllocClientStatusRunning || a.DesiredStatus != nomadapi.AllocDesiredStatusRun {
			continue
		}
		// Restart takes an allocation but reads only its id.
		if err := c.api.Allocations().Restart(&nomadapi.Allocation{ID: a.ID, Namespace: a.Namespace}, "", c.q(ctx)); err != nil {
			return n, fmt.Errorf("restart allocation %s of %s: %w", a.ID, jobID, err)
		}
		n++
	}
	return n, nil
}
