//go:build e2e

package scheduler

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"
	"github.com/gorilla/websocket"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/testing/crunchdao"
	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/scheduler/orchws"
	"github.com/modelnodes/modelnodes/scheduler/quarantine"
	solanasrc "github.com/modelnodes/modelnodes/scheduler/source/solana"
	"github.com/modelnodes/modelnodes/scheduler/source/solana/onchain"
)

// Failure reports act, on the real stack: CrunchDAO's ModelCluster (PyPI,
// unchanged, over the orchestrator WebSocket with the crunch's Vault
// certificate, whose key is on chain) reports its models through its own
// process_failure. MULTIPLE_TIMEOUT restarts the model's allocation in
// place; BAD_IMPLEMENTATION quarantines the other: its job is stopped with
// the reason in the status API, its meta and Consul KV, and stays stopped
// across passes while the first model runs on. Forged reports change
// nothing: no certificate, another crunch's certificate, a Vault
// certificate naming the crunch with a key not on chain, another crunch's
// coordinator reporting this crunch's model. The CLI lifts the quarantine
// and the model runs again; quarantined again (LOW_PERFORMANCE), a new
// submission on chain releases it.
func TestFailureReportsAct(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	requireModelbox(t, cl.Nomad.Client)
	python := crunchdao.ClientPython(t)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// Two crunches: q-main with models A and B; q-other with one stopped
	// model (its coordinator's key is on chain through it).
	suffix := strconv.FormatInt(time.Now().UnixNano()%1_000_000_000, 36)
	mainName, otherName := "q-main-"+suffix, "q-other-"+suffix
	c := newExampleCrunch(t, ctx, cl, mainName)
	f, program, coord := c.Front, c.Program, c.coord
	thief, err := cl.CoordinatorIssuer(ctx, mainName) // Vault's, naming q-main, its own key
	if err != nil {
		t.Fatal(err)
	}
	// q-other, in the same program: its coordinator's key on chain.
	stranger, err := cl.CoordinatorIssuer(ctx, otherName)
	if err != nil {
		t.Fatal(err)
	}
	crunchOf := map[string]solana.PublicKey{mainName: c.Crunch, otherName: solana.NewWallet().PublicKey()}
	other := &onchain.Crunch{Name: otherName, Bump: 255}
	hashBytes(t, authz.SPKIHash(stranger.Certificate().Leaf), &other.CertHash)
	f.SetAccount(t, crunchOf[otherName], program, other.Encode())
	auth := func(crunch, id, submission string, running bool) []byte {
		a := c.auth(id)
		a.SubmissionID = submission
		ck := crunchOf[crunch]
		copy(a.Crunch[:], ck[:])
		if !running {
			a.DesiredState = onchain.DesiredStopped
		}
		return a.Encode()
	}
	keyA, keyB, keyC := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	f.SetAccount(t, keyA, program, auth(mainName, "qa", "sub-1", true))
	f.SetAccount(t, keyB, program, auth(mainName, "qb", "sub-1", true))
	f.SetAccount(t, keyC, program, auth(otherName, "qc", "sub-1", false))
	short := func(crunch, id string) string {
		m := jobs.Model{Crunch: crunch, CrunchID: crunchOf[crunch].String(), ModelID: id}
		return jobs.ShortID(jobs.Named(&m))
	}
	shortA, shortB := short(mainName, "qa"), short(mainName, "qb")
	jobA, jobB := names.Job(shortA), names.Job(shortB)

	// The scheduler, as cmd/scheduler wires it with --orchestrator-listen.
	var logs syncbuf.Buffer
	logger := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("scheduler log:\n%s", logs.String())
		}
	})
	opts := *testOptions
	opts.CRLURL = cl.Vault.Addr + "/v1/pki_int/issuers"
	const token = "e2e-admin-token"
	prefix := "modelnodes/quarantine-e2e-" + suffix + "/"
	store := &quarantine.Store{KV: cl.Consul.Client.KV(), Prefix: prefix, Logger: logger}
	t.Cleanup(func() { _, _ = cl.Consul.Client.KV().DeleteTree(prefix, nil) })
	rs := startSchedulerWith(t, func(s *Scheduler) {
		s.Reconciler.Options, s.Reconciler.Logger, s.Reconciler.Metrics = &opts, logger, s.Metrics
		s.Logger, s.AdminToken, s.Quarantine = logger, token, store
	}, nc, nc, nil, &solanasrc.Source{RPCURL: f.RPC, WSURL: f.WS, Program: program, Resync: 2 * time.Second, Logger: logger})
	status := httptest.NewServer(rs.s.Handler())
	defer status.Close()
	reg := rs.s.Metrics.Registry
	engine, err := quarantine.NewEngine(quarantine.EngineConfig{Store: store, Nomad: nc, Lookup: rs.s.DesiredModel,
		OnQuarantine: rs.s.Kick, Logger: logger, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	caFile, chain := cl.Vault.WriteCAChain(t, ctx, dir)
	az, err := authz.New(authz.Config{CAFile: caFile, CRLURLs: []string{opts.CRLURL}, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ws, err := orchws.New(orchws.Config{Consul: cl.Consul.Client, Authorizer: az, Logger: logger, Registerer: reg, Wait: time.Minute,
		CrunchMeta:      func(c string) string { return crunchOf[c].String() },
		CoordinatorKeys: rs.s.CoordinatorKeys, Reporter: engine})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	serverCA := testpki.NewCA(t, "orchestrator CA")
	leaf := serverCA.Issue(t, dir, testpki.Leaf{CommonName: "orchestrator", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	serverCert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AppendCertsFromPEM(chain)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: ws, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: orchws.ServerTLS(func() *tls.Certificate { return &serverCert }, func() *x509.CertPool { return clientCAs })}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	defer hs.Close()

	waitJobs(t, nc, time.Minute, "A and B registered", func(m map[string]nomad.JobStub) bool {
		return len(m) == 2 && !m[jobA].Stop && !m[jobB].Stop
	})

	// Their ModelCluster, as q-main's coordinator.
	cluster := startModelCluster(t, ctx, python, ln.Addr().String(), mainName, serverCA.WriteCA(t, dir, "server-ca.pem"), dir, coord.issuer.Certificate())
	cluster.expect("both models passing", 2*time.Minute, shortA, shortB)

	// MULTIPLE_TIMEOUT: B's allocation restarts in place; B comes back.
	allocB := runningAlloc(t, cl.Nomad.Client, jobB)
	cluster.send("report " + shortB + " MULTIPLE_TIMEOUT")
	waitFor(t, 30*time.Second, "B's allocation restarted", func() bool { return restarted(t, cl.Nomad.Client, allocB) })
	cluster.expect("B back after its restart", 2*time.Minute, shortA, shortB)
	if js := waitJobs(t, nc, time.Second, "jobs", func(map[string]nomad.JobStub) bool { return true }); js[jobB].Stop || js[jobA].Stop {
		t.Fatal("a restart stopped a job")
	}

	// BAD_IMPLEMENTATION: A quarantined; B untouched.
	before := jobIndexes(t, nc)
	coordKey := authz.SPKIHash(coord.issuer.Certificate().Leaf)
	cluster.send("report " + shortA + " BAD_IMPLEMENTATION")
	quarantined := func(code string) nomad.JobStub {
		t.Helper()
		js := waitJobs(t, nc, 30*time.Second, "A quarantined ("+code+")", func(m map[string]nomad.JobStub) bool {
			return m[jobA].Stop && m[jobA].Meta[names.MetaQuarantineCode] == code
		})
		if by := js[jobA].Meta[names.MetaQuarantineBy]; by != coordKey {
			t.Errorf("the job's meta names coordinator %q, want %s", by, coordKey)
		}
		kv, _, err := cl.Consul.Client.KV().Get(prefix+jobA, nil)
		var rec quarantine.Record
		if err != nil || kv == nil || json.Unmarshal(kv.Value, &rec) != nil || rec.Code != code || rec.Crunch != mainName || rec.ModelID != "qa" {
			t.Fatalf("Consul KV %s: %v %+v", prefix+jobA, err, rec)
		}
		var models []ModelStatus
		getJSON(t, status.URL+"/v1/models", &models)
		i := slices.IndexFunc(models, func(m ModelStatus) bool { return m.JobID == jobA })
		if i < 0 || models[i].Quarantine == nil || models[i].Quarantine.Code != code || models[i].Quarantine.Coordinator != coordKey {
			t.Errorf("/v1/models does not say why A is held: %+v", models)
		}
		if !strings.Contains(metricsText(t, status.URL), "modelnodes_scheduler_quarantined_models 1") {
			t.Error("quarantined_models is not 1")
		}
		return js[jobA]
	}
	held := quarantined("BAD_IMPLEMENTATION")
	if now := jobIndexes(t, nc); now[jobB] != before[jobB] {
		t.Errorf("the quarantine of A touched B: %s -> %s", before[jobB], now[jobB])
	}
	// Across passes (the chain still authorizes A, running): still stopped.
	for n := 0; n < 3; {
		select {
		case <-rs.passes:
			n++
		case <-time.After(10 * time.Second):
			t.Fatal("no reconcile pass")
		}
	}
	if j := waitJobs(t, nc, time.Second, "jobs", func(map[string]nomad.JobStub) bool { return true })[jobA]; !j.Stop || j.JobModifyIndex != held.JobModifyIndex {
		t.Fatalf("A was written again while quarantined: %+v", j)
	}
	cluster.expect("A gone from their cluster", 10*time.Second, shortB)

	// Forged reports and forged coordinators change nothing.
	before = jobIndexes(t, nc)
	restartsB := restartCount(t, cl.Nomad.Client, runningAlloc(t, cl.Nomad.Client, jobB))
	dial := func(path string, cert *tls.Certificate) (*websocket.Conn, int) {
		tc := &tls.Config{RootCAs: poolOf(serverCA.Cert)}
		if cert != nil {
			tc.Certificates = []tls.Certificate{*cert}
		}
		d := websocket.Dialer{TLSClientConfig: tc, HandshakeTimeout: 10 * time.Second}
		conn, resp, _ := d.DialContext(ctx, "wss://"+ln.Addr().String()+"/"+path, nil)
		if resp == nil {
			return conn, 0
		}
		return conn, resp.StatusCode
	}
	for _, c := range []struct {
		what string
		cert *tls.Certificate
		want int
	}{
		{"no certificate", nil, http.StatusUnauthorized},
		{"another crunch's certificate", stranger.Certificate(), http.StatusForbidden},
		{"a Vault certificate naming the crunch, its key not on chain", thief.Certificate(), http.StatusUnauthorized},
	} {
		if _, code := dial(mainName, c.cert); code != c.want {
			t.Errorf("%s: answered %d, want %d", c.what, code, c.want)
		}
	}
	conn, code := dial(otherName, stranger.Certificate())
	if code != http.StatusSwitchingProtocols {
		t.Fatalf("q-other's coordinator on its own crunch: answered %d", code)
	}
	defer conn.Close()
	forged := `{"event": "report_failure", "data": [{"model_id": "` + shortB + `", "failure_code": "BAD_IMPLEMENTATION", "failure_reason": null, "ip": "127.0.0.1"}]}`
	if err := conn.WriteMessage(websocket.TextMessage, []byte(forged)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the forged report refused", func() bool {
		return strings.Contains(metricsText(t, status.URL), `modelnodes_orchestrator_rejected_messages_total{crunch="`+otherName+`",reason="unknown_model"} 1`)
	})
	time.Sleep(time.Second)
	sameJobs(t, nc, before, "after forged reports")
	if n := restartCount(t, cl.Nomad.Client, runningAlloc(t, cl.Nomad.Client, jobB)); n != restartsB {
		t.Errorf("a forged report restarted B (%d -> %d restarts)", restartsB, n)
	}

	// The operator lifts the quarantine with the CLI: A runs again.
	bin := os.Getenv("MODELNODES_BIN")
	if bin == "" {
		bin, _ = filepath.Abs("../bin")
	}
	lift := exec.CommandContext(ctx, filepath.Join(bin, "scheduler"), "quarantine", "lift", "--status-addr", status.URL, shortA)
	lift.Env = append(os.Environ(), "MODELNODES_SCHEDULER_ADMIN_TOKEN="+token)
	if out, err := lift.CombinedOutput(); err != nil || !strings.Contains(string(out), "lifted: "+jobA) {
		t.Fatalf("scheduler quarantine lift: %v\n%s", err, out)
	}
	waitJobs(t, nc, 30*time.Second, "A running again after the lift", func(m map[string]nomad.JobStub) bool { return !m[jobA].Stop })
	cluster.expect("A back in their cluster", 2*time.Minute, shortA, shortB)

	// Quarantined again; a new submission on chain releases it.
	cluster.send("report " + shortA + " LOW_PERFORMANCE")
	quarantined("LOW_PERFORMANCE")
	f.SetAccount(t, keyA, program, auth(mainName, "qa", "sub-2", true))
	waitJobs(t, nc, 30*time.Second, "A running on its new submission", func(m map[string]nomad.JobStub) bool {
		return !m[jobA].Stop && m[jobA].Meta[names.MetaSubmission] == "sub-2"
	})
	if kv, _, err := cl.Consul.Client.KV().Get(prefix+jobA, nil); err != nil || kv != nil {
		t.Errorf("the quarantine record outlived the new submission: %v %v", kv, err)
	}
	cluster.expect("A back on its new submission", 2*time.Minute, shortA, shortB)
	text := metricsText(t, status.URL)
	for _, want := range []string{
		`modelnodes_orchestrator_report_actions_total{action="restart",crunch="` + mainName + `"} 1`,
		`modelnodes_orchestrator_report_actions_total{action="quarantine",crunch="` + mainName + `"} 2`,
		`modelnodes_scheduler_quarantines_lifted_total{reason="operator"} 1`,
		`modelnodes_scheduler_quarantines_lifted_total{reason="submission"} 1`,
		`modelnodes_scheduler_quarantined_models 0`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// modelCluster is CrunchDAO's ModelCluster in a Python process
// (orchws/testdata/cluster.py).
type modelCluster struct {
	t      *testing.T
	stdin  io.Writer
	states chan []string
	stderr *syncbuf.Buffer
}

func startModelCluster(t *testing.T, ctx context.Context, python, addr, crunch, serverCAFile, dir string, cert *tls.Certificate) *modelCluster {
	t.Helper()
	certFile, keyFile := testpki.WriteKeyPair(t, dir, "coord", cert)
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.CommandContext(ctx, python, "orchws/testdata/cluster.py", host, port, crunch, serverCAFile, certFile, keyFile)
	mc := &modelCluster{t: t, states: make(chan []string, 64), stderr: &syncbuf.Buffer{}}
	var err error
	mc.stdin, err = cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = mc.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("ModelCluster's stderr:\n%s", mc.stderr.String())
		}
	})
	go func() {
		defer close(mc.states)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var held []struct {
				ModelID string `json:"model_id"`
			}
			if err := json.Unmarshal(sc.Bytes(), &held); err != nil {
				continue
			}
			ids := []string{}
			for _, m := range held {
				ids = append(ids, m.ModelID)
			}
			mc.states <- ids
		}
	}()
	return mc
}

// send writes a command line to the script ("report MODEL CODE").
func (mc *modelCluster) send(line string) {
	mc.t.Helper()
	if _, err := io.WriteString(mc.stdin, line+"\n"); err != nil {
		mc.t.Fatal(err)
	}
}

// expect waits for the cluster to hold exactly ids (sorted as printed).
func (mc *modelCluster) expect(what string, limit time.Duration, ids ...string) {
	mc.t.Helper()
	slices.Sort(ids)
	timer := time.NewTimer(limit)
	defer timer.Stop()
	var last []string
	for {
		select {
		case s, ok := <-mc.states:
			if !ok {
				mc.t.Fatalf("%s: the ModelCluster script exited; stderr:\n%s", what, mc.stderr.String())
			}
			last = s
			if slices.Equal(s, ids) {
				return
			}
		case <-timer.C:
			mc.t.Fatalf("%s: their cluster does not hold %v within %v (last: %v)", what, ids, limit, last)
		}
	}
}

func runningAlloc(t *testing.T, c *nomadapi.Client, jobID string) string {
	t.Helper()
	var id string
	waitFor(t, 30*time.Second, jobID+" has a running allocation", func() bool {
		allocs, _, err := c.Jobs().Allocations(jobID, false, nil)
		if err != nil {
			return false
		}
		for _, a := range allocs {
			if a.ClientStatus == nomadapi.AllocClientStatusRunning && a.DesiredStatus == nomadapi.AllocDesiredStatusRun {
				id = a.ID
				return true
			}
		}
		return false
	})
	return id
}

// restartCount counts the restarts Nomad was asked for on the allocation.
func restartCount(t *testing.T, c *nomadapi.Client, allocID string) int {
	t.Helper()
	a, _, err := c.Allocations().Info(allocID, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ts := range a.TaskStates {
		for _, e := range ts.Events {
			if e.Type == nomadapi.TaskRestartSignal {
				n++
			}
		}
	}
	return n
}

func restarted(t *testing.T, c *nomadapi.Client, allocID string) bool {
	return restartCount(t, c, allocID) > 0
}

func poolOf(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}
