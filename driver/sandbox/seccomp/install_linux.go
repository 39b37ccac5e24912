package seccomp

import (
	"fmt"

	seccompbpf "github.com/elastic/go-seccomp-bpf"
)

// Supported reports whether the kernel filters system calls with seccomp.
func Supported() bool { return seccompbpf.Supported() }

// Install loads the filter for o on the calling process: every thread
// (TSYNC), with no_new_privs set first (the kernel requires it of a process
// without CAP_SYS_ADMIN, and the sandbox has set it already). The filter is
// inherited across fork and exec and can never be removed.
func Install(o Options) error {
	p, err := Policy(o)
	if err != nil {
		return err
	}
	if err := seccompbpf.LoadFilter(seccompbpf.Filter{NoNewPrivs: true, Flag: seccompbpf.FilterFlagTSync, Policy: *p}); err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	return nil
}
