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

// Device shows a host device node in the worker's /dev (a device Nomad
// reserved for the task). The node is bound, not copied: the worker opens the
// host's node, with its owner and mode, and the worker's device cgroup
// decides which devices (by number) it may open at all.
type Device struct {
	// Host is the device node on the host.
	Host string
	// Inside is where the worker sees it: a path under /dev.
	Inside string
}

// Mount shows a host path at a path of the task's choosing (Nomad's
// volume mounts and device plugins' mounts).
type Mount struct {
	// Host is the file or directory on the host; it must exist.
	Host string
	// Inside is where the worker sees it: absolute, clean, and clear of
	// every place the sandbox builds or shows.
	Inside string
	// ReadOnly mounts it read-only (and lets the worker execute from it,
	// as from the system paths); writable mounts are noexec unless
	// AllowWrittenExecutables.
	ReadOnly bool
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
	// Devices are host device nodes shown in /dev besides the default
	// ones. With any, the worker may also write its own /proc/self files
	// (CUDA's initialisation does; see applyLandlock).
	Devices []Device `json:",omitempty"`
	// Mounts are host paths shown at the task's paths.
	Mounts []Mount `json:",omitempty"`
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
	if err := s.validateDevices(); err != nil {
		return err
	}
	if err := s.validateMounts(); err != nil {
		return err
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
// them, or be hidden by them. (".disk" and ".old-root" are its work places
// while it builds the root.)
var reserved = []string{"/", "/proc", "/dev", TmpDir, ScratchDir, "/.disk", "/.old-root"}

// defaultDevices are the nodes every sandbox's /dev holds, bound from the
// host's /dev (cgroup.DefaultDevices allows their numbers).
var defaultDevices = []string{"null", "zero", "full", "random", "urandom"}

// devLinks are /dev's symbolic links to the worker's own descriptors.
var devLinks = map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}

// validateDevices checks that each device lands in /dev, on a name of its
// own, and hides none of the nodes the sandbox makes there.
func (s *Spec) validateDevices() error {
	taken := map[string]bool{"/dev/shm": true}
	for _, d := range defaultDevices {
		taken["/dev/"+d] = true
	}
	for l := range devLinks {
		taken["/dev/"+l] = true
	}
	seen := map[string]bool{}
	for _, d := range s.Devices {
		if !filepath.IsAbs(d.Host) || filepath.Clean(d.Host) != d.Host {
			return fmt.Errorf("sandbox: device %q: want an absolute, clean host path", d.Host)
		}
		if filepath.Clean(d.Inside) != d.Inside || !strings.HasPrefix(d.Inside, "/dev/") {
			return fmt.Errorf("sandbox: device %s at %q: want a clean path under /dev/", d.Host, d.Inside)
		}
		for t := range taken {
			if d.Inside == t || strings.HasPrefix(d.Inside, t+"/") {
				return fmt.Errorf("sandbox: device %s at %s: the sandbox makes %s itself", d.Host, d.Inside, t)
			}
		}
		for o := range seen {
			if d.Inside == o || strings.HasPrefix(d.Inside, o+"/") || strings.HasPrefix(o, d.Inside+"/") {
				return fmt.Errorf("sandbox: two devices at %s and %s", o, d.Inside)
			}
		}
		seen[d.Inside] = true
	}
	return nil
}

// validateMounts checks that each mount lands clear of everything else the
// sandbox shows: not on, under or over a place it builds, a system path, a
// bind, a writable path or another mount. Mount paths come from jobs and
// device plugins; a mount over /model or /usr would hide what the worker
// must see, or change what it runs.
func (s *Spec) validateMounts() error {
	taken := append([]string{}, reserved[1:]...)
	taken = append(taken, s.ReadOnly...)
	taken = append(taken, s.Writable...)
	for _, b := range s.Binds {
		taken = append(taken, b.Inside)
	}
	for _, m := range s.Mounts {
		if !filepath.IsAbs(m.Host) || filepath.Clean(m.Host) != m.Host {
			return fmt.Errorf("sandbox: mount %q: want an absolute, clean host path", m.Host)
		}
		if !filepath.IsAbs(m.Inside) || filepath.Clean(m.Inside) != m.Inside || m.Inside == "/" {
			return fmt.Errorf("sandbox: mount %s at %q: want an absolute, clean path other than /", m.Host, m.Inside)
		}
		for _, t := range taken {
			if overlaps(m.Inside, filepath.Clean(t)) {
				return fmt.Errorf("sandbox: mount %s at %s: overlaps %s, which the sandbox shows itself", m.Host, m.Inside, t)
			}
		}
		taken = append(taken, m.Inside)
	}
	return nil
}

// overlaps reports whether a and b are the same path or one holds the other.
func overlaps(a, b string) bool {
	return a == b || strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/") || b == "/"
}

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
