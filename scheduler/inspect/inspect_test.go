package inspect

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/jobs"
)

type file struct {
	name, body string
	link       bool
}

func tarball(t *testing.T, gz bool, files ...file) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w *tar.Writer
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		w = tar.NewWriter(zw)
	} else {
		w = tar.NewWriter(&buf)
	}
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Typeflag: tar.TypeReg}
		if f.link {
			h = &tar.Header{Name: f.name, Mode: 0o777, Typeflag: tar.TypeSymlink, Linkname: f.body}
		}
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if !f.link {
			if _, err := w.Write([]byte(f.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func zipball(t *testing.T, files ...file) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := zip.NewWriter(&buf)
	for _, f := range files {
		fw, err := w.Create(f.name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fw.Write([]byte(f.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// server serves archives by path and counts the requests of each.
type server struct {
	*httptest.Server
	mu    sync.Mutex
	files map[string][]byte
	hits  map[string]int
}

func newServer(t *testing.T) *server {
	s := &server{files: map[string][]byte{}, hits: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.hits[r.URL.Path]++
		b, ok := s.files[r.URL.Path]
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(b)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) put(path string, b []byte) string {
	s.mu.Lock()
	s.files[path] = b
	s.mu.Unlock()
	return s.URL + path
}

func (s *server) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

func newInspector(t *testing.T) (*Inspector, chan struct{}) {
	done := make(chan struct{}, 100)
	return &Inspector{
		Options: &jobs.Options{ArtifactHosts: []string{"127.0.0.1"}, AllowHTTPArtifacts: true},
		TempDir: t.TempDir(), Timeout: 5 * time.Second,
		OnDone: func() { done <- struct{}{} },
	}, done
}

// wait looks the archive up until an inspection answered.
func wait(t *testing.T, in *Inspector, done chan struct{}, url, sum string) Answer {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		if a := in.Lookup(context.Background(), url, sum); a.Ready {
			return a
		}
		select {
		case <-done:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatal("no answer")
		}
	}
}

func TestReadsTheRequestFromEachKindOfArchive(t *testing.T) {
	srv := newServer(t)
	pv := file{name: ".python-version", body: "3.13\n"}
	pp := file{name: "pyproject.toml", body: "[project]\nname = \"m\"\nrequires-python = \">=3.11\"\n"}
	for _, tc := range []struct {
		name, path string
		body       []byte
		want       string
	}{
		{"tar.gz", "/m.tar.gz", tarball(t, true, file{name: "main.py", body: "x"}, pv), "3.13 (.python-version)"},
		{"tgz, ./ names", "/m.tgz", tarball(t, true, file{name: "./.python-version", body: "3.12\n"}), "3.12 (.python-version)"},
		{"tar", "/m.tar", tarball(t, false, pp), ">=3.11 (requires-python in pyproject.toml)"},
		{"zip, both", "/m.zip", zipball(t, pv, pp), "3.13 (.python-version) and >=3.11 (requires-python in pyproject.toml)"},
		{"only below the root", "/nested.tar.gz", tarball(t, true, file{name: "sub/.python-version", body: "3.12"}), "any"},
		{"later entry wins", "/twice.tar.gz", tarball(t, true, file{name: ".python-version", body: "3.11"}, pv), "3.13 (.python-version)"},
		{"not an archive", "/main.py", []byte("print(1)\n"), "any"},
		{"a kind not read here", "/m.tar.xz", []byte("whatever"), "any"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, done := newInspector(t)
			url := srv.put(tc.path, tc.body)
			a := wait(t, in, done, url, digest(tc.body))
			if a.Err != nil || a.FetchErr != nil || a.Python.String() != tc.want {
				t.Fatalf("%+v, want %s", a, tc.want)
			}
			if left, _ := os.ReadDir(in.TempDir); len(left) != 0 {
				t.Fatalf("left %d files in its temp dir", len(left))
			}
		})
	}
}

// What no node would run is the submission's fault (Err), not a fetch
// failure.
func TestRefusedContent(t *testing.T) {
	srv := newServer(t)
	for _, tc := range []struct {
		name string
		body []byte
		err  string
	}{
		{"symlink", tarball(t, true, file{name: ".python-version", body: "/etc/hostname", link: true}), "not a regular file"},
		{"huge", tarball(t, true, file{name: "pyproject.toml", body: strings.Repeat("#", 300<<10)}), "more than 262144 bytes"},
		{"pypy", tarball(t, true, file{name: ".python-version", body: "pypy3.10"}), "CPython only"},
		{"bad toml", zipball(t, file{name: "pyproject.toml", body: "[project\n"}), "pyproject.toml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, done := newInspector(t)
			url := srv.put("/"+tc.name+".tar.gz", tc.body)
			if tc.name == "bad toml" {
				url = srv.put("/bad.zip", tc.body)
			}
			a := wait(t, in, done, url, digest(tc.body))
			if a.Err == nil || !strings.Contains(a.Err.Error(), tc.err) || a.FetchErr != nil {
				t.Fatalf("%+v, want Err with %q", a, tc.err)
			}
		})
	}
}

// One fetch per digest, however many models and passes ask.
func TestFetchesOncePerDigest(t *testing.T) {
	srv := newServer(t)
	body := tarball(t, true, file{name: ".python-version", body: "3.13"})
	url := srv.put("/m.tar.gz", body)
	in, done := newInspector(t)
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() { defer wg.Done(); in.Lookup(context.Background(), url, digest(body)) }()
	}
	wg.Wait()
	wait(t, in, done, url, digest(body))
	for range 5 {
		in.Lookup(context.Background(), url, digest(body))
	}
	if n := srv.count("/m.tar.gz"); n != 1 {
		t.Fatalf("fetched %d times", n)
	}
}

// A failed fetch is an answer (the job goes out unconstrained), retried
// with backoff, not at every pass.
func TestFetchFailuresAreRetriedWithBackoff(t *testing.T) {
	srv := newServer(t)
	body := tarball(t, true, file{name: ".python-version", body: "3.13"})
	in, done := newInspector(t)
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	in.now = func() time.Time { return time.Unix(0, now.Load()) }
	url := srv.put("/m.tar.gz", []byte("not the authorized bytes"))
	a := wait(t, in, done, url, digest(body))
	if a.FetchErr == nil || !strings.Contains(a.FetchErr.Error(), "not the authorized") {
		t.Fatalf("%+v, want a digest mismatch", a)
	}
	for range 5 {
		in.Lookup(context.Background(), url, digest(body))
	}
	time.Sleep(100 * time.Millisecond)
	if n := srv.count("/m.tar.gz"); n != 1 {
		t.Fatalf("fetched %d times before the retry was due", n)
	}
	srv.put("/m.tar.gz", body)
	now.Add(int64(retryFirst + time.Second))
	in.Lookup(context.Background(), url, digest(body))
	<-done
	if a := in.Lookup(context.Background(), url, digest(body)); a.FetchErr != nil || a.Python.String() != "3.13 (.python-version)" {
		t.Fatalf("after the retry: %+v", a)
	}
}

func TestLimits(t *testing.T) {
	srv := newServer(t)
	big := bytes.Repeat([]byte("x"), 1<<20)
	bigURL := srv.put("/big.tar.gz", big)
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
	}))
	t.Cleanup(hang.Close)
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Somewhere the policy does not allow (another host name).
		http.Redirect(w, r, strings.Replace(bigURL, "127.0.0.1", "localhost", 1), http.StatusFound)
	}))
	t.Cleanup(redirect.Close)
	for _, tc := range []struct{ name, url, err string }{
		{"size", bigURL, "more than 65536 bytes"},
		{"time", hang.URL + "/m.tar.gz", "deadline exceeded"},
		{"redirect", redirect.URL + "/m.tar.gz", "redirect refused"},
		{"not found", srv.URL + "/none.tar.gz", "404"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, done := newInspector(t)
			in.MaxBytes, in.Timeout = 64<<10, time.Second
			t0 := time.Now()
			a := wait(t, in, done, tc.url, digest(big))
			if a.FetchErr == nil || !strings.Contains(a.FetchErr.Error(), tc.err) {
				t.Fatalf("%+v, want a fetch error with %q", a, tc.err)
			}
			if d := time.Since(t0); d > 10*time.Second {
				t.Fatalf("took %v", d)
			}
		})
	}
	if srv.count("/big.tar.gz") != 1 {
		t.Errorf("the refused redirect was followed")
	}
}

