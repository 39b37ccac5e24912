//go:build e2e

package testcluster

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// runnerTemplate renders the runner's TLS bundle (certificate, issuing CA,
// key) from Vault with the task's workload identity. One template holds all
// three: two pkiCert templates would issue two different key pairs. The name
// is derived from the job id, as the runner role requires.
const runnerTemplate = `{{ with pkiCert "pki_int/issue/runner" (printf "common_name=%s.crunchdao.internal" (env "NOMAD_JOB_ID")) "ttl=1h" }}
{{- .Cert }}
{{ .CA }}
{{ .Key }}
{{ end }}`

// The chain a model call depends on, end to end on the real agents: Nomad
// runs a job whose task gets a Vault token through workload identity, renders
// a PKI certificate named after its job, serves gRPC health over TLS with it,
// registers in Consul through its service identity, and passes Consul's gRPC
// check; the certificate chains to the dev root CA. The runner's token cannot
// obtain a certificate naming another job.
func TestChainNomadConsulVault(t *testing.T) {
	c := Shared(t, All)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	const jobID = "model-node-chain"
	const dnsName = jobID + ".crunchdao.internal"
	const otherName = "model-node-other.crunchdao.internal"

	task := HelperTask("runner")
	task.Env[HelperListenEnv] = "${NOMAD_ADDR_grpc}"
	task.Env[HelperTLSBundleEnv] = "${NOMAD_SECRETS_DIR}/tls.pem"
	task.Env[HelperPublishCertEnv] = "${NOMAD_TASK_DIR}/tls.crt"
	task.Env[HelperProbeEnv] = dnsName + "," + otherName
	task.Env[HelperProbeOutEnv] = "${NOMAD_TASK_DIR}/probe.json"
	task.Env["VAULT_ADDR"] = c.Vault.Addr
	task.Vault = &nomadapi.Vault{Role: "runner"}
	task.Templates = []*nomadapi.Template{{
		EmbeddedTmpl: new(runnerTemplate),
		DestPath:     new("secrets/tls.pem"),
		Perms:        new("0600"),
	}, {
		// The CA coordinators' certificates chain to, as docs/vault.md shows.
		EmbeddedTmpl: new(`{{ with secret "pki/cert/ca" }}{{ .Data.certificate }}{{ end }}`),
		DestPath:     new("local/ca.crt"),
	}}
	task.Resources = &nomadapi.Resources{CPU: new(100), MemoryMB: new(64)}

	group := nomadapi.NewTaskGroup("runner", 1)
	group.Networks = []*nomadapi.NetworkResource{{DynamicPorts: []nomadapi.Port{{Label: "grpc"}}}}
	group.Services = []*nomadapi.Service{{
		Name:      jobID,
		Provider:  "consul",
		PortLabel: "grpc",
		Checks: []nomadapi.ServiceCheck{{
			Name:     "grpc-health",
			Type:     "grpc",
			Interval: time.Second,
			Timeout:  2 * time.Second,
			// The dev Consul agent has no copy of the dev CA (Consul starts
			// before Vault creates it), so the check does TLS without
			// verifying; this test verifies the certificate itself below.
			GRPCUseTLS:    true,
			TLSSkipVerify: true,
		}},
	}}
	group.AddTask(task)
	group.RestartPolicy = &nomadapi.RestartPolicy{Attempts: new(0), Mode: new("fail")}
	group.ReschedulePolicy = &nomadapi.ReschedulePolicy{Attempts: new(0), Unlimited: new(false)}
	job := nomadapi.NewServiceJob(jobID, jobID, "global", 50)
	job.Datacenters = []string{"*"}
	job.AddTaskGroup(group)

	if _, _, err := c.Nomad.Client.Jobs().Register(job, nil); err != nil {
		t.Fatalf("register job: %v", err)
	}
	t.Cleanup(func() { _, _, _ = c.Nomad.Client.Jobs().Deregister(jobID, true, nil) })

	// Consul: the service registers and its gRPC check passes.
	entry, err := waitPassing(ctx, c.Consul.Client, jobID)
	if err != nil {
		t.Fatalf("%v\n%s", err, allocReport(c.Nomad.Client, jobID))
	}
	alloc := runningAlloc(ctx, t, c.Nomad.Client, jobID)

	// Consul DNS answers coordinators without a token (dns-read on the
	// anonymous token) with the runner's port.
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, c.Consul.DNSAddr)
	}}
	_, srvs, err := resolver.LookupSRV(ctx, "", "", jobID+".service.consul")
	if err != nil || len(srvs) != 1 || int(srvs[0].Port) != entry.Service.Port {
		t.Errorf("Consul DNS SRV for %s: %v %+v, want port %d", jobID, err, srvs, entry.Service.Port)
	}

	// Vault: the certificate the template rendered chains to the dev root
	// CA and names the job. The alloc fs API hands out the public copy ...
	published := catAllocFile(t, c.Nomad.Client, alloc, "runner/local/tls.crt")
	leaf, intermediates := parseChain(t, published)
	roots := rootPool(t, c)
	if _, err := leaf.Verify(x509.VerifyOptions{
		DNSName: dnsName, Roots: roots, Intermediates: intermediates,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		t.Fatalf("rendered certificate does not chain to the dev CA for %s: %v", dnsName, err)
	}
	if _, ok := leaf.PublicKey.(*rsa.PublicKey); !ok {
		t.Errorf("runner key is %T; CrunchDAO's client needs RSA", leaf.PublicKey)
	}
	caPEM, err := c.Vault.CACertPEM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := catAllocFile(t, c.Nomad.Client, alloc, "runner/local/ca.crt"); !bytes.Equal(bytes.TrimSpace(got), bytes.TrimSpace(caPEM)) {
		t.Errorf("rendered local/ca.crt is not the root CA:\n%s", got)
	}
	// ... while the rendered bundle, which holds the key, stays unreadable.
	// (nomad/api's Cat reports Nomad's refusal as the body, not as an error.)
	if rc, err := c.Nomad.Client.AllocFS().Cat(alloc, "runner/secrets/tls.pem", nil); err == nil {
		b, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Contains(b, []byte("prohibited")) {
			t.Errorf("the alloc fs API served the runner's secrets/tls.pem (%d bytes)", len(b))
		}
	}

	// The service Consul found serves exactly that certificate over TLS.
	addr := net.JoinHostPort(entry.Service.Address, strconv.Itoa(entry.Service.Port))
	served := dialHealth(t, ctx, addr, dnsName, roots)
	if !bytes.Equal(served.Raw, leaf.Raw) {
		t.Error("the runner serves a different certificate from the one rendered")
	}

	// The runner's own Vault token: its job's name yes, another job's no.
	var probe map[string]string
	if err := json.Unmarshal(catAllocFile(t, c.Nomad.Client, alloc, "runner/local/probe.json"), &probe); err != nil {
		t.Fatalf("probe result: %v", err)
	}
	if probe[dnsName] != "ok" {
		t.Errorf("runner token could not issue its own name %s: %s", dnsName, probe[dnsName])
	}
	if got := probe[otherName]; got == "ok" || !strings.Contains(got, "not allowed") {
		t.Errorf("runner token issuing another job's name %s: got %q, want Vault to refuse it", otherName, got)
	}
}

