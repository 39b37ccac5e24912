//go:build e2e

package orchws_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelnodes/modelnodes/internal/testing/crunchdao"
	"github.com/modelnodes/modelnodes/internal/testing/orchwstest"
	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/internal/testing/testtime"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/scheduler/orchws"
)

func TestMain(m *testing.M) { os.Exit(testcluster.Main(m)) }

// announced is what the Python script prints per model it holds.
type announced struct {
	DeploymentID string            `json:"deployment_id"`
	ModelID      string            `json:"model_id"`
	ModelName    string            `json:"model_name"`
	IP           string            `json:"ip"`
	Port         int               `json:"port"`
	Infos        map[string]string `json:"infos"`
}

// CrunchDAO's ModelCluster, from PyPI, against the orchestrator WebSocket on
// a real Consul and Vault: its init holds exactly the crunch's passing
// instances, with their address, ids, wallet and hotkey; a deregistered or
// failing model leaves it within a second, one that passes again or is
// registered comes back; its failure report is counted by crunch and code.
// Nobody but the crunch's coordinator (Vault certificate naming the crunch)
// is answered.
func TestModelClusterDiscoversPassingModels(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Consul|testcluster.Vault)
	python := crunchdao.ClientPython(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// Crunches of their own: the shared agents keep earlier runs' state.
	suffix := strconv.FormatInt(time.Now().UnixNano()%1_000_000_000, 36)
	crunch, other := "orch"+suffix, "orchother"+suffix
	coord, err := cl.CoordinatorIssuer(ctx, crunch)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := cl.CoordinatorIssuer(ctx, other)
	if err != nil {
		t.Fatal(err)
	}

	// The server: TLS from a CA of its own, coordinators checked against
	// Vault's model-call PKI and its revocation lists, as runners do.
	caFile, chain := cl.Vault.WriteCAChain(t, ctx, dir)
	clientCAs := x509.NewCertPool()
	clientCAs.AppendCertsFromPEM(chain)
	var logs syncbuf.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	logger := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Debug})
	az, err := authz.New(authz.Config{CAFile: caFile, CRLURLs: []string{cl.Vault.Addr + "/v1/pki_int/issuers"}, AnyCoordinatorKey: true, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv, err := orchws.New(orchws.Config{Consul: cl.Consul.Client, Authorizer: az, Wait: time.Minute, Logger: logger, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	orchAddr, serverCA := orchwstest.Serve(t, srv, clientCAs)
	host, port, _ := net.SplitHostPort(orchAddr)

	// The crunch's models: two passing, one failing its check, one of
	// another crunch in the same service (a foreign job may register it).
	agent := cl.Consul.Client.Agent()
	service := names.Service(crunch)
	register := func(id string, port int, crunchMeta string, status string) {
		t.Helper()
		err := agent.ServiceRegister(&consulapi.AgentServiceRegistration{
			ID: service + "-" + id, Name: service, Address: "127.0.0.1", Port: port,
			Meta: map[string]string{
				names.MetaModelID: id, names.MetaModel: "Model" + id + "FullId", names.MetaCrunch: crunchMeta,
				names.MetaCruncher: "Wallet" + id, names.MetaHotkey: "hotkey-" + id,
			},
			Check: &consulapi.AgentServiceCheck{CheckID: service + "-check-" + id, TTL: "10m", Status: status},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = agent.ServiceDeregister(service + "-" + id) })
	}
	check := func(id, status string) {
		t.Helper()
		if err := agent.UpdateTTL(service+"-check-"+id, "e2e", status); err != nil {
			t.Fatal(err)
		}
	}
	register("m1", 7201, crunch, consulapi.HealthPassing)
	register("m2", 7202, crunch, consulapi.HealthPassing)
	register("m3", 7203, crunch, consulapi.HealthCritical)
	register("rogue", 7204, other, consulapi.HealthPassing)

	// Their ModelCluster, as the crunch's coordinator.
	certFile, keyFile := testpki.WriteKeyPair(t, dir, "coord", coord.Certificate())
	serverCAFile := serverCA.WriteCA(t, dir, "server-ca.pem")
	cmd := exec.CommandContext(ctx, python, "testdata/cluster.py", host, port, crunch, serverCAFile, certFile, keyFile)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("ModelCluster's stderr:\n%s", stderr.String())
		}
	})
	states := make(chan []announced, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var s []announced
			if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
				t.Errorf("the script printed %q: %v", sc.Text(), err)
				continue
			}
			states <- s
		}
		close(states)
	}()
	// expect waits for the cluster to hold exactly ids, within limit.
	expect := func(what string, limit time.Duration, ids ...string) []announced {
		t.Helper()
		t0 := time.Now()
		timer := time.NewTimer(limit)
		defer timer.Stop()
		var last []announced
		for {
			select {
			case s, ok := <-states:
				if !ok {
					t.Fatalf("%s: the ModelCluster script exited; stderr:\n%s", what, stderr.String())
				}
				last = s
				var got []string
				for _, m := range s {
					got = append(got, m.ModelID)
				}
				if strings.Join(got, ",") == strings.Join(ids, ",") {
					t.Logf("%s: the cluster holds %v after %v", what, got, time.Since(t0).Round(time.Millisecond))
					return s
				}
			case <-timer.C:
				t.Fatalf("%s: the cluster does not hold %v within %v (last: %+v)", what, ids, limit, last)
			}
		}
	}

	first := expect("init", testtime.Scaled(30*time.Second), "m1", "m2")
	for i, m := range first {
		id := []string{"m1", "m2"}[i]
		want := announced{DeploymentID: id, ModelID: id, ModelName: "Model" + id + "FullId", IP: "127.0.0.1", Port: 7201 + i,
			Infos: map[string]string{"model_name": "Model" + id + "FullId", "cruncher_id": "Wallet" + id, "cruncher_name": "Wallet" + id,
				"cruncher_wallet_pubkey": "Wallet" + id, "cruncher_hotkey": "hotkey-" + id}}
		if fmt.Sprint(m) != fmt.Sprint(want) {
			t.Errorf("model %s announced as\n%+v\nwant\n%+v", id, m, want)
		}
	}
	// Updates reach the cluster within a second of the change in Consul.
	second := testtime.Scaled(time.Second)
	if err := agent.ServiceDeregister(service + "-m2"); err != nil {
		t.Fatal(err)
	}
	expect("m2 deregistered", second, "m1")
	check("m1", consulapi.HealthCritical)
	expect("m1 failing its check", second)
	check("m1", consulapi.HealthPassing)
	expect("m1 passing again", second, "m1")
	check("m3", consulapi.HealthPassing)
	expect("m3 passing", second, "m1", "m3")

	// Their failure report reaches the server, counted by crunch and code.
	if _, err := io.WriteString(stdin, "report m3 BAD_IMPLEMENTATION\n"); err != nil {
		t.Fatal(err)
	}
	expect("m3 reported (their cluster drops it)", 5*second, "m1")
	waitCounter(t, reg, "modelnodes_orchestrator_failure_reports_total", 1, "BAD_IMPLEMENTATION", crunch)

	// Refused before the upgrade: no certificate, another crunch's
	// certificate, and the crunch's own certificate on another crunch.
	dial := func(path string, cert *tls.Certificate) (int, error) {
		tc := &tls.Config{RootCAs: poolOf(serverCA.Cert)}
		if cert != nil {
			tc.Certificates = []tls.Certificate{*cert}
		}
		d := websocket.Dialer{TLSClientConfig: tc, HandshakeTimeout: 10 * time.Second}
		conn, resp, err := d.DialContext(ctx, "wss://"+orchAddr+"/"+path, nil)
		if conn != nil {
			conn.Close()
		}
		if resp != nil {
			return resp.StatusCode, err
		}
		return 0, err
	}
	for _, c := range []struct {
		what string
		path string
		cert *tls.Certificate
		want int
	}{
		{"no certificate", crunch, nil, http.StatusUnauthorized},
		{"another crunch's certificate", crunch, stranger.Certificate(), http.StatusForbidden},
		{"the coordinator asking for another crunch", other, coord.Certificate(), http.StatusForbidden},
	} {
		if code, err := dial(c.path, c.cert); code != c.want {
			t.Errorf("%s: answered %d (%v), want %d", c.what, code, err, c.want)
		}
	}
	// A certificate from outside Vault's PKI is refused: Go's client does
	// not even send it (the server asks for Vault's CAs), so it is a 401.
	outsider := testpki.NewCA(t, "outsider").Issue(t, dir, testpki.Leaf{CommonName: names.CoordinatorCommonName(crunch),
		URIs: []string{names.CoordinatorURI(crunch)}, Client: true})
	outsiderCert, err := tls.X509KeyPair(outsider.CertPEM, outsider.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if code, err := dial(crunch, &outsiderCert); err == nil || code == http.StatusSwitchingProtocols {
		t.Errorf("a certificate from another CA naming the crunch: answered %d, want a refusal", code)
	}

	// A report of a model the crunch does not have is ignored and counted.
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: poolOf(serverCA.Cert), Certificates: []tls.Certificate{*coord.Certificate()}}}
	conn, _, err := d.DialContext(ctx, "wss://"+orchAddr+"/"+crunch, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var ev struct {
		Event string            `json:"event"`
		Data  []json.RawMessage `json:"data"`
	}
	// m3 is still passing: a report is not acted on yet, so it is still
	// announced.
	var ids []string
	err = conn.ReadJSON(&ev)
	for _, d := range ev.Data {
		var m announced
		_ = json.Unmarshal(d, &m)
		ids = append(ids, m.ModelID)
	}
	if err != nil || ev.Event != "init" || strings.Join(ids, ",") != "m1,m3" {
		t.Errorf("a second connection's first event: %s %v (%v), want init with m1 and m3", ev.Event, ids, err)
	}
	forged := `{"event": "report_failure", "data": [{"model_id": "rogue", "failure_code": "LOW_PERFORMANCE", "failure_reason": null, "ip": "127.0.0.1"}]}`
	if err := conn.WriteMessage(websocket.TextMessage, []byte(forged)); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, reg, "modelnodes_orchestrator_rejected_messages_total", 1, crunch, "unknown_model")
	if n := counter(t, reg, "modelnodes_orchestrator_failure_reports_total", "LOW_PERFORMANCE", crunch); n != 0 {
		t.Errorf("a report of another crunch's model was counted: %v", n)
	}
}

func poolOf(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

// counter is the value of the counter name with exactly these label values,
// in the order of the labels' names (0 when it has none yet).
func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var got []string
			for _, l := range m.GetLabel() {
				got = append(got, l.GetValue())
			}
			if strings.Join(got, ",") == strings.Join(labels, ",") {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// waitCounter waits for the counter to reach want.
func waitCounter(t *testing.T, reg *prometheus.Registry, name string, want float64, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(testtime.Scaled(5 * time.Second))
	for {
		got := counter(t, reg, name, labels...)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
