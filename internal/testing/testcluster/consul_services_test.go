//go:build e2e

package testcluster

import (
	"context"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
)

// Coordinators find a crunch's models as the Consul service crunch-<name>
// (client/discovery). Nomad registers a job's services with a Consul token
// it gets by logging in with the service's workload identity, and
// deploy/consul/setup's binding rules decide which names that token may
// register: a job in another Nomad namespace than the models' cannot
// register crunch-<name> (its allocation fails and the catalog never lists
// it), while the models' namespace can, and the other namespace may still
// register names of its own.
func TestOnlyTheModelsNamespaceRegistersCrunchServices(t *testing.T) {
	c := Shared(t, All)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	const service = "crunch-victim"

	// A cluster set up before this rule existed has the old permissive one:
	// setup replaces it.
	acl := c.Consul.Client.ACL()
	if _, _, err := acl.BindingRuleCreate(&consulapi.ACLBindingRule{AuthMethod: "nomad-workloads",
		BindType: consulapi.BindingRuleBindTypeService, BindName: "${value.nomad_service}",
		Selector: `"nomad_service" in value`}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RunScript(ctx, "deploy/consul/setup", "--anonymous-dns"); err != nil {
		t.Fatal(err)
	}
	rules, _, err := acl.BindingRuleList("nomad-workloads", nil)
	if err != nil {
		t.Fatal(err)
	}
	var selectors []string
	for _, r := range rules {
		if r.BindType == consulapi.BindingRuleBindTypeService {
			selectors = append(selectors, r.Selector)
		}
	}
	if len(selectors) != 2 || !strings.Contains(strings.Join(selectors, "\n"), `value.nomad_namespace == "default"`) {
		t.Fatalf("service binding rules after setup: %q; want the models' and the others'", selectors)
	}

	if _, err := c.Nomad.Client.Namespaces().Register(&nomadapi.Namespace{Name: "rogue"}, nil); err != nil {
		t.Fatalf("create namespace rogue: %v", err)
	}
	inNamespace := func(ns string) *nomadapi.Client {
		cl, err := nomadapi.NewClient(&nomadapi.Config{Address: c.Nomad.Addr, SecretID: c.Nomad.Token, Namespace: ns})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	models, rogue := inNamespace("default"), inNamespace("rogue")
	register := func(cl *nomadapi.Client, jobID, service string) {
		t.Helper()
		if _, _, err := cl.Jobs().Register(serviceJob(jobID, service), nil); err != nil {
			t.Fatalf("register %s: %v", jobID, err)
		}
		t.Cleanup(func() { stopJob(t, cl, jobID) })
	}

	register(models, "model-node-victim", service)
	entry, err := waitPassing(ctx, c.Consul.Client, service)
	if err != nil {
		t.Fatalf("the models' namespace registering %s: %v\n%s", service, err, allocReport(models, "model-node-victim"))
	}
	legit := runningAlloc(ctx, t, models, "model-node-victim")

	register(rogue, "rogue-web", "rogue-web")
	if _, err := waitPassing(ctx, c.Consul.Client, "rogue-web"); err != nil {
		t.Fatalf("another namespace registering a name of its own: %v\n%s", err, allocReport(rogue, "rogue-web"))
	}

	register(rogue, "model-node-rogue", service)
	var failed *nomadapi.AllocationListStub
	waitFor(t, 90*time.Second, "the rogue job's allocation fails", func() bool {
		stubs, _, err := rogue.Jobs().Allocations("model-node-rogue", true, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range stubs {
			if s.ClientStatus == nomadapi.AllocClientStatusRunning {
				t.Fatalf("the rogue job's allocation runs\n%s", allocReport(rogue, "model-node-rogue"))
			}
			if s.ClientStatus == nomadapi.AllocClientStatusFailed {
				failed = s
				return true
			}
		}
		return false
	})
	alloc, _, err := rogue.Allocations().Info(failed.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	why := alloc.ClientDescription
	for _, st := range alloc.TaskStates {
		for _, ev := range st.Events {
			why += "; " + ev.DisplayMessage
		}
	}
	t.Logf("the rogue allocation failed: %s", why)
	if !strings.Contains(why, "Consul token") {
		t.Errorf("the rogue allocation failed for another reason than its Consul login: %s", why)
	}

	// The catalog holds the model's instance and nothing else.
	entries, _, err := c.Consul.Client.Health().Service(service, "", false, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Service.ID != entry.Service.ID || !strings.Contains(entry.Service.ID, legit.ID) {
		var ids []string
		for _, e := range entries {
			ids = append(ids, e.Service.ID)
		}
		t.Errorf("Consul lists %s as %v; want only the models' allocation %s", service, ids, legit.ID)
	}
}

// serviceJob is a job running the test helper's gRPC health server, with a
// Consul service of the given name and a gRPC check on it.
func serviceJob(jobID, service string) *nomadapi.Job {
	task := HelperTask("server")
	task.Env[HelperListenEnv] = "${NOMAD_ADDR_grpc}"
	task.Resources = &nomadapi.Resources{CPU: new(50), MemoryMB: new(32)}
	group := nomadapi.NewTaskGroup("server", 1)
	group.Networks = []*nomadapi.NetworkResource{{DynamicPorts: []nomadapi.Port{{Label: "grpc"}}}}
	group.Services = []*nomadapi.Service{{
		Name: service, Provider: "consul", PortLabel: "grpc",
		Checks: []nomadapi.ServiceCheck{{Name: "grpc-health", Type: "grpc", Interval: time.Second, Timeout: 2 * time.Second}},
	}}
	group.AddTask(task)
	group.RestartPolicy = &nomadapi.RestartPolicy{Attempts: new(0), Mode: new("fail")}
	group.ReschedulePolicy = &nomadapi.ReschedulePolicy{Attempts: new(0), Unlimited: new(false)}
	job := nomadapi.NewServiceJob(jobID, jobID, "global", 50)
	job.Datacenters = []string{"*"}
	job.AddTaskGroup(group)
	return job
}

// stopJob stops a job, waits until its tasks have exited (a task still
// running when the shared cluster stops counts as left behind), and purges
// it.
func stopJob(t *testing.T, cl *nomadapi.Client, jobID string) {
	t.Helper()
	if _, _, err := cl.Jobs().Deregister(jobID, false, nil); err != nil {
		t.Errorf("stop %s: %v", jobID, err)
		return
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		stubs, _, err := cl.Jobs().Allocations(jobID, true, nil)
		if err != nil {
			break
		}
		live := false
		for _, s := range stubs {
			live = live || s.ClientStatus == nomadapi.AllocClientStatusRunning || s.ClientStatus == nomadapi.AllocClientStatusPending
		}
		if !live {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	_, _, _ = cl.Jobs().Deregister(jobID, true, nil)
}
