package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/jobs"
)

func TestParse(t *testing.T) {
	if _, err := parse(nil); err == nil || !strings.Contains(err.Error(), "no source") {
		t.Fatalf("no source: %v", err)
	}
	if _, err := parse([]string{"--solana-rpc", "http://x"}); err == nil || !strings.Contains(err.Error(), "--solana-program") {
		t.Fatalf("rpc without program: %v", err)
	}
	if _, err := parse([]string{"--models-file", "m.yaml", "--solana-commitment", "processed"}); err == nil {
		t.Fatal("processed commitment accepted: only confirmed or finalized data may count")
	}
	if _, err := parse([]string{"--models-file", "m.yaml"}); err == nil || !strings.Contains(err.Error(), "--crl-url") {
		t.Fatalf("secure runners without a revocation list: %v", err)
	}
	if _, err := parse([]string{"--models-file", "m.yaml", "--plaintext-runners"}); err != nil {
		t.Fatalf("plaintext runners have no TLS to revoke: %v", err)
	}
	t.Setenv("MODELNODES_SCHEDULER_ARTIFACT_HOSTS", "models.example,*.cdn.example")
	t.Setenv("MODELNODES_SCHEDULER_ALLOW_HTTP_ARTIFACTS", "true")
	t.Setenv("MODELNODES_SCHEDULER_CRL_URL", "https://vault:8200/v1/pki_int/issuers")
	t.Setenv("MODELNODES_SCHEDULER_FEED_URL", "http://feed")
	t.Setenv("MODELNODES_SCHEDULER_FEED_CRUNCH", "a,b")
	c, err := parse([]string{"--resync", "5s"})
	if err != nil || c.feedURL != "http://feed" || len(c.feedCrunches) != 2 || c.resync != 5*time.Second ||
		len(c.artifactHosts) != 2 || !c.allowHTTPArtifacts || c.crlURL == "" || c.allowHostModelDirs {
		t.Fatalf("environment fallback: %v %+v", err, c)
	}
	if c.disconnect() != (jobs.Disconnect{}) || len(c.crunchDisconnect) != 0 {
		t.Fatalf("disconnect blocks by default: %+v %v", c.disconnect(), c.crunchDisconnect)
	}
	t.Setenv("MODELNODES_SCHEDULER_DISCONNECT_LOST_AFTER", "5m")
	t.Setenv("MODELNODES_SCHEDULER_DISCONNECT_CRUNCH", "mid-one=1h:no-replace,big=0")
	c, err = parse([]string{"--disconnect-replace=false", "--disconnect-crunch", "flaky=90s"})
	if err != nil {
		t.Fatal(err)
	}
	if c.disconnect() != (jobs.Disconnect{LostAfter: 5 * time.Minute}) {
		t.Errorf("default disconnect %+v, want 5m without replacement", c.disconnect())
	}
	// The command line wins over the environment, as for every flag.
	if want := map[string]jobs.Disconnect{"flaky": {LostAfter: 90 * time.Second}}; !maps.Equal(c.crunchDisconnect, want) {
		t.Errorf("per crunch %v, want %v", c.crunchDisconnect, want)
	}
	for _, bad := range [][]string{{"--disconnect-lost-after", "-1m"}, {"--disconnect-crunch", "mid-one"}, {"--disconnect-crunch", "x=1m:sometimes"}} {
		if _, err := parse(bad); err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(bad[0], "--")) {
			t.Errorf("%q: %v, want an error naming the flag", bad, err)
		}
	}
	t.Setenv("MODELNODES_SCHEDULER_DISCONNECT_LOST_AFTER", "0")
	t.Setenv("MODELNODES_SCHEDULER_DISCONNECT_CRUNCH", "")
	if _, err := parse([]string{"--help"}); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
}

