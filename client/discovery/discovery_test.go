package discovery_test

import (
	"context"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/client/discovery"
)

func TestParseStatic(t *testing.T) {
	s, err := discovery.ParseStatic("b=127.0.0.1:2, a=10.0.0.1:1,127.0.0.1:3")
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := discovery.Normalize(s)
	want := []discovery.Model{{ID: "127.0.0.1:3", Target: "127.0.0.1:3"}, {ID: "a", Target: "10.0.0.1:1"}, {ID: "b", Target: "127.0.0.1:2"}}
	if len(ms) != len(want) {
		t.Fatalf("got %v", ms)
	}
	for i := range want {
		if !ms[i].Equal(want[i]) {
			t.Errorf("model %d: %+v, want %+v", i, ms[i], want[i])
		}
	}
	if ms[1].TLSName() != "model-node-a.crunchdao.internal" {
		t.Errorf("TLS name %q", ms[1].TLSName())
	}
	for _, bad := range []string{"a=x:1,a=y:2", "a="} {
		if _, err := discovery.ParseStatic(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestManualReportsEverySet(t *testing.T) {
	var m discovery.Manual
	got := make(chan []discovery.Model, 8)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = m.Watch(ctx, func(ms []discovery.Model) { got <- ms }) }()
	select {
	case ms := <-got:
		t.Fatalf("reported %v before any Set", ms)
	case <-time.After(20 * time.Millisecond):
	}
	_ = m.Set([]discovery.Model{{ID: "x", Target: "h:1"}})
	if ms := <-got; len(ms) != 1 || ms[0].ID != "x" {
		t.Errorf("first Set reported as %v", ms)
	}
	_ = m.Set(nil)
	if ms := <-got; len(ms) != 0 {
		t.Errorf("empty Set reported as %v", ms)
	}
	if err := m.Set([]discovery.Model{{ID: "x", Target: "h:1"}, {ID: "x", Target: "h:2"}}); err == nil {
		t.Error("duplicate ids accepted")
	}
}
