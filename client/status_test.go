package client_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

// What each kind of answer looks like to the coordinator.
func TestResultStatuses(t *testing.T) {
	r := startRunner(t, nil)
	// A port nobody listens on.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close()

	ctx := ctxTimeout(t, time.Minute)
	c, err := client.New(client.Config{Plaintext: true, Source: discovery.Static{
		{ID: "ok", Target: r.addr},
		{ID: "dead", Target: dead},
	}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = c.Run(runCtx) }()
	if err := c.WaitMembership(ctx); err != nil {
		t.Fatal(err)
	}
	only := []string{"ok"}
	deadline := time.Now().Add(20 * time.Second)
	for {
		h := c.Health(ctx, client.Request{Models: only, Timeout: time.Second})[0]
		if h.OK() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("runner never healthy: %s %s", h.Status, h.Message)
		}
		time.Sleep(20 * time.Millisecond)
	}
	one := func(rs []client.Result) client.Result {
		t.Helper()
		if len(rs) != 1 {
			t.Fatalf("%d results, want 1", len(rs))
		}
		return rs[0]
	}
	check := func(what string, r client.Result, status client.Status, code string) {
		t.Helper()
		if r.Status != status || r.Code != code {
			t.Errorf("%s: %s %s (%q), want %s %s", what, r.Status, r.Code, r.Message, status, code)
		}
	}
	req := client.Request{Models: only, Timeout: 5 * time.Second}

	check("call before setup", one(c.Call(ctx, "echo", req)), client.ModelError, "FAILED_PRECONDITION")
	check("setup", one(c.Setup(ctx, "test.Model", req)), client.Success, "SUCCESS")
	echo := req
	echo.Args = client.Same(client.Args{Positional: []*commonspb.Variant{commonspb.Double(2.5)}})
	r1 := one(c.Call(ctx, "echo", echo))
	check("echo", r1, client.Success, "SUCCESS")
	if v, err := r1.Value.AsDouble(); err != nil || v != 2.5 {
		t.Errorf("echo returned %v (%v), want 2.5", v, err)
	}
	if r1.Latency <= 0 || r1.Latency > 5*time.Second {
		t.Errorf("echo latency %v", r1.Latency)
	}
	check("model named twice", one(c.Call(ctx, "echo", client.Request{Models: []string{"ok", "ok"}})), client.Success, "SUCCESS")
	none := one(c.Call(ctx, "echo", req))
	check("method returning None", none, client.Success, "SUCCESS")
	if none.Value != nil {
		t.Errorf("a method returning nothing gave value %v", none.Value)
	}
	failed := one(c.Call(ctx, "fail", req))
	check("method raised", failed, client.ModelError, "MODEL_FAILED")
	if failed.Message == "" {
		t.Error("MODEL_FAILED without the model's message")
	}
	check("unknown method", one(c.Call(ctx, "nope", req)), client.ModelError, "BAD_IMPLEMENTATION")
	bad := req
	bad.Args = func(discovery.Model) (client.Args, error) { return client.Args{}, errors.New("no data for this model") }
	check("argument function failed", one(c.Call(ctx, "echo", bad)), client.ModelError, "INVALID_ARGUMENT")

	infer := req
	infer.Args = client.Positional(commonspb.String("x"))
	check("infer setup", one(c.InferSetup(ctx, req)), client.Success, "SUCCESS")
	ri := one(c.Infer(ctx, infer))
	check("infer", ri, client.Success, "SUCCESS")
	if s, _ := ri.Value.AsString(); s != "x" {
		t.Errorf("infer returned %q, want x", s)
	}
	check("rest", one(c.Rest(ctx, req)), client.Success, "SUCCESS")
	check("unknown model id", one(c.Call(ctx, "echo", client.Request{Models: []string{"ghost"}})), client.Unavailable, "NOT_FOUND")

	// Nobody listening: unavailable at once, not at the deadline.
	t0 := time.Now()
	check("nothing listening", one(c.Call(ctx, "echo", client.Request{Models: []string{"dead"}, Timeout: 10 * time.Second})), client.Unavailable, "UNAVAILABLE")
	if took := time.Since(t0); took > 2*time.Second {
		t.Errorf("a refused connection took %v to report", took)
	}
	if s := c.Stats("dead"); s.ConsecutiveFailures != 1 || s.LastError == "" {
		t.Errorf("stats of the dead model: %+v", s)
	}
	ms := c.Members()
	if len(ms) != 2 || ms[0].ID != "dead" || ms[1].ID != "ok" || ms[1].State.String() != "READY" {
		t.Errorf("members: %+v", ms)
	}
}