// The command serves its status API and reports a source it cannot reach
// (Nomad unreachable too) without exiting.
func TestRunServesStatus(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	models := filepath.Join(t.TempDir(), "models.yaml")
	if err := os.WriteFile(models, []byte("models:\n  - {crunch: demo, model_id: a, model_dir: /m/a, desired: running}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := parse([]string{"--models-file", models, "--listen", addr, "--nomad-addr", "http://127.0.0.1:1",
		"--feed-url", "http://127.0.0.1:1", "--feed-crunch", "demo", "--crl-url", "http://127.0.0.1:1/v1/pki_int/issuers", "--allow-host-model-dirs"})
	if err != nil {
		t.Fatal(err)
	}
	defer startRun(t, c)()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st struct {
			SourcesReady bool `json:"sources_ready"`
			Sources      []struct {
				Name      string `json:"name"`
				Ready     bool   `json:"ready"`
				LastError string `json:"last_error"`
			} `json:"sources"`
		}
		if resp, err := http.Get("http://" + addr + "/v1/status"); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if len(st.Sources) == 2 && st.Sources[0].LastError != "" && st.Sources[1].Ready {
				if st.SourcesReady || !strings.Contains(st.Sources[0].LastError, "crunchdao feed") {
					t.Fatalf("status: %+v", st)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("status API never showed the unreachable feed and the read file")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RPC providers put credentials in the URL (user:password@, ?api-key=):
// when those sources fail, neither the unauthenticated status API nor the
// log may show them (issue 13 item 7).
func TestFailingSourcesDoNotLeakURLCredentials(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	const secret = "s3cr3t-key"
	c, err := parse([]string{"--listen", addr, "--nomad-addr", "http://127.0.0.1:1", "--plaintext-runners",
		"--solana-rpc", "http://user:" + secret + "@127.0.0.1:1/rpc?api-key=" + secret,
		"--solana-ws", "ws://user:" + secret + "@127.0.0.1:1/ws?api-key=" + secret,
		"--solana-program", "11111111111111111111111111111111",
		"--feed-url", "http://feeder:" + secret + "@127.0.0.1:1/?token=" + secret, "--feed-crunch", "demo"})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncbuf.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Trace})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, log) }()
	defer func() {
		cancel()
		<-done
	}()
	deadline := time.Now().Add(20 * time.Second)
	var body []byte
	for {
		if resp, err := http.Get("http://" + addr + "/v1/status"); err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			var st struct {
				Sources []struct {
					LastError string `json:"last_error"`
				} `json:"sources"`
			}
			_ = json.Unmarshal(body, &st)
			if len(st.Sources) == 2 && st.Sources[0].LastError != "" && st.Sources[1].LastError != "" &&
				strings.Contains(logs.String(), "websocket lost") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the failing sources never showed in the status API and log:\n%s\n%s", body, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if strings.Contains(string(body), secret) {
		t.Errorf("/v1/status shows the URL credentials:\n%s", body)
	}
	if strings.Contains(logs.String(), secret) {
		t.Errorf("the log shows the URL credentials:\n%s", logs.String())
	}
	if !strings.Contains(string(body), "127.0.0.1:1/rpc") {
		t.Errorf("the status no longer says which endpoint failed:\n%s", body)
	}
	t.Logf("status:\n%s", body)
}

