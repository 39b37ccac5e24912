package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A binary that `make build` left in $MODELNODES_BIN is the one returned.
func TestPathTakesMakeBuilds(t *testing.T) {
	dir := t.TempDir()
	want := filepath.Join(dir, "modelnodes-names")
	if err := os.WriteFile(want, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MODELNODES_BIN", dir)
	if got := Path(t, "modelnodes-names"); got != want {
		t.Fatalf("Path = %s, want %s", got, want)
	}
}

// Without it, Path builds the command, once: the build runs.
func TestPathBuildsWhatIsMissing(t *testing.T) {
	t.Setenv("MODELNODES_BIN", t.TempDir())
	p := Path(t, "modelnodes-names")
	t.Cleanup(func() {
		mu.Lock()
		delete(built, "modelnodes-names")
		mu.Unlock()
		_ = os.RemoveAll(filepath.Dir(p))
	})
	out, err := exec.Command(p, "crunch", "Some Crunch").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "crunch-") {
		t.Fatalf("%s crunch: %v\n%s", p, err, out)
	}
	if again := Path(t, "modelnodes-names"); again != p {
		t.Errorf("built again: %s, then %s", p, again)
	}
}
