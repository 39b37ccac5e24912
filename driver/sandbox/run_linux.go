package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/shoenig/go-landlock"
	"golang.org/x/sys/unix"

	"github.com/modelnodes/modelnodes/driver/cgroup"
)

// Main runs a hidden subcommand if args (os.Args[1:]) name one, and never
// returns then; otherwise it returns false.
func Main(args []string) bool {
	if len(args) < 4 || (args[0] != CmdStage1 && args[0] != CmdStage2) || args[2] != "--" {
		return false
	}
	var err error
	if args[0] == CmdStage1 {
		err = stage1(args[1], args[3:])
	} else {
		err = stage2(args[1], args[3:])
	}
	fmt.Fprintf(os.Stderr, "modelbox %s: %v\n", args[0], err)
	os.Exit(126)
	return true
}

// stage1 joins the worker cgroup, then runs stage 2 in new namespaces and
// exits as it does.
func stage1(specFile string, argv []string) error {
	spec, err := Load(specFile)
	if err != nil {
		return err
	}
	if len(spec.WorkerCgroup) > 0 {
		if err := cgroup.JoinWorker(spec.WorkerCgroup, os.Getpid()); err != nil {
			return fmt.Errorf("join the worker cgroup: %w", err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, append([]string{CmdStage2, specFile, "--"}, argv...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{os.NewFile(3, "worker-socket")}
	if spec.ListenInside != "" {
		cmd.ExtraFiles = append(cmd.ExtraFiles, os.NewFile(ListenerFD, "listener-socket"))
	}
	cmd.Env = []string{}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC |
			syscall.CLONE_NEWUTS | syscall.CLONE_NEWNET,
		Pdeathsig: syscall.SIGKILL,
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the sandbox: %w", err)
	}
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			os.Exit(128 + int(ws.Signal()))
		}
		os.Exit(ee.ExitCode())
	}
	if err != nil {
		return err
	}
	os.Exit(0)
	return nil
}

// stage2 runs as pid 1 of the new namespaces, still root: it builds the
// private root, confines itself and executes the worker.
func stage2(specFile string, argv []string) error {
	// no_new_privs and Landlock bind the calling thread, and exec keeps the
	// calling thread's: do all of it on one thread.
	runtime.LockOSThread()
	spec, err := Load(specFile)
	if err != nil {
		return err
	}
	if err := buildRoot(spec); err != nil {
		return err
	}
	if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	if err := loopbackUp(); err != nil {
		return err
	}
	if spec.ListenInside != "" {
		if err := listenAndSend(spec.ListenInside); err != nil {
			return err
		}
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		return fmt.Errorf("disable core dumps: %w", err)
	}
	if err := restrictMemfdExec(spec); err != nil {
		return err
	}
	if err := applyLandlock(spec); err != nil {
		return err
	}
	if err := dropPrivileges(spec.UID, spec.GID); err != nil {
		return err
	}
	wd := spec.WorkDir
	if wd == "" {
		wd = "/tmp"
	}
	if err := os.Chdir(wd); err != nil {
		return fmt.Errorf("chdir %s: %w", wd, err)
	}
	env := append(append([]string{}, spec.Env...), "MODELNODES_WORKER_FD=3")
	if !hasVar(env, "PATH") {
		env = append(env, "PATH=/usr/local/bin:/usr/bin:/bin")
	}
	if !hasVar(env, "HOME") {
		env = append(env, "HOME=/tmp")
	}
	prog, err := lookPath(argv[0], env)
	if err != nil {
		return err
	}
	if err := installSeccomp(spec); err != nil {
		return err
	}
	if err := closeInherited(); err != nil {
		return err
	}
	return fmt.Errorf("exec %s: %w", prog, unix.Exec(prog, argv, env))
}

// closeRangeCloexec is CLOSE_RANGE_CLOEXEC (linux/close_range.h).
const closeRangeCloexec = 1 << 2

// closeInherited marks every descriptor but stdio and the worker's socket
// (fd 3) close-on-exec, so the worker starts with those four and nothing
// else. Go sets O_CLOEXEC on what it opens but never closes what a process
// inherited: a descriptor the runner, the driver or Nomad left open without
// it (a TLS key, a state file, a socket) would otherwise reach model code.
func closeInherited() error {
	err := unix.CloseRange(4, ^uint(0), closeRangeCloexec)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("close_range: %w", err)
	}
	// Before Linux 5.11: one by one, from the sandbox's own /proc.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list inherited descriptors: %w", err)
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 3 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
				return fmt.Errorf("close-on-exec fd %d: %w", fd, err)
			}
		}
	}
	return nil
}

