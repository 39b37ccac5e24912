// Package testpty gives tests character devices of their own that are
// harmless to reserve, open and write: the ptys of a private devpts
// instance (needs root). A worker writes through a pty's slave and the test
// reads it at the master; each pty has its own device numbers, so a device
// cgroup can tell them apart.
package testpty

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Mount mounts a new devpts instance at dir, unmounted when t ends (after
// the cleanups registered later, such as a cluster's). Its ptys' slaves
// are made 0666.
func Mount(t testing.TB, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("devpts", dir, "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0666"); err != nil {
		t.Fatalf("mount a devpts instance: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
}

// Open opens a new pty of the instance mounted at dir and returns its
// master (closed when t ends) and the path of its slave, mode 0666.
func Open(t testing.TB, dir string) (*os.File, string) {
	t.Helper()
	m, err := os.OpenFile(filepath.Join(dir, "ptmx"), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave := filepath.Join(dir, fmt.Sprint(n))
	if err := os.Chmod(slave, 0o666); err != nil {
		t.Fatal(err)
	}
	return m, slave
}

// Numbers returns the major and minor numbers of the device node at path.
func Numbers(t testing.TB, path string) (major, minor uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return unix.Major(st.Rdev), unix.Minor(st.Rdev)
}
