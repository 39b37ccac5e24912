package consul_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/client/discovery/consul"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/names"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Main(m)) }

// A Consul the watcher cannot reach does not empty the membership (fail
// static); the watcher catches up once Consul answers again.
func TestUnreachableConsulKeepsMembership(t *testing.T) {
	cfg := consulapi.DefaultConfig()
	cfg.Address = "127.0.0.1:1" // nothing listens on port 1
	cl, err := consulapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	src := &consul.Source{Client: cl, Service: "crunch-x", Crunch: "x", MaxBackoff: 50 * time.Millisecond, Registerer: reg}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	n := 0
	err = src.Watch(ctx, func([]discovery.Model) { n++ })
	if n != 0 {
		t.Errorf("an unreachable Consul produced %d membership updates", n)
	}
	if err != context.DeadlineExceeded {
		t.Errorf("Watch returned %v, want the context's error", err)
	}
	// What the alert on a client's failing discovery reads
	// (deploy/monitoring): down, with errors counted.
	got := map[string]float64{}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			got[f.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	if up, ok := got["modelnodes_client_discovery_up"]; !ok || up != 0 || got["modelnodes_client_discovery_errors_total"] < 1 {
		t.Errorf("discovery metrics: %v, want up 0 and errors counted", got)
	}
	// A second Source on the same registry (another crunch) shares them.
	src2 := &consul.Source{Client: cl, Service: "crunch-y", Crunch: "y", MaxBackoff: 50 * time.Millisecond, Registerer: reg}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if err := src2.Watch(ctx2, func([]discovery.Model) {}); err != context.DeadlineExceeded {
		t.Errorf("a second Source on the registry: %v", err)
	}
}

func TestModelsPrefersNewestInstance(t *testing.T) {
	e := func(id, addr string, idx uint64) *consulapi.ServiceEntry {
		return &consulapi.ServiceEntry{Node: &consulapi.Node{Address: "10.0.0.9"}, Service: &consulapi.AgentService{
			ID: fmt.Sprintf("%s-%d", id, idx), Address: addr, Port: 9000, CreateIndex: idx, Meta: map[string]string{names.MetaModelID: id, names.MetaCrunch: "C"}}}
	}
	ms := consul.Models("C", []*consulapi.ServiceEntry{e("b", "10.0.0.2", 5), e("a", "10.0.0.1", 7), e("a", "10.0.0.3", 9), e("c", "", 1)})
	want := []string{"a=10.0.0.3:9000", "b=10.0.0.2:9000", "c=10.0.0.9:9000"}
	var got []string
	for _, m := range ms {
		got = append(got, m.ID+"="+m.Target)
	}
	if !slices.Equal(got, want) {
		t.Errorf("models %v, want %v (newest instance per model, node address as fallback)", got, want)
	}
}