// waitPassing blocks on Consul's health API until service has a passing
// instance.
func waitPassing(ctx context.Context, client *consulapi.Client, service string) (*consulapi.ServiceEntry, error) {
	var index uint64
	var last []*consulapi.ServiceEntry
	for {
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Second}).WithContext(ctx)
		entries, meta, err := client.Health().Service(service, "", false, q)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("service %s not passing in Consul in time; last seen: %s", service, describeEntries(last))
		}
		if err != nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		index, last = meta.LastIndex, entries
		for _, e := range entries {
			if e.Checks.AggregatedStatus() == consulapi.HealthPassing {
				return e, nil
			}
		}
	}
}

func describeEntries(entries []*consulapi.ServiceEntry) string {
	if len(entries) == 0 {
		return "not registered"
	}
	var parts []string
	for _, e := range entries {
		for _, chk := range e.Checks {
			parts = append(parts, fmt.Sprintf("%s=%s (%s)", chk.Name, chk.Status, strings.TrimSpace(chk.Output)))
		}
	}
	return strings.Join(parts, "; ")
}

// runningAlloc waits until the job has a running allocation: Consul may see
// the check pass before the client's status update reaches the server.
func runningAlloc(ctx context.Context, t *testing.T, client *nomadapi.Client, jobID string) *nomadapi.Allocation {
	t.Helper()
	for {
		stubs, _, err := client.Jobs().Allocations(jobID, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range stubs {
			if s.ClientStatus == nomadapi.AllocClientStatusRunning {
				alloc, _, err := client.Allocations().Info(s.ID, nil)
				if err != nil {
					t.Fatal(err)
				}
				return alloc
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no running allocation of %s\n%s", jobID, allocReport(client, jobID))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// allocReport describes a job's allocations, their task events and the tail of
// their logs, for failure messages.
func allocReport(client *nomadapi.Client, jobID string) string {
	stubs, _, err := client.Jobs().Allocations(jobID, true, nil)
	if err != nil {
		return "allocations: " + err.Error()
	}
	var b strings.Builder
	for _, s := range stubs {
		fmt.Fprintf(&b, "alloc %s: %s\n", s.ID[:8], s.ClientStatus)
		for task, st := range s.TaskStates {
			for _, ev := range st.Events {
				fmt.Fprintf(&b, "  %s: %s %s %s\n", task, ev.Type, ev.DisplayMessage, ev.Details["validation_error"])
			}
		}
		if alloc, _, err := client.Allocations().Info(s.ID, nil); err == nil {
			for _, f := range []string{"alloc/logs/runner.stderr.0", "alloc/logs/runner.stdout.0"} {
				if rc, err := client.AllocFS().Cat(alloc, f, nil); err == nil {
					out, _ := io.ReadAll(rc)
					rc.Close()
					fmt.Fprintf(&b, "  %s:\n%s\n", f, out)
				}
			}
		}
	}
	return b.String()
}

func catAllocFile(t *testing.T, client *nomadapi.Client, alloc *nomadapi.Allocation, path string) []byte {
	t.Helper()
	rc, err := client.AllocFS().Cat(alloc, path, nil)
	if err != nil {
		t.Fatalf("read %s through the alloc fs API: %v", path, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// parseChain returns the first certificate of a PEM chain and a pool of the rest.
func parseChain(t *testing.T, chain []byte) (*x509.Certificate, *x509.CertPool) {
	t.Helper()
	var certs []*x509.Certificate
	for rest := chain; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, cert)
	}
	if len(certs) < 2 {
		t.Fatalf("want a leaf and its issuing CA, got %d certificates", len(certs))
	}
	pool := x509.NewCertPool()
	for _, c := range certs[1:] {
		pool.AddCert(c)
	}
	return certs[0], pool
}

// dialHealth calls grpc.health.v1 Check over TLS verified against roots for
// serverName, as a coordinator would, and returns the server's certificate.
func dialHealth(t *testing.T, ctx context.Context, addr, serverName string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	var state tls.ConnectionState
	creds := credentials.NewTLS(&tls.Config{
		RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error { state = cs; return nil },
	})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("health check over verified TLS at %s: %v", addr, err)
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health status %v, want SERVING", resp.Status)
	}
	if len(state.PeerCertificates) == 0 {
		t.Fatal("no peer certificate")
	}
	return state.PeerCertificates[0]
}