// The stop hold's flags: defaults, environment, and refusals.
func TestParseStopHold(t *testing.T) {
	base := []string{"--models-file", "m.yaml", "--plaintext-runners"}
	c, err := parse(base)
	if err != nil || c.maxStopShare != 0.5 || c.stopHold != 10*time.Minute || c.stopHoldMin != 2 || c.adminToken != "" {
		t.Fatalf("defaults: %v %+v", err, c)
	}
	t.Setenv("MODELNODES_SCHEDULER_MAX_STOP_SHARE", "0.25")
	t.Setenv("MODELNODES_SCHEDULER_STOP_HOLD", "0s")
	t.Setenv("MODELNODES_SCHEDULER_ADMIN_TOKEN", "tok")
	if c, err := parse(base); err != nil || c.maxStopShare != 0.25 || c.stopHold != 0 || c.adminToken != "tok" {
		t.Fatalf("environment: %v %+v", err, c)
	}
	for _, bad := range [][]string{{"--max-stop-share", "1.5"}, {"--max-stop-share", "-1"}, {"--stop-hold", "-1s"}, {"--stop-hold-min-models", "0"}} {
		if _, err := parse(append(base, bad...)); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// confirm-stops posts the crunch with the token and prints what the
// scheduler confirmed; a refusal is an error carrying the scheduler's words.
func TestConfirmStopsCommand(t *testing.T) {
	var gotAuth, gotBody string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		b, _ := io.ReadAll(r.Body)
		gotBody = string(b)
		if r.Method != http.MethodPost || r.URL.Path != "/v1/stop-holds/confirm" {
			http.NotFound(w, r)
			return
		}
		if gotAuth != "Bearer tok" {
			http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte(`{"confirmed":[{"crunch":"C1","crunch_name":"demo","jobs":["model-node-a","model-node-b"],"running":2}]}`))
	}))
	defer srv.Close()
	var out strings.Builder
	t.Setenv("MODELNODES_SCHEDULER_ADMIN_TOKEN", "tok")
	if err := confirmStops(context.Background(), []string{"--status-addr", srv.URL, "--crunch", "demo"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(gotBody, `"crunch":"demo"`) || !strings.Contains(out.String(), "crunch C1 (demo): 2 of 2 running models will stop: model-node-a model-node-b") {
		t.Fatalf("body %q, output %q", gotBody, out.String())
	}
	err := confirmStops(context.Background(), []string{"--status-addr", srv.URL, "--admin-token", "wrong"}, &out)
	if err == nil || !strings.Contains(err.Error(), "wrong bearer token") {
		t.Fatalf("a refused confirmation: %v", err)
	}
}

// The failure policy is checked at start: a mistake stops the scheduler
// naming the file; the environment names it too. The quarantine prefix is a
// KV folder.
func TestParseFailurePolicy(t *testing.T) {
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.hcl"), filepath.Join(dir, "bad.hcl")
	if err := os.WriteFile(good, []byte(`crunch "mid-one" { codes = { LOW_PERFORMANCE = "count" } }`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte(`default { codes = { LOW_PERFORMANCE = "delete" } }`), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"--models-file", "m.yaml", "--plaintext-runners"}
	if c, err := parse(base); err != nil || c.failurePolicy != "" || c.quarantinePrefix != "modelnodes/quarantine/" {
		t.Fatalf("defaults: %v %+v", err, c)
	}
	if _, err := parse(append(base, "--failure-policy", bad)); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), `"delete"`) {
		t.Errorf("a bad policy: %v", err)
	}
	if _, err := parse(append(base, "--quarantine-kv-prefix", "modelnodes/quarantine")); err == nil {
		t.Error("a prefix without a trailing / was accepted")
	}
	t.Setenv("MODELNODES_SCHEDULER_FAILURE_POLICY", good)
	if c, err := parse(base); err != nil || c.failurePolicy != good {
		t.Errorf("environment: %v %+v", err, c)
	}
}

