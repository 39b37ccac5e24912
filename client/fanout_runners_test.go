package client_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/client/failures"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

// deadlineMargin is how late a fan-out may return after its deadline here:
// 50 runners and their 50 worker processes share two vCPUs with the test.
const deadlineMargin = 250 * time.Millisecond

// workArgs gives every model its own id back, and its own sleep.
func workArgs(sleep func(id string) float64) client.ArgsFunc {
	return func(m discovery.Model) (client.Args, error) {
		return client.Args{Positional: []*commonspb.Variant{commonspb.String(m.ID), commonspb.Double(sleep(m.ID))}}, nil
	}
}

func byStatus(rs []client.Result) map[client.Status][]string {
	out := map[client.Status][]string{}
	for _, r := range rs {
		out[r.Status] = append(out[r.Status], r.Model.ID)
	}
	return out
}

// Fifty real runners: some hang past the deadline, some are killed during a
// call, some leave the membership during a call, some join during a call.
// Every model gets the right status, every call returns by its deadline, and
// the failing hook names exactly the models that kept timing out.
func TestFanOutFiftyRunners(t *testing.T) {
	const n = 50
	ctx := ctxTimeout(t, 3*time.Minute)
	runners := map[string]*testRunner{}
	var models []discovery.Model
	for i := range n + 5 {
		r := startRunner(t, nil)
		runners[modelID(i)] = r
		if i < n {
			models = append(models, discovery.Model{ID: modelID(i), Target: r.addr})
		}
	}
	var added []discovery.Model // join during phase 2
	for i := n; i < n+5; i++ {
		added = append(added, discovery.Model{ID: modelID(i), Target: runners[modelID(i)].addr})
	}
	pick := func(rem int) map[string]bool {
		s := map[string]bool{}
		for i := range n {
			if i%10 == rem {
				s[modelID(i)] = true
			}
		}
		return s
	}
	slow, killed, removed := pick(3), pick(5), pick(7)

	var src discovery.Manual
	if err := src.Set(models); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var failing []string
	reg := prometheus.NewRegistry()
	c, err := client.New(client.Config{
		Source: &src, Plaintext: true, Registerer: reg, FailureThreshold: 3,
		OnFailing: func(model string, s failures.Stats) {
			mu.Lock()
			defer mu.Unlock()
			failing = append(failing, model)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = c.Run(runCtx) }()
	if err := c.WaitMembership(ctx); err != nil {
		t.Fatal(err)
	}
	waitAllServing(t, c, n)
	for _, r := range c.Setup(ctx, "test.Model", client.Request{Timeout: 20 * time.Second}) {
		if !r.OK() {
			t.Fatalf("setup of %s: %s %s %s", r.Model.ID, r.Status, r.Code, r.Message)
		}
	}

	// Phase 1: per-model deadline of 1 s, slow models sleep 5 s.
	sleep := func(id string) float64 {
		if slow[id] {
			return 5
		}
		return 0.01
	}
	t0 := time.Now()
	res := c.Call(ctx, "work", client.Request{Args: workArgs(sleep), Timeout: time.Second})
	took := time.Since(t0)
	t.Logf("phase 1 (per-model deadline 1s): returned after %v", took)
	if took > time.Second+deadlineMargin {
		t.Errorf("phase 1 returned after %v, want ≤ 1s + %v", took, deadlineMargin)
	}
	if len(res) != n {
		t.Fatalf("phase 1: %d results, want %d", len(res), n)
	}
	for _, r := range res {
		want := client.Success
		if slow[r.Model.ID] {
			want = client.Timeout
		}
		if r.Status != want {
			t.Errorf("phase 1: %s: %s (%s %s), want %s", r.Model.ID, r.Status, r.Code, r.Message, want)
		}
		if want == client.Success {
			if got, _ := r.Value.AsString(); got != r.Model.ID {
				t.Errorf("phase 1: %s answered %q: per-model arguments went astray", r.Model.ID, got)
			}
		}
	}

	// Phase 2: global deadline 2 s; everyone works 0.4 s. 100 ms in, five
	// runners are killed, five models leave the membership (their runners
	// stay up) and five new ones join.
	sleep2 := func(id string) float64 {
		if slow[id] {
			return 5
		}
		return 0.4
	}
	var next []discovery.Model
	for _, m := range models {
		if !killed[m.ID] && !removed[m.ID] {
			next = append(next, m)
		}
	}
	next = append(next, added...)
	changed := c.Changed()
	go func() {
		time.Sleep(100 * time.Millisecond)
		for id := range killed {
			go runners[id].kill(t)
		}
		_ = src.Set(next)
	}()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	t0 = time.Now()
	res = c.Call(cctx, "work", client.Request{Args: workArgs(sleep2)})
	took = time.Since(t0)
	cancel()
	t.Logf("phase 2 (global deadline 2s, kills and membership changes): returned after %v", took)
	if took > 2*time.Second+deadlineMargin {
		t.Errorf("phase 2 returned after %v, want ≤ 2s + %v", took, deadlineMargin)
	}
	got := byStatus(res)
	if len(res) != n {
		t.Errorf("phase 2: %d results, want the %d models known when it started", len(res), n)
	}
	for _, r := range res {
		want := client.Success
		switch {
		case slow[r.Model.ID]:
			want = client.Timeout
		case killed[r.Model.ID]:
			want = client.Unavailable
		}
		if r.Status != want {
			t.Errorf("phase 2: %s: %s (%s %s), want %s", r.Model.ID, r.Status, r.Code, r.Message, want)
		}
	}
	t.Logf("phase 2 statuses: %v", got)

	// Phase 3: the new membership. The five new models are set up, the
	// removed and killed ones are gone.
	select {
	case <-changed:
	case <-ctx.Done():
		t.Fatal("membership change never reached the client")
	}
	members := c.Members()
	if len(members) != len(next) {
		t.Fatalf("phase 3: %d members, want %d", len(members), len(next))
	}
	var addedIDs []string
	for _, m := range added {
		addedIDs = append(addedIDs, m.ID)
	}
	for _, r := range c.Setup(ctx, "test.Model", client.Request{Models: addedIDs, Timeout: 20 * time.Second}) {
		if !r.OK() {
			t.Fatalf("setup of new model %s: %s %s %s", r.Model.ID, r.Status, r.Code, r.Message)
		}
	}
	t0 = time.Now()
	res = c.Call(ctx, "work", client.Request{Args: workArgs(sleep), Timeout: time.Second})
	took = time.Since(t0)
	if took > time.Second+deadlineMargin {
		t.Errorf("phase 3 returned after %v, want ≤ 1s + %v", took, deadlineMargin)
	}
	var ids []string
	for _, r := range res {
		ids = append(ids, r.Model.ID)
		want := client.Success
		if slow[r.Model.ID] {
			want = client.Timeout
		}
		if r.Status != want {
			t.Errorf("phase 3: %s: %s (%s %s), want %s", r.Model.ID, r.Status, r.Code, r.Message, want)
		}
	}
	var wantIDs []string
	for _, m := range next {
		wantIDs = append(wantIDs, m.ID)
	}
	slices.Sort(wantIDs)
	if !slices.Equal(ids, wantIDs) {
		t.Errorf("phase 3 called %v, want %v", ids, wantIDs)
	}

	// Three timeouts in a row: the hook named exactly the slow models.
	deadline := time.Now().Add(2 * time.Second)
	var slowIDs []string
	for id := range slow {
		slowIDs = append(slowIDs, id)
	}
	slices.Sort(slowIDs)
	for {
		mu.Lock()
		f := slices.Clone(failing)
		mu.Unlock()
		slices.Sort(f)
		if slices.Equal(f, slowIDs) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("failing hook named %v, want %v", f, slowIDs)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := c.Stats(slowIDs[0]); s.ConsecutiveTimeouts != 3 {
		t.Errorf("stats of %s: %+v, want 3 consecutive timeouts", slowIDs[0], s)
	}
	if v := counterSum(t, reg, "modelnodes_client_calls_total", map[string]string{"rpc": "call", "status": "timeout"}); v != 15 {
		t.Errorf("modelnodes_client_calls_total{rpc=call,status=timeout} = %v, want 15", v)
	}
}

// runClient makes a client from cfg, runs it until ctx ends and waits for
// its first membership.
func runClient(t *testing.T, ctx context.Context, cfg client.Config) *client.Client {
	t.Helper()
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.Run(ctx) }()
	if err := c.WaitMembership(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitAllServing waits until n models answer the health check.
func waitAllServing(t *testing.T, c *client.Client, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		res := c.Health(ctx, client.Request{})
		cancel()
		ok := 0
		for _, r := range res {
			if r.OK() {
				ok++
			}
		}
		if ok == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d runners serving after 60s: %v", ok, n, byStatus(res))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func counterSum(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metric
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
