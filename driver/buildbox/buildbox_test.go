package buildbox

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/modelnodes/modelnodes/driver/buildproxy"
)

func TestSandboxEnv(t *testing.T) {
	proxy := []string{"HTTPS_PROXY=http://" + ProxyAddr, "HTTP_PROXY=http://" + ProxyAddr, "https_proxy=http://" + ProxyAddr, "http_proxy=http://" + ProxyAddr}
	for _, tc := range []struct {
		name string
		in   []string
		want []string // before the proxy variables
		err  string
	}{
		{name: "kept", in: []string{"PATH=/usr/bin", "UV_DEFAULT_INDEX=https://pypi.org/simple", "UV_INDEX=https://a.example/simple https://b.example/simple"},
			want: []string{"PATH=/usr/bin", "UV_DEFAULT_INDEX=https://pypi.org/simple", "UV_INDEX=https://a.example/simple https://b.example/simple"}},
		{name: "the operator's proxy is replaced", in: []string{"HTTPS_PROXY=http://corp:3128", "no_proxy=*", "ALL_PROXY=socks5://x", "SSL_CERT_FILE=/etc/ssl/c.pem"},
			want: []string{"SSL_CERT_FILE=/etc/ssl/c.pem"}},
		{name: "named index", in: []string{"UV_INDEX=nvidia=https://pypi.nvidia.com"}, want: []string{"UV_INDEX=nvidia=https://pypi.nvidia.com"}},
		{name: "user info in the default index", in: []string{"UV_DEFAULT_INDEX=https://u:secret@private.example/simple"}, err: "carries credentials"},
		{name: "token in an extra index's query", in: []string{"UV_INDEX=https://a.example/simple https://b.example/simple?token=secret"}, err: "carries credentials"},
		{name: "named index with credentials", in: []string{"UV_INDEX=corp=https://u:secret@corp.example/simple"}, err: "carries credentials"},
		{name: "uv's credential variables", in: []string{"UV_INDEX_CORP_PASSWORD=secret"}, err: "carries credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sandboxEnv(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, buildproxy.ErrCredentials) {
					t.Fatalf("err = %v, want ErrCredentials", err)
				}
				if strings.Contains(err.Error(), "secret@") || strings.Contains(err.Error(), "token=secret") {
					t.Errorf("the error shows the credentials: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := append(tc.want, proxy...); !slices.Equal(got, want) {
				t.Errorf("got %q\nwant %q", got, want)
			}
		})
	}
}

func TestNewRefusesWhatWouldNotIsolate(t *testing.T) {
	dir := t.TempDir()
	ok := Config{Self: "/bin/true", Dir: filepath.Join(dir, "sb"), UID: 64990, GID: 64990, UV: "/usr/bin/uv"}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		err  string
	}{
		{name: "root", mod: func(c *Config) { c.UID = 0 }, err: "not root"},
		{name: "relative dir", mod: func(c *Config) { c.Dir = "sb" }, err: "absolute"},
		{name: "index with credentials", mod: func(c *Config) { c.Indexes = []string{"https://u:p@private.example/simple"} },
			err: "build from wheels only"},
		{name: "bad extra host", mod: func(c *Config) { c.ExtraHosts = []string{"a/b"} }, err: "host or host:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			if _, err := New(c); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want %q", err, tc.err)
			}
		})
	}
	b, err := New(ok)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.AllowList(); !slices.Equal(got, []string{"pypi.org:443", buildproxy.PyPIFiles}) {
		t.Errorf("default allow-list %v", got)
	}
	if fi, err := os.Stat(ok.Dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the sandboxes' directory: %v %v, want 0700", fi, err)
	}
}

func TestInstallDir(t *testing.T) {
	base := t.TempDir()
	mk := func(p string) string {
		p = filepath.Join(base, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	opt := mk("opt/py3.13/bin/python3.13")
	if err := os.Symlink(opt, filepath.Join(base, "opt/py3.13/bin/python3")); err != nil {
		t.Fatal(err)
	}
	loose := mk("tools/python")
	for _, tc := range []struct{ in, want string }{
		{filepath.Join(base, "opt/py3.13/bin/python3"), filepath.Join(base, "opt/py3.13")},
		{loose, filepath.Join(base, "tools")},
		{filepath.Join(base, "missing/bin/python"), ""},
	} {
		if got := InstallDir(tc.in); got != tc.want {
			t.Errorf("InstallDir(%s) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