// quarantine list prints the records; lift posts the model with the token
// and prints what was lifted; a refusal is an error with the API's words.
func TestQuarantineCommand(t *testing.T) {
	var gotAuth, gotBody string
	rec := `{"job_id":"model-node-abc","crunch":"mid-one","model_id":"ModelAbc","code":"BAD_IMPLEMENTATION","reason":"no predict",` +
		`"reports":1,"coordinator":"` + strings.Repeat("ab", 32) + `","at":"2026-04-01T12:00:00Z","submission":"x"}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/v1/quarantines":
			_, _ = w.Write([]byte(`{"quarantines":[` + rec + `]}`))
		case r.Method == http.MethodPost && r.URL.Path == "/v1/quarantines/lift":
			gotAuth = r.Header.Get("Authorization")
			b, _ := io.ReadAll(r.Body)
			gotBody = string(b)
			if gotAuth != "Bearer tok" {
				http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
				return
			}
			_, _ = w.Write([]byte(`{"lifted":[` + rec + `]}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	var help strings.Builder
	if err := quarantineCmd(context.Background(), []string{"--help"}, &help); err != nil || !strings.Contains(help.String(), "scheduler quarantine lift") {
		t.Fatalf("--help: %v\n%s", err, help.String())
	}
	var out strings.Builder
	if err := quarantineCmd(context.Background(), []string{"list", "--status-addr", srv.URL}, &out); err != nil {
		t.Fatal(err)
	}
	want := "model-node-abc crunch mid-one model ModelAbc: BAD_IMPLEMENTATION since 2026-04-01T12:00:00Z (1 reports, coordinator key abababababababab...): \"no predict\"\n"
	if out.String() != want {
		t.Fatalf("list printed %q, want %q", out.String(), want)
	}
	out.Reset()
	t.Setenv("MODELNODES_SCHEDULER_ADMIN_TOKEN", "tok")
	if err := quarantineCmd(context.Background(), []string{"lift", "--status-addr", srv.URL, "abc"}, &out); err != nil {
		t.Fatal(err)
	}
	if gotBody != `{"model":"abc"}` || out.String() != "lifted: "+want {
		t.Fatalf("lift: body %q, printed %q", gotBody, out.String())
	}
	err := quarantineCmd(context.Background(), []string{"lift", "--status-addr", srv.URL, "--admin-token", "wrong", "abc"}, &out)
	if err == nil || !strings.Contains(err.Error(), "wrong bearer token") {
		t.Errorf("a refused lift: %v", err)
	}
	for _, args := range [][]string{nil, {"drop"}, {"lift"}, {"list", "extra"}} {
		if err := quarantineCmd(context.Background(), args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

// The orchestrator WebSocket never starts open to anybody: it needs its TLS
// material and the coordinators' CA, and crunch ids are NAME=ID.
func TestParseOrchestrator(t *testing.T) {
	base := []string{"--models-file", "m.yaml", "--plaintext-runners", "--orchestrator-listen", "127.0.0.1:0"}
	if _, err := parse(base); err == nil || !strings.Contains(err.Error(), "--orchestrator-client-ca") {
		t.Errorf("listen without TLS material: %v", err)
	}
	full := append(base, "--orchestrator-cert", "c", "--orchestrator-key", "k", "--orchestrator-client-ca", "ca")
	c, err := parse(append(full, "--orchestrator-crunch-id", "mid-one=Abc"))
	if err != nil {
		t.Fatal(err)
	}
	if ids, _ := c.orch.ids(); ids["mid-one"] != "Abc" {
		t.Errorf("crunch ids %v", ids)
	}
	if _, err := parse(append(full, "--orchestrator-crunch-id", "mid-one")); err == nil {
		t.Error("a crunch id without NAME= was accepted")
	}
}

// --orchestrator-listen serves the WebSocket over TLS beside the status API,
// and a client without a coordinator certificate is answered 401.
func TestRunServesOrchestrator(t *testing.T) {
	dir := t.TempDir()
	serverCA, clientCA := testpki.NewCA(t, "orchestrator"), testpki.NewCA(t, "coordinators")
	leaf := serverCA.Issue(t, dir, testpki.Leaf{CommonName: "orchestrator", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	addrs := make([]string, 2)
	for i := range addrs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = ln.Addr().String()
		ln.Close()
	}
	models := filepath.Join(dir, "models.yaml")
	if err := os.WriteFile(models, []byte("models: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := parse([]string{"--models-file", models, "--listen", addrs[0], "--nomad-addr", "http://127.0.0.1:1", "--plaintext-runners",
		"--consul-addr", "127.0.0.1:1", "--orchestrator-listen", addrs[1], "--orchestrator-cert", leaf.CertFile,
		"--orchestrator-key", leaf.KeyFile, "--orchestrator-client-ca", clientCA.WriteCA(t, dir, "clients.pem")})
	if err != nil {
		t.Fatal(err)
	}
	defer startRun(t, c)()
	pool := x509.NewCertPool()
	pool.AddCert(serverCA.Cert)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 5 * time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := hc.Get("https://" + addrs[1] + "/demo")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("without a certificate: %s, want 401", resp.Status)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the orchestrator WebSocket never answered: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startRun runs the scheduler as main does; the returned func stops it and
// reports run's error.
func startRun(t *testing.T, c *config) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, hclog.NewNullLogger()) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}
}
