// Package orchws serves the WebSocket through which CrunchDAO's coordinators
// find their models: the one their orchestrator serves at /<crunch_id> and
// their ModelCluster (PyPI model-runner-client 0.14.0,
// model_runner_client/model_cluster.py and websocket_client.py) reads. On
// every connection the server sends an "init" event listing the crunch's
// callable models, then an "update" event whenever that list changes:
//
//	{"event": "init"|"update", "data": [{"deployment_id", "model_id",
//	  "infos": {"model_name", "cruncher_id", "cruncher_name",
//	  "cruncher_wallet_pubkey", "cruncher_hotkey"},
//	  "state": "RUNNING"|"STOPPED", "ip", "port"}]}
//
// The list is exactly the crunch's instances passing in Consul (package
// client/discovery/consul, blocking queries: a change is announced as soon
// as the query returns). A model that leaves is announced STOPPED with the
// deployment id it was announced with, which is what makes their client
// drop it.
//
// Their orchestrator authenticates nobody. This server only answers over
// TLS, and only a client certificate of the crunch's coordinator gets that
// crunch's models: the runners' check (runner/authz), its key's hash
// included, which must be one of the crunch's on-chain hashes as the
// scheduler's desired state has them (CoordinatorKeys); anybody else is
// answered 401 or 403 before the upgrade. Their client hard-codes ws:// and
// passes neither a TLS context nor headers to websockets.connect, so it
// cannot present a certificate unchanged: docs/coordinator.md says how a
// coordinator reaches this server.
//
// The coordinator's "report_failure" events are validated, rate-limited
// per crunch and coordinator key (a token bucket: a flood is dropped and
// counted, never turned into writes), logged, counted, and handed to a
// Reporter (package quarantine) that acts on them by the crunch's policy.
// Only models this server announced to the crunch can be reported.
package orchws

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/client/discovery/consul"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/scheduler/quarantine"
)

// States a model is announced in (their client also knows RECOVERING,
// which this server does not send).
const (
	StateRunning = "RUNNING"
	StateStopped = "STOPPED"
)

// FailureCodes are the report_failure codes their client and orchestrator
// use; any other code is counted as "other".
var FailureCodes = []string{"MULTIPLE_TIMEOUT", "CONNECTION_FAILED", "BAD_IMPLEMENTATION", "LOW_PERFORMANCE", "MULTIPLE_FAILED"}

// Limits on what a coordinator sends.
const (
	maxMessage   = 64 << 10 // bytes of one message
	maxReports   = 100      // failures in one report_failure event
	sendQueue    = 64       // events queued for a slow coordinator before it is dropped
	writeTimeout = 10 * time.Second
)

// Config names the server's inputs.
type Config struct {
	// Consul reads the crunches' services (health API).
	Consul *consulapi.Client
	// Authorizer admits a crunch's coordinator (AuthorizeCrunchKeys): its
	// revocation lists and key switch apply.
	Authorizer *authz.Authorizer
	// CoordinatorKeys returns the on-chain hashes of the crunch's
	// coordinator keys (the scheduler's desired state): a certificate
	// naming the crunch is admitted only with one of those keys, and
	// nobody when there is none. Nil leaves the decision to the
	// Authorizer's own policy (AuthorizeCrunch).
	CoordinatorKeys func(crunch string) []string
	// Reporter acts on the failures a crunch's coordinator reports; nil:
	// they are only logged and counted.
	Reporter Reporter
	// ReportLimit returns the reports per second and the burst one
	// coordinator of crunch may send (default 1 and 20); the rest are
	// dropped and counted.
	ReportLimit func(crunch string) (perSecond float64, burst int)
	// CrunchMeta maps the crunch in the URL to what its instances carry in
	// names.MetaCrunch (the on-chain id when the crunch has one); the
	// crunch itself when nil or when it returns "".
	CrunchMeta func(crunch string) string
	// InitTimeout bounds the wait for the crunch's first membership before
	// a connection is answered 503 (default 10 s).
	InitTimeout time.Duration
	// Wait bounds one Consul blocking query (default 5 minutes).
	Wait   time.Duration
	Logger hclog.Logger
	// Registerer receives the report counters; nil keeps them private.
	Registerer prometheus.Registerer
}

