// Package pyhost ships the Python worker host (host.py) inside the runner
// binary, so a node needs nothing but a Python interpreter to run a Python
// submission.
package pyhost

import (
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
)

//go:embed host.py
var script []byte

// Script returns the host's source.
func Script() []byte { return script }

// Install writes host.py into dir (created if needed) and returns its path.
// The file is written read-only: the model must not be able to change the
// code that frames its answers.
func Install(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("install python host: %w", err)
	}
	path := filepath.Join(dir, "modelnodes_host.py")
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	if err := os.WriteFile(tmp, script, 0o444); err != nil {
		return "", fmt.Errorf("install python host: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("install python host: %w", err)
	}
	return path, nil
}
