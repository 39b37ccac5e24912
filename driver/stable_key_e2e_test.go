//go:build e2e

package driver_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/mr-tron/base58"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery/consul"
	"github.com/modelnodes/modelnodes/delegation"
	"github.com/modelnodes/modelnodes/driver/sandbox/seccomp"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/pki/vaultpki"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/runner/vaultkey"
)

// A runner that keeps its key in Vault (the scheduler's --runner-vault-addr),
// on the real agents with the production job: the key survives certificate
// renewals and a new allocation, so a cruncher's wallet delegation written
// once into the job's Nomad variable keeps verifying on the coordinator's
// side; Vault's runner policy and role keep another model's runner from its
// key and its name; the sandboxed model cannot read the task's Vault token.
//
// The crunch's name is no DNS label (upper case, an underscore, a dot), as a
// chain may hold: the operator onboards its coordinator with the deploy
// scripts under that name (Vault AppRole and certificate, Consul token), and
// the coordinator's client finds the model through Consul with its own token
// and calls it. Every part derives the crunch's names through package names
// (the scripts through bin/modelnodes-names); before, the job registered
// crunch-my-crunch-v2, the client watched crunch-My_Crunch.v2, and Vault
// refused to onboard the name. The crunch whose name is the old mapping's
// output, my-crunch-v2, is another crunch: its coordinator neither sees the
// model in Consul nor gets past the runner, even with its key on the model's
// list.
func TestE2EStableRunnerKey(t *testing.T) {
	c := startModelboxCluster(t, "modelnodes-names")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const crunch, twin = "My_Crunch.v2", "my-crunch-v2"
	alphaIssuer, err := c.CoordinatorIssuer(ctx, crunch)
	if err != nil {
		t.Fatalf("onboarding the coordinator of %q in Vault: %v", crunch, err)
	}
	alpha := alphaIssuer.Certificate()
	if leaf := alpha.Leaf; len(leaf.URIs) != 1 || leaf.URIs[0].String() != names.CoordinatorURI(crunch) ||
		leaf.Subject.CommonName != names.CoordinatorCommonName(crunch) {
		t.Fatalf("the coordinator's certificate names %s %v, want %s %s", leaf.Subject.CommonName, leaf.URIs,
			names.CoordinatorCommonName(crunch), names.CoordinatorURI(crunch))
	}
	twinIssuer, err := c.CoordinatorIssuer(ctx, twin)
	if err != nil {
		t.Fatal(err)
	}
	coordConsul, err := c.CoordinatorConsul(ctx, crunch)
	if err != nil {
		t.Fatal(err)
	}
	twinConsul, err := c.CoordinatorConsul(ctx, twin)
	if err != nil {
		t.Fatal(err)
	}
	// The cruncher's wallet, which the chain records with the model.
	pub, wallet, _ := ed25519.GenerateKey(rand.Reader)
	roots := vaultRoots(t, ctx, c)

	modelDir := hostileModel(t)

	// 40 s certificates: the runner renews after about 25 s. Runners fetch
	// the intermediate's revocation list, as the scheduler's --crl-url has
	// them do.
	opts := &jobs.Options{RunnerVaultAddr: c.Vault.Addr, CertTTL: "40s", CRLURL: c.Vault.Addr + "/v1/pki_int/crl/pem", AllowHostModelDirs: true}
	m := &jobs.Model{Crunch: crunch, ModelID: "stable-key-model", Cruncher: base58.Encode(pub), Hotkey: "hk-1", ModelDir: modelDir,
		Runtime: "python", Hardware: jobs.CPU, CPU: 200, MemoryMB: 256, CertHash: authz.SPKIHash(alpha.Leaf),
		CertHashSecondary: authz.SPKIHash(twinIssuer.Certificate().Leaf)}
	job, err := jobs.Build(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := job.TaskGroups[0].Services[0].Name; got != "crunch-my-crunch-v2--eocje7s2rsjigyf5" {
		t.Fatalf("the job registers service %q", got)
	}
	jobID := *job.ID
	name := jobID + ".crunchdao.internal"
	job.TaskGroups[0].Update.MinHealthyTime = ptr(time.Second)
	if _, _, err := c.Nomad.Client.Jobs().Register(job, nil); err != nil {
		t.Fatal(err)
	}
	alloc := waitHealthyAlloc(t, c.Nomad.Client, jobID)
	current := alloc
	// Stop it as an operator does, waiting until nothing of it is left.
	t.Cleanup(func() { stopJob(t, c.Nomad.Client, jobID, current) })

	first := handshake(t, portAddr(alloc, "grpc"), name, roots, alpha)
	spki := first.RawSubjectPublicKeyInfo
	if first.PublicKeyAlgorithm != x509.RSA {
		t.Errorf("runner key is %s; CrunchDAO's client needs RSA", first.PublicKeyAlgorithm)
	}
	// The key sits in Vault, under the job's name, and nowhere on disk.
	vc := c.Vault.Client
	entry, err := vc.KVv2("runner-keys").Get(ctx, jobID)
	if err != nil {
		t.Fatalf("runner-keys/%s: %v", jobID, err)
	}
	if entry.Data[vaultkey.FieldCertPub] != delegation.CertPub(spki) {
		t.Errorf("the key in Vault is not the one the runner serves with")
	}
	filepath.WalkDir(filepath.Join(c.Nomad.DataDir, "alloc", alloc.ID), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Type().IsRegular() {
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("PRIVATE KEY")) {
				t.Errorf("a private key on the node's disk: %s", p)
			}
		}
		return nil
	})

	// Renewal: a new certificate (new serial) for the same key, and calls
	// keep working.
	// One long-lived connection calls throughout: renewal drops nothing.
	steady := dialModel(t, portAddr(alloc, "grpc"), name, roots, alpha)
	deadline := time.Now().Add(90 * time.Second)
	renewed := first
	calls := 0
	for renewed.SerialNumber.Cmp(first.SerialNumber) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no renewed certificate after 90 s (serial %x, not after %s)", first.SerialNumber, first.NotAfter)
		}
		time.Sleep(time.Second)
		if _, err := steady.Setup(ctx, &dspb.SetupRequest{ClassName: "base.Base"}); err != nil {
			t.Fatalf("a call on the open connection failed during renewal: %v", err)
		}
		calls++
		renewed = handshake(t, portAddr(alloc, "grpc"), name, roots, alpha)
	}
	if _, err := steady.Setup(ctx, &dspb.SetupRequest{ClassName: "base.Base"}); err != nil {
		t.Fatalf("a call on the open connection after renewal: %v", err)
	}
	if !bytes.Equal(renewed.RawSubjectPublicKeyInfo, spki) {
		t.Fatal("the renewed certificate has another key: a delegation would stop matching")
	}
	t.Logf("renewed: serial %x -> %x, same key; %d calls on one connection meanwhile, all OK", first.SerialNumber, renewed.SerialNumber, calls+1)

	// The cruncher signs for the key (as `model-runner delegation sign
	// --cert-pub` does) and the operator writes the job's variable.
	// The coordinator's client, discovering the model in Consul and checking
	// delegations against its service metadata, refuses it while there is
	// no delegation.
	if r := verifiedCall(t, ctx, coordConsul, crunch, alphaIssuer); r.Status != client.Unauthenticated {
		t.Fatalf("a runner without a delegation: %s %q, want Unauthenticated", r.Status, r.Message)
	}
	proof, err := delegation.Sign(wallet, delegation.Message{CertPub: delegation.CertPub(spki), ModelID: m.ModelID,
		Hotkey: m.Hotkey, ExpiresAt: time.Now().Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	file, _ := json.Marshal(proof.ToFile())
	v := &nomadapi.Variable{Path: "nomad/jobs/" + jobID, Items: nomadapi.VariableItems{jobs.DelegationItem: string(file)}}
	if _, _, err := c.Nomad.Client.Variables().Create(v, nil); err != nil {
		t.Fatal(err)
	}
	expect := delegation.Expect{Wallet: base58.Encode(pub), ModelID: m.ModelID, Hotkey: m.Hotkey}
	waitDelegation(t, portAddr(alloc, "grpc"), name, roots, alpha, expect)
	if r := verifiedCall(t, ctx, coordConsul, crunch, alphaIssuer); r.Status != client.Success {
		t.Fatalf("with the delegation: %s %q, want success", r.Status, r.Message)
	}
	// The model's Consul meta says which seccomp profile its node enforces:
	// Nomad filled in the driver's fingerprint attribute.
	if entries, _, err := coordConsul.Health().Service(names.Service(crunch), "", false, nil); err != nil || len(entries) != 1 {
		t.Errorf("the model's service: %d entries, %v", len(entries), err)
	} else if got, want := entries[0].Service.Meta[names.MetaSeccompProfile], seccomp.Hash(seccomp.Options{}); got != want {
		t.Errorf("service meta %s = %q, want the node's profile %s", names.MetaSeccompProfile, got, want)
	}
	// The twin crunch's coordinator: its Consul token does not read the
	// crunch's service, and, given the address, the runner refuses its
	// certificate (it names my-crunch-v2), though its key is on the list.
	if entries, _, err := twinConsul.Health().Service(names.Service(crunch), "", false, nil); err != nil || len(entries) != 0 {
		t.Errorf("the coordinator of %q reads %s: %d entries, %v", twin, names.Service(crunch), len(entries), err)
	}
	if res := fanOutSetup(t, ctx, twinConsul, twin, twinIssuer); len(res) != 0 {
		t.Errorf("the coordinator of %q finds models: %+v", twin, res)
	}
	if res := fanOutSetup(t, ctx, coordConsul, crunch, twinIssuer); len(res) != 1 || res[0].OK() {
		t.Errorf("the coordinator of %q calling %q's model: %+v, want a refusal", twin, crunch, res)
	}

	// A new allocation (on a real cluster: another node) keeps the key, and
	// with it the delegation.
	if _, err := c.Nomad.Client.Allocations().Stop(alloc, nil); err != nil {
		t.Fatal(err)
	}
	next := waitReplacement(t, c.Nomad.Client, jobID, alloc.ID)
	current = next
	moved := handshake(t, portAddr(next, "grpc"), name, roots, alpha)
	if !bytes.Equal(moved.RawSubjectPublicKeyInfo, spki) {
		t.Fatal("the new allocation serves another key")
	}
	waitDelegation(t, portAddr(next, "grpc"), name, roots, alpha, expect)

	// The sandboxed model cannot read the token that reaches the key.
	tokenPath := filepath.Join(c.Nomad.DataDir, "alloc", next.ID, "model", "secrets", "vault_token")
	if _, err := os.Stat(tokenPath); err != nil {
		t.Fatalf("the task's Vault token is not where expected: %v", err)
	}
	ds := dialModel(t, portAddr(next, "grpc"), name, roots, alpha)
	if _, err := ds.Setup(ctx, &dspb.SetupRequest{ClassName: "base.Base"}); err != nil {
		t.Fatal(err)
	}
	res, err := ds.Call(ctx, callReq2("read", commonspb.String(tokenPath)))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := res.GetMethodResponse().AsString(); !strings.HasPrefix(got, "refused") {
		t.Fatalf("the model read the runner's Vault token: %q", got)
	}

	// Another model's runner: asking for this model's key, or for its name,
	// is refused by Vault and the task fails saying so.
	for _, tc := range []struct {
		name, field, value, want string
	}{
		{"reads another model's key", "key_path", "runner-keys/" + jobID, "permission denied"},
		{"names another model", "common_name", name, "not allowed by this role"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			other := &jobs.Model{Crunch: crunch, ModelID: "intruder-" + tc.field, ModelDir: modelDir, Runtime: "python",
				Hardware: jobs.CPU, CPU: 200, MemoryMB: 256}
			oj, err := jobs.Build(other, opts)
			if err != nil {
				t.Fatal(err)
			}
			task := oj.TaskGroups[0].Tasks[0]
			task.Config["tls"].([]map[string]any)[0]["vault"].([]map[string]any)[0][tc.field] = tc.value
			oj.TaskGroups[0].RestartPolicy = &nomadapi.RestartPolicy{Attempts: ptr(0), Mode: ptr("fail")}
			oj.TaskGroups[0].ReschedulePolicy = &nomadapi.ReschedulePolicy{Attempts: ptr(0), Unlimited: ptr(false)}
			if _, _, err := c.Nomad.Client.Jobs().Register(oj, nil); err != nil {
				t.Fatal(err)
			}
			logs, failed := waitFailedAlloc(t, c.Nomad.Client, *oj.ID)
			defer stopJob(t, c.Nomad.Client, *oj.ID, failed)
			if !strings.Contains(logs, tc.want) {
				t.Fatalf("the intruder's runner did not fail with %q:\n%s", tc.want, logs)
			}
		})
	}
	// And the model's own key is unchanged by the attempts.
	again, err := vc.KVv2("runner-keys").Get(ctx, jobID)
	if err != nil || again.Data[vaultkey.FieldCertPub] != delegation.CertPub(spki) || again.VersionMetadata.Version != 1 {
		t.Fatalf("runner-keys/%s changed: %v", jobID, err)
	}
}