// Server is the orchestrator WebSocket, an http.Handler.
type Server struct {
	cfg      Config
	log      hclog.Logger
	upgrader websocket.Upgrader
	ctx      context.Context
	cancel   context.CancelFunc

	mu       sync.Mutex
	feeds    map[string]*feed    // by crunch
	limiters map[string]*limiter // by crunch and coordinator key

	reports  *prometheus.CounterVec
	rejected *prometheus.CounterVec
	limited  *prometheus.CounterVec
}

// Reporter acts on a coordinator's failure reports (quarantine.Engine).
type Reporter interface {
	// Report acts on one report of a model this server announced to the
	// crunch, and returns what it did.
	Report(ctx context.Context, r quarantine.Report) string
}

// limiter is one coordinator's token bucket, and when its drops were last
// logged.
type limiter struct {
	*rate.Limiter
	mu      sync.Mutex
	dropped int
	logged  time.Time
}

// New returns a server; Close stops its Consul watches.
func New(cfg Config) (*Server, error) {
	if cfg.Consul == nil || cfg.Authorizer == nil {
		return nil, errors.New("orchws: a Consul client and an authorizer are needed")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.InitTimeout <= 0 {
		cfg.InitTimeout = 10 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel, feeds: map[string]*feed{}, limiters: map[string]*limiter{},
		upgrader: websocket.Upgrader{
			HandshakeTimeout: 10 * time.Second,
			// Coordinators are programs, not browsers: a request that
			// carries an Origin comes from a page and is refused.
			CheckOrigin: func(r *http.Request) bool { return r.Header.Get("Origin") == "" },
		},
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modelnodes_orchestrator_failure_reports_total",
			Help: "Failures reported by a crunch's coordinator (report_failure), by crunch and code (codes outside FailureCodes count as other).",
		}, []string{"crunch", "code"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modelnodes_orchestrator_rejected_messages_total",
			Help: "Messages from a coordinator that were ignored, by crunch and reason (json, event, too_many, unknown_model, code).",
		}, []string{"crunch", "reason"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modelnodes_orchestrator_rate_limited_reports_total",
			Help: "Failure reports (and other messages) dropped because the crunch's coordinator sent more than its policy's report_rate and report_burst allow.",
		}, []string{"crunch"}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.reports, s.rejected, s.limited} {
			if err := cfg.Registerer.Register(c); err != nil {
				cancel()
				return nil, fmt.Errorf("orchws metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Close stops the Consul watches; open connections end with them.
func (s *Server) Close() { s.cancel() }

// ServerTLS returns a listener's TLS configuration that takes the newest
// certificate and client CA pool at every handshake (e.g. from a
// tlsfiles.Reloader). A client certificate is verified when given but not
// required at the handshake, so a client without one is answered 401
// rather than a TLS alert; HTTP/1.1 only, as WebSockets need.
func ServerTLS(cert func() *tls.Certificate, clientCAs func() *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*cert()},
				ClientAuth:   tls.VerifyClientCertIfGiven,
				ClientCAs:    clientCAs(),
				NextProtos:   []string{"http/1.1"},
			}, nil
		},
	}
}

