//go:build e2e

package testcluster

import (
	"context"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
)

// A coordinator's Consul token (deploy/consul/setup coordinator CRUNCH) reads
// its crunch's models and nothing else, and cannot register anything:
// runners register only through Nomad.
func TestConsulCoordinatorToken(t *testing.T) {
	c := Shared(t, Consul)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, svc := range []string{"crunch-alpha", "crunch-beta"} {
		reg := &consulapi.AgentServiceRegistration{ID: svc + "-m1", Name: svc, Port: 5000, Address: "127.0.0.1"}
		if err := c.Consul.Client.Agent().ServiceRegister(reg); err != nil {
			t.Fatal(err)
		}
		defer func(id string) { _ = c.Consul.Client.Agent().ServiceDeregister(id) }(reg.ID)
	}
	coord, err := c.CoordinatorConsul(ctx, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	alpha, _, err := coord.Health().Service("crunch-alpha", "", false, nil)
	if err != nil || len(alpha) != 1 {
		t.Fatalf("alpha's coordinator reading crunch-alpha: %d entries, %v", len(alpha), err)
	}
	beta, _, err := coord.Health().Service("crunch-beta", "", false, nil)
	if err != nil || len(beta) != 0 {
		t.Errorf("alpha's coordinator reading crunch-beta: %d entries (%v), want none", len(beta), err)
	}
	err = coord.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{Name: "crunch-alpha", ID: "rogue", Port: 1})
	if err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("a coordinator registering a model: %v, want permission denied", err)
	}
	// A name the scheduler refuses (Nomad would interpolate it) gets no token.
	if out, err := c.RunScript(ctx, "deploy/consul/setup", "coordinator", "a${b}"); err == nil || !strings.Contains(err.Error(), "interpolates") {
		t.Errorf("a crunch name with ${ was accepted or refused unclearly: %v\n%s", err, out)
	}
}
