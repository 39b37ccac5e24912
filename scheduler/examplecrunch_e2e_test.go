//go:build e2e

package scheduler

import (
	"context"
	"testing"

	"github.com/modelnodes/modelnodes/internal/testing/solanatest"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
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
