package orchws

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/scheduler/quarantine"
)

// offlineServer is a server whose Consul cannot be reached: a request that
// passes authentication waits InitTimeout for the crunch's models and is
// answered 503, one that does not is answered 401 or 403 at once.
func offlineServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	az, err := authz.New(authz.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Consul, err = consulapi.NewClient(&consulapi.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Authorizer, cfg.InitTimeout = az, 50*time.Millisecond
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// The attack: a certificate from the right CA naming the crunch, but with a
// key that is not the crunch's on-chain key (a stolen AppRole, a CA
// operator's mistake), is refused as the runners refuse it; so is every
// key of a crunch with no hash on chain.
func TestOnlyTheOnChainKeyIsAdmitted(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "model-calls CA")
	leaf := func(name string) *x509.Certificate {
		return ca.Issue(t, dir, testpki.Leaf{CommonName: name, Client: true, URIs: []string{names.CoordinatorURI("alpha")}}).Cert
	}
	coord, thief := leaf("coordinator"), leaf("thief")
	onChain := map[string][]string{"alpha": {authz.SPKIHash(coord)}}
	s := offlineServer(t, Config{CoordinatorKeys: func(c string) []string { return onChain[c] }})
	ask := func(path string, cert *x509.Certificate) int {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert, ca.Cert}}}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		return rec.Code
	}
	if code := ask("/alpha", thief); code != http.StatusUnauthorized {
		t.Errorf("a certificate naming the crunch with a key not on chain: answered %d, want 401", code)
	}
	if code := ask("/alpha", coord); code != http.StatusServiceUnavailable {
		t.Errorf("the crunch's coordinator: answered %d, want 503 (admitted, its models unknown)", code)
	}
	delete(onChain, "alpha")
	if code := ask("/alpha", coord); code != http.StatusUnauthorized {
		t.Errorf("no hash on chain: answered %d, want 401", code)
	}
}

// recorder is a Reporter that remembers what it was handed.
type recorder struct {
	mu      sync.Mutex
	reports []quarantine.Report
}

func (r *recorder) Report(_ context.Context, rep quarantine.Report) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reports = append(r.reports, rep)
	return "counted"
}

func (r *recorder) n() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reports)
}

// A coordinator's flood is cut to its policy's burst: what passes is acted
// on, the rest is dropped and counted, whichever connection it comes on;
// another coordinator key has its own bucket. Malformed messages cost
// tokens too, and are refused and counted by reason.
func TestReportsAreRateLimited(t *testing.T) {
	rep := &recorder{}
	reg := prometheus.NewRegistry()
	s := offlineServer(t, Config{Reporter: rep, Registerer: reg,
		ReportLimit: func(string) (float64, int) { return 0.001, 8 }})
	f := newFeed()
	f.update([]discovery.Model{member("m1", "10.0.0.1:7000", "")})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := s.upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		s.read(peerOf{crunch: "alpha", key: r.URL.Query().Get("key"), addr: r.RemoteAddr}, f, conn)
	}))
	defer srv.Close()
	dial := func(key string) *websocket.Conn {
		conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/?key="+key, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	send := func(c *websocket.Conn, msg string) {
		if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	report := func(model, code string) string {
		return `{"model_id": "` + model + `", "failure_code": "` + code + `", "failure_reason": null, "ip": "10.0.0.1"}`
	}
	value := func(c prometheus.Counter) float64 {
		var m dto.Metric
		_ = c.Write(&m)
		return m.GetCounter().GetValue()
	}
	wait := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5 s (%d reports handed on, %v dropped)", what, rep.n(), value(s.limited.WithLabelValues("alpha")))
			}
		}
	}
	flood := `{"event": "report_failure", "data": [` + report("m1", "MULTIPLE_TIMEOUT") + `]}`
	first := dial("k1")
	send(first, "not json")                                                                                                         // 1 token
	send(first, `{"event": "report_failure", "data": [`+report("m9", "LOW_PERFORMANCE")+`]}`)                                       // 1: unknown model
	send(first, `{"event": "report_failure", "data": [`+report("m1", "low perf")+`]}`)                                              // 1: malformed code
	send(first, `{"event": "report_failure", "data": [`+report("m1", "MULTIPLE_TIMEOUT")+","+report("m1", "MULTIPLE_TIMEOUT")+`]}`) // 2
	wait("the first connection's messages", func() bool { return rep.n() == 2 })
	second := dial("k1")
	for range 20 {
		send(second, flood)
	}
	wait("the flood", func() bool { return value(s.limited.WithLabelValues("alpha")) == 17 })
	other := dial("k2")
	send(other, `{"event": "report_failure", "data": [`+report("m1", "CONNECTION_FAILED")+`]}`)
	wait("another coordinator's report", func() bool { return rep.n() == 6 })
	time.Sleep(50 * time.Millisecond)
	// k1: 8 tokens = 3 refused messages + 2 reports of one message + 3 of
	// the flood; 17 of the flood dropped. k2: its own bucket.
	if n := rep.n(); n != 6 {
		t.Errorf("%d reports reached the policy, want 6", n)
	}
	if n := value(s.limited.WithLabelValues("alpha")); n != 17 {
		t.Errorf("rate_limited_reports = %v, want 17", n)
	}
	for reason, want := range map[string]float64{"json": 1, "unknown_model": 1, "code": 1} {
		if n := value(s.rejected.WithLabelValues("alpha", reason)); n != want {
			t.Errorf("rejected{%s} = %v, want %v", reason, n, want)
		}
	}
	rep.mu.Lock()
	last := rep.reports[len(rep.reports)-1]
	rep.mu.Unlock()
	if last.Coordinator != "k2" || last.Crunch != "alpha" || last.ModelID != "m1" || last.Code != "CONNECTION_FAILED" {
		t.Errorf("the report handed on: %+v", last)
	}
}