func hasVar(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

// lookPath resolves prog against the worker's PATH, inside the sandbox.
func lookPath(prog string, env []string) (string, error) {
	if strings.Contains(prog, "/") {
		return prog, nil
	}
	for _, kv := range env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			for _, dir := range filepath.SplitList(p) {
				cand := filepath.Join(dir, prog)
				if fi, err := os.Stat(cand); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
					return cand, nil
				}
			}
		}
	}
	return "", fmt.Errorf("%s: not found in the sandbox's PATH", prog)
}

// buildRoot mounts a tmpfs on spec.Root, shows the listed host paths in it,
// adds /dev, /tmp, /scratch and /proc, and pivots into it.
func buildRoot(spec *Spec) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	root := spec.Root
	if err := unix.Mount("modelbox", root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=16m"); err != nil {
		return fmt.Errorf("mount the sandbox root: %w", err)
	}
	// /tmp first: host paths that live under /tmp are shown on top of it.
	if spec.TmpDir != "" {
		if err := bind(root, spec.TmpDir, TmpDir, false, spec.AllowWrittenExecutables); err != nil {
			return err
		}
	} else if err := privateDisk(root, spec); err != nil {
		return err
	}
	for _, p := range spec.ReadOnly {
		if err := bind(root, p, p, true, true); err != nil {
			return err
		}
	}
	for _, b := range spec.Binds {
		if err := bind(root, b.Host, b.Inside, true, true); err != nil {
			return err
		}
	}
	for _, p := range spec.Writable {
		if err := bind(root, p, p, false, spec.AllowWrittenExecutables); err != nil {
			return err
		}
	}
	for _, m := range spec.Mounts {
		// Unlike a system path, a task's mount is never skipped: the
		// task asked for it.
		if _, err := os.Stat(m.Host); err != nil {
			return fmt.Errorf("mount %s at %s: %w", m.Host, m.Inside, err)
		}
		if err := bind(root, m.Host, m.Inside, m.ReadOnly, m.ReadOnly || spec.AllowWrittenExecutables); err != nil {
			return err
		}
	}
	if err := buildDev(root, spec.Devices); err != nil {
		return err
	}
	if spec.DevShmBytes > 0 {
		shm := fmt.Sprintf("mode=1777,size=%d", spec.DevShmBytes)
		if err := mkdirMount(root, "/dev/shm", "tmpfs", shm, !spec.AllowWrittenExecutables); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "proc"), 0o555); err != nil {
		return err
	}
	old := filepath.Join(root, ".old-root")
	if err := os.MkdirAll(old, 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(root, old); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.old-root", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the host root: %w", err)
	}
	if err := os.Remove("/.old-root"); err != nil {
		return err
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	// Nothing may be created at the top of the root.
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("make the sandbox root read-only: %w", err)
	}
	return nil
}

// bind shows host path src at dst inside root; without exec, noexec.
func bind(root, src, dst string, readOnly, exec bool) error {
	fi, err := os.Stat(src)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	target := filepath.Join(root, dst)
	if fi.IsDir() {
		err = os.MkdirAll(target, 0o755)
	} else {
		if err = os.MkdirAll(filepath.Dir(target), 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				err = f.Close()
			}
		}
	}
	if err != nil {
		return fmt.Errorf("mount point for %s: %w", dst, err)
	}
	if err := unix.Mount(src, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	if err := restrictTree(target, readOnly, !exec, true); err != nil {
		return fmt.Errorf("remount %s: %w", dst, err)
	}
	return nil
}

