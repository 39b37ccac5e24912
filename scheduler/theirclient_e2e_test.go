//go:build e2e

package scheduler

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/mr-tron/base58"
	"google.golang.org/grpc"
	grpccreds "google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/modelnodes/modelnodes/delegation"
	"github.com/modelnodes/modelnodes/internal/testing/crunchdao"
	"github.com/modelnodes/modelnodes/internal/testing/orchwstest"
	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/runner/vaultkey"
	"github.com/modelnodes/modelnodes/scheduler/orchws"
	solanasrc "github.com/modelnodes/modelnodes/scheduler/source/solana"
)

// CrunchDAO's coordinator client from PyPI (model-runner-client, unchanged
// but for its WebSocket transport, which cannot do TLS) against our whole
// stack: authorizations on a real Solana runtime, the scheduler, Nomad
// running Go models through the modelbox driver, Consul, Vault, and the
// orchestrator WebSocket. Their DynamicSubclassModelConcurrentRunner
// discovers the models, sets them up and fans add(2, 40) out:
//
//  1. plaintext (runners without TLS: the scheduler's --plaintext-runners,
//     a test-only option): every model answers 42; a model authorized on
//     chain joins their cluster, one whose account is closed leaves it;
//  2. secure, their SecureCredentials with the coordinator's Vault
//     certificate: the scheduler restarted with secure runners (Vault RSA
//     keys kept per model, RunnerVaultAddr), each cruncher's wallet signs
//     its runner's key, and their client, checking the TLS name
//     model-node-<model_id>.crunchdao.internal and the delegation on every
//     call, gets 42 from every model.
func TestCrunchDAOClientOnOurStack(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	requireModelbox(t, cl.Nomad.Client)
	python := crunchdao.ClientPython(t)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()
	t0 := time.Now()

	const crunchName = "theirclient"
	c := newExampleCrunch(t, ctx, cl, crunchName)
	f, coord := c.Front, c.coord
	// Each model's cruncher has a wallet (it signs the delegation) and a
	// hotkey, both on chain.
	type cruncher struct {
		wallet ed25519.PrivateKey
		hotkey solana.PublicKey
		acct   solana.PublicKey
	}
	crunchers := map[string]*cruncher{}
	authorize := func(id string) {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		k := &cruncher{wallet: priv, hotkey: solana.NewWallet().PublicKey(), acct: solana.NewWallet().PublicKey()}
		crunchers[id] = k
		a := c.auth(id)
		copy(a.Cruncher[:], pub)
		copy(a.Hotkey[:], k.hotkey[:])
		f.SetAccount(t, k.acct, c.Program, a.Encode())
	}
	authorize("cd-1")
	authorize("cd-2")

	// The orchestrator WebSocket, as --orchestrator-listen serves it.
	vaultCA, chainPEM := cl.Vault.WriteCAChain(t, ctx, dir)
	var logs syncbuf.Buffer
	logger := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("scheduler and orchestrator log:\n%s", logs.String())
		}
	})
	az, err := authz.New(authz.Config{CAFile: vaultCA, CRLURLs: []string{cl.Vault.Addr + "/v1/pki_int/issuers"}, AnyCoordinatorKey: true, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	// The coordinator's key must be on chain, as the scheduler's desired
	// state says (cmd/scheduler wires it the same way); the scheduler
	// running now answers.
	var current atomic.Pointer[Scheduler]
	srv, err := orchws.New(orchws.Config{Consul: cl.Consul.Client, Authorizer: az, Wait: time.Minute, Logger: logger,
		CrunchMeta: func(string) string { return c.Crunch.String() },
		CoordinatorKeys: func(crunch string) []string {
			if s := current.Load(); s != nil {
				return s.CoordinatorKeys(crunch)
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	clientCAs := x509.NewCertPool()
	clientCAs.AppendCertsFromPEM(chainPEM)
	orchAddr, orchCA := orchwstest.Serve(t, srv, clientCAs)
	orchHost, orchPort, _ := net.SplitHostPort(orchAddr)

	// The coordinator's files: its Vault certificate and key, and (their
	// SecureCredentials directory) ca.crt, tls.crt, tls.key.
	creds := filepath.Join(dir, "creds")
	if err := os.MkdirAll(creds, 0o700); err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM := pemOf(t, coord.issuer.Certificate())
	testpki.WriteFile(t, filepath.Join(creds, "ca.crt"), chainPEM)
	testpki.WriteFile(t, filepath.Join(creds, "tls.crt"), certPEM)
	testpki.WriteFile(t, filepath.Join(creds, "tls.key"), keyPEM)
	theirs := func(secure bool) *theirClient {
		args := []string{"testdata/theirclient.py", orchHost, orchPort, crunchName, orchCA.WriteCA(t, dir, "orch-ca.pem"),
			filepath.Join(creds, "tls.crt"), filepath.Join(creds, "tls.key")}
		if secure {
			args = append(args, creds)
		}
		return startTheirClient(t, ctx, python, args...)
	}

	opts := *testOptions
	opts.CRLURL = cl.Vault.Addr + "/v1/pki_int/issuers"
	source := func() *solanasrc.Source {
		return &solanasrc.Source{RPCURL: f.RPC, WSURL: f.WS, Program: c.Program, Resync: 2 * time.Second, Logger: logger}
	}

	// 1. Plaintext.
	plain := opts
	plain.Plaintext = true
	rs := startSchedulerWith(t, func(s *Scheduler) { s.Reconciler.Options, s.Logger = &plain, logger; current.Store(s) }, nc, nc, nil, source())
	waitInstances(t, cl, crunchName, 90*time.Second, false, "cd-1", "cd-2")
	tPlain := time.Now()
	py := theirs(false)
	py.expectModels(t, 30*time.Second, "cd-1", "cd-2")
	py.expectCall(t, "cd-1", "cd-2")
	authorize("cd-3")
	py.expectModels(t, 90*time.Second, "cd-1", "cd-2", "cd-3")
	f.CloseAccount(t, crunchers["cd-1"].acct)
	py.expectModels(t, 60*time.Second, "cd-2", "cd-3")
	py.expectCall(t, "cd-2", "cd-3")
	py.stop()
	t.Logf("plaintext: their cluster followed the chain, every call answered (%.1fs)", time.Since(tPlain).Seconds())

	// 2. Secure: the same models, now served over mTLS with keys kept in
	// Vault; the crunchers vouch for their runners' keys.
	rs.stop()
	secure := opts
	secure.RunnerVaultAddr = cl.Vault.Addr
	startSchedulerWith(t, func(s *Scheduler) { s.Reconciler.Options, s.Logger = &secure, logger; current.Store(s) }, nc, nc, nil, source())
	tSecure := time.Now()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(chainPEM)
	addrs := waitInstances(t, cl, crunchName, 90*time.Second, true, "cd-2", "cd-3")
	for _, id := range []string{"cd-2", "cd-3"} {
		m := jobs.Model{Crunch: crunchName, CrunchID: c.Crunch.String(), ModelID: id}
		jobID := jobs.JobID(jobs.Named(&m))
		if jobID != names.Job(id) {
			t.Fatalf("model %s runs as job %s: CrunchDAO's client expects %s", id, jobID, names.Job(id))
		}
		entry, err := cl.Vault.Client.KVv2("runner-keys").Get(ctx, jobID)
		if err != nil {
			t.Fatalf("runner-keys/%s: %v", jobID, err)
		}
		certPub, _ := entry.Data[vaultkey.FieldCertPub].(string)
		k := crunchers[id]
		proof, err := delegation.Sign(k.wallet, delegation.Message{CertPub: certPub, ModelID: id, Hotkey: k.hotkey.String(),
			ExpiresAt: time.Now().Add(time.Hour).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		file, _ := json.Marshal(proof.ToFile())
		v := &nomadapi.Variable{Path: "nomad/jobs/" + jobID, Items: nomadapi.VariableItems{jobs.DelegationItem: string(file)}}
		if _, _, err := cl.Nomad.Client.Variables().Create(v, nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = cl.Nomad.Client.Variables().Delete("nomad/jobs/"+jobID, nil) })
		waitDelegationHeader(t, addrs[id], names.ModelServerName(id), roots, coord.issuer.Certificate(), base58.Encode(k.wallet.Public().(ed25519.PublicKey)))
	}
	py = theirs(true)
	py.expectModels(t, 60*time.Second, "cd-2", "cd-3")
	py.expectCall(t, "cd-2", "cd-3")
	py.stop()
	t.Logf("secure: every call answered with the delegations checked (%.1fs); the test took %.1fs", time.Since(tSecure).Seconds(), time.Since(t0).Seconds())
}

// theirClient is theirclient.py running.
type theirClient struct {
	cmd    *exec.Cmd
	stdin  interface{ Write([]byte) (int, error) }
	lines  chan map[string]json.RawMessage
	stderr *syncbuf.Buffer
}

func startTheirClient(t *testing.T, ctx context.Context, python string, args ...string) *theirClient {
	t.Helper()
	cmd := exec.CommandContext(ctx, python, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &theirClient{cmd: cmd, stdin: stdin, lines: make(chan map[string]json.RawMessage, 64), stderr: &syncbuf.Buffer{}}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("their client's stderr:\n%s", p.stderr.String())
		}
	})
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]json.RawMessage
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				p.lines <- m
			}
		}
		close(p.lines)
	}()
	return p
}

