// Package seccomp is the model worker's system call filter: an allowlist,
// grouped by family, that the sandbox's stage 2 installs as its last step
// before it executes the worker (package sandbox). The worker's code is the
// least trusted thing on the node; the kernel's whole surface is its way to
// the node. The list holds what CPython (3.11, 3.13) with numpy, pandas,
// pyarrow, scikit-learn and lightgbm (OpenMP threads), and Go programs, call
// in normal operation (read from strace of those workloads, plus what glibc,
// musl and the Go runtime call on their own); everything else is refused.
//
// Errno choices:
//   - a call outside the list fails with EPERM: "not permitted here", which
//     programs report instead of retrying with another call;
//   - clone3 fails with ENOSYS: glibc (2.34+) tries clone3 first and falls
//     back to clone only on ENOSYS, and clone is what the argument filter can
//     read (clone3 passes its flags in memory, which seccomp cannot see);
//   - x32 calls (number | 0x40000000) fail with ENOSYS (the library's own
//     rule), and calls of another architecture (the i386 ABI through int
//     0x80) take the default EPERM: the list names x86_64 (or aarch64)
//     numbers only.
//
// The filter's identity is Hash: a short SHA-256 of Canonical, the profile's
// sorted text, reported as the node attribute
// driver.modelbox.seccomp.profile and carried into every model's Consul meta.
package seccomp

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	seccompbpf "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/sys/unix"
)

// Options are the node's choices that change the profile.
type Options struct {
	// AllowWrittenExecutables re-allows memfd_create, for runtimes that
	// execute code they generate (the plugin's allow_written_executables).
	// Off, a worker cannot make an anonymous file to execute.
	AllowWrittenExecutables bool
}

// Family is one group of the allowlist with the reason it is there.
type Family struct {
	Name string
	// Why the worker needs it.
	Why string
	// Calls allowed whatever their arguments. Names that the running
	// architecture lacks (open, stat... on aarch64) are skipped there.
	Calls []string
	// Rules allow a call only with the arguments they name.
	Rules []Rule
}

// Rule allows Call when argument Arg compares to Value by Op. Several rules
// for one call are alternatives (any may match).
type Rule struct {
	Call  string
	Arg   uint32
	Op    seccompbpf.Operation
	Value uint64
}

func (r Rule) String() string {
	return fmt.Sprintf("%s arg%d %s %#x", r.Call, r.Arg, r.Op, r.Value)
}

// cloneNewFlags are the CLONE_NEW* flags clone(2) accepts: a clone with any
// of them makes new namespaces (a user namespace gives its creator every
// capability inside it, and with them netlink and nf_tables).
const cloneNewFlags = unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC |
	unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET

// Personalities Docker's default profile allows: PER_LINUX, PER_LINUX32,
// UNAME26 and both, and 0xffffffff, which only reads the current one.
var personalities = []uint64{0x0, 0x8, 0x20000, 0x20008, 0xffffffff}

