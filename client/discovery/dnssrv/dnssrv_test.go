//go:build e2e

package dnssrv_test

import (
	"context"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/modelnodes/modelnodes/client/discovery/dnssrv"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/names"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Main(m)) }

// anonymousDNS gives the anonymous token the production dns-read policy
// (deploy/consul/policies/dns-read.hcl), as deploy/consul/setup
// --anonymous-dns does; that script also needs Nomad, which this test does
// not start.
func anonymousDNS(t *testing.T, c *consulapi.Client) {
	t.Helper()
	rules, err := os.ReadFile("../../../deploy/consul/policies/dns-read.hcl")
	if err != nil {
		t.Fatal(err)
	}
	acl := c.ACL()
	p, _, err := acl.PolicyReadByName("dns-read", nil)
	if err != nil || p == nil { // not there yet (the shared agent outlives one run)
		p, _, err = acl.PolicyCreate(&consulapi.ACLPolicy{Name: "dns-read", Rules: string(rules)}, nil)
		if err != nil {
			t.Fatalf("creating the dns-read policy: %v", err)
		}
	}
	const anonymous = "00000000-0000-0000-0000-000000000002"
	tok, _, err := acl.TokenRead(anonymous, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok.Policies = append(tok.Policies, &consulapi.ACLTokenPolicyLink{ID: p.ID})
	if _, _, err := acl.TokenUpdate(tok, nil); err != nil {
		t.Fatal(err)
	}
}

// healthServer serves gRPC health on a loopback port; a stand-in for a
// runner (the name resolution is what is tested here).
func healthServer(t *testing.T) int {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().(*net.TCPAddr).Port
}

// Consul's DNS interface answers SRV for a model's tag within its crunch's
// service; gRPC dials it through the consul-srv resolver, and follows the
// model when it moves.
func TestConsulDNSSRV(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Consul)
	anonymousDNS(t, cl.Consul.Client)
	agent := cl.Consul.Client.Agent()
	service := names.Service("alpha")
	register := func(port int, status string) {
		t.Helper()
		err := agent.ServiceRegister(&consulapi.AgentServiceRegistration{
			ID: "model-node-m1", Name: service, Tags: []string{"m1"}, Address: "127.0.0.1", Port: port,
			Check: &consulapi.AgentServiceCheck{CheckID: "check-m1", TTL: "10m", Status: status},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := dnssrv.ModelName("m1", service)

	port1 := healthServer(t)
	register(port1, consulapi.HealthPassing)
	// The agent syncs a registration to the catalog right after it returns.
	var addrs []string
	var err error
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if addrs, err = dnssrv.Lookup(ctx, cl.Consul.DNSAddr, name); err == nil {
			break
		}
	}
	if err != nil || len(addrs) != 1 || addrs[0] != "127.0.0.1:"+strconv.Itoa(port1) {
		t.Fatalf("SRV %s: %v %v, want [127.0.0.1:%d]", name, addrs, err, port1)
	}

	dnssrv.RefreshInterval = 200 * time.Millisecond
	target := dnssrv.Target(cl.Consul.DNSAddr, name)
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health through %s: %v", target, err)
	}

	// A failing check removes the record: Consul DNS serves passing ones.
	if err := agent.UpdateTTL("check-m1", "down", consulapi.HealthCritical); err != nil {
		t.Fatal(err)
	}
	if addrs, err := dnssrv.Lookup(ctx, cl.Consul.DNSAddr, name); err == nil && len(addrs) > 0 {
		t.Errorf("a failing model still resolves to %v", addrs)
	}

	// The model moves (rescheduled on another port): the connection follows.
	port2 := healthServer(t)
	register(port2, consulapi.HealthPassing)
	// Re-registering keeps a TTL check's last status: pass it explicitly.
	if err := agent.UpdateTTL("check-m1", "up", consulapi.HealthPassing); err != nil {
		t.Fatal(err)
	}
	// The first server goes away; calls must reach the second.
	deadline := time.Now().Add(10 * time.Second)
	for {
		cctx, c := context.WithTimeout(ctx, time.Second)
		p := &peer.Peer{}
		_, err := hc.Check(cctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true), grpc.Peer(p))
		c()
		peerAddr := ""
		if p.Addr != nil {
			peerAddr = p.Addr.String()
		}
		if err == nil && peerAddr == "127.0.0.1:"+strconv.Itoa(port2) {
			break
		}
		if time.Now().After(deadline) {
			a, e := dnssrv.Lookup(ctx, cl.Consul.DNSAddr, name)
			t.Logf("DNS now: %v %v", a, e)
			t.Fatalf("the connection never followed the model to port %d (last peer %s, %v)", port2, peerAddr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
