package pyenv

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Interpreter is what a node's Python interpreter reports about itself: the
// fields of a Spec that come from the node, not from the submission.
type Interpreter struct {
	// Path is the absolute path the operator listed.
	Path string
	// Version is platform.python_version() ("3.13.0").
	Version string
	// Platform is sysconfig.get_platform() and the C library the wheels must
	// match ("linux-x86_64-glibc2.36").
	Platform string
}

// probeScript prints the interpreter's version and platform as JSON. It runs
// an operator-listed interpreter (trusted) with -I: no user site, no
// PYTHON* variables, no current directory on sys.path.
const probeScript = `import json, platform, sysconfig
lib, ver = platform.libc_ver()
print(json.dumps({"version": platform.python_version(), "platform": sysconfig.get_platform() + ("-" + lib + ver if lib else "")}))`

// Fingerprint asks the interpreter at path for its version and platform.
func Fingerprint(ctx context.Context, path string) (Interpreter, error) {
	if !filepath.IsAbs(path) {
		return Interpreter{}, fmt.Errorf("python interpreter %q is not an absolute path", path)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "-I", "-c", probeScript)
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	out, err := cmd.Output()
	if err != nil {
		return Interpreter{}, fmt.Errorf("fingerprint %s: %w", path, err)
	}
	var r struct{ Version, Platform string }
	if err := json.Unmarshal(out, &r); err != nil || r.Version == "" {
		return Interpreter{}, fmt.Errorf("fingerprint %s: unexpected output %q", path, strings.TrimSpace(string(out)))
	}
	return Interpreter{Path: path, Version: r.Version, Platform: r.Platform}, nil
}

// Spec is the spec of requirements on this interpreter with the given
// indexes.
func (in Interpreter) Spec(requirements []byte, indexes ...string) Spec {
	return Spec{Requirements: requirements, Python: in.Path, PythonVersion: in.Version, Platform: in.Platform, Indexes: indexes}
}
