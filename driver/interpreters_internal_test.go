package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// fakePython writes an "interpreter" that reports version and counts its
// runs in dir/runs.
func fakePython(t *testing.T, dir, name, version string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	script := "#!/bin/sh\necho run >> " + filepath.Join(dir, "runs."+name) + "\n" +
		`echo '{"version": "` + version + `", "platform": "linux-x86_64-glibc2.36"}'` + "\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func runs(t *testing.T, dir, name string) int {
	b, _ := os.ReadFile(filepath.Join(dir, "runs."+name))
	return strings.Count(string(b), "run")
}

// An interpreter is run once to fingerprint it, not at every node
// fingerprint or task start, and again when its file changes (an upgrade in
// place).
func TestInterpretersAreFingerprintedOnce(t *testing.T) {
	dir := t.TempDir()
	cfg := &Config{Python: fakePython(t, dir, "py311", "3.11.2"), PythonInterpreters: []string{fakePython(t, dir, "py313", "3.13.0")}}
	log := hclog.NewNullLogger()
	for range 3 {
		attrs := interpreterAttributes(context.Background(), cfg, log)
		if got := attrs[AttrPythonVersions]; got != "3.11.2,3.13.0" {
			t.Fatalf("versions %q", got)
		}
	}
	if a, b := runs(t, dir, "py311"), runs(t, dir, "py313"); a != 1 || b != 1 {
		t.Fatalf("interpreters ran %d and %d times, want once each", a, b)
	}
	fakePython(t, dir, "py313", "3.13.1") // upgraded in place
	if got := interpreterAttributes(context.Background(), cfg, log)[AttrPythonVersions]; got != "3.11.2,3.13.1" {
		t.Fatalf("after the upgrade: versions %q", got)
	}
	// A missing interpreter is left out and logged once, not at every
	// fingerprint; when it appears it is used.
	var logs strings.Builder
	logger := hclog.New(&hclog.LoggerOptions{Output: &logs})
	late := filepath.Join(dir, "py312")
	cfg.PythonInterpreters = append(cfg.PythonInterpreters, late)
	for range 3 {
		if got := interpreterAttributes(context.Background(), cfg, logger)[AttrPythonVersions]; got != "3.11.2,3.13.1" {
			t.Fatalf("with a missing interpreter: versions %q", got)
		}
	}
	if n := strings.Count(logs.String(), "python interpreter left out"); n != 1 {
		t.Fatalf("logged %d times:\n%s", n, logs.String())
	}
	fakePython(t, dir, "py312", "3.12.4")
	if got := interpreterAttributes(context.Background(), cfg, logger)[AttrPythonVersions]; got != "3.11.2,3.12.4,3.13.1" {
		t.Fatalf("once it appeared: versions %q", got)
	}
	// A version the driver cannot match is left out, the others stay.
	cfg.PythonInterpreters = append(cfg.PythonInterpreters, fakePython(t, dir, "odd", "three"))
	if got := interpreterAttributes(context.Background(), cfg, log)[AttrPythonVersions]; got != "3.11.2,3.12.4,3.13.1" {
		t.Fatalf("with an odd interpreter: versions %q", got)
	}
}

// pythonFor, prepare's call, reads the model's request and picks the
// interpreter; a request the node cannot meet fails with what was asked and
// what the node has.
func TestPythonFor(t *testing.T) {
	dir := t.TempDir()
	d := NewWithIsolator(hclog.NewNullLogger(), nil)
	d.config = &Config{Python: fakePython(t, dir, "py311", "3.11.2"),
		PythonInterpreters: []string{fakePython(t, dir, "py313", "3.13.0"), fakePython(t, dir, "py312", "3.12.4")}}
	model := t.TempDir()
	in, req, err := d.pythonFor(context.Background(), model)
	if err != nil || in.Path != d.config.Python || !req.Any() {
		t.Fatalf("no request: %s %s %v, want the default", in.Path, req, err)
	}
	if err := os.WriteFile(filepath.Join(model, "pyproject.toml"), []byte("[project]\nrequires-python = \"<3.13\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if in, _, err := d.pythonFor(context.Background(), model); err != nil || in.Version != "3.12.4" {
		t.Fatalf("<3.13: %s %v, want 3.12.4", in.Version, err)
	}
	if err := os.WriteFile(filepath.Join(model, ".python-version"), []byte("3.14\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = d.pythonFor(context.Background(), model)
	want := "modelbox: no matching python interpreter on this node: the submission asks for python 3.14 (.python-version) and <3.13 (requires-python in pyproject.toml); this node has 3.11.2, 3.12.4, 3.13.0"
	if err == nil || err.Error() != want {
		t.Fatalf("3.14: %v\nwant %s", err, want)
	}
}
