//go:build e2e

package driver

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A model store on another filesystem than the alloc dir (rename fails with
// EXDEV) gets a copy with the same tree, modes and links, and the alloc dir
// loses the original.
func TestStoreAcrossFilesystems(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs as the model store needs root; run the tests as root (CI does)")
	}
	base := t.TempDir()
	storeDir := filepath.Join(base, "store")
	if err := os.Mkdir(storeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", storeDir, "tmpfs", 0, "size=4m"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Unmount(storeDir, unix.MNT_DETACH) }()

	taskDir := filepath.Join(base, "task")
	src := filepath.Join(taskDir, "local", "model")
	for _, d := range []string{src, filepath.Join(src, "pkg")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]os.FileMode{"main.py": 0o644, "pkg/run": 0o755}
	for name, mode := range files {
		if err := os.WriteFile(filepath.Join(src, name), []byte(name), mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../resources", filepath.Join(src, "resources")); err != nil {
		t.Fatal(err)
	}

	entry := filepath.Join(storeDir, "alloc.model")
	if err := store(src, entry, taskDir); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(entry, storeModel)
	for name, mode := range files {
		fi, err := os.Stat(filepath.Join(dst, name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s in the store: %v %v, want mode %v", name, fi, err, mode)
		}
		if b, _ := os.ReadFile(filepath.Join(dst, name)); string(b) != name {
			t.Errorf("%s in the store holds %q", name, b)
		}
	}
	if link, err := os.Readlink(filepath.Join(dst, "resources")); err != nil || link != "../resources" {
		t.Errorf("the resources link became %q (%v)", link, err)
	}
	if _, err := os.Lstat(src); !os.IsNotExist(err) {
		t.Errorf("the model is still in the alloc dir after the copy: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(entry, storeTaskDir)); string(b) != taskDir {
		t.Errorf("the entry names task dir %q, want %q", b, taskDir)
	}
}
