// Package pyindex serves Python packages to tests the way a package index
// does: a minimal PEP 503 "simple" index on 127.0.0.1, optionally behind
// HTTP basic authentication as a private mirror is, and the wheels and
// source distributions to put in it, built by the test (no setuptools, no
// network). It is for tests only.
package pyindex

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// Index is a minimal PEP 503 "simple" index on 127.0.0.1: /simple/<name>/
// lists a project's files, /files/<file> serves them.
type Index struct {
	srv   *httptest.Server
	mu    sync.Mutex
	files map[string]map[string][]byte // project -> file name -> content
	user  string                       // with RequireAuth: the one login accepted
	pass  string
	// refused counts requests answered 401.
	refused int
}

// New serves an empty index until the test ends.
func New(t testing.TB) *Index {
	t.Helper()
	ix := &Index{files: map[string]map[string][]byte{}}
	ix.srv = httptest.NewServer(http.HandlerFunc(ix.serve))
	t.Cleanup(ix.srv.Close)
	return ix
}

// URL is the index's simple URL, without credentials.
func (ix *Index) URL() string { return ix.srv.URL + "/simple" }

// Host is the index's host:port.
func (ix *Index) Host() string { return ix.srv.Listener.Addr().String() }

// RequireAuth makes every request need HTTP basic authentication with
// user and password, as a private mirror does; others get 401.
func (ix *Index) RequireAuth(user, password string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.user, ix.pass = user, password
}

// Refused is how many requests were answered 401 so far.
func (ix *Index) Refused() int {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return ix.refused
}

// Add serves file (a wheel or an sdist, named as pip expects) as one of
// project's.
func (ix *Index) Add(project, file string, content []byte) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.files[project] == nil {
		ix.files[project] = map[string][]byte{}
	}
	ix.files[project][file] = content
}

var nonAlnum = regexp.MustCompile(`[-_.]+`)

func normalize(name string) string { return strings.ToLower(nonAlnum.ReplaceAllString(name, "-")) }

func (ix *Index) serve(w http.ResponseWriter, r *http.Request) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.user != "" {
		user, pass, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(user), []byte(ix.user)) != 1 || subtle.ConstantTimeCompare([]byte(pass), []byte(ix.pass)) != 1 {
			ix.refused++
			w.Header().Set("WWW-Authenticate", `Basic realm="pyindex"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
	}
	if name, ok := strings.CutPrefix(r.URL.Path, "/simple/"); ok {
		files := ix.files[normalize(strings.TrimSuffix(name, "/"))]
		if files == nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, "<!DOCTYPE html><html><body>\n")
		for f, b := range files {
			sum := sha256.Sum256(b)
			fmt.Fprintf(w, "<a href=\"/files/%s#sha256=%s\">%s</a>\n", html.EscapeString(f), hex.EncodeToString(sum[:]), html.EscapeString(f))
		}
		fmt.Fprint(w, "</body></html>\n")
		return
	}
	if f, ok := strings.CutPrefix(r.URL.Path, "/files/"); ok {
		for _, files := range ix.files {
			if b, ok := files[f]; ok {
				_, _ = w.Write(b)
				return
			}
		}
	}
	http.NotFound(w, r)
}

// backend is an in-tree PEP 517 build backend, the sdist's setup.py
// (build-backend = "setup"): it needs nothing from an index (no setuptools)
// and makes a pure-Python wheel of the package, after running HOOK, whose
// dict result is shipped in the wheel as <name>/report.json.
const backend = `import base64, hashlib, json, os, sys, zipfile

NAME, VERSION = %q, "1.0"

%s

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = {}
    with open(os.path.join(NAME, "__init__.py"), "rb") as f:
        files[NAME + "/__init__.py"] = f.read()
    files[NAME + "/report.json"] = json.dumps(hook()).encode()
    di = "%%s-%%s.dist-info" %% (NAME, VERSION)
    files[di + "/METADATA"] = ("Metadata-Version: 2.1\nName: %%s\nVersion: %%s\n" %% (NAME, VERSION)).encode()
    files[di + "/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for p, d in files.items():
        h = base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode()
        record.append("%%s,sha256=%%s,%%d" %% (p, h, len(d)))
    record.append(di + "/RECORD,,")
    files[di + "/RECORD"] = ("\n".join(record) + "\n").encode()
    name = "%%s-%%s-py3-none-any.whl" %% (NAME, VERSION)
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
    return name
`

// SDist returns NAME-1.0.tar.gz whose setup.py runs hook (Python defining
// hook() -> dict) while the wheel is built, and whose package's __init__.py
// is init.
func SDist(t testing.TB, name, hook, init string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	files := []struct{ path, content string }{
		{"PKG-INFO", fmt.Sprintf("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n", name)},
		{"pyproject.toml", "[build-system]\nrequires = []\nbuild-backend = \"setup\"\nbackend-path = [\".\"]\n"},
		{"setup.py", fmt.Sprintf(backend, name, hook)},
		{name + "/__init__.py", init},
	}
	for _, f := range files {
		hdr := &tar.Header{Name: name + "-1.0/" + f.path, Mode: 0o644, Size: int64(len(f.content)), Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.content)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Wheel returns a pure-Python wheel NAME-1.0-py3-none-any.whl holding files
// (path -> content) besides its dist-info.
func Wheel(t testing.TB, name string, files map[string]string) []byte {
	t.Helper()
	di := name + "-1.0.dist-info"
	all := map[string]string{
		di + "/METADATA": fmt.Sprintf("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n", name),
		di + "/WHEEL":    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
	}
	for p, c := range files {
		all[p] = c
	}
	var record strings.Builder
	for p, c := range all {
		sum := sha256.Sum256([]byte(c))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", p, base64.RawURLEncoding.EncodeToString(sum[:]), len(c))
	}
	fmt.Fprintf(&record, "%s/RECORD,,\n", di)
	all[di+"/RECORD"] = record.String()
	var buf bytes.Buffer
	z := zip.NewWriter(&buf)
	for p, c := range all {
		w, err := z.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(c)); err != nil {
			t.Fatal(err)
		}
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
