//go:build e2e

package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// syscallProbe makes each call of the table inside the sandbox and prints
// what each returned: "ok", or the errno's name. Calls that succeed are
// undone (descriptors closed, children killed).
func syscallProbe() {
	out := map[string]string{}
	res := func(name string, err error) {
		var errno syscall.Errno
		switch {
		case err == nil:
			out[name] = "ok"
		case errors.As(err, &errno):
			out[name] = unix.ErrnoName(errno)
		default:
			out[name] = err.Error()
		}
	}
	fdRes := func(name string, fd int, err error) {
		if err == nil {
			_ = unix.Close(fd)
		}
		res(name, err)
	}
	raw := func(name string, nr uintptr, args ...uintptr) {
		var a [6]uintptr
		copy(a[:], args)
		r, _, e := unix.Syscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5])
		if e != 0 {
			res(name, e)
			return
		}
		if name == "io_uring_setup" || name == "userfaultfd" {
			_ = unix.Close(int(r))
		}
		res(name, nil)
	}
	// child runs /bin/true with attr: the runtimes' way to start processes
	// (Go's clone with CLONE_VFORK, or the namespace flags under test).
	child := func(name string, attr *syscall.SysProcAttr) {
		cmd := exec.Command("/bin/true")
		cmd.SysProcAttr = attr
		res(name, cmd.Run())
	}

	// Allowed: the runtimes' everyday calls.
	_, err := unix.Getpid(), error(nil)
	res("getpid", err)
	child("clone+execve /bin/true", nil)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	fdRes("socket(AF_UNIX)", fd, err)
	fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	fdRes("socket(AF_INET)", fd, err)
	fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	fdRes("socket(AF_INET6)", fd, err)
	if fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
		_ = unix.Close(fds[0])
		fdRes("socketpair(AF_UNIX)", fds[1], nil)
	} else {
		res("socketpair(AF_UNIX)", err)
	}
	if b, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err == nil {
		res("mmap", unix.Munmap(b))
	} else {
		res("mmap", err)
	}
	_, err = unix.Getrandom(make([]byte, 16), 0)
	res("getrandom", err)
	fd, err = unix.PidfdOpen(os.Getpid(), 0)
	fdRes("pidfd_open", fd, err)
	var cpus unix.CPUSet
	res("sched_getaffinity", unix.SchedGetaffinity(0, &cpus))
	var stx unix.Statx_t
	res("statx", unix.Statx(unix.AT_FDCWD, "/", 0, unix.STATX_BASIC_STATS, &stx))
	raw("personality(0xffffffff)", unix.SYS_PERSONALITY, 0xffffffff)
	// Allowed, and refused by the kernel for its arguments: EINVAL, not EPERM.
	raw("rseq(NULL)", unix.SYS_RSEQ, 0, 0, 0, 0)

	// Refused.
	var uringParams [120]byte // struct io_uring_params
	raw("io_uring_setup", unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&uringParams)))
	const uffdUserModeOnly = 1
	raw("userfaultfd", unix.SYS_USERFAULTFD, unix.O_CLOEXEC|uffdUserModeOnly)
	_, err = unix.KeyctlGetKeyringID(unix.KEY_SPEC_SESSION_KEYRING, true)
	res("keyctl", err)
	_, err = unix.AddKey("user", "modelbox-probe", []byte("x"), unix.KEY_SPEC_PROCESS_KEYRING)
	res("add_key", err)
	_, err = unix.RequestKey("user", "modelbox-none", "", unix.KEY_SPEC_PROCESS_KEYRING)
	res("request_key", err)
	var bpfAttr [128]byte
	raw("bpf", unix.SYS_BPF, unix.BPF_MAP_CREATE, uintptr(unsafe.Pointer(&bpfAttr)), unsafe.Sizeof(bpfAttr))
	attr := unix.PerfEventAttr{Type: unix.PERF_TYPE_SOFTWARE, Config: unix.PERF_COUNT_SW_TASK_CLOCK, Bits: unix.PerfBitDisabled | unix.PerfBitExcludeKernel | unix.PerfBitExcludeHv}
	attr.Size = uint32(unsafe.Sizeof(attr))
	fd, err = unix.PerfEventOpen(&attr, 0, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	fdRes("perf_event_open", fd, err)
	child("unshare(CLONE_NEWUSER)", &syscall.SysProcAttr{Unshareflags: unix.CLONE_NEWUSER})
	child("clone(CLONE_NEWUSER|CLONE_NEWNET)", &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWUSER | unix.CLONE_NEWNET})
	raw("clone3", unix.SYS_CLONE3, 0, 0)
	if ns, err := unix.Open("/proc/self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		res("setns", unix.Setns(ns, unix.CLONE_NEWNET))
		_ = unix.Close(ns)
	} else {
		res("setns", err)
	}
	res("mount", unix.Mount("none", "/tmp", "tmpfs", 0, ""))
	fd, err = unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	fdRes("fsopen", fd, err)
	fd, err = unix.OpenTree(unix.AT_FDCWD, "/tmp", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	fdRes("open_tree", fd, err)
	res("ptrace(PTRACE_ATTACH) of its own child", ptraceChild())
	local := []unix.Iovec{{Base: &bpfAttr[0], Len: 8}}
	remote := []unix.RemoteIovec{{Base: uintptr(unsafe.Pointer(&uringParams[0])), Len: 8}}
	_, err = unix.ProcessVMReadv(os.Getpid(), local, remote, 0)
	res("process_vm_readv", err)
	fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	fdRes("socket(AF_NETLINK)", fd, err)
	fd, err = unix.Socket(unix.AF_ALG, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	fdRes("socket(AF_ALG)", fd, err)
	fd, err = unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	fdRes("socket(AF_VSOCK)", fd, err)
	if fds, err := unix.Socketpair(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
		_ = unix.Close(fds[0])
		fdRes("socketpair(AF_INET)", fds[1], nil)
	} else {
		res("socketpair(AF_INET)", err)
	}
	raw("personality(ADDR_NO_RANDOMIZE)", unix.SYS_PERSONALITY, 0x0040000)
	raw("finit_module", unix.SYS_FINIT_MODULE, ^uintptr(0), 0, 0)
	raw("x32 getpid", 0x40000000|unix.SYS_GETPID)
	fd, err = unix.MemfdCreate("probe", unix.MFD_CLOEXEC)
	fdRes("memfd_create", fd, err)
	fd, err = unix.MemfdCreate("probe", unix.MFD_CLOEXEC|unix.MFD_EXEC)
	fdRes("memfd_create(MFD_EXEC)", fd, err)
	res("execute a memfd", execMemfd())
	if b, err := os.ReadFile(memfdNoexec); err == nil {
		out["vm.memfd_noexec"] = strings.TrimSpace(string(b))
	} else {
		out["vm.memfd_noexec"] = "absent"
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}

// ptraceChild starts a child and tries to attach to it: the one process a
// worker could trace (its pid namespace holds only its own).
func ptraceChild() error {
	cmd := exec.Command("/bin/sleep", "10")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start a child: %w", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	runtime.LockOSThread() // the tracer is a thread
	defer runtime.UnlockOSThread()
	return unix.PtraceAttach(cmd.Process.Pid)
}

// execMemfd copies /bin/true into an anonymous file and executes it: code
// that was never on the disk.
func execMemfd() error {
	fd, err := unix.MemfdCreate("payload", 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), "payload")
	defer f.Close()
	src, err := os.Open("/bin/true")
	if err != nil {
		return err
	}
	defer src.Close()
	if _, err := io.Copy(f, src); err != nil {
		return err
	}
	// The child's fd 3 (ExtraFiles[0]), open when it executes it.
	cmd := exec.Command("/proc/self/fd/3")
	cmd.ExtraFiles = []*os.File{f}
	return cmd.Run()
}

// runSyscallProbe runs the probe in a real sandbox whose spec edit changes,
// and returns what each call gave.
func runSyscallProbe(t *testing.T, edit func(*Spec)) map[string]string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := mkdir(t, base, "tmp", 0o700)
	if err := os.Chown(tmp, 64123, 64123); err != nil {
		t.Fatal(err)
	}
	spec := &Spec{
		UID: 64123, GID: 64123, Hostname: "model", Root: mkdir(t, base, "root", 0o700),
		ReadOnly: []string{"/usr", "/lib", "/lib64", "/bin", filepath.Dir(self)},
		TmpDir:   tmp,
		Landlock: landlockMode(),
	}
	edit(spec)
	got := map[string]string{}
	runSandboxed(t, spec, filepath.Join(base, "spec.json"), &got, nil, "syscalls")
	return got
}