// privateDisk gives the worker its writable places, /tmp and /scratch, on
// one tmpfs of spec.DiskBytes: what it writes is bounded (ENOSPC past the
// size), counted in its cgroup's memory, and gone with the sandbox; nothing
// reaches the host's disk. The tmpfs is mounted aside, its two directories
// bound in place, and the aside mount detached, so it shows nowhere else.
func privateDisk(root string, spec *Spec) error {
	size := spec.DiskBytes
	if size == 0 {
		size = DefaultDiskBytes
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
	if !spec.AllowWrittenExecutables {
		flags |= unix.MS_NOEXEC
	}
	aside := filepath.Join(root, ".disk")
	if err := os.Mkdir(aside, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("modelbox-disk", aside, "tmpfs", flags, fmt.Sprintf("mode=0755,size=%d", size)); err != nil {
		return fmt.Errorf("mount the worker's disk: %w", err)
	}
	for _, d := range []string{TmpDir, ScratchDir} {
		src := filepath.Join(aside, d)
		if err := os.Mkdir(src, 0o700); err != nil {
			return err
		}
		if err := os.Chown(src, spec.UID, spec.GID); err != nil {
			return err
		}
		target := filepath.Join(root, d)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind the worker's %s: %w", d, err)
		}
	}
	if err := unix.Unmount(aside, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the worker's disk: %w", err)
	}
	return os.Remove(aside)
}

// restrictTree makes the mount at target and every mount below it nosuid,
// nodev, with readOnly read-only and with noexec noexec. A recursive bind brings the host's
// submounts along (a tmpfs or a volume mounted inside a read-only path), and
// a plain remount changes only the top one: the worker could write to the
// others. mount_setattr(AT_RECURSIVE) (Linux 5.12) does the whole tree in
// one call; older kernels get every mount of the tree, from mountinfo,
// remounted one by one.
func restrictTree(target string, readOnly, noexec, useSetattr bool) error {
	if useSetattr {
		attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
		if readOnly {
			attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
		}
		if noexec {
			attr.Attr_set |= unix.MOUNT_ATTR_NOEXEC
		}
		err := unix.MountSetattr(unix.AT_FDCWD, target, unix.AT_RECURSIVE, attr)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("mount_setattr: %w", err)
		}
	}
	mounts, err := mountsUnder(target)
	if err != nil {
		return err
	}
	for _, m := range mounts {
		flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_NOSUID | unix.MS_NODEV)
		if readOnly || m.readOnly {
			flags |= unix.MS_RDONLY
		}
		if noexec || m.noexec {
			flags |= unix.MS_NOEXEC
		}
		if err := unix.Mount("", m.path, "", flags, ""); err != nil {
			return fmt.Errorf("remount %s: %w", m.path, err)
		}
	}
	return nil
}

type mountPoint struct {
	path             string
	readOnly, noexec bool
}

// mountsUnder lists target and the mounts below it, parents before
// children, from this thread's mountinfo (its mount namespace).
func mountsUnder(target string) ([]mountPoint, error) {
	b, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		return nil, err
	}
	target = filepath.Clean(target)
	var out []mountPoint
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		p := unescapeMountinfo(f[4])
		if p != target && !strings.HasPrefix(p, target+"/") {
			continue
		}
		opts := "," + f[5] + ","
		out = append(out, mountPoint{path: p, readOnly: strings.Contains(opts, ",ro,"), noexec: strings.Contains(opts, ",noexec,")})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s is not in /proc/thread-self/mountinfo", target)
	}
	return out, nil
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mkdirMount mounts a new fstype at dst inside root, nosuid, nodev and,
// with noexec, noexec.
func mkdirMount(root, dst, fstype, data string, noexec bool) error {
	target := filepath.Join(root, dst)
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
	if noexec {
		flags |= unix.MS_NOEXEC
	}
	if err := unix.Mount(fstype, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, dst, err)
	}
	return nil
}

// buildDev gives the worker the harmless device nodes, the task's reserved
// devices, and nothing else.
func buildDev(root string, devices []Device) error {
	if err := mkdirMount(root, "/dev", "tmpfs", "mode=0755,size=64k", true); err != nil {
		return err
	}
	for _, d := range defaultDevices {
		target := filepath.Join(root, "dev", d)
		f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o666)
		if err != nil {
			return err
		}
		_ = f.Close()
		if err := unix.Mount("/dev/"+d, target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", d, err)
		}
	}
	for name, to := range devLinks {
		if err := os.Symlink(to, filepath.Join(root, "dev", name)); err != nil {
			return err
		}
	}
	for _, d := range devices {
		if err := bindDevice(root, d); err != nil {
			return err
		}
	}
	return nil
}

