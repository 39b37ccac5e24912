//go:build e2e

package driver_test

import (
	"context"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery/consul"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/pki/vaultpki"
	"github.com/modelnodes/modelnodes/runner/authz"
)

// A crunch whose on-chain name is no DNS label (upper case, an underscore, a
// dot), end to end on the real agents: the operator onboards its coordinator
// with the deploy scripts under that name (Vault AppRole and certificate,
// Consul token), the scheduler's production job registers the model in
// Consul, and the coordinator's client finds it through the health API with
// its own token and calls it over mTLS. Every part derives the crunch's names
// through package names (the scripts through bin/modelnodes-names); before,
// the job registered crunch-my-crunch-v2, the client watched
// crunch-My_Crunch.v2 and Vault refused to onboard the name at all.
//
// The crunch whose name is the old mapping's output, my-crunch-v2, is
// another crunch: its coordinator neither sees the model in Consul nor gets
// past the runner.
func TestE2ECrunchNameIsNoDNSLabel(t *testing.T) {
	c := startModelboxCluster(t, "modelnodes-names")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const crunch, twin = "My_Crunch.v2", "my-crunch-v2"

	coordinator, err := c.CoordinatorIssuer(ctx, crunch)
	if err != nil {
		t.Fatalf("onboarding the coordinator of %q in Vault: %v", crunch, err)
	}
	twinCoordinator, err := c.CoordinatorIssuer(ctx, twin)
	if err != nil {
		t.Fatal(err)
	}
	if leaf := coordinator.Certificate().Leaf; len(leaf.URIs) != 1 || leaf.URIs[0].String() != names.CoordinatorURI(crunch) ||
		leaf.Subject.CommonName != names.CoordinatorCommonName(crunch) {
		t.Fatalf("the coordinator's certificate names %s %v, want %s %s", leaf.Subject.CommonName, leaf.URIs,
			names.CoordinatorCommonName(crunch), names.CoordinatorURI(crunch))
	}
	consulAs, err := c.CoordinatorConsul(ctx, crunch)
	if err != nil {
		t.Fatal(err)
	}
	twinConsul, err := c.CoordinatorConsul(ctx, twin)
	if err != nil {
		t.Fatal(err)
	}

	m := &jobs.Model{Crunch: crunch, ModelID: "names-model", ModelDir: hostileModel(t), Runtime: "python",
		Hardware: jobs.CPU, CPU: 200, MemoryMB: 256, CertHash: authz.SPKIHash(coordinator.Certificate().Leaf),
		CertHashSecondary: authz.SPKIHash(twinCoordinator.Certificate().Leaf)}
	job, err := jobs.Build(m, &jobs.Options{CRLURL: c.Vault.Addr + "/v1/pki_int/issuers", AllowHostModelDirs: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := job.TaskGroups[0].Services[0].Name; got != "crunch-my-crunch-v2--eocje7s2rsjigyf5" {
		t.Fatalf("the job registers service %q", got)
	}
	if _, _, err := c.Nomad.Client.Jobs().Register(job, nil); err != nil {
		t.Fatal(err)
	}
	alloc := waitHealthyAlloc(t, c.Nomad.Client, *job.ID)
	t.Cleanup(func() { stopJob(t, c.Nomad.Client, *job.ID, alloc) })

	// The coordinator, as cmd/coordinator runs it with --crunch My_Crunch.v2.
	res := fanOutSetup(t, ctx, consulAs, crunch, coordinator)
	if len(res) != 1 || !res[0].OK() {
		t.Fatalf("the coordinator of %q calling its crunch: %+v, want one success", crunch, res)
	}
	// The twin crunch's coordinator, whose key is even on the model's list:
	// its Consul token does not read the crunch's service ...
	if entries, _, err := twinConsul.Health().Service(names.Service(crunch), "", false, nil); err != nil || len(entries) != 0 {
		t.Errorf("the coordinator of %q reads %s: %d entries, %v", twin, names.Service(crunch), len(entries), err)
	}
	if res := fanOutSetup(t, ctx, twinConsul, twin, twinCoordinator); len(res) != 0 {
		t.Errorf("the coordinator of %q finds models: %+v", twin, res)
	}
	// ... and, given the address, the runner refuses its certificate.
	res = fanOutSetup(t, ctx, consulAs, crunch, twinCoordinator)
	if len(res) != 1 || res[0].OK() {
		t.Errorf("the coordinator of %q calling %q's model: %+v, want a refusal", twin, crunch, res)
	}
}

// fanOutSetup discovers crunch's models through Consul as cl's token sees
// them and calls Setup on each with iss's certificate. No models: no results.
func fanOutSetup(t *testing.T, ctx context.Context, cl *consulapi.Client, crunch string, iss *vaultpki.Issuer) []client.Result {
	t.Helper()
	return setupEach(t, ctx, client.Config{
		Source: &consul.Source{Client: cl, Service: names.Service(crunch), Crunch: crunch},
		TLS:    iss,
	})
}

// setupEach runs a coordinator's client with cfg until its first membership
// and calls Setup("base.Base") on every member.
func setupEach(t *testing.T, ctx context.Context, cfg client.Config) []client.Result {
	t.Helper()
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(cctx) }()
	defer func() { cancel(); <-done }()
	wctx, wcancel := context.WithTimeout(cctx, 30*time.Second)
	defer wcancel()
	if err := c.WaitMembership(wctx); err != nil {
		t.Fatalf("no membership: %v", err)
	}
	return c.Setup(cctx, "base.Base", client.Request{Timeout: 10 * time.Second})
}
