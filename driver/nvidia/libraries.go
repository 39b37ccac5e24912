package nvidia

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// driverLibraries are the host driver's user-space libraries a CUDA or NVML
// program loads (the container toolkit's "compute" and "utility" sets):
// they must match the kernel driver, so they come from the host, never from
// a model's environment.
var driverLibraries = []string{
	"libcuda.so", "libcudadebugger.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so",
	"libnvidia-nvvm.so", "libnvidia-gpucomp.so", "libnvidia-cfg.so", "libnvidia-opencl.so",
	"libnvidia-allocator.so", "libnvidia-fatbinaryloader.so", "libnvidia-compiler.so", "libnvidia-pkcs11.so",
}

// ldconfigArch is how `ldconfig -p` marks this architecture's 64-bit
// libraries.
var ldconfigArch = map[string]string{"amd64": "x86-64", "arm64": "AArch64"}[runtime.GOARCH]

// Library is one of the driver's libraries: its soname and where it is.
type Library struct {
	Name, Path string
}

// LibrariesFromLdconfig picks the driver's libraries out of `ldconfig -p`'s
// output, as the container toolkit finds them: every versioned soname of
// the list, for this architecture, first entry winning.
func LibrariesFromLdconfig(out string) []Library {
	var libs []Library
	for _, line := range strings.Split(out, "\n") {
		// "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1"
		name, rest, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		flags, path, ok := strings.Cut(rest, "=>")
		if !ok || (ldconfigArch != "" && !strings.Contains(flags, ldconfigArch)) {
			continue
		}
		path = strings.TrimSpace(path)
		if !filepath.IsAbs(path) || !isDriverLibrary(name) || slices.ContainsFunc(libs, func(l Library) bool { return l.Name == name }) {
			continue
		}
		libs = append(libs, Library{Name: name, Path: path})
	}
	return libs
}

// isDriverLibrary reports a versioned soname of driverLibraries
// ("libcuda.so.1", not the development link "libcuda.so").
func isDriverLibrary(name string) bool {
	for _, l := range driverLibraries {
		if strings.HasPrefix(name, l+".") {
			return true
		}
	}
	return false
}

// LibrariesFromPaths is a configured list of libraries: each file under
// its own name.
func LibrariesFromPaths(paths []string) []Library {
	var libs []Library
	for _, p := range paths {
		libs = append(libs, Library{Name: filepath.Base(p), Path: p})
	}
	return libs
}

// Ldconfig runs `ldconfig -p` (the host's library cache).
func Ldconfig(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	bin := "/sbin/ldconfig"
	if p, err := exec.LookPath("ldconfig"); err == nil {
		bin = p
	}
	out, err := exec.CommandContext(ctx, bin, "-p").Output()
	if err != nil {
		return "", fmt.Errorf("nvidia: ldconfig -p: %w", err)
	}
	return string(out), nil
}