// A runner that goes away and comes back on the same address is called
// again on the same long-lived connection's reconnect, without the
// membership changing.
func TestReconnectsWhenRunnerReturns(t *testing.T) {
	r := startRunner(t, nil)
	ctx := ctxTimeout(t, time.Minute)
	c := runClient(t, ctx, client.Config{Plaintext: true, Source: discovery.Static{{ID: "m", Target: r.addr}}})
	waitAllServing(t, c, 1)
	req := client.Request{Timeout: 2 * time.Second}
	if res := c.Setup(ctx, "test.Model", req)[0]; !res.OK() {
		t.Fatalf("setup: %s %s", res.Status, res.Message)
	}
	r.kill(t)
	if res := c.Call(ctx, "echo", req)[0]; res.Status != client.Unavailable {
		t.Errorf("call while the runner is gone: %s %s, want unavailable", res.Status, res.Message)
	}
	startRunnerAt(t, nil, r.addr)
	t0 := time.Now()
	for {
		res := c.Setup(ctx, "test.Model", req)[0]
		if res.OK() {
			break
		}
		if time.Since(t0) > 20*time.Second {
			t.Fatalf("never reconnected: %s %s", res.Status, res.Message)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("called again %v after the runner came back", time.Since(t0).Round(time.Millisecond))
	if res := c.Call(ctx, "echo", req)[0]; !res.OK() {
		t.Errorf("call after reconnecting: %s %s", res.Status, res.Message)
	}
}

// With SetupOnJoin, a model that joins is set up by the client and called
// from the next fan-out on; one whose Setup cannot succeed is left out (and
// named, it is reported as not ready) instead of failing every call.
func TestSetupOnJoin(t *testing.T) {
	a, b, dead := startRunner(t, nil), startRunner(t, nil), deadAddr(t)
	ctx := ctxTimeout(t, time.Minute)
	var src discovery.Manual
	_ = src.Set([]discovery.Model{{ID: "a", Target: a.addr}})
	c := runSetupOnJoin(t, ctx, &src)
	waitReady := func(ids ...string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			ready := map[string]bool{}
			for _, m := range c.Members() {
				ready[m.ID] = m.Ready
			}
			all := true
			for _, id := range ids {
				all = all && ready[id]
			}
			if all {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%v never ready: %v", ids, ready)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	echo := client.Request{Args: client.Positional(commonspb.String("x")), Timeout: 5 * time.Second}
	statuses := func(rs []client.Result) map[string]string {
		out := map[string]string{}
		for _, r := range rs {
			out[r.Model.ID] = r.Status.String() + "/" + r.Code
		}
		return out
	}
	waitReady("a")
	if got := statuses(c.Call(ctx, "echo", echo)); len(got) != 1 || got["a"] != "success/SUCCESS" {
		t.Fatalf("after a joined: %v", got)
	}
	_ = src.Set([]discovery.Model{{ID: "a", Target: a.addr}, {ID: "b", Target: b.addr}, {ID: "dead", Target: dead}})
	waitReady("a", "b")
	got := statuses(c.Call(ctx, "echo", echo))
	if len(got) != 2 || got["a"] != "success/SUCCESS" || got["b"] != "success/SUCCESS" {
		t.Errorf("after b and dead joined: %v, want a and b called, dead left out", got)
	}
	named := echo
	named.Models = []string{"dead", "b"}
	got = statuses(c.Call(ctx, "echo", named))
	if got["dead"] != "unavailable/NOT_READY" || got["b"] != "success/SUCCESS" {
		t.Errorf("naming a model that is not set up: %v", got)
	}
	for deadline := time.Now().Add(5 * time.Second); c.Stats("dead").ConsecutiveFailures < 3; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("dead's Setup attempts were not retried and accounted: %+v", c.Stats("dead"))
		}
	}
}

// A model that moves (a new version's allocation, another node) is called
// where it was until its new member's Setup on join succeeded: make before
// break. A new address that never gets set up never takes the model away;
// one that does takes over.
func TestMovedModelServesUntilItsNewMemberIsSetUp(t *testing.T) {
	a, b, dead := startRunner(t, nil), startRunner(t, nil), deadAddr(t)
	ctx := ctxTimeout(t, time.Minute)
	var src discovery.Manual
	_ = src.Set([]discovery.Model{{ID: "m", Target: a.addr}})
	c := runSetupOnJoin(t, ctx, &src)
	echo := client.Request{Args: client.Positional(commonspb.String("x")), Timeout: 5 * time.Second}
	// answeredBy waits until a fan-out's one result comes from target.
	answeredBy := func(target string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			rs := c.Call(ctx, "echo", echo)
			if len(rs) == 1 && rs[0].OK() && rs[0].Model.Target == target {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("never answered by %s: %+v", target, rs)
			}
		}
	}
	answeredBy(a.addr)
	_ = src.Set([]discovery.Model{{ID: "m", Target: dead}})
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		rs := c.Call(ctx, "echo", echo)
		if len(rs) != 1 || !rs[0].OK() || rs[0].Model.Target != a.addr {
			t.Fatalf("while its new address is not set up, the model is not called where it was: %+v", rs)
		}
	}
	_ = src.Set([]discovery.Model{{ID: "m", Target: b.addr}})
	answeredBy(b.addr)
	named := echo
	named.Models = []string{"m"}
	if rs := c.Call(ctx, "echo", named); len(rs) != 1 || !rs[0].OK() || rs[0].Model.Target != b.addr {
		t.Fatalf("named, the model is not called at its new address: %+v", rs)
	}
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// runSetupOnJoin runs a plaintext client of src that sets every joining
// model up as test.Model, retrying every 200 ms at most.
func runSetupOnJoin(t *testing.T, ctx context.Context, src discovery.Source) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Plaintext: true, Source: src, SetupOnJoin: &client.SetupOnJoin{
		ClassName: "test.Model", MaxBackoff: 200 * time.Millisecond,
	}})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.Run(ctx) }()
	return c
}