// Families returns the allowlist for o.
func Families(o Options) []Family {
	fams := []Family{
		{
			Name: "process",
			Why:  "start, wait for and signal the worker's own processes and threads (glibc's posix_spawn, Python's subprocess and multiprocessing, OpenMP and Go runtime threads); read its ids, limits and the system's size",
			Calls: []string{
				"arch_prctl", "execve", "execveat", "exit", "exit_group", "fork", "vfork", "wait4", "waitid",
				"kill", "tgkill", "tkill", "pidfd_open", "pidfd_send_signal",
				"getpid", "getppid", "gettid", "getpgid", "getpgrp", "setpgid", "getsid", "setsid",
				"getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups", "capget",
				"set_tid_address", "set_robust_list", "rseq", "prctl", "restart_syscall",
				"getrlimit", "setrlimit", "prlimit64", "getrusage", "times", "getpriority", "setpriority",
				"uname", "sysinfo", "getrandom", "getcpu", "umask",
			},
			Rules: append([]Rule{
				// Threads and processes, never namespaces.
				{Call: "clone", Arg: 0, Op: seccompbpf.BitsNotSet, Value: cloneNewFlags},
			}, personalityRules()...),
		},
		{
			Name: "signals",
			Why:  "the runtimes' signal handling (Go's preemption signals, Python's handlers, alarms)",
			Calls: []string{
				"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend",
				"rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack",
				"signalfd", "signalfd4", "alarm", "pause",
			},
		},
		{
			Name: "memory",
			Why:  "allocators (glibc, jemalloc and mimalloc in pyarrow, the Go runtime) map, protect, advise and place the process's own memory; mbind and the mempolicy calls are NUMA hints jemalloc gives, bounded by the cgroup's cpuset",
			Calls: []string{
				"brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync",
				"mlock", "mlock2", "munlock", "mlockall", "munlockall", "membarrier",
				"mbind", "get_mempolicy", "set_mempolicy",
				"pkey_alloc", "pkey_free", "pkey_mprotect", "map_shadow_stack", "mseal",
			},
		},
		{
			Name: "files",
			Why:  "read the model, the environment and the system's libraries; write scratch and /tmp (what the worker may touch is the mount layout's and Landlock's to say, not this list's); descriptors; directory listings; extended attributes (shutil.copy2); ioctl with any request: terminals and sockets take some, and a reserved GPU's whole interface is ioctls on /dev/nvidia* (which devices a worker may open at all is its device cgroup's to say)",
			Calls: []string{
				"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
				"open", "openat", "openat2", "creat", "close", "close_range", "lseek", "dup", "dup2", "dup3",
				"fcntl", "flock", "ioctl", "fsync", "fdatasync", "sync_file_range", "ftruncate", "truncate",
				"fallocate", "fadvise64", "readahead", "sendfile", "copy_file_range", "splice", "tee",
				"stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs",
				"access", "faccessat", "faccessat2", "getcwd", "chdir", "fchdir",
				"mkdir", "mkdirat", "rmdir", "rename", "renameat", "renameat2",
				"link", "linkat", "unlink", "unlinkat", "symlink", "symlinkat", "readlink", "readlinkat",
				"chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "fchownat", "lchown",
				"utime", "utimes", "utimensat", "futimesat", "getdents", "getdents64", "mknod", "mknodat",
				"getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
				"setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
				"inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
			},
		},
		{
			Name: "waiting",
			Why:  "event loops and locks: the Go netpoller, Python's selectors, futexes under every mutex and OpenMP barrier, timers and clocks (the vDSO answers most clock reads without a call)",
			Calls: []string{
				"poll", "ppoll", "select", "pselect6",
				"epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
				"eventfd", "eventfd2", "pipe", "pipe2", "timerfd_create", "timerfd_settime", "timerfd_gettime",
				"futex", "futex_waitv", "futex_wait", "futex_wake", "futex_requeue",
				"nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time",
				"getitimer", "setitimer", "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete",
			},
		},
		{
			Name: "scheduling",
			Why:  "thread pools size themselves from the CPUs they may use (OpenMP, OpenBLAS, joblib, the Go runtime) and may pin threads; the cgroup's cpuset and CPU quota bound them",
			Calls: []string{
				"sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_setparam",
				"sched_getscheduler", "sched_setscheduler", "sched_get_priority_max", "sched_get_priority_min",
				"sched_rr_get_interval", "sched_getattr", "sched_setattr",
			},
		},
		{
			Name: "sockets",
			Why:  "the worker's socket to the runner (fd 3, AF_UNIX), socketpairs between its own processes (multiprocessing, joblib), loopback inside its own network namespace; only the unix and IP families: netlink (the way to nf_tables and routing), AF_ALG (the kernel's crypto API), AF_PACKET, vsock and the rest are refused",
			Calls: []string{
				"bind", "listen", "accept", "accept4", "connect", "getsockname", "getpeername",
				"getsockopt", "setsockopt", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
			},
			Rules: []Rule{
				{Call: "socket", Arg: 0, Op: seccompbpf.Equal, Value: unix.AF_UNIX},
				{Call: "socket", Arg: 0, Op: seccompbpf.Equal, Value: unix.AF_INET},
				{Call: "socket", Arg: 0, Op: seccompbpf.Equal, Value: unix.AF_INET6},
				{Call: "socketpair", Arg: 0, Op: seccompbpf.Equal, Value: unix.AF_UNIX},
			},
		},
	}
	if o.AllowWrittenExecutables {
		fams = append(fams, Family{
			Name:  "written-executables",
			Why:   "allow_written_executables: runtimes that generate code and execute it from an anonymous file",
			Calls: []string{"memfd_create"},
		})
	}
	return fams
}

func personalityRules() []Rule {
	var rs []Rule
	for _, p := range personalities {
		rs = append(rs, Rule{Call: "personality", Arg: 0, Op: seccompbpf.Equal, Value: p})
	}
	return rs
}

