//go:build e2e

package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoenig/go-landlock"
	"golang.org/x/sys/unix"

	"github.com/modelnodes/modelnodes/driver/cgroup"
)

// The test binary is also the plugin binary (it runs the hidden
// subcommands) and the probe that runs inside the sandbox.
func TestMain(m *testing.M) {
	if Main(os.Args[1:]) {
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		probe(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "syscalls" {
		syscallProbe()
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "devprobe" {
		devProbe()
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "gomodel" {
		goEchoModel()
		return
	}
	os.Exit(m.Run())
}

// probeReport is what the probe saw from inside.
type probeReport struct {
	UID, GID        int
	CapEff          string
	Hostname        string
	Interfaces      []string
	PIDs            []string
	ConnectLoopback string // to a port the host listens on
	ConnectOutside  string
	ReadSecret      string
	WriteModel      string
	WriteTmp        string
	WriteScratch    string
	ReadModel       string
	Env             []string
	HasFD3          bool
	WriteSubmount   string
	// ExecWritten and MmapExecWritten try to run code the worker wrote
	// (/tmp and /scratch): a copy of a system binary, executed and mapped
	// executable. Want EACCES / EPERM unless AllowWrittenExecutables.
	ExecTmp, ExecScratch, MmapExecTmp string
	// ExecSystem runs a system binary: always allowed.
	ExecSystem string
	// DiskWritten is how much the worker got onto /tmp and /scratch
	// before a write failed, and FillErr that failure.
	DiskWritten int64
	FillErr     string
	// HostPath is a line of the worker's mountinfo whose mount point is in
	// the host tree the test built the sandbox from ("" when none is).
	HostPath string
	// FDs maps every open descriptor (but the one listing them) to what
	// it points at.
	FDs map[string]string
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func probe(args []string) {
	hostPort, secret, modelDir, scratch, submount, hostBase := args[0], args[1], args[2], args[3], args[4], args[5]
	// Descriptors first, before the probe opens any of its own.
	r := probeReport{UID: os.Getuid(), GID: os.Getgid(), FDs: map[string]string{}}
	if d, err := os.Open("/proc/self/fd"); err == nil {
		names, _ := d.Readdirnames(-1)
		for _, n := range names {
			if n != strconv.Itoa(int(d.Fd())) {
				r.FDs[n], _ = os.Readlink("/proc/self/fd/" + n)
			}
		}
		_ = d.Close()
	}
	status, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			r.CapEff = strings.TrimSpace(v)
		}
	}
	r.Hostname, _ = os.Hostname()
	// The namespace's interfaces, from /proc: the seccomp filter refuses
	// the netlink socket net.Interfaces would list them with.
	dev, _ := os.ReadFile("/proc/net/dev")
	for _, l := range strings.Split(string(dev), "\n") {
		if name, _, ok := strings.Cut(l, ":"); ok && !strings.Contains(name, "|") {
			r.Interfaces = append(r.Interfaces, strings.TrimSpace(name))
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name()[0] >= '0' && e.Name()[0] <= '9' {
			r.PIDs = append(r.PIDs, e.Name())
		}
	}
	_, err := net.DialTimeout("tcp", hostPort, time.Second)
	r.ConnectLoopback = errText(err)
	// TEST-NET-1 (RFC 5737) is never routed: with no route the connect fails
	// in the kernel before any packet exists.
	_, err = net.DialTimeout("tcp", "192.0.2.1:80", time.Second)
	r.ConnectOutside = errText(err)
	_, err = os.ReadFile(secret)
	r.ReadSecret = errText(err)
	r.WriteModel = errText(os.WriteFile(filepath.Join(modelDir, "evil.py"), []byte("x"), 0o644))
	r.WriteTmp = errText(os.WriteFile("/tmp/ok", []byte("x"), 0o644))
	r.WriteScratch = errText(os.WriteFile(filepath.Join(scratch, "ok"), []byte("x"), 0o644))
	_, err = os.ReadFile(filepath.Join(modelDir, "main.py"))
	r.ReadModel = errText(err)
	r.WriteSubmount = errText(os.WriteFile(filepath.Join(submount, "evil"), []byte("x"), 0o644))
	r.Env = os.Environ()
	_, err = os.Stat("/proc/self/fd/3")
	r.HasFD3 = err == nil
	r.ExecTmp, r.MmapExecTmp = execWritten("/tmp/written")
	r.ExecScratch, _ = execWritten(filepath.Join(scratch, "written"))
	r.ExecSystem = errText(exec.Command("/bin/true").Run())
	r.DiskWritten, r.FillErr = fill("/tmp/fill", filepath.Join(scratch, "fill"))
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		// Field 5 is the mount point. (Field 4, a bind's root within its
		// file system, names the source's path there: docs/driver.md.)
		for _, l := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(l); len(f) > 4 && strings.Contains(f[4], hostBase) {
				r.HostPath = l
			}
		}
	}
	_ = json.NewEncoder(os.Stdout).Encode(r)
}

// execWritten copies /bin/true to path (what a model would write), then
// executes it and maps it executable.
func execWritten(path string) (execErr, mmapErr string) {
	b, err := os.ReadFile("/bin/true")
	if err == nil {
		err = os.WriteFile(path, b, 0o755)
	}
	if err != nil {
		return "write: " + err.Error(), "write: " + err.Error()
	}
	execErr = errText(exec.Command(path).Run())
	f, err := os.Open(path)
	if err != nil {
		return execErr, "open: " + err.Error()
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE)
	if err == nil {
		_ = unix.Munmap(m)
	}
	return execErr, errText(err)
}

// fill writes 1 MiB chunks to the given files in turn until a write fails
// (or 64 MiB, far past the test's disk), and says how much it wrote.
func fill(paths ...string) (int64, string) {
	chunk := make([]byte, 1<<20)
	var n int64
	var files []*os.File
	defer func() {
		for _, f := range files {
			_ = f.Close()
		}
	}()
	for _, p := range paths {
		f, err := os.Create(p)
		if err != nil {
			return n, err.Error()
		}
		files = append(files, f)
	}
	for i := 0; n < 64<<20; i++ {
		w, err := files[i%len(files)].Write(chunk)
		n += int64(w)
		if err != nil {
			return n, err.Error()
		}
	}
	return n, "no error"
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the sandbox needs root (namespaces, mounts, cgroups, setuid); run the tests as root (CI does)")
	}
}

func TestSandboxConfinesTheWorker(t *testing.T) {
	requireRoot(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	modelDir := mkdir(t, base, "model", 0o755)
	if err := os.WriteFile(filepath.Join(modelDir, "main.py"), []byte("print(1)"), 0o644); err != nil {
		t.Fatal(err)
	}
	secrets := mkdir(t, base, "secrets", 0o700)
	secret := filepath.Join(secrets, "runner.key")
	if err := os.WriteFile(secret, []byte("PRIVATE KEY"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := mkdir(t, base, "root", 0o700)
	const diskBytes = 4 << 20
	specFile := filepath.Join(base, "spec.json")

	// A read-only path with a writable mount inside it (a tmpfs anyone may
	// write to): the bind brings it along, and it must be read-only too.
	roTree := mkdir(t, base, "ro-tree", 0o755)
	submount := mkdir(t, roTree, "sub", 0o755)
	if err := unix.Mount("tmpfs", submount, "tmpfs", 0, "mode=1777,size=1m"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Unmount(submount, unix.MNT_DETACH) }()

	// A descriptor the runner holds without O_CLOEXEC (here the key itself):
	// it must not reach the worker.
	leaked, err := unix.Open(secret, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(leaked)

	// Something listening on the host's loopback that the worker must not reach.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()

	hostEntries, err := os.ReadDir(base)
	if err != nil {
		t.Fatal(err)
	}
	group, err := cgroup.Create(fmt.Sprintf("sandbox-test-%d", time.Now().UnixNano()), cgroup.Limits{WorkerPids: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = group.Kill(time.Second); _ = group.Destroy() }()

	spec := &Spec{
		UID: 64123, GID: 64123, Hostname: "model", Root: root,
		ReadOnly:     []string{"/usr", "/lib", "/lib64", "/bin", filepath.Dir(self)},
		Binds:        []Bind{{Host: modelDir, Inside: "/model"}, {Host: roTree, Inside: "/ro-tree"}},
		DiskBytes:    diskBytes,
		WorkerCgroup: group.State().Worker,
		Landlock:     landlockMode(),
		Env:          []string{"LANG=C.UTF-8"},
	}
	run := func(t *testing.T, spec *Spec) probeReport {
		t.Helper()
		var r probeReport
		runInSandbox(t, spec, specFile, []string{"VAULT_TOKEN=s.must-not-leak"}, &r,
			"probe", lis.Addr().String(), secret, "/model", ScratchDir, "/ro-tree/sub", base)
		t.Logf("probe saw: %+v", r)
		return r
	}
	r := run(t, spec)

	check := func(what string, ok bool) {
		t.Helper()
		if !ok {
			t.Errorf("%s (probe: %+v)", what, r)
		}
	}
	check("runs as the unprivileged uid/gid", r.UID == 64123 && r.GID == 64123)
	check("holds no capability", r.CapEff == "0000000000000000")
	check("has its own hostname", r.Hostname == "model")
	check("sees only the loopback interface", len(r.Interfaces) == 1 && r.Interfaces[0] == "lo")
	check("sees only its own pid namespace", len(r.PIDs) <= 2)
	check("cannot reach the host's loopback", strings.Contains(r.ConnectLoopback, "connection refused"))
	check("cannot reach outside (no route, nothing sent)", strings.Contains(r.ConnectOutside, "network is unreachable"))
	check("cannot see the secrets dir", strings.Contains(r.ReadSecret, "no such file"))
	check("cannot change the model", strings.Contains(r.WriteModel, "read-only file system"))
	check("can read the model at /model", r.ReadModel == "ok")
	check("can write /tmp and scratch", r.WriteTmp == "ok" && r.WriteScratch == "ok")
	check("gets the worker socket as fd 3", r.HasFD3)
	check("cannot write to a mount inside a read-only path", strings.Contains(r.WriteSubmount, "read-only file system"))
	check("cannot execute what it wrote to /tmp", strings.Contains(r.ExecTmp, "permission denied"))
	check("cannot execute what it wrote to /scratch", strings.Contains(r.ExecScratch, "permission denied"))
	check("cannot map what it wrote executable", strings.Contains(r.MmapExecTmp, "operation not permitted"))
	check("can execute system binaries", r.ExecSystem == "ok")
	check("fills its disk, then gets ENOSPC", strings.Contains(r.FillErr, "no space left on device"))
	check(fmt.Sprintf("writes at most its disk (%d of %d bytes)", r.DiskWritten, diskBytes), r.DiskWritten <= diskBytes && r.DiskWritten >= diskBytes/2)
	check("has no mount point at a host path", r.HostPath == "")
	// The probe's own Go runtime opens its poller (eventpoll, eventfd)
	// before it lists: those are its, not inherited.
	var open []string
	for fd, target := range r.FDs {
		if target != "anon_inode:[eventpoll]" && target != "anon_inode:[eventfd]" {
			open = append(open, fd)
		}
	}
	slices.Sort(open)
	check(fmt.Sprintf("inherits only stdio and its socket (fds %v)", open), slices.Equal(open, []string{"0", "1", "2", "3"}) && strings.HasPrefix(r.FDs["3"], "socket:"))
	check("inherits none of the runner's environment", !strings.Contains(strings.Join(r.Env, " "), "VAULT_TOKEN"))
	// Its 4 MiB went to its own tmpfs: the host's tree holds only what the
	// test made (and the spec).
	if ents, _ := os.ReadDir(base); len(ents) != len(hostEntries)+1 {
		t.Errorf("the worker's writes reached the host: %s holds %d entries, %d before", base, len(ents), len(hostEntries))
	}

	// allow_written_executables: the same sandbox, written files may run.
	t.Run("AllowWrittenExecutables", func(t *testing.T) {
		spec.AllowWrittenExecutables = true
		r := run(t, spec)
		if r.ExecTmp != "ok" || r.ExecScratch != "ok" || r.MmapExecTmp != "ok" {
			t.Errorf("with AllowWrittenExecutables the worker could not run what it wrote: exec /tmp %q, /scratch %q, mmap %q", r.ExecTmp, r.ExecScratch, r.MmapExecTmp)
		}
	})
}

// runInSandbox writes spec to specFile, runs this test binary with args in
// the sandbox of spec, as the runner starts a worker (its socket as fd 3,
// env added to the runner's environment), and decodes its JSON output into
// out.
func runInSandbox(t *testing.T, spec *Spec, specFile string, env []string, out any, args ...string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.Write(specFile); err != nil {
		t.Fatal(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	sock := os.NewFile(uintptr(fds[1]), "sock")
	defer sock.Close()
	defer os.NewFile(uintptr(fds[0]), "local").Close()
	argv := append(Command(self, specFile), append([]string{self}, args...)...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.ExtraFiles = []*os.File{sock}
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("sandboxed %s: %v\n%s\n%s", args[0], err, stdout, stderr.String())
	}
	if err := json.Unmarshal(stdout, out); err != nil {
		t.Fatalf("%s output %q: %v", args[0], stdout, err)
	}
}

// landlockMode demands Landlock where the kernel has it, so the test proves
// the sandbox starts with it applied.
func landlockMode() string {
	if landlock.Available() {
		return LandlockRequired
	}
	return LandlockBestEffort
}

func mkdir(t *testing.T, base, name string, mode os.FileMode) string {
	p := filepath.Join(base, name)
	if err := os.Mkdir(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// restrictTree makes a bind's submounts read-only too, with
// mount_setattr(AT_RECURSIVE) and with the fallback for kernels before 5.12.
func TestRestrictTreeReachesSubmounts(t *testing.T) {
	requireRoot(t)
	for _, useSetattr := range []bool{true, false} {
		t.Run(fmt.Sprintf("mount_setattr=%v", useSetattr), func(t *testing.T) {
			base := t.TempDir()
			src := mkdir(t, base, "src", 0o755)
			sub := mkdir(t, src, "sub", 0o755)
			dst := mkdir(t, base, "dst", 0o755)
			errc := make(chan error, 1)
			go func() {
				// A private mount namespace on a thread that is never given
				// back to the runtime (it exits with the goroutine).
				runtime.LockOSThread()
				errc <- func() error {
					if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
						return err
					}
					if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
						return err
					}
					if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
						return err
					}
					if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
						return err
					}
					if err := restrictTree(dst, true, false, useSetattr); err != nil {
						return fmt.Errorf("restrictTree: %w", err)
					}
					for _, p := range []string{filepath.Join(dst, "top"), filepath.Join(dst, "sub", "inner")} {
						if err := os.WriteFile(p, []byte("x"), 0o644); !errors.Is(err, unix.EROFS) {
							return fmt.Errorf("writing %s: %v, want EROFS", p, err)
						}
					}
					// The source stays writable: only the sandbox's view changed.
					return os.WriteFile(filepath.Join(sub, "ok"), []byte("x"), 0o644)
				}()
			}()
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		})
	}
}