// Each call of the table, made for real by a worker in the sandbox: the
// allowed ones work, the refused ones fail with the profile's errno.
func TestSeccompSyscallTable(t *testing.T) {
	requireRoot(t)
	noexec := "2"
	if _, err := os.Stat(memfdNoexec); err != nil {
		noexec = "absent" // before Linux 6.3: the filter alone
	}
	table := []struct{ call, want string }{
		{"getpid", "ok"},
		{"clone+execve /bin/true", "ok"},
		{"socket(AF_UNIX)", "ok"},
		{"socket(AF_INET)", "ok"},
		{"socket(AF_INET6)", "ok"},
		{"socketpair(AF_UNIX)", "ok"},
		{"mmap", "ok"},
		{"getrandom", "ok"},
		{"pidfd_open", "ok"},
		{"sched_getaffinity", "ok"},
		{"statx", "ok"},
		{"personality(0xffffffff)", "ok"},
		{"rseq(NULL)", "EINVAL"},

		{"io_uring_setup", "EPERM"},
		{"userfaultfd", "EPERM"},
		{"keyctl", "EPERM"},
		{"add_key", "EPERM"},
		{"request_key", "EPERM"},
		{"bpf", "EPERM"},
		{"perf_event_open", "EPERM"},
		{"unshare(CLONE_NEWUSER)", "EPERM"},
		{"clone(CLONE_NEWUSER|CLONE_NEWNET)", "EPERM"},
		{"clone3", "ENOSYS"},
		{"setns", "EPERM"},
		{"mount", "EPERM"},
		{"fsopen", "EPERM"},
		{"open_tree", "EPERM"},
		{"ptrace(PTRACE_ATTACH) of its own child", "EPERM"},
		{"process_vm_readv", "EPERM"},
		{"socket(AF_NETLINK)", "EPERM"},
		{"socket(AF_ALG)", "EPERM"},
		{"socket(AF_VSOCK)", "EPERM"},
		{"socketpair(AF_INET)", "EPERM"},
		{"personality(ADDR_NO_RANDOMIZE)", "EPERM"},
		{"finit_module", "EPERM"},
		{"x32 getpid", "ENOSYS"},
		{"memfd_create", "EPERM"},
		{"memfd_create(MFD_EXEC)", "EPERM"},
		{"execute a memfd", "EPERM"},
		{"vm.memfd_noexec", noexec},
	}
	t.Run("default", func(t *testing.T) {
		got := runSyscallProbe(t, func(*Spec) {})
		for _, tc := range table {
			if got[tc.call] != tc.want {
				t.Errorf("%s in the sandbox: %s, want %s", tc.call, got[tc.call], tc.want)
			}
		}
	})
	// allow_written_executables: memfd_create and executing a memfd work;
	// nothing else changes.
	t.Run("allow_written_executables", func(t *testing.T) {
		got := runSyscallProbe(t, func(s *Spec) { s.AllowWrittenExecutables = true })
		for _, tc := range table {
			want := tc.want
			switch tc.call {
			case "memfd_create", "execute a memfd":
				want = "ok"
			case "memfd_create(MFD_EXEC)":
				// MFD_EXEC came with vm.memfd_noexec (Linux 6.3): an
				// older kernel refuses the unknown flag.
				if want = "ok"; noexec == "absent" {
					want = "EINVAL"
				}
			case "vm.memfd_noexec":
				host, _ := os.ReadFile(memfdNoexec)
				if want = strings.TrimSpace(string(host)); want == "" {
					want = "absent"
				}
			}
			if got[tc.call] != want {
				t.Errorf("%s in the sandbox: %s, want %s", tc.call, got[tc.call], want)
			}
		}
	})
	// vm.memfd_noexec holds alone, under no filter: a memfd may not be
	// made executable, and a plain one cannot be executed.
	t.Run("memfd_noexec without the filter", func(t *testing.T) {
		if noexec == "absent" {
			t.Skip("the kernel has no vm.memfd_noexec (Linux 6.3): the filter is the only layer")
		}
		got := runSyscallProbe(t, func(s *Spec) { s.Seccomp = SeccompOff })
		for call, want := range map[string]string{"memfd_create": "ok", "memfd_create(MFD_EXEC)": "EACCES", "execute a memfd": "EACCES", "vm.memfd_noexec": "2"} {
			if got[call] != want {
				t.Errorf("%s under vm.memfd_noexec=2 alone: %s, want %s", call, got[call], want)
			}
		}
	})
}
