//go:build e2e

package scheduler

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery/consul"
	"github.com/modelnodes/modelnodes/internal/testing/solanatest"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/scheduler/source/solana/onchain"
)

// exampleCrunch is the chain state the scheduler's e2e tests start from: a
// crunch whose coordinator the security team onboarded (a Vault AppRole
// signing its certificate, a Consul token reading its service), planted on
// a dev chain of its own with that certificate's key hash in its account,
// and the Go example model served as the artifact its authorizations name.
type exampleCrunch struct {
	*solanatest.Chain
	name  string
	coord *coordinator
	// account is the crunch's account as planted (plantCrunch).
	account  *onchain.Crunch
	artifact string
	sum      [32]byte
}

// newExampleCrunch onboards crunch name's coordinator in cl, serves the
// example model, starts a dev chain and plants the crunch in it.
func newExampleCrunch(t testing.TB, ctx context.Context, cl *testcluster.Cluster, name string) *exampleCrunch {
	t.Helper()
	e := &exampleCrunch{name: name, coord: onboardCoordinator(t, ctx, cl, name)}
	e.artifact, e.sum = serveExampleModel(t)
	e.Chain = solanatest.NewChain(t, solanatest.StartFront(t))
	e.account = &onchain.Crunch{Name: name, Bump: 255}
	copy(e.account.Coordinator[:], e.Coord[:])
	hashBytes(t, authz.SPKIHash(e.coord.issuer.Certificate().Leaf), &e.account.CertHash)
	e.plantCrunch(t)
	return e
}

// plantCrunch writes the crunch's account (again, after the front was
// reset or the account closed).
func (e *exampleCrunch) plantCrunch(t testing.TB) {
	t.Helper()
	e.Front.SetAccount(t, e.Crunch, e.Program, e.account.Encode())
}

// auth returns an authorization of the crunch for the example model as
// modelID, running, with the resources of the callable benchmark's models;
// the caller may change it before planting it.
func (e *exampleCrunch) auth(modelID string) *onchain.ModelAuthorization {
	a := e.Auth(modelID, true, callableMemory)
	a.ArtifactURI, a.ArtifactSHA256 = e.artifact, e.sum
	a.Runtime, a.Entry, a.CPUMHz = onchain.RuntimeExecutable, "example-model", callableCPU
	return a
}

// rolloutOptions are the job options of models that roll out as
// production's do: their runners fetch the test Vault's revocation lists,
// watch Consul for their replacement (runner/supersede: a canary must not
// count as one), and keep their key in Vault (runner-keys/<job id>: a new
// version serves with the same key).
func rolloutOptions(cl *testcluster.Cluster) *jobs.Options {
	opts := *testOptions
	opts.CRLURL = cl.Vault.Addr + "/v1/pki_int/issuers"
	opts.RunnerConsulAddr = cl.Consul.Addr
	opts.RunnerVaultAddr = cl.Vault.Addr
	return &opts
}

// startFanOut starts the crunch's coordinator: its client finds the models
// through Consul, sets each up as className, and calls them all every 100
// ms over mTLS until the test ends.
func (e *exampleCrunch) startFanOut(t testing.TB, ctx context.Context, className string) (*client.Client, *fanOut) {
	t.Helper()
	cc, err := client.New(client.Config{
		Source: &consul.Source{Client: e.coord.consul, Service: names.Service(e.name), Crunch: e.Crunch.String()},
		TLS:    e.coord.issuer, Timeout: 5 * time.Second,
		SetupOnJoin: &client.SetupOnJoin{ClassName: className, Timeout: 10 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = cc.Run(ctx) }()
	loop := &fanOut{cc: cc}
	loop.run(ctx)
	t.Cleanup(loop.stop)
	return cc, loop
}

// stableJob waits up to a minute for a job's current version to be stable
// (its deployment succeeded: the version Nomad reverts to) and returns it.
func stableJob(t testing.TB, api *nomadapi.Client, jobID string) *nomadapi.Job {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		j, _, err := api.Jobs().Info(jobID, nil)
		if err != nil {
			t.Fatal(err)
		}
		if j.Stable != nil && *j.Stable {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: version %d not stable within a minute", jobID, *j.Version)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// failRollout fails the deployment of a canary on trial, as Nomad does at
// the deployment's progress deadline (40 min: jobs.Build's update block)
// and an operator's `nomad deployment fail` does at once, and waits for
// Nomad's auto_revert to write the stable version good back. It returns
// when the deployment was failed.
func failRollout(t testing.TB, api *nomadapi.Client, jobID string, canary *nomadapi.AllocationListStub, good *nomadapi.Job) time.Time {
	t.Helper()
	d, _, err := api.Jobs().LatestDeployment(jobID, nil)
	if err != nil || d == nil || d.JobVersion != canary.JobVersion {
		t.Fatalf("the canary's deployment: %+v, %v", d, err)
	}
	t.Logf("failing the canary's deployment: %s (%s)", d.Status, d.StatusDescription)
	failed := time.Now()
	if _, _, err := api.Deployments().Fail(d.ID, nil); err != nil {
		t.Fatalf("failing the deployment: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		j, _, err := api.Jobs().Info(jobID, nil)
		if err == nil && *j.Version > canary.JobVersion && j.Meta[names.MetaSpec] == good.Meta[names.MetaSpec] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Nomad did not revert job %s to version %d within 30 s", jobID, *good.Version)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if d, _, err = api.Deployments().Info(d.ID, nil); err != nil || d.Status != nomadapi.DeploymentStatusFailed ||
		!strings.Contains(d.StatusDescription, fmt.Sprintf("rolling back to job version %d", *good.Version)) {
		t.Errorf("the canary's deployment: %+v, %v; want failed, rolling back to version %d", d, err, *good.Version)
	}
	return failed
}
