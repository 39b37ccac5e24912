//go:build e2e

package testcluster

import (
	"context"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/nomad"
)

// Nomad's ACL policies in deploy/nomad/policies, applied by deploy/nomad/setup
// on an ACL-enabled Nomad: the scheduler's token does everything the
// scheduler does (through the scheduler's own Nomad adapter: list, register,
// allocations, the event stream, stop, purge) and nothing else; the
// delegations token writes model jobs' variables and nothing else. Then,
// on the same cluster, the scheduler runs as a Nomad job (testSchedulerJob).
func TestNomadPolicies(t *testing.T) {
	c := StartWith(t, Nomad, Options{NomadACL: true, ShortAllocDir: true})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if c.Nomad.Token == "" {
		t.Fatal("the ACL-enabled cluster has no management token")
	}
	if _, err := c.RunScript(ctx, "deploy/nomad/setup"); err != nil {
		t.Fatal(err)
	}
	token := func(policy string) string {
		t.Helper()
		out, err := c.RunScript(ctx, "deploy/nomad/setup", "token", policy)
		if err != nil {
			t.Fatal(err)
		}
		secret := keyValues(out)["secret_id"]
		if secret == "" {
			t.Fatalf("setup token %s printed no secret_id: %q", policy, out)
		}
		return secret
	}
	schedulerToken, delegationsToken := token("scheduler"), token("delegations")
	as := func(tok string) *nomadapi.Client {
		cl, err := nomadapi.NewClient(&nomadapi.Config{Address: c.Nomad.Addr, SecretID: tok})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	denied := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "Permission denied") {
			t.Errorf("%s: %v, want Permission denied", what, err)
		}
	}
	if _, _, err := as("").Jobs().List(nil); err == nil {
		t.Error("an anonymous caller listed the jobs")
	}

	// The scheduler, through its own adapter. The job is never placed (no
	// such datacenter): this is about the API, not the model.
	sched, err := nomad.New(nomad.Config{Address: c.Nomad.Addr, Token: schedulerToken})
	if err != nil {
		t.Fatal(err)
	}
	m := &jobs.Model{Crunch: "alpha", ModelID: "acl-model", ModelDir: "/nonexistent", Hardware: jobs.CPU}
	job, err := jobs.Build(m, &jobs.Options{Datacenters: []string{"nowhere"}, AllowHostModelDirs: true,
		CRLURL: c.Vault.Addr + "/v1/pki_int/issuers"})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	events, err := sched.Events(sctx, 0)
	if err != nil {
		t.Fatalf("scheduler token, event stream: %v", err)
	}
	if err := sched.Register(ctx, job, 0); err != nil {
		t.Fatalf("scheduler token, register: %v", err)
	}
	sawJob := false
	for !sawJob {
		select {
		case ev, ok := <-events:
			if !ok || ev.Err != nil {
				t.Fatalf("scheduler token, event stream ended: %v", ev)
			}
			for _, e := range ev.Events {
				sawJob = sawJob || (e.Topic == nomadapi.TopicJob && e.Key == *job.ID)
			}
		case <-ctx.Done():
			t.Fatal("scheduler token: no Job event for the registered job")
		}
	}
	stubs, err := sched.ListJobs(ctx, "model-node-")
	if err != nil || len(stubs) != 1 || stubs[0].ID != *job.ID {
		t.Fatalf("scheduler token, list: %v %+v", err, stubs)
	}
	if _, _, err := sched.Allocations(ctx, *job.ID); err != nil {
		t.Errorf("scheduler token, allocations: %v", err)
	}
	if _, err := sched.PlacementFailure(ctx, *job.ID); err != nil {
		t.Errorf("scheduler token, evaluations (why a job is not placed): %v", err)
	}
	if err := sched.Stop(ctx, *job.ID); err != nil {
		t.Errorf("scheduler token, stop: %v", err)
	}
	if err := sched.Purge(ctx, *job.ID); err != nil {
		t.Errorf("scheduler token, purge: %v", err)
	}
	schedAPI := as(schedulerToken)
	_, _, err = schedAPI.Variables().Create(&nomadapi.Variable{Path: "nomad/jobs/" + *job.ID,
		Items: nomadapi.VariableItems{jobs.DelegationItem: "{}"}}, nil)
	denied("scheduler token writing a delegation", err)
	_, _, err = schedAPI.Nodes().List(nil)
	denied("scheduler token listing nodes", err)
	_, _, err = schedAPI.Operator().SchedulerGetConfiguration(nil)
	denied("scheduler token reading the operator config", err)

	// Delegations: the model jobs' variables, nothing else.
	deleg := as(delegationsToken)
	if _, _, err := deleg.Variables().Create(&nomadapi.Variable{Path: "nomad/jobs/model-node-x",
		Items: nomadapi.VariableItems{jobs.DelegationItem: `{"message": "m"}`}}, nil); err != nil {
		t.Errorf("delegations token writing a model job's variable: %v", err)
	}
	_, _, err = deleg.Variables().Create(&nomadapi.Variable{Path: "nomad/jobs/other-job",
		Items: nomadapi.VariableItems{"x": "y"}}, nil)
	denied("delegations token writing another job's variable", err)
	_, _, err = deleg.Jobs().Register(job, nil)
	denied("delegations token registering a job", err)
	if _, _, err := deleg.Jobs().List(nil); err != nil {
		t.Errorf("delegations token listing jobs (to find a model's job id): %v", err)
	}

	t.Run("SchedulerJob", func(t *testing.T) { testSchedulerJob(t, c) })
}