// verifiedCall is one call from the coordinator's client library as a
// coordinator runs it: Consul discovery of its crunch with its own token, the
// Vault-issued certificate, and the wallet delegation checked against the
// model's Consul metadata (client.DelegationFromMeta); the call is a Setup.
func verifiedCall(t *testing.T, ctx context.Context, cl *consulapi.Client, crunch string, iss *vaultpki.Issuer) client.Result {
	t.Helper()
	res := setupEach(t, ctx, client.Config{
		Source:     &consul.Source{Client: cl, Service: names.Service(crunch), Crunch: crunch},
		TLS:        iss,
		Delegation: client.DelegationFromMeta,
	})
	if len(res) != 1 {
		t.Fatalf("the client called %d models, want 1: %+v", len(res), res)
	}
	return res[0]
}

// handshake returns the runner's certificate after verifying it names name.
func handshake(t *testing.T, addr, name string, roots *x509.CertPool, client *tls.Certificate) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: name,
		Certificates: []tls.Certificate{*client}, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

func dialModel(t *testing.T, addr, name string, roots *x509.CertPool, client *tls.Certificate) dspb.DynamicSubclassServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: roots, ServerName: name, Certificates: []tls.Certificate{*client}})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return dspb.NewDynamicSubclassServiceClient(conn)
}

