// Package sandbox runs the model worker isolated from the host. The driver
// writes a Spec and puts Command in front of the worker's argv; the runner
// then starts the worker through it. The plugin binary re-executes itself as
// two hidden subcommands:
//
//   - "sandbox" (stage 1) moves itself into the task's worker cgroup and starts
//     stage 2 in new mount, pid, ipc, uts and network namespaces, then relays
//     signals and the exit status;
//   - "sandbox-init" (stage 2, pid 1 of the new pid namespace) builds a private
//     root holding only what the Spec lists (read-only system paths, the model
//     read-only, a writable scratch dir, a minimal /dev, its own /proc),
//     brings up loopback as the only network interface, applies Landlock,
//     sets no_new_privs, drops every capability, becomes the unprivileged
//     user, installs the seccomp filter (package seccomp) and executes the
//     worker.
//
// When the worker (pid 1 of its namespace) exits, the kernel kills everything
// it left behind; the task's cgroup catches the rest.
package sandbox

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// Hidden subcommands of the plugin binary.
const (
	CmdStage1 = "sandbox"
	CmdStage2 = "sandbox-init"
)

// Landlock modes.
const (
	LandlockOff        = "off"
	LandlockBestEffort = "best-effort" // applied where the kernel supports it
	LandlockRequired   = "required"    // the worker does not start without it
)

// Bind shows a host directory inside the sandbox at a path of its own.
type Bind struct {
	// Host is the directory on the host.
	Host string
	// Inside is where the worker sees it: absolute, and a neutral name
	// (/model, /env) that says nothing of the host's tree.
	Inside string
}

// Spec describes one task's sandbox. System paths (ReadOnly, Writable) appear
// inside at their host path; a task's own directories (Binds) at neutral
// paths, so nothing of the host's state path or alloc id shows inside.
type Spec struct {
	// UID and GID the worker runs as; never 0.
	UID, GID int
	// Hostname inside the UTS namespace.
	Hostname string
	// Root is an empty directory, private to the driver, on which the
	// sandbox mounts its root.
	Root string
	// ReadOnly lists host paths shown read-only at the same path (system
	// paths, Python interpreters). Missing ones are skipped.
	ReadOnly []string
	// Binds lists host directories shown read-only at neutral paths (the
	// model, its environment, the Python host script).
	Binds []Bind `json:",omitempty"`
	// Writable lists host directories shown read-write at the same path
	// (an environment build's output).
	Writable []string `json:",omitempty"`
	// TmpDir is a host directory shown read-write at /tmp. Empty: /tmp
	// and /scratch are one tmpfs of DiskBytes, private to this sandbox.
	TmpDir string `json:",omitempty"`
	// DiskBytes bounds what the worker may write (/tmp and /scratch
	// together) when TmpDir is empty: past it, writes fail with ENOSPC.
	// The tmpfs's pages count against the cgroup's memory, and nothing
	// reaches the host's disk. 0: DefaultDiskBytes.
	DiskBytes int64 `json:",omitempty"`
	// WorkDir is the worker's working directory.
	WorkDir string
	// WorkerCgroup is the worker leaf to join (cgroup.State.Worker).
	WorkerCgroup map[string]string
	// Landlock is LandlockOff, LandlockBestEffort or LandlockRequired.
	Landlock string
	// Env is the worker's whole environment besides MODELNODES_WORKER_FD:
	// nothing of the runner's environment (which may hold tokens) passes.
	Env []string
	// ListenInside, when set ("127.0.0.1:3128"), is the sandbox's one way
	// out, opt-in: stage 2, root in the new network namespace and before it
	// drops privileges, listens there and sends the listening socket over
	// the unix socket its starter passed as fd 4 (see ListenerFD and
	// ReceiveListener). The starter, trusted and in the host's network
	// namespace, serves what connects (an environment build's index proxy).
	// The model's sandbox leaves it empty: loopback only, nothing listening.
	ListenInside string `json:",omitempty"`
	// DevShmBytes, when positive, mounts a tmpfs of that size at /dev/shm
	// (POSIX semaphores and shared memory: Python's multiprocessing needs
	// it). Its pages count against the cgroup's memory.
	DevShmBytes int64 `json:",omitempty"`
	// Seccomp is SeccompDefault (""): the worker's system call allowlist
	// (package seccomp), installed as stage 2's last step before exec; or
	// SeccompOff, no filter (the sandbox's own tests compare with it).
	Seccomp string `json:",omitempty"`
	// AllowWrittenExecutables lets the worker execute code it wrote. Off,
	// its writable places (/tmp, /scratch, /dev/shm, Writable) are noexec
	// and Landlock grants no execute right on them, the seccomp filter
	// refuses memfd_create, and vm.memfd_noexec is 2 in its pid namespace.
	AllowWrittenExecutables bool `json:",omitempty"`
}