// Refused names calls the profile leaves out on purpose, by family, with
// the reason; the sandbox's tests try each. It documents the filter: the
// filter itself refuses everything the families do not list.
var Refused = []struct{ Family, Why string }{
	{"io_uring_setup io_uring_enter io_uring_register", "io_uring: a second syscall interface that seccomp cannot see into, and a long line of kernel exploits (Docker refuses it since 2023)"},
	{"userfaultfd", "stalls kernel copies at will: the classic way to win kernel races"},
	{"keyctl add_key request_key", "the kernel keyring is not namespaced"},
	{"bpf perf_event_open", "kernel programs and performance counters: kernel attack surface, and side channels"},
	{"unshare setns clone(CLONE_NEW*)", "new namespaces: an unprivileged user namespace gives every capability inside it, and with them netlink, nf_tables and mounts (past local root exploits)"},
	{"clone3", "ENOSYS, not EPERM: libc then falls back to clone, whose flags the filter can read"},
	{"mount umount2 pivot_root chroot fsopen fsconfig fsmount fspick move_mount open_tree open_tree_attr mount_setattr statmount listmount", "the mount table is the sandbox's, set up before the worker starts"},
	{"ptrace process_vm_readv process_vm_writev process_madvise process_mrelease pidfd_getfd kcmp", "reading or changing another process (the runner's pid namespace is not the worker's, but its own children are no business of the model's either)"},
	{"socket(AF_NETLINK) socket(AF_ALG) socket(AF_PACKET) socket(AF_VSOCK) ...", "socket families other than unix, IPv4 and IPv6"},
	{"memfd_create memfd_secret", "an anonymous file is how code that was never on disk gets executed (allow_written_executables re-allows memfd_create)"},
	{"personality", "except the values Docker allows: other personalities turn off address space randomization (ADDR_NO_RANDOMIZE) or change the ABI"},
	{"kexec_load kexec_file_load init_module finit_module delete_module reboot swapon swapoff acct iopl ioperm syslog", "the host's kernel and devices"},
	{"settimeofday clock_settime clock_adjtime adjtimex sethostname setdomainname", "the host's clock and names"},
	{"setuid setgid setreuid setregid setresuid setresgid setfsuid setfsgid setgroups capset", "the worker's identity is fixed before it starts"},
	{"seccomp landlock_create_ruleset landlock_add_rule landlock_restrict_self", "none of the runtimes confine themselves further"},
	{"io_setup io_submit io_getevents io_cancel io_destroy", "Linux AIO: not used by the runtimes"},
	{"shmget shmat semget msgget mq_open", "System V IPC and POSIX message queues: not used by the runtimes (Python's multiprocessing uses /dev/shm)"},
	{"name_to_handle_at open_by_handle_at fanotify_init quotactl quotactl_fd move_pages migrate_pages set_mempolicy_home_node lsm_get_self_attr lsm_set_self_attr lsm_list_modules", "file handles, fanotify, quotas, moving pages of other processes, LSM attributes"},
}

// Policy is the filter for o on the running architecture, for
// seccompbpf.LoadFilter (Install) or to inspect.
func Policy(o Options) (*seccompbpf.Policy, error) {
	a, err := arch.GetInfo("")
	if err != nil {
		return nil, fmt.Errorf("seccomp: %w", err)
	}
	allow := seccompbpf.SyscallGroup{Action: seccompbpf.ActionAllow}
	for _, f := range Families(o) {
		for _, c := range f.Calls {
			if _, ok := a.SyscallNames[c]; ok {
				allow.Names = append(allow.Names, c)
			}
		}
		for _, r := range f.Rules {
			if _, ok := a.SyscallNames[r.Call]; !ok {
				continue
			}
			allow.NamesWithCondtions = append(allow.NamesWithCondtions, seccompbpf.NameWithConditions{
				Name:       r.Call,
				Conditions: seccompbpf.ArgumentConditions{{Argument: r.Arg, Operation: r.Op, Value: r.Value}},
			})
		}
	}
	enosys := seccompbpf.SyscallGroup{
		Action: seccompbpf.ActionErrno | seccompbpf.Action(unix.ENOSYS),
		Names:  []string{"clone3"},
	}
	return &seccompbpf.Policy{
		// ActionErrno alone returns EPERM (the library's default errno).
		DefaultAction: seccompbpf.ActionErrno,
		Syscalls:      []seccompbpf.SyscallGroup{enosys, allow},
	}, nil
}

// Canonical is the profile's text: one line per allowed call or rule and
// per non-default action, sorted, independent of the architecture. Hash
// is its digest.
func Canonical(o Options) string {
	lines := []string{"default errno EPERM", "x32 errno ENOSYS", "foreign-arch errno EPERM", "clone3 errno ENOSYS"}
	for _, f := range Families(o) {
		for _, c := range f.Calls {
			lines = append(lines, "allow "+c)
		}
		for _, r := range f.Rules {
			lines = append(lines, "allow "+r.String())
		}
	}
	slices.Sort(lines)
	return "modelbox seccomp profile v1\n" + strings.Join(lines, "\n") + "\n"
}

// Hash is the profile's identity: the first 16 hex digits of the SHA-256 of
// Canonical. It changes whenever a call or rule does.
func Hash(o Options) string {
	sum := sha256.Sum256([]byte(Canonical(o)))
	return hex.EncodeToString(sum[:])[:16]
}
