//go:build e2e

package consul_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/client/discovery/consul"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/names"
)

// Against a real Consul agent: every registration, deregistration and check
// failure reaches the watcher within one blocking-query round (the query
// waits up to a minute; each change must arrive in well under that).
func TestMembershipFollowsConsul(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Consul)
	agent := cl.Consul.Client.Agent()
	// A crunch of its own: the shared agent keeps what earlier runs
	// (-count) registered.
	service := names.Service(fmt.Sprintf("alpha%d", time.Now().UnixNano()))

	src := &consul.Source{Client: cl.Consul.Client, Service: service, Crunch: "AlphaCrunchBase58", Wait: time.Minute}
	updates := make(chan []discovery.Model, 16)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	go func() { _ = src.Watch(ctx, func(ms []discovery.Model) { updates <- ms }) }()

	// expect waits for a membership naming exactly ids.
	expect := func(what string, ids ...string) []discovery.Model {
		t.Helper()
		t0 := time.Now()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case ms := <-updates:
				var got []string
				for _, m := range ms {
					got = append(got, m.ID)
				}
				if slices.Equal(got, ids) || (len(got) == 0 && len(ids) == 0) {
					t.Logf("%s: membership %v after %v", what, got, time.Since(t0).Round(time.Millisecond))
					return ms
				}
			case <-timeout:
				t.Fatalf("%s: membership %v not reported within 5s (a blocking query round is 1 min)", what, ids)
			}
		}
	}
	register := func(id string, port int) {
		t.Helper()
		err := agent.ServiceRegister(&consulapi.AgentServiceRegistration{
			ID: service + "-" + id, Name: service, Tags: []string{id}, Address: "127.0.0.1", Port: port,
			Meta: map[string]string{
				names.MetaModelID: id, names.MetaModel: "Model" + id + "FullBase58Id",
				names.MetaCrunch: "AlphaCrunchBase58", names.MetaCruncher: "Wallet" + id,
			},
			Check: &consulapi.AgentServiceCheck{CheckID: "check-" + id, TTL: "10m", Status: consulapi.HealthPassing},
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	expect("nothing registered")
	register("m1", 7001)
	ms := expect("m1 registered", "m1")
	if ms[0].Target != "127.0.0.1:7001" || ms[0].Meta[names.MetaModel] != "Modelm1FullBase58Id" || ms[0].TLSName() != "model-node-m1.crunchdao.internal" {
		t.Errorf("m1 reported as %+v", ms[0])
	}
	register("m2", 7002)
	expect("m2 registered", "m1", "m2")
	if err := agent.UpdateTTL("check-m2", "model down", consulapi.HealthCritical); err != nil {
		t.Fatal(err)
	}
	expect("m2 check failing", "m1")
	if err := agent.UpdateTTL("check-m2", "back", consulapi.HealthPassing); err != nil {
		t.Fatal(err)
	}
	expect("m2 check passing again", "m1", "m2")
	if err := agent.ServiceDeregister(service + "-m1"); err != nil {
		t.Fatal(err)
	}
	expect("m1 deregistered", "m2")
	// Another crunch's models never appear.
	if err := agent.ServiceRegister(&consulapi.AgentServiceRegistration{ID: "other", Name: service + "-beta", Port: 7003}); err != nil {
		t.Fatal(err)
	}
	register("m3", 7004)
	expect("m3 registered beside another crunch's model", "m2", "m3")
}

// Any Nomad job in any namespace can register a Consul service named
// crunch-<name>. Against a real agent: instances whose meta names another
// crunch, or no crunch, are not members, even one that claims the honest
// model's id and registered after it (the newest instance of a model would
// otherwise win); the honest instance is.
func TestForeignInstancesAreNotMembers(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Consul)
	agent := cl.Consul.Client.Agent()
	service := names.Service(fmt.Sprintf("alpha%d", time.Now().UnixNano()))
	const crunch = "AlphaCrunchBase58"
	register := func(id, model string, port int, meta map[string]string) {
		t.Helper()
		if model != "" {
			meta[names.MetaModelID] = model
		}
		err := agent.ServiceRegister(&consulapi.AgentServiceRegistration{
			ID: service + "-" + id, Name: service, Tags: []string{model}, Address: "127.0.0.1", Port: port, Meta: meta,
			Check: &consulapi.AgentServiceCheck{TTL: "10m", Status: consulapi.HealthPassing},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = agent.ServiceDeregister(service + "-" + id) })
	}
	register("honest", "m1", 7101, map[string]string{names.MetaCrunch: crunch, names.MetaCruncher: "Wallet1"})
	register("rogue-other-crunch", "m1", 7102, map[string]string{names.MetaCrunch: "BetaCrunchBase58", names.MetaCruncher: "Wallet1"})
	register("rogue-no-crunch", "m2", 7103, map[string]string{})
	register("rogue-no-meta", "", 7104, map[string]string{})
	register("rogue-crunch-prefix", "m3", 7105, map[string]string{names.MetaCrunch: crunch + "x"})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	updates := make(chan []discovery.Model, 1)
	src := &consul.Source{Client: cl.Consul.Client, Service: service, Crunch: crunch, Wait: time.Minute}
	go func() { _ = src.Watch(ctx, func(ms []discovery.Model) { updates <- ms }) }()
	select {
	case ms := <-updates:
		var got []string
		for _, m := range ms {
			got = append(got, m.ID+"="+m.Target)
		}
		if want := []string{"m1=127.0.0.1:7101"}; !slices.Equal(got, want) {
			t.Errorf("membership %v, want only the honest instance %v", got, want)
		}
	case <-ctx.Done():
		t.Fatal("no membership reported")
	}

	// Without the crunch to check against, nothing is trusted.
	err := (&consul.Source{Client: cl.Consul.Client, Service: service}).Watch(ctx, func(ms []discovery.Model) {
		t.Errorf("a source without a crunch reported %d models", len(ms))
	})
	if err == nil || !strings.Contains(err.Error(), "crunch id") {
		t.Errorf("a source without a crunch: Watch returned %v, want an error asking for the crunch id", err)
	}
}