// ServeHTTP authenticates the coordinator of the crunch the path names,
// upgrades, and serves the crunch's models until either side closes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	crunch := strings.TrimPrefix(r.URL.Path, "/")
	if crunch == "" || strings.Contains(crunch, "/") || len(crunch) > 200 {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	remote := addr(r.RemoteAddr)
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		s.log.Warn("coordinator refused", "crunch", crunch, "peer", r.RemoteAddr, "reason", "no verified client certificate")
		http.Error(w, "a client certificate of the crunch's coordinator is required", http.StatusUnauthorized)
		return
	}
	var err error
	if s.cfg.CoordinatorKeys != nil {
		err = s.cfg.Authorizer.AuthorizeCrunchKeys(remote, r.TLS.VerifiedChains, crunch, s.cfg.CoordinatorKeys(crunch))
	} else {
		err = s.cfg.Authorizer.AuthorizeCrunch(remote, r.TLS.VerifiedChains, crunch)
	}
	if err != nil {
		// The authorizer logged why; the caller learns only that it was refused.
		if errors.Is(err, authz.ErrDenied) {
			http.Error(w, "forbidden", http.StatusForbidden)
		} else {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
		}
		return
	}
	f := s.feed(crunch)
	if !f.waitReady(r.Context(), s.cfg.InitTimeout) {
		http.Error(w, "the crunch's models are not known yet", http.StatusServiceUnavailable)
		return
	}
	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered the client
	}
	s.serve(peerOf{crunch: crunch, key: authz.SPKIHash(r.TLS.VerifiedChains[0][0]), addr: r.RemoteAddr}, f, conn)
}

// peerOf is an admitted coordinator: its crunch, its key's hash, its
// address.
type peerOf struct{ crunch, key, addr string }

func addr(s string) net.Addr {
	a, err := net.ResolveTCPAddr("tcp", s)
	if err != nil {
		return nil
	}
	return a
}

// serve writes the init event and the updates, and reads reports, until
// the connection ends.
func (s *Server) serve(p peerOf, f *feed, conn *websocket.Conn) {
	defer conn.Close()
	sub := &subscriber{ch: make(chan []byte, sendQueue)}
	initMsg := f.subscribe(sub)
	defer f.unsubscribe(sub)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.read(p, f, conn)
	}()
	send := func(msg []byte) bool {
		_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		return conn.WriteMessage(websocket.TextMessage, msg) == nil
	}
	if !send(initMsg) {
		return
	}
	for {
		select {
		case msg, ok := <-sub.ch:
			if !ok {
				// Dropped as too slow, or the server closes.
				_ = conn.WriteControl(websocket.CloseMessage,
					websocket.FormatCloseMessage(websocket.CloseTryAgainLater, "resynchronize"), time.Now().Add(time.Second))
				return
			}
			if !send(msg) {
				return
			}
		case <-done:
			return
		}
	}
}

// report is one failure of a report_failure event, as their
// ModelCluster.process_failure writes it.
type report struct {
	ModelID       string  `json:"model_id"`
	FailureCode   string  `json:"failure_code"`
	FailureReason *string `json:"failure_reason"`
	IP            string  `json:"ip"`
}