// DefaultDiskBytes is a sandbox's writable space when its spec names none.
const DefaultDiskBytes = 64 << 20

// Paths inside the sandbox that mean something to the worker.
const (
	// ScratchDir is the worker's writable directory besides /tmp (both on
	// the sandbox's own tmpfs).
	ScratchDir = "/scratch"
	// TmpDir is the worker's temporary directory; TMPDIR names it.
	TmpDir = "/tmp"
)

// Seccomp modes.
const (
	SeccompDefault = ""
	SeccompOff     = "off"
)

// ListenerFD is the descriptor, in stage 1, of the unix socket stage 2 sends
// the ListenInside socket over.
const ListenerFD = 4

// Validate rejects specs that would not isolate the worker.
func (s *Spec) Validate() error {
	switch {
	case s.UID <= 0 || s.GID <= 0:
		return fmt.Errorf("sandbox: the worker must run as an unprivileged user, not uid %d gid %d", s.UID, s.GID)
	case s.Root == "":
		return fmt.Errorf("sandbox: no root directory")
	case s.Landlock != LandlockOff && s.Landlock != LandlockBestEffort && s.Landlock != LandlockRequired:
		return fmt.Errorf("sandbox: landlock mode %q: want off, best-effort or required", s.Landlock)
	case s.Seccomp != SeccompDefault && s.Seccomp != SeccompOff:
		return fmt.Errorf("sandbox: seccomp mode %q: want the default (empty) or %q", s.Seccomp, SeccompOff)
	}
	if s.DiskBytes < 0 {
		return fmt.Errorf("sandbox: disk size %d is negative", s.DiskBytes)
	}
	seen := map[string]bool{}
	for _, b := range s.Binds {
		if err := b.validate(); err != nil {
			return err
		}
		if seen[b.Inside] {
			return fmt.Errorf("sandbox: two binds at %s", b.Inside)
		}
		seen[b.Inside] = true
	}
	if s.ListenInside != "" {
		// Loopback only: the namespace has no other interface, and the
		// address must not read as a way to the host's.
		host, _, err := net.SplitHostPort(s.ListenInside)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("sandbox: listen_inside %q: want a loopback address and port", s.ListenInside)
		}
	}
	return nil
}

// reserved are the places the sandbox itself builds: a bind may not hide
// them, or be hidden by them.
var reserved = []string{"/", "/proc", "/dev", TmpDir, ScratchDir}

func (b Bind) validate() error {
	if !filepath.IsAbs(b.Host) || !filepath.IsAbs(b.Inside) || filepath.Clean(b.Inside) != b.Inside {
		return fmt.Errorf("sandbox: bind %q at %q: want absolute, clean paths", b.Host, b.Inside)
	}
	for _, r := range reserved {
		if b.Inside == r || (r != "/" && strings.HasPrefix(b.Inside, r+"/")) {
			return fmt.Errorf("sandbox: bind at %s: the sandbox builds %s itself", b.Inside, r)
		}
	}
	return nil
}

// Write stores the spec at path (root-only readable).
func (s *Spec) Write(path string) error {
	if err := s.Validate(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// Load reads a spec written by Write.
func Load(path string) (*Spec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("sandbox spec %s: %w", path, err)
	}
	return &s, s.Validate()
}

// Command returns the argv prefix that runs a worker in the sandbox of the
// spec at specFile; self is the plugin binary.
func Command(self, specFile string) []string {
	return []string{self, CmdStage1, specFile, "--"}
}
