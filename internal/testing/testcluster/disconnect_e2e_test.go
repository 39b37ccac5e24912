//go:build e2e

package testcluster

import (
	"context"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/credentials"
	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

// disconnectLostAfter is the test's lost_after: longer than the cut, so
// Nomad keeps the models as unknown throughout.
const disconnectLostAfter = 5 * time.Minute

// testRescheduleDelay stands for the jobs' 30 s reschedule delay in make
// test: Nomad's least.
const testRescheduleDelay = 5 * time.Second

// A machine running two models is cut off from the cluster (its Nomad agent
// and its runners in a network namespace of their own, the veth pair's link
// taken down) for longer than Nomad's heartbeat grace, then reconnected.
// Both models' jobs carry a disconnect block (jobs.Disconnect): model
// "keep" without replacement, model "repl" with one.
//
//   - Cut off: Nomad marks the node disconnected, not down, and both
//     allocations unknown, not lost. "keep" is not replaced; "repl" is,
//     on another machine, after the reschedule delay, and the
//     coordinator's fan-out gets it from there.
//   - Reconnected: "keep" runs on in its first allocation (same runner,
//     never restarted) and answers again; "repl"'s original is stopped
//     (reconcile keep_replacement), its address refuses connections,
//     and its replacement answers. Each model has one runner process, one
//     passing Consul instance, and answers at one address when called
//     directly at each; the coordinator's fan-out is OK from both.
//
// The one change to the production job is the reschedule policy's first
// delay, which Nomad waits after a node turns disconnected before it
// places a replacement: Nomad's least, 5 s, instead of the jobs' 30 s, as
// the cluster's heartbeats are shortened (scaleHeartbeat).
// TestSoakDisconnectedNode runs the jobs as jobs.Build writes them.
func TestDisconnectedNodeKeepsItsModels(t *testing.T) {
	testDisconnectedNode(t, testRescheduleDelay)
}

// TestSoakDisconnectedNode is TestDisconnectedNodeKeepsItsModels with the
// jobs' own reschedule delay (30 s): make soak runs it.
func TestSoakDisconnectedNode(t *testing.T) {
	if os.Getenv("MODELNODES_SOAK") == "" {
		t.Skip("a soak test (a node cut off for 40 s, the jobs' own 30 s reschedule delay): make soak runs it (MODELNODES_SOAK=1)")
	}
	testDisconnectedNode(t, 0)
}

// testDisconnectedNode runs the test, with the jobs' reschedule delay
// replaced by rescheduleDelay when that is positive.
func testDisconnectedNode(t *testing.T, rescheduleDelay time.Duration) {
	ns := NewNetNS(t) // first: its removal runs after everything else's
	c := StartWith(t, All, scaleHeartbeat)
	cut := c.AddNomadClientIn(t, ns)
	other := c.AddNomadClient(t)
	// The models start on the machine that will be cut off (the runners
	// reach their machine's Consul agent through node meta, which only
	// added machines have); the other takes replacements later.
	setEligible(t, c, func(id string) bool { return id == cut.NodeID })
	f := newGoFleet(t, c, "disconnect", 0, func(o *jobs.Options) { o.RunnerConsulAddr = "${meta.consul_http_addr}" })
	art, err := url.Parse(f.url)
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Forward(art.Host); err != nil {
		t.Fatal(err)
	}
	if rescheduleDelay > 0 {
		f.edit = func(j *nomadapi.Job) { j.TaskGroups[0].ReschedulePolicy.Delay = new(rescheduleDelay) }
	}
	f.opts = append(f.opts, func(o *jobs.Options) { o.Disconnect = jobs.Disconnect{LostAfter: disconnectLostAfter} })
	keep, err := f.register()
	if err != nil {
		t.Fatal(err)
	}
	f.opts[1] = func(o *jobs.Options) { o.Disconnect = jobs.Disconnect{LostAfter: disconnectLostAfter, Replace: true} }
	repl, err := f.register()
	if err != nil {
		t.Fatal(err)
	}
	f.waitAllOK(t, time.Now(), 2*time.Minute)
	// A deployment in progress would hold the replacement back (Nomad
	// reschedules no allocation of an active deployment): wait for the
	// models' first deployments to end, min_healthy_time after they
	// passed their checks.
	for _, m := range []string{keep, repl} {
		waitFor(t, time.Minute, "model "+m+"'s deployment successful", func() bool {
			d, _, err := c.Nomad.Client.Jobs().LatestDeployment(f.jobIDs[m], nil)
			return err == nil && d != nil && d.Status == nomadapi.DeploymentStatusSuccessful
		})
	}
	before := f.allocs(t)
	oldTarget := f.last().targets
	oldRunners := f.runners(t, []string{before[keep].id, before[repl].id})
	setEligible(t, c, func(id string) bool { return id == cut.NodeID || id == other.NodeID })
	t.Logf("models %s (no replacement) and %s (replaced) run on %s at %v; cutting it off", keep, repl, cut.Name, oldTarget)

	t0 := time.Now()
	if err := ns.Cut(); err != nil {
		t.Fatal(err)
	}
	var disconnected, unknown, placed, passing, served time.Duration
	var replacement string
	for deadline := t0.Add(2 * time.Minute); served == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after 2m cut off: node disconnected %v, allocations unknown %v, replacement placed %v, passing %v; the coordinator never got %s from it",
				disconnected, unknown, placed, passing, repl)
		}
		if disconnected == 0 {
			if n, _, err := c.Nomad.Client.Nodes().Info(cut.NodeID, nil); err == nil {
				switch n.Status {
				case nomadapi.NodeStatusDisconnected:
					disconnected = time.Since(t0)
				case nomadapi.NodeStatusDown:
					t.Fatalf("node %s is down after %.1fs, not disconnected: the disconnect block was not applied", cut.Name, time.Since(t0).Seconds())
				}
			}
		}
		if unknown == 0 && clientStatus(t, c, before[keep].id) == nomadapi.AllocClientStatusUnknown &&
			clientStatus(t, c, before[repl].id) == nomadapi.AllocClientStatusUnknown {
			unknown = time.Since(t0)
		}
		if placed == 0 {
			if id := otherAlloc(t, c, f.jobIDs[repl], before[repl].id); id != "" {
				placed, replacement = time.Since(t0), id
			}
		}
		if passing == 0 {
			if n, err := f.passing(); err == nil && n[repl] == 1 && placed > 0 {
				passing = time.Since(t0)
			}
		}
		if s := f.last(); s.targets[repl] != "" && s.targets[repl] != oldTarget[repl] && !slices.ContainsFunc(s.failed, hasPrefix(repl+":")) {
			served = time.Since(t0)
		}
	}
	if id := otherAlloc(t, c, f.jobIDs[keep], before[keep].id); id != "" {
		t.Errorf("model %s (replace = false) was replaced while its node was disconnected: allocation %s", keep, id)
	}
	if st := clientStatus(t, c, before[keep].id); st != nomadapi.AllocClientStatusUnknown {
		t.Errorf("model %s's allocation is %s while its node is cut off, want unknown", keep, st)
	}
	cutFor := time.Since(t0)
	t.Logf("cut off -> node disconnected %.1fs -> allocations unknown %.1fs -> %s's replacement placed %.1fs -> passing %.1fs -> coordinator calls it %.1fs",
		disconnected.Seconds(), unknown.Seconds(), repl, placed.Seconds(), passing.Seconds(), served.Seconds())

	if a, _, err := c.Nomad.Client.Allocations().Info(before[repl].id, nil); err == nil {
		t.Logf("before the reconnection, %s's original allocation is %s, desired %s", repl, a.ClientStatus, a.DesiredStatus)
	}
	t1 := time.Now()
	if err := ns.Reconnect(); err != nil {
		t.Fatal(err)
	}
	var ready, resumed, stopped, closed time.Duration
	for deadline := t1.Add(time.Minute); ready == 0 || resumed == 0 || stopped == 0 || closed == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("1m after reconnecting: node ready %v, %s running again %v, %s's original stopped %v, its address closed %v",
				ready, keep, resumed, repl, stopped, closed)
		}
		if ready == 0 {
			if n, _, err := c.Nomad.Client.Nodes().Info(cut.NodeID, nil); err == nil && n.Status == nomadapi.NodeStatusReady {
				ready = time.Since(t1)
			}
		}
		if resumed == 0 && clientStatus(t, c, before[keep].id) == nomadapi.AllocClientStatusRunning {
			resumed = time.Since(t1)
		}
		if stopped == 0 {
			if a, _, err := c.Nomad.Client.Allocations().Info(before[repl].id, nil); err == nil && a.DesiredStatus == nomadapi.AllocDesiredStatusStop {
				stopped = time.Since(t1)
			}
		}
		if closed == 0 {
			if conn, err := net.DialTimeout("tcp", oldTarget[repl], time.Second); err != nil {
				closed = time.Since(t1)
			} else {
				conn.Close()
			}
		}
	}
	ok := f.waitAllOK(t, t1, time.Minute) // the first fan-out OK from both
	recovered := ok.at.Sub(t1)
	t.Logf("reconnected after %.1fs cut off -> node ready %.1fs -> %s running again %.1fs -> %s's original stopped %.1fs, its address closed %.1fs -> fan-out OK from both %.1fs",
		cutFor.Seconds(), ready.Seconds(), keep, resumed.Seconds(), repl, stopped.Seconds(), closed.Seconds(), recovered.Seconds())

	// Afterwards: one runner per model, where Nomad says it runs.
	after := f.allocs(t)
	if after[keep] != before[keep] {
		t.Errorf("model %s runs as %+v after the reconnection, was %+v (restarted or doubled)", keep, after[keep], before[keep])
	}
	if after[repl].id != replacement || after[repl].running != 1 {
		t.Errorf("model %s runs as %+v after the reconnection, want its replacement %s alone", repl, after[repl], replacement)
	}
	runners := f.runners(t, f.allocIDsOf(t))
	if !slices.Equal(runners[before[keep].id], oldRunners[before[keep].id]) || len(runners[replacement]) != 1 || len(runners) != 2 {
		t.Errorf("runner processes by allocation %v; want %s's first runner %v and one in %s's replacement %s, no other",
			runners, keep, oldRunners[before[keep].id], repl, replacement)
	}
	// Through Consul: one passing instance each; the coordinator calls
	// keep where it always ran and repl at its replacement.
	waitFor(t, jobs.CheckInterval+5*time.Second, "one passing Consul instance per model", func() bool {
		n, err := f.passing()
		return err == nil && n[keep] == 1 && n[repl] == 1
	})
	if ok.targets[keep] != oldTarget[keep] || ok.targets[repl] == oldTarget[repl] {
		t.Errorf("the coordinator calls %v, want %s at %s and %s elsewhere than %s", ok.targets, keep, oldTarget[keep], repl, oldTarget[repl])
	}
	// Directly: each address the model ever had, called as a coordinator
	// would; one answers per model.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range []string{keep, repl} {
		addrs := []string{oldTarget[m]}
		if ok.targets[m] != oldTarget[m] {
			addrs = append(addrs, ok.targets[m])
		}
		answered := callEach(t, ctx, f.tls, m, addrs)
		if len(answered) != 1 {
			t.Errorf("model %s answered at %v of %v, want exactly one", m, answered, addrs)
		}
	}
	// What the coordinator saw: each model missing from its fan-out from
	// the cut on, keep until shortly after the reconnection, repl until
	// its replacement served; nothing failed afterwards.
	for _, m := range []string{keep, repl} {
		var first, last time.Time
		for _, s := range f.failures(t0, m) {
			if first.IsZero() {
				first = s.at
			}
			last = s.at
		}
		if first.IsZero() {
			t.Logf("the coordinator's fan-out never failed for %s", m)
			continue
		}
		t.Logf("the coordinator's fan-out failed for %s from %.1fs to %.1fs after the cut", m, first.Sub(t0).Seconds(), last.Sub(t0).Seconds())
		if end := map[string]time.Time{keep: t1.Add(recovered), repl: t0.Add(served)}[m]; last.After(end) {
			t.Errorf("the fan-out failed for %s at %.1fs, after it had recovered (%.1fs)", m, last.Sub(t0).Seconds(), end.Sub(t0).Seconds())
		}
	}
}