// read handles what the coordinator sends until the connection fails.
func (s *Server) read(p peerOf, f *feed, conn *websocket.Conn) {
	crunch := p.crunch
	lim := s.limiter(p)
	conn.SetReadLimit(maxMessage)
	for {
		_, msg, err := conn.ReadMessage()
		if err != nil {
			return
		}
		// Every message costs a token before it is read; each failure
		// past the first of a report costs one more.
		if !s.allow(p, lim, 1) {
			continue
		}
		var ev struct {
			Event string          `json:"event"`
			Data  json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(msg, &ev); err != nil {
			s.reject(crunch, "json", "message is not JSON", err)
			continue
		}
		if ev.Event != "report_failure" {
			s.reject(crunch, "event", "unknown event", errors.New(trunc(ev.Event)))
			continue
		}
		var reports []report
		if err := json.Unmarshal(ev.Data, &reports); err != nil {
			s.reject(crunch, "json", "report_failure data is not a list of failures", err)
			continue
		}
		if len(reports) > maxReports {
			s.reject(crunch, "too_many", "report_failure lists too many failures", errors.New(strconv.Itoa(len(reports))))
			continue
		}
		if len(reports) > 1 && !s.allow(p, lim, len(reports)-1) {
			continue
		}
		for _, rep := range reports {
			if !f.known(rep.ModelID) {
				// Only the crunch's own models (announced on this server)
				// can be reported by its coordinator.
				s.reject(crunch, "unknown_model", "report_failure names a model this crunch does not have", errors.New(trunc(rep.ModelID)))
				continue
			}
			code := rep.FailureCode
			if !slices.Contains(FailureCodes, code) {
				code = "other"
			}
			reason := ""
			if rep.FailureReason != nil {
				reason = trunc(*rep.FailureReason)
			}
			s.reports.WithLabelValues(crunch, code).Inc()
			if !quarantine.ValidCode(rep.FailureCode) {
				s.reject(crunch, "code", "report_failure carries a malformed failure code", errors.New(trunc(rep.FailureCode)))
				continue
			}
			outcome := "counted"
			if s.cfg.Reporter != nil {
				outcome = s.cfg.Reporter.Report(s.ctx, quarantine.Report{Crunch: crunch, Coordinator: p.key, Peer: p.addr,
					ModelID: rep.ModelID, Code: rep.FailureCode, Reason: reason})
			}
			s.log.Warn("coordinator reported a model failed", "crunch", crunch, "model_id", rep.ModelID,
				"failure_code", rep.FailureCode, "failure_reason", reason, "ip", trunc(rep.IP), "coordinator", p.key, "outcome", outcome)
		}
	}
}

// limiter returns the token bucket of p's crunch and key, shared by all
// its connections.
func (s *Server) limiter(p peerOf) *limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := p.crunch + "\x00" + p.key
	if l := s.limiters[k]; l != nil {
		return l
	}
	perSecond, burst := 1.0, 20
	if s.cfg.ReportLimit != nil {
		perSecond, burst = s.cfg.ReportLimit(p.crunch)
	}
	l := &limiter{Limiter: rate.NewLimiter(rate.Limit(perSecond), max(burst, 1))}
	s.limiters[k] = l
	return l
}

// allow takes n tokens of p's bucket, or counts the drop (logged at most
// every 10 s per coordinator, so that a flood does not flood the log).
func (s *Server) allow(p peerOf, l *limiter, n int) bool {
	if l.AllowN(time.Now(), n) {
		return true
	}
	s.limited.WithLabelValues(p.crunch).Add(float64(n))
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropped += n
	if time.Since(l.logged) >= 10*time.Second {
		s.log.Warn("a coordinator sends more reports than its policy allows; dropping them", "crunch", p.crunch,
			"coordinator", p.key, "peer", p.addr, "dropped", l.dropped)
		l.logged, l.dropped = time.Now(), 0
	}
	return false
}

func (s *Server) reject(crunch, reason, what string, err error) {
	s.rejected.WithLabelValues(crunch, reason).Inc()
	s.log.Warn("ignoring a coordinator's message", "crunch", crunch, "reason", what, "error", err)
}

// trunc bounds what a coordinator's strings put in the log (hclog quotes
// and escapes values itself).
func trunc(s string) string {
	if len(s) > 200 {
		return strings.ToValidUTF8(s[:200], "") + "..."
	}
	return s
}

// feed follows one crunch's membership in Consul and fans it out.
type feed struct {
	mu     sync.Mutex
	ready  chan struct{} // closed at the first membership
	models map[string]model
	subs   map[*subscriber]bool
	seen   map[string]bool // every model id announced since the feed started
}

type subscriber struct{ ch chan []byte }

// model is one entry of an init or update event.
type model struct {
	DeploymentID string `json:"deployment_id"`
	ModelID      string `json:"model_id"`
	Infos        infos  `json:"infos"`
	State        string `json:"state"`
	IP           string `json:"ip"`
	Port         int    `json:"port"`
}

type infos struct {
	ModelName            string `json:"model_name"`
	CruncherID           string `json:"cruncher_id"`
	CruncherName         string `json:"cruncher_name"`
	CruncherWalletPubkey string `json:"cruncher_wallet_pubkey"`
	CruncherHotkey       string `json:"cruncher_hotkey"`
}

