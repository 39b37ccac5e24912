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
	hostPort, secret, modelDir, scratch, submount := args[0], args[1], args[2], args[3], args[4]
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
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		r.Interfaces = append(r.Interfaces, i.Name)
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
	_ = json.NewEncoder(os.Stdout).Encode(r)
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
	scratch := mkdir(t, base, "scratch", 0o700)
	tmp := mkdir(t, base, "tmp", 0o700)
	for _, d := range []string{scratch, tmp} {
		if err := os.Chown(d, 64123, 64123); err != nil {
			t.Fatal(err)
		}
	}
	root := mkdir(t, base, "root", 0o700)
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

	group, err := cgroup.Create(fmt.Sprintf("sandbox-test-%d", time.Now().UnixNano()), cgroup.Limits{WorkerPids: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = group.Kill(time.Second); _ = group.Destroy() }()

	spec := &Spec{
		UID: 64123, GID: 64123, Hostname: "model", Root: root,
		ReadOnly:     []string{"/usr", "/lib", "/lib64", "/bin", filepath.Dir(self), modelDir, roTree},
		Writable:     []string{scratch},
		TmpDir:       tmp,
		WorkerCgroup: group.State().Worker,
		Landlock:     landlockMode(),
		Env:          []string{"LANG=C.UTF-8"},
	}
	if err := spec.Write(specFile); err != nil {
		t.Fatal(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	sock := os.NewFile(uintptr(fds[1]), "sock")
	defer os.NewFile(uintptr(fds[0]), "local").Close()

	argv := append(Command(self, specFile), self, "probe", lis.Addr().String(), secret, modelDir, scratch, submount)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.ExtraFiles = []*os.File{sock}
	cmd.Env = append(os.Environ(), "VAULT_TOKEN=s.must-not-leak")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sandboxed probe: %v\n%s\n%s", err, out, stderr.String())
	}
	var r probeReport
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("probe output %q: %v", out, err)
	}
	t.Logf("probe saw: %+v", r)

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
	check("can read the model", r.ReadModel == "ok")
	check("can write /tmp and scratch", r.WriteTmp == "ok" && r.WriteScratch == "ok")
	check("gets the worker socket as fd 3", r.HasFD3)
	check("cannot write to a mount inside a read-only path", strings.Contains(r.WriteSubmount, "read-only file system"))
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
					if err := restrictTree(dst, true, useSetattr); err != nil {
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