// waitDelegation calls the model until its response headers carry a
// delegation that verifies as the coordinator verifies it: against the key
// of the connection the call went over.
func waitDelegation(t *testing.T, addr, name string, roots *x509.CertPool, client *tls.Certificate, e delegation.Expect) {
	t.Helper()
	ds := dialModel(t, addr, name, roots, client)
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var md metadata.MD
		var pr peer.Peer
		_, err := ds.Setup(ctx, &dspb.SetupRequest{ClassName: "base.Base"}, grpc.Header(&md), grpc.Peer(&pr))
		cancel()
		if err != nil {
			t.Fatalf("Setup: %v", err)
		}
		p, err := delegation.FromHeaders(md)
		if err == nil {
			e.ConnSPKI = pr.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].RawSubjectPublicKeyInfo
			e.Now = time.Now()
			if _, err = p.Verify(e); err == nil {
				return
			}
		}
		last = err
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("no verifiable delegation from %s after 60 s: %v", addr, last)
}

// waitReplacement waits for a healthy allocation of job other than old.
func waitReplacement(t *testing.T, nomad *nomadapi.Client, job, old string) *nomadapi.Allocation {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		stubs, _, err := nomad.Jobs().Allocations(job, false, nil)
		if err == nil {
			for _, s := range stubs {
				if s.ID != old && s.ClientStatus == "running" && s.DeploymentStatus != nil && s.DeploymentStatus.Healthy != nil && *s.DeploymentStatus.Healthy {
					a, _, err := nomad.Allocations().Info(s.ID, nil)
					if err != nil {
						t.Fatal(err)
					}
					return a
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("no healthy replacement of allocation %s after 90 s", old)
	return nil
}

// waitFailedAlloc waits for job's allocation to fail and returns its task
// events and the runner's stderr.
func waitFailedAlloc(t *testing.T, nomad *nomadapi.Client, job string) (string, *nomadapi.Allocation) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		stubs, _, _ := nomad.Jobs().Allocations(job, false, nil)
		for _, s := range stubs {
			if s.ClientStatus == "failed" {
				a, _, err := nomad.Allocations().Info(s.ID, nil)
				if err != nil {
					t.Fatal(err)
				}
				return allocEvents(a) + "\n" + taskStderr(nomad, a), a
			}
			if s.ClientStatus == "running" && s.DeploymentStatus != nil && s.DeploymentStatus.Healthy != nil && *s.DeploymentStatus.Healthy {
				t.Fatalf("allocation %s of %s is healthy: Vault let it in", s.ID, job)
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("%s did not fail within 90 s", job)
	return "", nil
}

func taskStderr(nomad *nomadapi.Client, a *nomadapi.Allocation) string {
	rc, err := nomad.AllocFS().Cat(a, "alloc/logs/model.stderr.0", nil)
	if err != nil {
		return "(no stderr: " + err.Error() + ")"
	}
	defer rc.Close()
	b, _ := io.ReadAll(io.LimitReader(rc, 1<<16))
	return string(b)
}

// fanOutSetup discovers crunch's models through Consul as cl's token sees
// them and calls Setup on each with iss's certificate. No models: no results.
func fanOutSetup(t *testing.T, ctx context.Context, cl *consulapi.Client, crunch string, iss *vaultpki.Issuer) []client.Result {
	t.Helper()
	return setupEach(t, ctx, client.Config{
		Source: &consul.Source{Client: cl, Service: names.Service(crunch), Crunch: crunch},
		TLS:    iss,
	})
}

// setupEach runs a coordinator's client with cfg until its first membership
// and calls Setup("base.Base") on every member.
func setupEach(t *testing.T, ctx context.Context, cfg client.Config) []client.Result {
	t.Helper()
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(cctx) }()
	defer func() { cancel(); <-done }()
	wctx, wcancel := context.WithTimeout(cctx, 30*time.Second)
	defer wcancel()
	if err := c.WaitMembership(wctx); err != nil {
		t.Fatalf("no membership: %v", err)
	}
	return c.Setup(cctx, "base.Base", client.Request{Timeout: 10 * time.Second})
}