type event struct {
	Event string  `json:"event"`
	Data  []model `json:"data"`
}

func (s *Server) feed(crunch string) *feed {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.feeds[crunch]; f != nil {
		return f
	}
	f := &feed{ready: make(chan struct{}), models: map[string]model{}, subs: map[*subscriber]bool{}, seen: map[string]bool{}}
	s.feeds[crunch] = f
	meta := crunch
	if s.cfg.CrunchMeta != nil {
		if m := s.cfg.CrunchMeta(crunch); m != "" {
			meta = m
		}
	}
	src := &consul.Source{Client: s.cfg.Consul, Service: names.Service(crunch), Crunch: meta, Wait: s.cfg.Wait,
		Logger: s.log.With("crunch", crunch)}
	go func() {
		err := src.Watch(s.ctx, f.update)
		if s.ctx.Err() == nil {
			s.log.Error("watching a crunch's models stopped", "crunch", crunch, "error", err)
		}
		f.closeAll()
	}()
	return f
}

func (f *feed) waitReady(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-f.ready:
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	return false
}

// announce turns a Consul member into its announcement.
func announce(m discovery.Model) (model, bool) {
	host, port, err := net.SplitHostPort(m.Target)
	if err != nil {
		return model{}, false
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return model{}, false
	}
	wallet := m.Meta[names.MetaCruncher]
	// A deployment is a submission when the service says which; else the
	// model itself (a new address is then announced as a reconnection).
	dep := m.Meta[names.MetaSubmission]
	if dep == "" {
		dep = m.ID
	}
	// The chain has no display names: the model is named by its full id,
	// the cruncher by its wallet.
	name := m.Meta[names.MetaModel]
	if name == "" {
		name = m.ID
	}
	return model{
		DeploymentID: dep, ModelID: m.ID, State: StateRunning, IP: host, Port: p,
		Infos: infos{ModelName: name, CruncherID: wallet, CruncherName: wallet, CruncherWalletPubkey: wallet, CruncherHotkey: m.Meta[names.MetaHotkey]},
	}, true
}

// update takes a new membership and sends its differences.
func (f *feed) update(ms []discovery.Model) {
	next := map[string]model{}
	for _, m := range ms {
		if a, ok := announce(m); ok {
			next[a.ModelID] = a
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var changes []model
	for id, a := range next {
		if old, ok := f.models[id]; !ok || old != a {
			changes = append(changes, a)
		}
		f.seen[id] = true
	}
	for id, old := range f.models {
		if _, ok := next[id]; !ok {
			old.State = StateStopped
			changes = append(changes, old)
		}
	}
	f.models = next
	select {
	case <-f.ready:
	default:
		close(f.ready)
		return
	}
	if len(changes) == 0 {
		return
	}
	slices.SortFunc(changes, func(a, b model) int { return strings.Compare(a.ModelID, b.ModelID) })
	msg, _ := json.Marshal(event{Event: "update", Data: changes})
	for sub := range f.subs {
		select {
		case sub.ch <- msg:
		default:
			// Too slow: drop it; their client reconnects and gets a
			// fresh init.
			close(sub.ch)
			delete(f.subs, sub)
		}
	}
}

// subscribe registers sub and returns the init event of the membership it
// starts from: no change can fall between the two.
func (f *feed) subscribe(sub *subscriber) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subs[sub] = true
	data := make([]model, 0, len(f.models))
	for _, m := range f.models {
		data = append(data, m)
	}
	slices.SortFunc(data, func(a, b model) int { return strings.Compare(a.ModelID, b.ModelID) })
	msg, _ := json.Marshal(event{Event: "init", Data: data})
	return msg
}

func (f *feed) unsubscribe(sub *subscriber) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.subs, sub)
}

func (f *feed) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for sub := range f.subs {
		close(sub.ch)
		delete(f.subs, sub)
	}
}

// known reports whether id is a model of the crunch, now or since the feed
// started (a coordinator reports a model it just lost).
func (f *feed) known(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen[id]
}
