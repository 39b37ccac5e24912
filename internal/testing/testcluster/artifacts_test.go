package testcluster

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"io"
	"net/http"
	"strings"
	"testing"
)

// What ServeArchive serves is what a job's artifact needs: a .tar.gz URL,
// the digest of its bytes, and the files, executable.
func TestServeArchive(t *testing.T) {
	url, sum := ServeArchive(t, "example-model", map[string][]byte{"example-model": []byte("#!/bin/sh\n"), "b.py": []byte("x = 1\n")})
	if !strings.HasPrefix(url, "http://127.0.0.1:") || !strings.HasSuffix(url, "/example-model.tar.gz") {
		t.Errorf("URL %s, want a loopback .tar.gz", url)
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(body) != sum {
		t.Errorf("the served bytes do not have the digest returned")
	}
	gz, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var got []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		got = append(got, h.Name+":"+string(data))
		if h.Mode != 0o755 {
			t.Errorf("%s: mode %o, want 755", h.Name, h.Mode)
		}
	}
	if want := "b.py:x = 1\n,example-model:#!/bin/sh\n"; strings.Join(got, ",") != want {
		t.Errorf("archive holds %q, want %q", strings.Join(got, ","), want)
	}
}
