//go:build e2e

package main

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/names"
)

// Against a real Consul agent: models of crunch alpha come from the health
// API with their full ids, and watch prints a model that joins. An instance
// of service crunch-alpha whose meta names another crunch (what any Nomad
// job can register) is not listed.
func TestConsulCrunch(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Consul)
	agent := cl.Consul.Client.Agent()
	registerAs := func(crunch, id, addr string) {
		t.Helper()
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		err := agent.ServiceRegister(&consulapi.AgentServiceRegistration{
			ID: "model-node-" + id, Name: names.Service("alpha"), Tags: []string{id}, Address: host, Port: p,
			Meta:  map[string]string{names.MetaModelID: id, names.MetaModel: "Full" + id, names.MetaCrunch: crunch},
			Check: &consulapi.AgentServiceCheck{TTL: "10m", Status: consulapi.HealthPassing},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = agent.ServiceDeregister("model-node-" + id) })
	}
	register := func(id, addr string) { t.Helper(); registerAs("alpha", id, addr) }
	a := startRunner(t)
	register("a", a)
	rogue := startRunner(t)
	registerAs("BetaCrunchId", "rogue", rogue)
	waitServing(t, "a="+a, 1)
	t.Setenv("COORDINATOR_CONSUL_ADDR", cl.Consul.Addr)
	t.Setenv("COORDINATOR_CONSUL_TOKEN", cl.Consul.Token)
	code, out, stderr := runCLI(t, "models", "--crunch", "alpha", "--plaintext")
	if code != 0 || !strings.Contains(out, a) || !strings.Contains(out, " SERVING ") || !strings.Contains(out, "Fulla") {
		t.Errorf("models of crunch alpha: exit %d\n%s%s", code, out, stderr)
	}
	if strings.Contains(out, rogue) || !strings.Contains(stderr, "does not belong to this crunch") {
		t.Errorf("an instance of another crunch is listed, or not warned about:\n%s%s", out, stderr)
	}
	// A crunch with an on-chain id: its models carry the id, not the name.
	code, out, stderr = runCLI(t, "models", "--crunch", "alpha", "--crunch-id", "BetaCrunchId", "--plaintext")
	if code != 0 || !strings.Contains(out, rogue) || strings.Contains(out, a) {
		t.Errorf("models of crunch id BetaCrunchId: exit %d\n%s%s", code, out, stderr)
	}

	var buf syncbuf.Buffer
	done := make(chan int)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() { done <- run(ctx, []string{"watch", "--crunch", "alpha", "--plaintext"}, &buf, &buf) }()
	waitFor(t, &buf, "+ a "+a)
	register("b", "127.0.0.1:7777")
	waitFor(t, &buf, "+ b 127.0.0.1:7777")
	if err := agent.ServiceDeregister("model-node-a"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, &buf, "- a "+a)
	cancel() // as Ctrl-C does
	if code := <-done; code != 0 {
		t.Errorf("watch ended with exit %d:\n%s", code, buf.String())
	}
}

func waitFor(t *testing.T, buf *syncbuf.Buffer, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("watch never printed %q:\n%s", want, buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