func (p *theirClient) stop() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}

// next waits for the script's next line with key, within d.
func (p *theirClient) next(t *testing.T, key string, d time.Duration) (json.RawMessage, bool) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case m, ok := <-p.lines:
			if !ok {
				t.Fatalf("their client exited; stderr:\n%s", p.stderr.String())
			}
			if v, ok := m[key]; ok {
				return v, true
			}
		case <-timer.C:
			return nil, false
		}
	}
}

// expectModels waits for their cluster to hold exactly ids.
func (p *theirClient) expectModels(t *testing.T, d time.Duration, ids ...string) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last []string
	for time.Now().Before(deadline) {
		raw, ok := p.next(t, "models", time.Until(deadline))
		if !ok {
			break
		}
		last = nil
		_ = json.Unmarshal(raw, &last)
		if slices.Equal(last, ids) {
			return
		}
	}
	t.Fatalf("their cluster holds %v, want %v within %v", last, ids, d)
}

// expectCall fans add(2, 40) out and wants 42 from exactly ids.
func (p *theirClient) expectCall(t *testing.T, ids ...string) {
	t.Helper()
	if _, err := p.stdin.Write([]byte("call\n")); err != nil {
		t.Fatal(err)
	}
	raw, ok := p.next(t, "call", 30*time.Second)
	if !ok {
		t.Fatal("their concurrent runner's call did not return within 30 s")
	}
	var res map[string][]any
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	var got []string
	for id, r := range res {
		got = append(got, id)
		if len(r) != 3 || r[0] != "SUCCESS" || r[1] != float64(42) {
			t.Errorf("their call of %s: %v, want SUCCESS 42", id, r)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, ids) {
		t.Errorf("their call reached %v, want %v", got, ids)
	}
}

// waitInstances waits until the crunch's service has exactly one passing
// instance per id, each serving TLS (secure) or not, and returns their
// addresses by model id.
func waitInstances(t *testing.T, cl *testcluster.Cluster, crunch string, d time.Duration, secure bool, ids ...string) map[string]string {
	t.Helper()
	deadline := time.Now().Add(d)
	var last []string
	for {
		entries, _, err := cl.Consul.Client.Health().Service(names.Service(crunch), "", true, nil)
		addrs := map[string]string{}
		count := map[string]int{}
		last = last[:0]
		for _, e := range entries {
			id := e.Service.Meta[names.MetaModelID]
			count[id]++
			addrs[id] = net.JoinHostPort(e.Service.Address, fmt.Sprint(e.Service.Port))
			last = append(last, id+"@"+addrs[id])
		}
		ok := err == nil && len(count) == len(ids)
		for _, id := range ids {
			ok = ok && count[id] == 1 && speaksTLS(addrs[id]) == secure
		}
		if ok {
			return addrs
		}
		if time.Now().After(deadline) {
			t.Fatalf("the crunch's passing instances: %v (%v), want one %s instance of each of %v within %v", last, err,
				map[bool]string{true: "TLS", false: "plaintext"}[secure], ids, d)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// speaksTLS reports whether addr answers a TLS ClientHello with a
// handshake record.
func speaksTLS(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	err = tls.Client(conn, &tls.Config{InsecureSkipVerify: true}).Handshake() //nolint:gosec // a probe: only whether TLS answers
	var rec tls.RecordHeaderError
	return err == nil || !errors.As(err, &rec)
}

// waitDelegationHeader waits until the runner at addr sends a delegation by
// wallet with its answers (it renders the job's variable within a
// template pass).
func waitDelegationHeader(t *testing.T, addr, serverName string, roots *x509.CertPool, client *tls.Certificate, wallet string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(grpccreds.NewTLS(&tls.Config{
		RootCAs: roots, ServerName: serverName, Certificates: []tls.Certificate{*client}})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var md metadata.MD
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		// Rest: a model call (delegations come with those only) that
		// changes nothing before a Setup.
		_, err := dspb.NewDynamicSubclassServiceClient(conn).Rest(ctx, &emptypb.Empty{}, grpc.Header(&md))
		cancel()
		if err == nil && strings.Join(md.Get(delegation.HeaderWallet), "") == wallet {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the runner at %s sends no delegation by %s within 60 s (%v, %v)", addr, wallet, err, md)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func pemOf(t *testing.T, c *tls.Certificate) (certPEM, keyPEM []byte) {
	t.Helper()
	for _, der := range c.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	key, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})
}
