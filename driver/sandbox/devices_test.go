//go:build e2e

package sandbox

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/modelnodes/modelnodes/driver/cgroup"
	"github.com/modelnodes/modelnodes/internal/testing/testpty"
)

// devReport is what devProbe saw from inside.
type devReport struct {
	// Dev lists /dev, recursively, as paths.
	Dev []string
	// Open maps each node the probe opened ("path mode") to "ok" or the
	// error; Wrote is what it wrote through /dev/testdev0.
	Open map[string]string
	// WriteMount, WriteReadOnlyMount, ReadReadOnlyMount and ExecReadOnlyMount
	// try the task's mounts; WriteProcSelf opens /proc/self/comm to write.
	WriteMount, WriteReadOnlyMount, ReadReadOnlyMount, WriteProcSelf string
}

// devProbe runs in the sandbox: it lists /dev, opens each node there (and
// writes a line through the reserved one) and tries the task's mounts.
func devProbe() {
	r := devReport{Open: map[string]string{}}
	_ = filepath.WalkDir("/dev", func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != "/dev" {
			r.Dev = append(r.Dev, p)
		}
		return nil
	})
	for _, p := range []string{"/dev/null", "/dev/testdev0", "/dev/testdev1", "/dev/mknod-kmsg"} {
		f, err := os.OpenFile(p, os.O_WRONLY|unix.O_NOCTTY, 0)
		r.Open[p+" w"] = errText(err)
		if err == nil {
			if p == "/dev/testdev0" {
				_, err = f.WriteString("through the reserved device\n")
				r.Open[p+" write"] = errText(err)
			}
			_ = f.Close()
		}
	}
	r.WriteMount = errText(os.WriteFile("/data/out", []byte("through the mount"), 0o644))
	r.WriteReadOnlyMount = errText(os.WriteFile("/ro/evil", []byte("x"), 0o644))
	_, err := os.ReadFile("/ro/weights")
	r.ReadReadOnlyMount = errText(err)
	f, err := os.OpenFile("/proc/self/comm", os.O_WRONLY, 0)
	r.WriteProcSelf = errText(err)
	if err == nil {
		_ = f.Close()
	}
	_ = json.NewEncoder(os.Stdout).Encode(r)
}

func devOf(t *testing.T, path string) cgroup.Device {
	t.Helper()
	major, minor := testpty.Numbers(t, path)
	return cgroup.Device{Type: 'c', Major: int64(major), Minor: int64(minor), Permissions: "rw"}
}

