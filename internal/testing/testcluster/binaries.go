package testcluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// repoRoot returns the root of this repository (the directory holding
// deploy/dev/nomad.hcl), found by walking up from the working directory: go
// test runs each package's tests inside the package's own directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("get working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "deploy", "dev", "nomad.hcl")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no deploy/dev/nomad.hcl above the working directory")
		}
		dir = parent
	}
}

var versionLine = regexp.MustCompile(`(?m)^(NOMAD|CONSUL|VAULT)_VERSION=([0-9][0-9A-Za-z.+-]*)$`)

// pinnedVersions reads the agent versions from deploy/hashistack/install, the
// one place they are pinned.
func pinnedVersions(root string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(root, "deploy", "hashistack", "install"))
	if err != nil {
		return nil, fmt.Errorf("read pinned versions: %w", err)
	}
	out := map[string]string{}
	for _, m := range versionLine.FindAllStringSubmatch(string(b), -1) {
		out[strings.ToLower(m[1])] = m[2]
	}
	for _, name := range []string{"nomad", "consul", "vault"} {
		if out[name] == "" {
			return nil, fmt.Errorf("deploy/hashistack/install pins no %s version", name)
		}
	}
	return out, nil
}

// cacheDir is where deploy/hashistack/install caches the binaries it builds.
func cacheDir() string {
	if d := os.Getenv("MODELNODES_CACHE"); d != "" {
		return filepath.Join(d, "hashistack")
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, _ := os.UserHomeDir()
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "modelnodes", "hashistack")
}

// findBinary locates one agent: $<NAME>_BIN, then the install script's cache,
// then PATH when that binary reports the pinned version. The error says what
// was tried and how to get the binary.
func findBinary(name, version string) (string, error) {
	env := strings.ToUpper(name) + "_BIN"
	if p := os.Getenv(env); p != "" {
		if isExecutable(p) {
			return p, nil
		}
		return "", fmt.Errorf("%s=%s is not an executable file", env, p)
	}
	cached := filepath.Join(cacheDir(), name+"-"+version, "bin", name)
	if isExecutable(cached) {
		return cached, nil
	}
	onPath, err := exec.LookPath(name)
	if err == nil && reportsVersion(onPath, version) {
		return onPath, nil
	}
	why := "not on PATH"
	if err == nil {
		why = onPath + " is not v" + version
	}
	return "", fmt.Errorf("%s v%s not found (%s unset, no %s, %s); run `make hashistack` to build it into the cache (about 25 minutes cold for all three agents)",
		name, version, env, cached, why)
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

func reportsVersion(bin, version string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return false
	}
	first, _, _ := bytes.Cut(out, []byte("\n"))
	return regexp.MustCompile(`v` + regexp.QuoteMeta(version) + `([^0-9.-]|$)`).Match(first)
}