// bindDevice shows a reserved device node at its place in /dev. The bind
// is remounted nosuid and noexec but not nodev, whatever the host's mount
// of the node says (a node made in a nodev directory still opens): what the
// worker may open is the device cgroup's to say, by device number.
func bindDevice(root string, d Device) error {
	var st unix.Stat_t
	if err := unix.Stat(d.Host, &st); err != nil {
		return fmt.Errorf("device %s: %w", d.Host, err)
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFCHR && t != unix.S_IFBLK {
		return fmt.Errorf("device %s is not a device node", d.Host)
	}
	target := filepath.Join(root, d.Inside)
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return fmt.Errorf("device %s: %w", d.Inside, err)
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("device %s: %w", d.Inside, err)
	}
	_ = f.Close()
	if err := unix.Mount(d.Host, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind device %s: %w", d.Host, err)
	}
	if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("remount device %s: %w", d.Inside, err)
	}
	return nil
}

// loopbackUp brings up lo, the only interface of the new network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up loopback: %w", err)
	}
	return nil
}

// applyLandlock allows reading everywhere the root shows; executing only
// from the read-only paths and binds (system paths, interpreters, the model,
// its environment); writing only in /tmp, /scratch, the writable paths and
// the harmless devices, and executing there only with AllowWrittenExecutables.
func applyLandlock(spec *Spec) error {
	if spec.Landlock == LandlockOff {
		return nil
	}
	write := "rwc"
	if spec.AllowWrittenExecutables {
		write = "rwcx"
	}
	paths := []*landlock.Path{landlock.Dir("/", "r"), landlock.Dir("/dev", "rw")}
	for _, p := range append([]string{TmpDir, ScratchDir}, spec.Writable...) {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			paths = append(paths, landlock.Dir(p, write))
		}
	}
	if spec.DevShmBytes > 0 {
		paths = append(paths, landlock.Dir("/dev/shm", write))
	}
	if len(spec.Devices) > 0 {
		// CUDA's initialisation writes the worker's own /proc/self
		// files (cuInit fails with CUDA_ERROR_OPERATING_SYSTEM without
		// it). Taken here, /proc/self is pid 1's directory in the
		// sandbox's own /proc: the worker's, which exec keeps.
		paths = append(paths, landlock.Dir("/proc/self", "rw"))
	}
	exec := append([]string{}, spec.ReadOnly...)
	for _, b := range spec.Binds {
		exec = append(exec, b.Inside)
	}
	for _, m := range spec.Mounts {
		if m.ReadOnly {
			exec = append(exec, m.Inside)
		} else if fi, err := os.Stat(m.Inside); err == nil && fi.IsDir() {
			paths = append(paths, landlock.Dir(m.Inside, write))
		} else if err == nil {
			paths = append(paths, landlock.File(m.Inside, write))
		}
	}
	for _, p := range exec {
		fi, err := os.Stat(p)
		switch {
		case err != nil:
			continue // a missing read-only path is not shown
		case fi.IsDir():
			paths = append(paths, landlock.Dir(p, "rx"))
		default:
			paths = append(paths, landlock.File(p, "rx"))
		}
	}
	safety := landlock.OnlyAvailable
	if spec.Landlock == LandlockRequired {
		safety = landlock.Mandatory
	}
	if err := landlock.New(paths...).Lock(safety); err != nil {
		return fmt.Errorf("landlock: %w", err)
	}
	return nil
}

// dropPrivileges sets no_new_privs, empties the capability bounding set and
// becomes uid:gid with no supplementary groups. Setting a non-zero uid then
// clears the permitted and effective capabilities.
func dropPrivileges(uid, gid int) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	for c := 0; c <= unix.CAP_LAST_CAP; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d: %w", c, err)
		}
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setresgid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresuid %d: %w", uid, err)
	}
	return nil
}
