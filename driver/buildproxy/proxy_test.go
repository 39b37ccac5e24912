package buildproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fixture is a proxy in front of a TLS server standing for an index; dials
// counts the connections the proxy opened to anything.
type fixture struct {
	proxy    *Proxy
	addr     string // the proxy's listening address
	index    *httptest.Server
	dials    atomic.Int32
	dialedTo atomic.Value
}

// start serves a proxy that allows "index.test:443" (and plain-HTTP
// "mirror.test:80"), both reaching the test's servers whatever the name.
func start(t *testing.T, tweak func(*Proxy)) *fixture {
	t.Helper()
	f := &fixture{}
	f.index = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "index page %s", r.URL.Path)
	}))
	t.Cleanup(f.index.Close)
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Proxy-Authorization") != "" {
			http.Error(w, "proxy credentials leaked", http.StatusTeapot)
			return
		}
		fmt.Fprintf(w, "mirror page %s", r.URL.Path)
	}))
	t.Cleanup(mirror.Close)
	f.proxy = &Proxy{Allow: []string{"index.test:443", "mirror.test:80"}}
	f.proxy.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		f.dials.Add(1)
		f.dialedTo.Store(addr)
		switch addr {
		case "index.test:443":
			return (&net.Dialer{}).DialContext(ctx, network, f.index.Listener.Addr().String())
		case "mirror.test:80":
			return (&net.Dialer{}).DialContext(ctx, network, mirror.Listener.Addr().String())
		}
		return nil, fmt.Errorf("test dialer: unexpected %s", addr)
	}
	if tweak != nil {
		tweak(f.proxy)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	go func() { _ = f.proxy.Serve(l) }()
	t.Cleanup(func() { _ = f.proxy.Close() })
	return f
}

// connect sends CONNECT target and returns the status line and the
// connection (open when the proxy said 200).
func connect(t *testing.T, proxyAddr, target string) (int, net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	return resp.StatusCode, c, br
}

func TestConnectToAnAllowedHostTunnels(t *testing.T) {
	f := start(t, nil)
	// A real HTTPS client through the proxy: what uv does.
	proxyURL, _ := url.Parse("http://" + f.addr)
	// The test server's certificate does not name index.test: the tunnel is
	// what is tested here, not the name.
	client := &http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyURL(proxyURL),
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	resp, err := client.Get("https://index.test/simple/six/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "index page /simple/six/" {
		t.Fatalf("through the tunnel: %d %q", resp.StatusCode, body)
	}
}

func TestRefusesWhatIsNotAllowed(t *testing.T) {
	f := start(t, nil)
	for _, target := range []string{
		"evil.test:443",      // another host
		"index.test:22",      // an allowed host, another port
		"127.0.0.1:443",      // an IP literal
		"[::1]:443",          // an IPv6 literal
		"169.254.169.254:80", // the cloud metadata service
		"index.test",         // no port
		"index.test.:443",    // the same name spelt otherwise
	} {
		t.Run(target, func(t *testing.T) {
			code, _, _ := connect(t, f.addr, target)
			if code != http.StatusForbidden {
				t.Errorf("CONNECT %s: %d, want 403", target, code)
			}
		})
	}
	if n := f.dials.Load(); n != 0 {
		t.Errorf("the proxy dialed %d times (last %v) for refused targets", n, f.dialedTo.Load())
	}
}

func TestForwardsPlainHTTPOnlyToAllowedHosts(t *testing.T) {
	f := start(t, nil)
	proxyURL, _ := url.Parse("http://" + f.addr)
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}}
	get := func(u string, hdr map[string]string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("http://mirror.test/simple/", map[string]string{"Proxy-Authorization": "Basic eDp5"}); code != 200 || body != "mirror page /simple/" {
		t.Errorf("allowed mirror: %d %q", code, body)
	}
	if code, _ := get("http://evil.test/", nil); code != http.StatusForbidden {
		t.Errorf("another host: %d, want 403", code)
	}
	if code, _ := get("http://mirror.test:8080/", nil); code != http.StatusForbidden {
		t.Errorf("another port: %d, want 403", code)
	}
	// The proxy's own address, asked for a page directly.
	resp, err := http.Get("http://" + f.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("a direct request to the proxy: %d, want 403", resp.StatusCode)
	}
	if to := f.dialedTo.Load(); to != "mirror.test:80" || f.dials.Load() != 1 {
		t.Errorf("dials: %d, last to %v; want 1 to mirror.test:80", f.dials.Load(), to)
	}
}

func TestBoundsRequests(t *testing.T) {
	f := start(t, func(p *Proxy) { p.IdleTimeout = 300 * time.Millisecond })
	t.Run("header too large", func(t *testing.T) {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "CONNECT index.test:443 HTTP/1.1\r\nX-Pad: %s\r\n\r\n", strings.Repeat("a", 64<<10))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("64 KiB header: %d, want 431", resp.StatusCode)
		}
	})
	t.Run("idle tunnel ends", func(t *testing.T) {
		code, c, br := connect(t, f.addr, "index.test:443")
		if code != http.StatusOK {
			t.Fatalf("CONNECT: %d", code)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		_, err := br.ReadByte() // the TLS server waits for a hello that never comes
		if !errors.Is(err, io.EOF) {
			t.Fatalf("reading the idle tunnel: %v, want EOF (closed by the proxy)", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("idle tunnel closed after %s, want about 300ms", d)
		}
	})
	t.Run("close ends open tunnels", func(t *testing.T) {
		g := start(t, nil)
		code, c, br := connect(t, g.addr, "index.test:443")
		if code != http.StatusOK {
			t.Fatalf("CONNECT: %d", code)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := g.proxy.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Fatalf("after Close: %v, want EOF", err)
		}
	})
}

func TestAllowList(t *testing.T) {
	for _, tc := range []struct {
		name           string
		indexes, extra []string
		want           []string
		err            string
	}{
		{name: "PyPI by default", want: []string{"pypi.org:443", PyPIFiles}},
		{name: "PyPI and NVIDIA", indexes: []string{"https://pypi.org/simple", "https://pypi.nvidia.com"},
			want: []string{"pypi.org:443", PyPIFiles, "pypi.nvidia.com:443"}},
		{name: "explicit port, http, case", indexes: []string{"http://Mirror.Local:8080/simple"},
			want: []string{"mirror.local:8080"}},
		{name: "http default port", indexes: []string{"http://10.0.0.5/simple"}, want: []string{"10.0.0.5:80"}},
		{name: "extra hosts", indexes: []string{"https://download.pytorch.org/whl/cu124"}, extra: []string{"cdn.example.com", "files.example.com:8443"},
			want: []string{"download.pytorch.org:443", "cdn.example.com:443", "files.example.com:8443"}},
		{name: "duplicates once", indexes: []string{"https://pypi.org/simple", "https://pypi.org/simple/"},
			want: []string{"pypi.org:443", PyPIFiles}},
		{name: "user info", indexes: []string{"https://user:tok@private.example/simple"}, err: "carries credentials"},
		{name: "token in the query", indexes: []string{"https://private.example/simple?token=x"}, err: "carries credentials"},
		{name: "not http", indexes: []string{"file:///srv/wheels"}, err: "not an http(s) URL"},
		{name: "bad extra port", extra: []string{"h:99999"}, err: "bad port"},
		{name: "extra with a path", extra: []string{"h/x"}, err: "want host or host:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := AllowList(tc.indexes, tc.extra)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "tok") {
					t.Errorf("the error shows the credentials: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