// setEligible makes the nodes for which want is true eligible for
// placements, the others not.
func setEligible(t testing.TB, c *Cluster, want func(nodeID string) bool) {
	t.Helper()
	stubs, _, err := c.Nomad.Client.Nodes().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range stubs {
		if _, err := c.Nomad.Client.Nodes().ToggleEligibility(n.ID, want(n.ID), nil); err != nil {
			t.Fatal(err)
		}
	}
}

func clientStatus(t testing.TB, c *Cluster, allocID string) string {
	t.Helper()
	a, _, err := c.Nomad.Client.Allocations().Info(allocID, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a.ClientStatus
}

// otherAlloc returns an allocation of job other than not that Nomad wants
// running, "" if there is none.
func otherAlloc(t testing.TB, c *Cluster, job, not string) string {
	t.Helper()
	as, _, err := c.Nomad.Client.Jobs().Allocations(job, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if a.ID != not && a.DesiredStatus == nomadapi.AllocDesiredStatusRun {
			return a.ID
		}
	}
	return ""
}

func hasPrefix(p string) func(string) bool {
	return func(s string) bool { return strings.HasPrefix(s, p) }
}

// callEach calls "echo" on model at each address alone, with the
// coordinator's certificate, and returns the addresses that answered.
func callEach(t testing.TB, ctx context.Context, tlsm credentials.Material, model string, addrs []string) []string {
	t.Helper()
	var answered []string
	for i, addr := range addrs {
		src := &discovery.Manual{}
		// One membership per address: the client dials each member once.
		if err := src.Set([]discovery.Model{{ID: model, Target: addr, ServerName: names.ModelServerName(model)}}); err != nil {
			t.Fatal(err)
		}
		cl, err := client.New(client.Config{Source: src, TLS: tlsm, Timeout: 3 * time.Second,
			Logger: hclog.New(&hclog.LoggerOptions{Name: "direct", Level: hclog.Warn, Output: testWriter{t}})})
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = cl.Run(cctx) }()
		if err := cl.WaitMembership(cctx); err != nil {
			t.Fatal(err)
		}
		rs := cl.Call(cctx, "echo", client.Request{Args: client.Positional(commonspb.String("direct")), Models: []string{model}, Timeout: 3 * time.Second})
		cancel()
		<-done
		if len(rs) == 1 && rs[0].OK() {
			answered = append(answered, addr)
		} else {
			t.Logf("direct call %d to %s at %s: %+v", i, model, addr, rs)
		}
	}
	return answered
}
