// Package buildproxy is the only way out of an environment build's sandbox:
// an HTTP proxy, served by the trusted driver from the host's network, that
// reaches the configured package indexes and nothing else.
//
// HTTPS goes through CONNECT host:port, tunnelled as opaque bytes: the proxy
// never sees (nor adds) what the tunnel carries, so it cannot and does not
// hold index credentials. A plain-HTTP index (a mirror on the operator's
// network) is forwarded request by request. Either way the target must be
// on the allow-list exactly as host:port; anything else, an IP address or
// another port of an allowed host included, is answered 403 and logged.
package buildproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/redact"
)

// Defaults of the bounds on what one build may ask of the proxy.
const (
	DefaultDialTimeout = 30 * time.Second
	DefaultIdleTimeout = 2 * time.Minute
	DefaultMaxConns    = 128
	// maxHeaderBytes bounds a request's header: a client's CONNECT or GET
	// is a few hundred bytes.
	maxHeaderBytes = 16 << 10
	// maxBodyBytes bounds what a forwarded request may send: an index is
	// only read (GET), never written.
	maxBodyBytes = 64 << 10
	// readHeaderTimeout bounds how long a connection may take to say what
	// it wants.
	readHeaderTimeout = 10 * time.Second
)

// Proxy is an allow-list HTTP proxy. Set Allow before Serve; the other fields
// have defaults.
type Proxy struct {
	// Allow lists the targets as "host:port" (lowercase host, explicit
	// port; an IPv6 address in brackets). See AllowList.
	Allow []string
	// Logger hears every refusal (Warn) and every tunnel opened (Debug).
	Logger hclog.Logger
	// DialTimeout bounds the connection to an index; IdleTimeout closes a
	// tunnel or a connection that carried nothing either way for that long.
	DialTimeout, IdleTimeout time.Duration
	// MaxConns bounds the connections served at once; more wait in the
	// listener's backlog.
	MaxConns int

	// dial reaches the target; tests replace it.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	once    sync.Once
	allow   map[string]bool
	srv     *http.Server
	forward *httputil.ReverseProxy

	mu      sync.Mutex
	tunnels map[net.Conn]struct{}
	closed  bool
}

func (p *Proxy) init() {
	p.once.Do(func() {
		p.allow = map[string]bool{}
		for _, a := range p.Allow {
			p.allow[strings.ToLower(a)] = true
		}
		if p.Logger == nil {
			p.Logger = hclog.NewNullLogger()
		}
		if p.DialTimeout <= 0 {
			p.DialTimeout = DefaultDialTimeout
		}
		if p.IdleTimeout <= 0 {
			p.IdleTimeout = DefaultIdleTimeout
		}
		if p.MaxConns <= 0 {
			p.MaxConns = DefaultMaxConns
		}
		if p.dial == nil {
			p.dial = (&net.Dialer{Timeout: p.DialTimeout}).DialContext
		}
		p.tunnels = map[net.Conn]struct{}{}
		// Plain-HTTP requests go out with no proxy of the driver's own
		// environment and through the same allow-list check at dial time.
		tr := &http.Transport{
			Proxy:                 nil,
			DialContext:           p.dialAllowed,
			ResponseHeaderTimeout: p.IdleTimeout,
			IdleConnTimeout:       p.IdleTimeout,
			MaxIdleConnsPerHost:   8,
		}
		p.forward = &httputil.ReverseProxy{
			Rewrite: func(r *httputil.ProxyRequest) {
				r.Out.URL = r.In.URL
				r.Out.Host = r.In.URL.Host
				// A proxy's own credentials are not the index's.
				r.Out.Header.Del("Proxy-Authorization")
			},
			Transport: tr,
			ErrorLog:  p.Logger.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				p.Logger.Warn("build proxy: upstream failed", "target", r.URL.Host, "error", err)
				http.Error(w, "build proxy: upstream failed", http.StatusBadGateway)
			},
		}
		p.srv = &http.Server{
			Handler:           p,
			MaxHeaderBytes:    maxHeaderBytes,
			ReadHeaderTimeout: readHeaderTimeout,
			IdleTimeout:       p.IdleTimeout,
			ErrorLog:          p.Logger.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug}),
		}
	})
}

// Serve answers the connections of l until Close; it returns
// http.ErrServerClosed then.
func (p *Proxy) Serve(l net.Listener) error {
	p.init()
	return p.srv.Serve(&limitListener{Listener: l, sem: make(chan struct{}, p.MaxConns)})
}

// Close stops Serve and ends every connection and tunnel at once: the build
// the proxy served is over.
func (p *Proxy) Close() error {
	p.init()
	p.mu.Lock()
	p.closed = true
	for c := range p.tunnels {
		_ = c.Close()
	}
	p.mu.Unlock()
	return p.srv.Close()
}

// Allowed reports whether host:port is on the allow-list.
func (p *Proxy) Allowed(hostport string) bool {
	p.init()
	return p.allow[strings.ToLower(hostport)]
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect {
		p.connect(w, r)
		return
	}
	// A proxy request names its target absolutely; a relative one asks the
	// proxy itself for a page, and it has none.
	if !r.URL.IsAbs() || r.URL.Scheme != "http" {
		p.refuse(w, r, r.URL.String(), "only http:// URLs are forwarded (https goes through CONNECT)")
		return
	}
	target := hostPort(r.URL)
	if !p.Allowed(target) {
		p.refuse(w, r, target, "not an index host")
		return
	}
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	}
	p.Logger.Debug("build proxy: forward", "method", r.Method, "target", target)
	p.forward.ServeHTTP(w, r)
}

