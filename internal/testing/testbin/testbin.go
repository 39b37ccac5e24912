// Package testbin gives tests the project's binaries: the ones `make build`
// left in $MODELNODES_BIN, or fresh builds.
package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// module is the import path of the project's module; its binaries are
// module/cmd/<name>.
const module = "github.com/modelnodes/modelnodes"

var (
	mu    sync.Mutex
	built = map[string]string{} // name -> path of this process's build
)

// Path returns the path of the binary cmd/<name>: $MODELNODES_BIN/<name>
// when that exists, else a build of it, made once per test process (the
// go command's cache keeps that quick). It fails t when the build fails.
// The test's working dir must be inside the module, as go test makes it.
func Path(t testing.TB, name string) string {
	t.Helper()
	if dir := os.Getenv("MODELNODES_BIN"); dir != "" {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if p, ok := built[name]; ok {
		return p
	}
	// Not t.TempDir: the build serves every later test of the process.
	dir, err := os.MkdirTemp("", name+"-test-")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if out, err := exec.Command("go", "build", "-o", p, module+"/cmd/"+name).CombinedOutput(); err != nil {
		t.Fatalf("building cmd/%s: %v\n%s", name, err, out)
	}
	built[name] = p
	return p
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
