package seccomp

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Return values of the filter (SECCOMP_RET_*), as the kernel reads them.
const (
	retAllow  = uint32(unix.SECCOMP_RET_ALLOW)
	retEPERM  = uint32(unix.SECCOMP_RET_ERRNO) | uint32(unix.EPERM)
	retENOSYS = uint32(unix.SECCOMP_RET_ERRNO) | uint32(unix.ENOSYS)
)

// Audit architectures (linux/audit.h).
const (
	auditArchX86_64  = 0xc000003e
	auditArchI386    = 0x40000003
	auditArchAARCH64 = 0xc00000b7
)

// decide runs the assembled filter, in the BPF interpreter of x/net/bpf, on
// the seccomp_data of one call: nr, arch, and its arguments. The
// interpreter loads words big-endian where the kernel loads them in the
// machine's order, so each 32-bit word goes where the filter reads it.
func decide(t *testing.T, prog []bpf.Instruction, auditArch, nr uint32, args ...uint64) uint32 {
	t.Helper()
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 64) // struct seccomp_data
	binary.BigEndian.PutUint32(data[0:], nr)
	binary.BigEndian.PutUint32(data[4:], auditArch)
	for i, a := range args {
		lo, hi := 16+8*i, 16+8*i+4 // little-endian: the low word first
		binary.BigEndian.PutUint32(data[lo:], uint32(a))
		binary.BigEndian.PutUint32(data[hi:], uint32(a>>32))
	}
	ret, err := vm.Run(data)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(ret)
}

func assemble(t *testing.T, o Options) []bpf.Instruction {
	t.Helper()
	p, err := Policy(o)
	if err != nil {
		t.Fatal(err)
	}
	prog, err := p.Assemble()
	if err != nil {
		t.Fatalf("assemble the profile: %v", err)
	}
	return prog
}

// The filter's decisions, read from the assembled program itself: what the
// kernel will do with each call. The sandbox's e2e test makes the same
// calls for real.
func TestFilterDecisions(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skipf("the table holds x86_64 numbers; this is %s", runtime.GOARCH)
	}
	a := arch.X86_64
	nr := func(name string) uint32 {
		n, ok := a.SyscallNames[name]
		if !ok {
			t.Fatalf("no syscall %s on x86_64", name)
		}
		return uint32(n)
	}
	const threadFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD |
		unix.CLONE_SYSVSEM | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID | unix.CLONE_CHILD_CLEARTID
	def, written := assemble(t, Options{}), assemble(t, Options{AllowWrittenExecutables: true})
	for _, tc := range []struct {
		name string
		prog []bpf.Instruction
		arch uint32
		nr   uint32
		args []uint64
		want uint32
	}{
		{"read", def, auditArchX86_64, nr("read"), nil, retAllow},
		{"futex", def, auditArchX86_64, nr("futex"), nil, retAllow},
		{"rseq", def, auditArchX86_64, nr("rseq"), nil, retAllow},
		{"clone a thread", def, auditArchX86_64, nr("clone"), []uint64{threadFlags}, retAllow},
		{"clone a process (fork)", def, auditArchX86_64, nr("clone"), []uint64{unix.CLONE_CHILD_SETTID | unix.CLONE_CHILD_CLEARTID | uint64(unix.SIGCHLD)}, retAllow},
		{"clone(CLONE_NEWUSER|CLONE_NEWNET)", def, auditArchX86_64, nr("clone"), []uint64{unix.CLONE_NEWUSER | unix.CLONE_NEWNET | uint64(unix.SIGCHLD)}, retEPERM},
		{"clone(CLONE_NEWNS) with thread flags", def, auditArchX86_64, nr("clone"), []uint64{threadFlags | unix.CLONE_NEWNS}, retEPERM},
		{"clone(CLONE_NEWCGROUP)", def, auditArchX86_64, nr("clone"), []uint64{unix.CLONE_NEWCGROUP}, retEPERM},
		{"clone3: ENOSYS, so libc falls back to clone", def, auditArchX86_64, nr("clone3"), nil, retENOSYS},
		{"unshare(CLONE_NEWUSER)", def, auditArchX86_64, nr("unshare"), []uint64{unix.CLONE_NEWUSER}, retEPERM},
		{"unshare(CLONE_FILES)", def, auditArchX86_64, nr("unshare"), []uint64{unix.CLONE_FILES}, retEPERM},
		{"setns", def, auditArchX86_64, nr("setns"), nil, retEPERM},
		{"io_uring_setup", def, auditArchX86_64, nr("io_uring_setup"), nil, retEPERM},
		{"userfaultfd", def, auditArchX86_64, nr("userfaultfd"), nil, retEPERM},
		{"keyctl", def, auditArchX86_64, nr("keyctl"), nil, retEPERM},
		{"bpf", def, auditArchX86_64, nr("bpf"), nil, retEPERM},
		{"perf_event_open", def, auditArchX86_64, nr("perf_event_open"), nil, retEPERM},
		{"mount", def, auditArchX86_64, nr("mount"), nil, retEPERM},
		{"fsopen", def, auditArchX86_64, nr("fsopen"), nil, retEPERM},
		{"ptrace", def, auditArchX86_64, nr("ptrace"), nil, retEPERM},
		{"socket(AF_UNIX)", def, auditArchX86_64, nr("socket"), []uint64{unix.AF_UNIX}, retAllow},
		{"socket(AF_INET)", def, auditArchX86_64, nr("socket"), []uint64{unix.AF_INET}, retAllow},
		{"socket(AF_INET6)", def, auditArchX86_64, nr("socket"), []uint64{unix.AF_INET6}, retAllow},
		{"socket(AF_NETLINK)", def, auditArchX86_64, nr("socket"), []uint64{unix.AF_NETLINK}, retEPERM},
		{"socket(AF_ALG)", def, auditArchX86_64, nr("socket"), []uint64{unix.AF_ALG}, retEPERM},
		{"socket(AF_PACKET)", def, auditArchX86_64, nr("socket"), []uint64{unix.AF_PACKET}, retEPERM},
		{"socket(AF_INET in the high word too)", def, auditArchX86_64, nr("socket"), []uint64{1<<32 | unix.AF_INET}, retEPERM},
		{"socketpair(AF_UNIX)", def, auditArchX86_64, nr("socketpair"), []uint64{unix.AF_UNIX}, retAllow},
		{"socketpair(AF_INET)", def, auditArchX86_64, nr("socketpair"), []uint64{unix.AF_INET}, retEPERM},
		{"personality(0xffffffff): read it", def, auditArchX86_64, nr("personality"), []uint64{0xffffffff}, retAllow},
		{"personality(PER_LINUX)", def, auditArchX86_64, nr("personality"), []uint64{0}, retAllow},
		{"personality(ADDR_NO_RANDOMIZE)", def, auditArchX86_64, nr("personality"), []uint64{0x0040000}, retEPERM},
		{"memfd_create", def, auditArchX86_64, nr("memfd_create"), nil, retEPERM},
		{"memfd_create, written executables allowed", written, auditArchX86_64, nr("memfd_create"), nil, retAllow},
		{"memfd_secret, written executables allowed", written, auditArchX86_64, nr("memfd_secret"), nil, retEPERM},
		{"a number past every table", def, auditArchX86_64, 1000, nil, retEPERM},
		{"x32 read", def, auditArchX86_64, 0x40000000 | nr("read"), nil, retENOSYS},
		{"x32 io_uring_setup", def, auditArchX86_64, 0x40000000 | nr("io_uring_setup"), nil, retENOSYS},
		// i386's number 3 is read, and 5 open: the x86_64 list must not
		// let them through under the other ABI.
		{"i386 read (int 0x80)", def, auditArchI386, 3, nil, retEPERM},
		{"i386 open (int 0x80)", def, auditArchI386, 5, nil, retEPERM},
		{"aarch64 on an x86_64 filter", def, auditArchAARCH64, nr("read"), nil, retEPERM},
	} {
		if got := decide(t, tc.prog, tc.arch, tc.nr, tc.args...); got != tc.want {
			t.Errorf("%s: filter returns %#x, want %#x", tc.name, got, tc.want)
		}
	}
}