// A reserved device reaches the worker's /dev and works (the worker writes
// a line through a pty slave; the test reads it at the master), and the
// device cgroup refuses every device it was not given, even one whose node
// the sandbox shows (bound anyway) or that a node made with mknod names:
// on cgroup v1 here, on v2 in make test-v2's guest. Task mounts appear at
// their paths, read-only ones read-only.
func TestSandboxReservedDevices(t *testing.T) {
	requireRoot(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	// A private devpts instance: its ptys are harmless character devices
	// of their own numbers, and nothing of the host's terminals is used.
	pts := filepath.Join(base, "pts")
	testpty.Mount(t, pts)
	masterA, ptyA := testpty.Open(t, pts)
	_, slaveB := testpty.Open(t, pts)
	// The reserved node is seen through a nodev mount, as a node's
	// directory may be: the sandbox shows it usable anyway (the device
	// cgroup decides what opens).
	nodes := mkdir(t, base, "nodes", 0o755)
	slaveA := filepath.Join(nodes, "pty-a")
	if err := os.WriteFile(slaveA, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(ptyA, slaveA, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(slaveA, unix.MNT_DETACH) })
	if err := unix.Mount("", slaveA, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil {
		t.Fatal(err)
	}
	// A node of the test's own making for a device nobody reserved
	// (/dev/kmsg, 1:11), in a plain directory.
	kmsg := filepath.Join(nodes, "kmsg")
	if err := unix.Mknod(kmsg, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 11))); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(kmsg, 0o666); err != nil {
		t.Fatal(err)
	}
	data := mkdir(t, base, "data", 0o777)
	ro := mkdir(t, base, "ro", 0o755)
	if err := os.WriteFile(filepath.Join(ro, "weights"), []byte("w"), 0o644); err != nil {
		t.Fatal(err)
	}

	// Only pty A is the task's.
	group, err := cgroup.Create(fmt.Sprintf("sandbox-test-%d", time.Now().UnixNano()), cgroup.Limits{WorkerPids: 64, WorkerDevices: []cgroup.Device{devOf(t, slaveA)}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = group.Kill(time.Second); _ = group.Destroy() }()
	spec := &Spec{
		UID: 64123, GID: 64123, Hostname: "model", Root: mkdir(t, base, "root", 0o700),
		ReadOnly:     []string{"/usr", "/lib", "/lib64", "/bin", filepath.Dir(self)},
		WorkerCgroup: group.State().Worker,
		Landlock:     landlockMode(),
		Devices: []Device{
			{Host: slaveA, Inside: "/dev/testdev0"},
			{Host: slaveB, Inside: "/dev/testdev1"},
			{Host: kmsg, Inside: "/dev/mknod-kmsg"},
		},
		Mounts: []Mount{{Host: data, Inside: "/data"}, {Host: ro, Inside: "/ro", ReadOnly: true}},
	}
	specFile := filepath.Join(base, "spec.json")
	run := func(t *testing.T, spec *Spec) devReport {
		t.Helper()
		var r devReport
		runInSandbox(t, spec, specFile, nil, &r, "devprobe")
		return r
	}
	// The master's side: what the worker wrote through the reserved pty.
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 128)
		n, _ := masterA.Read(buf)
		got <- string(buf[:n])
	}()
	r := run(t, spec)

	want := []string{"/dev/fd", "/dev/full", "/dev/mknod-kmsg", "/dev/null", "/dev/random", "/dev/stderr", "/dev/stdin",
		"/dev/stdout", "/dev/testdev0", "/dev/testdev1", "/dev/urandom", "/dev/zero"}
	if slices.Sort(r.Dev); !slices.Equal(r.Dev, want) {
		t.Errorf("the worker's /dev holds %v, want %v", r.Dev, want)
	}
	for node, want := range map[string]string{
		"/dev/null w":         "ok",
		"/dev/testdev0 w":     "ok",
		"/dev/testdev0 write": "ok",
		// Shown, but not the task's: the cgroup refuses (EPERM).
		"/dev/testdev1 w":   "operation not permitted",
		"/dev/mknod-kmsg w": "operation not permitted",
	} {
		if !strings.Contains(r.Open[node], want) {
			t.Errorf("open %s: %q, want %q", node, r.Open[node], want)
		}
	}
	select {
	case s := <-got:
		if !strings.Contains(s, "through the reserved device") {
			t.Errorf("the reserved pty's master read %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Error("nothing came through the reserved pty")
	}
	if r.WriteMount != "ok" {
		t.Errorf("write to the writable mount: %s", r.WriteMount)
	}
	if b, err := os.ReadFile(filepath.Join(data, "out")); err != nil || string(b) != "through the mount" {
		t.Errorf("the host's side of the mount holds %q, %v", b, err)
	}
	if !strings.Contains(r.WriteReadOnlyMount, "read-only file system") || r.ReadReadOnlyMount != "ok" {
		t.Errorf("read-only mount: write %q, read %q; want refused, ok", r.WriteReadOnlyMount, r.ReadReadOnlyMount)
	}
	// CUDA writes its own /proc/self files: allowed with devices, and only
	// with them (where Landlock holds the rest of /proc read-only).
	if r.WriteProcSelf != "ok" {
		t.Errorf("a worker with devices cannot write its /proc/self/comm: %s", r.WriteProcSelf)
	}
	t.Run("without devices", func(t *testing.T) {
		if spec.Landlock != LandlockRequired {
			t.Skip("the kernel has no Landlock: nothing but file modes keeps /proc/self read-only")
		}
		spec := *spec
		spec.Devices = nil
		if r := run(t, &spec); !strings.Contains(r.WriteProcSelf, "permission denied") {
			t.Errorf("a worker without devices opened /proc/self/comm to write: %s", r.WriteProcSelf)
		}
	})
}