// A zip whose directory would cost the scheduler hundreds of MB is not
// read (its job goes out unconstrained, the node's driver still checks).
func TestZipWithTooManyEntries(t *testing.T) {
	var buf bytes.Buffer
	w := zip.NewWriter(&buf)
	for i := range maxZipEntries + 1 {
		if _, err := w.CreateHeader(&zip.FileHeader{Name: strconv.Itoa(i), Method: zip.Store}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	srv := newServer(t)
	in, done := newInspector(t)
	// As Go writes it: zip64, which is not read.
	url := srv.put("/many.zip", buf.Bytes())
	if a := wait(t, in, done, url, digest(buf.Bytes())); a.FetchErr == nil || !strings.Contains(a.FetchErr.Error(), "zip64") {
		t.Fatalf("%+v", a)
	}
	// Crafted: the plain end record points at the directory too, so a
	// reader that trusts it would read all 100,001 headers.
	b := bytes.Clone(buf.Bytes())
	i, j := bytes.LastIndex(b, []byte("PK\x05\x06")), bytes.LastIndex(b, []byte("PK\x06\x06"))
	binary.LittleEndian.PutUint32(b[i+16:], uint32(binary.LittleEndian.Uint64(b[j+48:])))
	url = srv.put("/crafted.zip", b)
	if a := wait(t, in, done, url, digest(b)); a.FetchErr == nil || !strings.Contains(a.FetchErr.Error(), "more than 100000 entries") {
		t.Fatalf("%+v", a)
	}
	// One entry fewer is read.
	small := zipball(t, file{name: ".python-version", body: "3.12"})
	url = srv.put("/small.zip", small)
	if a := wait(t, in, done, url, digest(small)); a.Python.String() != "3.12 (.python-version)" {
		t.Fatalf("%+v", a)
	}
}

// A gzip bomb is refused for its ratio, quickly.
func TestGzipBomb(t *testing.T) {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	const n = 512 << 20
	if err := tw.WriteHeader(&tar.Header{Name: "zeros", Mode: 0o644, Size: n, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for range n >> 20 {
		_, _ = tw.Write(zeros)
	}
	_ = tw.WriteHeader(&tar.Header{Name: ".python-version", Mode: 0o644, Size: 4, Typeflag: tar.TypeReg})
	_, _ = tw.Write([]byte("3.13"))
	_ = tw.Close()
	_ = zw.Close()
	srv := newServer(t)
	url := srv.put("/bomb.tar.gz", buf.Bytes())
	in, done := newInspector(t)
	t0 := time.Now()
	a := wait(t, in, done, url, digest(buf.Bytes()))
	if a.FetchErr == nil || !strings.Contains(a.FetchErr.Error(), "more than 64 times its size") {
		t.Fatalf("%+v (archive of %d bytes)", a, buf.Len())
	}
	t.Logf("refused a %d-byte archive of %d bytes in %v", buf.Len(), n, time.Since(t0))
}

// A request no version satisfies is the submission's fault too; one that
// asks for something comes with its regexp.
func TestRegexpComesWithTheAnswer(t *testing.T) {
	srv := newServer(t)
	in, done := newInspector(t)
	never := tarball(t, true, file{name: "pyproject.toml", body: "[project]\nrequires-python = \">=3.13,<3.12\"\n"})
	a := wait(t, in, done, srv.put("/never.tar.gz", never), digest(never))
	if a.Err == nil || !strings.Contains(a.Err.Error(), "no python version satisfies it") || a.Regexp != "" {
		t.Fatalf("%+v", a)
	}
	ok := tarball(t, true, file{name: ".python-version", body: "3.13"})
	a = wait(t, in, done, srv.put("/ok.tar.gz", ok), digest(ok))
	if a.Err != nil || a.Regexp != `(\A|,)(3\.13\.[0-9]+)(,|\z)` {
		t.Fatalf("%+v", a)
	}
}

// With CacheDir, a restarted scheduler (a new Inspector) answers from disk
// and fetches nothing; a damaged entry is fetched again.
func TestCacheDirSurvivesARestart(t *testing.T) {
	srv := newServer(t)
	cacheDir := t.TempDir()
	ok := tarball(t, true, file{name: ".python-version", body: "3.13"})
	bad := tarball(t, true, file{name: ".python-version", body: "x", link: true})
	okURL, badURL := srv.put("/ok.tar.gz", ok), srv.put("/bad.tar.gz", bad)
	for round := range 2 {
		in, done := newInspector(t)
		in.CacheDir = cacheDir
		if a := wait(t, in, done, okURL, digest(ok)); a.Python.String() != "3.13 (.python-version)" || a.Regexp == "" {
			t.Fatalf("round %d: %+v", round, a)
		}
		if a := wait(t, in, done, badURL, digest(bad)); a.Err == nil || !strings.Contains(a.Err.Error(), "not a regular file") {
			t.Fatalf("round %d: %+v", round, a)
		}
	}
	if srv.count("/ok.tar.gz") != 1 || srv.count("/bad.tar.gz") != 1 {
		t.Fatalf("fetched %d and %d times, want once each", srv.count("/ok.tar.gz"), srv.count("/bad.tar.gz"))
	}
	if err := os.WriteFile(filepath.Join(cacheDir, digest(ok)+".tar.gz.json"), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	in, done := newInspector(t)
	in.CacheDir = cacheDir
	if a := wait(t, in, done, okURL, digest(ok)); a.Python.String() != "3.13 (.python-version)" || srv.count("/ok.tar.gz") != 2 {
		t.Fatalf("after damage: %+v, fetched %d times", a, srv.count("/ok.tar.gz"))
	}
	// A digest that is no digest never names a file.
	if p := in.cachePath("../../etc/passwd", kindTarGz); p != "" {
		t.Fatalf("cache path %s", p)
	}
}
