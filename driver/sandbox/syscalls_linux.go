package sandbox

import (
	"errors"
	"fmt"
	"os"

	"github.com/modelnodes/modelnodes/driver/sandbox/seccomp"
)

// memfdNoexec is the sandbox's pid namespace's vm.memfd_noexec (Linux 6.3):
// stage 2 is pid 1 of that namespace, and the value binds it and every
// namespace below.
const memfdNoexec = "/proc/sys/vm/memfd_noexec"

// restrictMemfdExec sets vm.memfd_noexec to 2 for the sandbox's pid
// namespace, unless the spec allows written executables: no memfd of the
// worker's may ever be executable. It is the second layer under the seccomp
// filter, which refuses memfd_create itself. Writing it needs
// CAP_SYS_ADMIN, so it runs before privileges are dropped; a kernel
// without it (before 6.3) has only the filter.
func restrictMemfdExec(spec *Spec) error {
	if spec.AllowWrittenExecutables {
		return nil
	}
	err := os.WriteFile(memfdNoexec, []byte("2\n"), 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vm.memfd_noexec: %w", err)
	}
	return nil
}

// installSeccomp loads the worker's system call filter. It is stage 2's
// last step before exec: what stage 2 still does (mounts, setuid, Landlock)
// needs calls the worker may not make, and the filter, once loaded, is the
// worker's for good (inherited across exec and fork, never removed).
func installSeccomp(spec *Spec) error {
	if spec.Seccomp == SeccompOff {
		return nil
	}
	return seccomp.Install(seccomp.Options{AllowWrittenExecutables: spec.AllowWrittenExecutables})
}
