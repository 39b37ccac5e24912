package driver_test

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// Helpers of both the rootless tests and the root ones.

var (
	runnerOnce sync.Once
	runnerPath string
	runnerErr  error
)

// modelRunner returns the model-runner binary: `make build`'s, or a fresh one.
func modelRunner(t *testing.T) string {
	runnerOnce.Do(func() {
		if dir := os.Getenv("MODELNODES_BIN"); dir != "" {
			if p := filepath.Join(dir, "model-runner"); fileExists(p) {
				runnerPath = p
				return
			}
		}
		dir, err := os.MkdirTemp("", "modelbox-test-")
		if err != nil {
			runnerErr = err
			return
		}
		runnerPath = filepath.Join(dir, "model-runner")
		if out, err := exec.Command("go", "build", "-o", runnerPath, "../cmd/model-runner").CombinedOutput(); err != nil {
			runnerErr = errors.New(string(out))
		}
	})
	if runnerErr != nil {
		t.Fatalf("building model-runner: %v", runnerErr)
	}
	return runnerPath
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