func (p *Proxy) connect(w http.ResponseWriter, r *http.Request) {
	target := r.RequestURI
	if _, _, err := net.SplitHostPort(target); err != nil || !p.Allowed(target) {
		p.refuse(w, r, target, "not an index host")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), p.DialTimeout)
	up, err := p.dial(ctx, "tcp", target)
	cancel()
	if err != nil {
		p.Logger.Warn("build proxy: cannot reach index", "target", target, "error", err)
		http.Error(w, "build proxy: cannot reach "+target, http.StatusBadGateway)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		_ = up.Close()
		http.Error(w, "build proxy: cannot tunnel", http.StatusInternalServerError)
		return
	}
	down, buf, err := hj.Hijack()
	if err != nil {
		_ = up.Close()
		return
	}
	if !p.track(down, up) {
		return
	}
	defer p.untrack(down, up)
	if _, err := down.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		return
	}
	p.Logger.Debug("build proxy: tunnel", "target", target)
	// Bytes the client sent after its CONNECT header (a TLS hello sent
	// eagerly) are already in buf.
	var client io.Reader = down
	if n := buf.Reader.Buffered(); n > 0 {
		pending, _ := buf.Reader.Peek(n)
		client = io.MultiReader(strings.NewReader(string(pending)), down)
	}
	idle := &idleTimer{d: p.IdleTimeout, conns: []net.Conn{down, up}}
	idle.touch()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(idleWriter{up, idle}, client); closeWrite(up); done <- struct{}{} }()
	go func() { _, _ = io.Copy(idleWriter{down, idle}, up); closeWrite(down); done <- struct{}{} }()
	<-done
	<-done
}

// dialAllowed is the forwarding transport's dialer: the check is repeated
// where the connection is made.
func (p *Proxy) dialAllowed(ctx context.Context, network, addr string) (net.Conn, error) {
	if !p.Allowed(addr) {
		return nil, fmt.Errorf("build proxy: %s is not an index host", addr)
	}
	return p.dial(ctx, network, addr)
}

func (p *Proxy) refuse(w http.ResponseWriter, r *http.Request, target, why string) {
	p.Logger.Warn("build proxy: refused", "method", r.Method, "target", target, "reason", why)
	http.Error(w, "build proxy: "+target+" refused: "+why, http.StatusForbidden)
}

func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range conns {
			_ = c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.tunnels[c] = struct{}{}
	}
	return true
}

func (p *Proxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
		delete(p.tunnels, c)
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// idleTimer pushes the deadline of both ends of a tunnel forward whenever a
// byte passes either way; a tunnel quiet for d ends.
type idleTimer struct {
	d     time.Duration
	conns []net.Conn
	mu    sync.Mutex
	last  time.Time
}

func (t *idleTimer) touch() {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	// Setting deadlines on every write is costly; a second's slack is not.
	if now.Sub(t.last) < time.Second {
		return
	}
	t.last = now
	for _, c := range t.conns {
		_ = c.SetDeadline(now.Add(t.d))
	}
}

type idleWriter struct {
	w io.Writer
	t *idleTimer
}

func (w idleWriter) Write(b []byte) (int, error) {
	w.t.touch()
	return w.w.Write(b)
}

// limitListener holds at most cap(sem) connections open at once.
type limitListener struct {
	net.Listener
	sem chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	l.sem <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &releaseConn{Conn: c, release: func() { <-l.sem }}, nil
}

type releaseConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *releaseConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite keeps half-closing possible through the wrapper.
func (c *releaseConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = defaultPort(u.Scheme)
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

func defaultPort(scheme string) string {
	if scheme == "http" {
		return "80"
	}
	return "443"
}

// PyPIFiles is where PyPI's simple index links its files.
const PyPIFiles = "files.pythonhosted.org:443"

// ErrCredentials is returned by AllowList for an index URL that carries
// credentials: a build that runs package code must never hold them.
var ErrCredentials = errors.New("index URL carries credentials")

// AllowList returns the targets a build may reach: the host:port of each
// index URL (https://pypi.org/simple when none), PyPI's file host when PyPI
// is one of them, and extra ("host" for port 443, or "host:port"). An index
// URL with a user, a password or a query is refused (ErrCredentials): the
// proxy only tunnels, so the credentials would have to be inside the
// sandbox.
func AllowList(indexes, extra []string) ([]string, error) {
	if len(indexes) == 0 {
		indexes = []string{"https://pypi.org/simple"}
	}
	seen := map[string]bool{}
	var out []string
	add := func(hp string) {
		if !seen[hp] {
			seen[hp] = true
			out = append(out, hp)
		}
	}
	for _, ix := range indexes {
		u, err := url.Parse(ix)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Hostname() == "" {
			return nil, fmt.Errorf("index %q is not an http(s) URL", redact.URL(ix))
		}
		if u.User != nil || u.RawQuery != "" {
			return nil, fmt.Errorf("index %s: %w", redact.URL(ix), ErrCredentials)
		}
		hp := hostPort(u)
		add(hp)
		if hp == "pypi.org:443" {
			add(PyPIFiles)
		}
	}
	for _, h := range extra {
		h = strings.ToLower(strings.TrimSpace(h))
		if _, port, err := net.SplitHostPort(h); err == nil {
			if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
				return nil, fmt.Errorf("extra host %q: bad port", h)
			}
		} else {
			h = net.JoinHostPort(h, "443")
		}
		if strings.ContainsAny(h, "/@ ") || strings.HasPrefix(h, ":") {
			return nil, fmt.Errorf("extra host %q: want host or host:port", h)
		}
		add(h)
	}
	return out, nil
}