// Every name the profile lists is a system call of x86_64 or aarch64 (a
// typo would be skipped silently on both), and names listed once.
func TestProfileNamesAreSyscalls(t *testing.T) {
	seen := map[string]bool{}
	for _, f := range Families(Options{AllowWrittenExecutables: true}) {
		if f.Why == "" {
			t.Errorf("family %s says nothing of why it is allowed", f.Name)
		}
		names := slices.Clone(f.Calls)
		for _, r := range f.Rules {
			names = append(names, r.Call)
		}
		for _, n := range names {
			_, x86 := arch.X86_64.SyscallNames[n]
			_, arm := arch.AARCH64.SyscallNames[n]
			if !x86 && !arm {
				t.Errorf("family %s: %q is no system call of x86_64 or aarch64", f.Name, n)
			}
		}
		for _, n := range f.Calls {
			if seen[n] {
				t.Errorf("%q is listed twice", n)
			}
			seen[n] = true
		}
	}
	// The assembled program of each option holds together (duplicates or a
	// call both unconditional and conditional fail here).
	for _, o := range []Options{{}, {AllowWrittenExecutables: true}} {
		assemble(t, o)
	}
}

// What the documentation says is refused is not in the allowlist.
func TestRefusedAreNotAllowed(t *testing.T) {
	allowed := map[string]bool{}
	for _, f := range Families(Options{}) {
		for _, c := range f.Calls {
			allowed[c] = true
		}
	}
	for _, r := range Refused {
		for _, n := range strings.Fields(r.Family) {
			if strings.ContainsAny(n, "(.") {
				continue // an argument rule, checked in TestFilterDecisions
			}
			if _, ok := arch.X86_64.SyscallNames[n]; !ok {
				if _, ok := arch.AARCH64.SyscallNames[n]; !ok {
					t.Errorf("Refused names %q, no system call", n)
				}
			}
			if allowed[n] {
				t.Errorf("%s is documented as refused (%s) but allowed", n, r.Why)
			}
		}
	}
}

// The hash is the SHA-256 of the canonical text, short, and changes with
// the option that changes the list.
func TestHash(t *testing.T) {
	def, written := Hash(Options{}), Hash(Options{AllowWrittenExecutables: true})
	sum := sha256.Sum256([]byte(Canonical(Options{})))
	if def != hex.EncodeToString(sum[:])[:16] {
		t.Errorf("Hash = %s, want the first 16 hex digits of sha256(Canonical)", def)
	}
	if def == written {
		t.Error("allowing written executables does not change the profile's hash")
	}
	if !strings.Contains(Canonical(Options{}), "allow clone arg0 BitsNotSet 0x7e020000\n") {
		t.Errorf("the canonical text lacks clone's rule:\n%s", Canonical(Options{}))
	}
	if Hash(Options{}) != def {
		t.Error("the hash is not stable")
	}
}
