// Package docs holds tests of what the documentation promises: code that a
// reader copies out of docs/ builds where the reader puts it, in a module of
// their own, and the layout README describes holds.
package docs

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// firstGoBlock matches the first fenced Go block of a Markdown file.
var firstGoBlock = regexp.MustCompile("(?s)```go\n(.*?)\n```")

// goDirective reads the go line of a go.mod.
var goDirective = regexp.MustCompile(`(?m)^go ([0-9][0-9.]*)\s*$`)

// TestClientSampleBuildsInAnotherModule builds docs/client.md's first Go
// block as the main package of a fresh module that requires this one, as a
// coordinator's own program would: a sample that imports an internal
// package of this module, or that no longer matches the API, fails here.
// It runs offline, from the module cache that building this module filled.
func TestClientSampleBuildsInAnotherModule(t *testing.T) {
	goBin, root := goAndRoot(t)
	md, err := os.ReadFile(filepath.Join(root, "docs", "client.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := firstGoBlock.FindSubmatch(md)
	if m == nil {
		t.Fatal("docs/client.md has no ```go block")
	}
	sample := m[1]
	if !bytes.HasPrefix(sample, []byte("package main\n")) {
		t.Fatalf("docs/client.md's first Go block must be a whole program (package main with its imports), so that a reader can copy it; it starts with %q", firstLine(sample))
	}
	ourMod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := goDirective.FindSubmatch(ourMod)
	if goVersion == nil {
		t.Fatal("go.mod has no go directive")
	}
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	gomod := "module example.com/coordinator\n\n" +
		"go " + string(goVersion[1]) + "\n\n" +
		"require github.com/modelnodes/modelnodes v0.0.0\n\n" +
		"replace github.com/modelnodes/modelnodes => " + root + "\n"
	for name, b := range map[string][]byte{"go.mod": []byte(gomod), "go.sum": sum, "main.go": sample} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	cmd := exec.CommandContext(t.Context(), goBin, "build", "-o", filepath.Join(dir, "coordinator"), ".")
	cmd.Dir = dir
	// -mod=mod lets go add the sample's direct requirements (Consul's API)
	// at the versions this module selects; GOPROXY=off keeps it offline.
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOTOOLCHAIN=local", "GOWORK=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docs/client.md's sample does not build in another module: %v\n%s", err, out)
	}
}

// goAndRoot returns the go command (go test puts its own first on PATH) and
// this repository's root, the parent of docs/ where the tests run.
func goAndRoot(t *testing.T) (goBin, root string) {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	root, err = filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return goBin, root
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}
