package pyindex

import (
	"archive/zip"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

// The index lists a project's files with their sha256 and serves them; with
// RequireAuth, only the one login gets anything and the rest are counted.
func TestIndexServesFilesBehindBasicAuth(t *testing.T) {
	ix := New(t)
	whl := Wheel(t, "demo_pkg", map[string]string{"demo_pkg/__init__.py": "VALUE = 1\n"})
	ix.Add("demo-pkg", "demo_pkg-1.0-py3-none-any.whl", whl)
	get := func(path, user, pass string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+ix.Host()+path, nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	code, page := get("/simple/Demo_Pkg/", "", "")
	if code != 200 || !strings.Contains(page, `href="/files/demo_pkg-1.0-py3-none-any.whl#sha256=`) {
		t.Fatalf("simple page: %d %q", code, page)
	}
	code, body := get("/files/demo_pkg-1.0-py3-none-any.whl", "", "")
	if code != 200 || body != string(whl) {
		t.Fatalf("file: %d, %d bytes", code, len(body))
	}
	z, err := zip.NewReader(bytes.NewReader(whl), int64(len(whl)))
	if err != nil || len(z.File) != 4 { // module, METADATA, WHEEL, RECORD
		t.Fatalf("wheel: %v, %d files", err, len(z.File))
	}

	ix.RequireAuth("reader", "pw")
	for _, c := range []struct{ user, pass string }{{"", ""}, {"reader", "wrong"}, {"other", "pw"}} {
		if code, _ := get("/simple/demo-pkg/", c.user, c.pass); code != http.StatusUnauthorized {
			t.Errorf("login %q/%q: %d, want 401", c.user, c.pass, code)
		}
	}
	if ix.Refused() != 3 {
		t.Errorf("Refused() = %d, want 3", ix.Refused())
	}
	if code, _ := get("/simple/demo-pkg/", "reader", "pw"); code != 200 {
		t.Errorf("the right login: %d", code)
	}
}
