package driver

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// The model store keeps each task's model outside its alloc dir, where
// `nomad alloc fs` (which serves the whole alloc dir, local/ included, to
// anyone with read-fs) cannot read it. An entry is <alloc id>.<task>/ with
// the model in model/ and the task dir it came from in task_dir: Nomad does
// not re-fetch artifacts when it restarts a task, so the entry outlives
// DestroyTask and is removed once Nomad has garbage-collected the task dir.
const (
	storeModel   = "model"
	storeTaskDir = "task_dir"
	// sweepEvery is how often the store is checked for models whose
	// allocation Nomad has garbage-collected.
	sweepEvery = 5 * time.Minute
)

// storeMu keeps a sweep from removing an entry a start is making.
var storeMu sync.Mutex

// errModelDir wraps every refusal of a task's model_dir.
var errModelDir = errors.New("model_dir")

// resolveModelDir returns the host directory the worker sees as the model. An
// absolute model_dir is a host path, allowed only where the plugin config
// says allow_host_model_dirs (a job writer could otherwise show any host
// directory to model code). A relative one must stay inside the task dir
// once symlinks are resolved, and not reach its secrets/ or private/; it is
// moved into the model store, and later starts of the same task use the
// store's copy.
func resolveModelDir(plugin *Config, taskDir, allocID, task, dir string, log hclog.Logger) (string, error) {
	if filepath.IsAbs(dir) {
		if !plugin.AllowHostModelDirs {
			return "", fmt.Errorf("%w %q is a host path: this node does not run models from host directories (plugin config allow_host_model_dirs = true allows it, for development); ship the model as an artifact into local/", errModelDir, dir)
		}
		return filepath.Clean(dir), nil
	}
	entry := filepath.Join(plugin.ModelStore, allocID+"."+task)
	stored := filepath.Join(entry, storeModel)
	src, err := resolveInTaskDir(taskDir, dir)
	if errors.Is(err, fs.ErrNotExist) {
		// Moved away at an earlier start of this task: Nomad does not
		// fetch artifacts again when it restarts one.
		if fi, serr := os.Stat(stored); serr == nil && fi.IsDir() {
			return stored, nil
		}
		return "", fmt.Errorf("%w %s is not a directory", errModelDir, filepath.Join(taskDir, dir))
	}
	if err != nil {
		return "", err
	}
	storeMu.Lock()
	err = store(src, entry, taskDir)
	storeMu.Unlock()
	if err != nil {
		return "", fmt.Errorf("%w: move the model out of the alloc dir: %v", errModelDir, err)
	}
	log.Info("model moved out of the alloc dir", "from", src, "to", stored)
	return stored, nil
}

// resolveInTaskDir resolves the relative dir inside taskDir, following
// symlinks, and refuses what leaves the task dir or reaches secrets/ or
// private/. fs.ErrNotExist means there is nothing there.
func resolveInTaskDir(taskDir, dir string) (string, error) {
	clean := filepath.Clean(dir)
	if clean == "." || clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("%w %q must name a directory inside the task dir", errModelDir, dir)
	}
	root, err := filepath.EvalSymlinks(taskDir)
	if err != nil {
		return "", fmt.Errorf("%w: task dir: %v", errModelDir, err)
	}
	if _, err := os.Lstat(filepath.Join(taskDir, clean)); err != nil {
		return "", fmt.Errorf("%w %q: %w", errModelDir, dir, fs.ErrNotExist)
	}
	resolved, err := filepath.EvalSymlinks(filepath.Join(taskDir, clean))
	if errors.Is(err, fs.ErrNotExist) {
		// A link whose target an earlier start moved into the store.
		return "", fmt.Errorf("%w %q: %w", errModelDir, dir, err)
	}
	if err != nil {
		return "", fmt.Errorf("%w %q: %v", errModelDir, dir, err)
	}
	rel, err := filepath.Rel(root, resolved)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%w %q resolves to %s, outside the task dir", errModelDir, dir, resolved)
	}
	// Nomad's names (client/allocdir.TaskSecrets, TaskPrivate, TaskLocal...).
	if top, _, _ := strings.Cut(rel, "/"); top == "secrets" || top == "private" {
		return "", fmt.Errorf("%w %q resolves into the task's %s/ dir, which model code must never see", errModelDir, dir, top)
	}
	if rel == "local" || rel == "tmp" || rel == "alloc" {
		// Moving one of Nomad's own dirs would take templates and the
		// delegation with it.
		return "", fmt.Errorf("%w %q is the task's whole %s/ dir: name a directory inside it (local/model)", errModelDir, dir, rel)
	}
	if fi, err := os.Stat(resolved); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("%w %s is not a directory", errModelDir, resolved)
	}
	return resolved, nil
}

// store moves src into the store entry, replacing an older copy: a rename on
// the same filesystem, a copy and removal across filesystems.
func store(src, entry, taskDir string) error {
	if err := os.MkdirAll(filepath.Dir(entry), 0o700); err != nil {
		return err
	}
	next := entry + ".new"
	if err := os.RemoveAll(next); err != nil {
		return err
	}
	if err := os.Mkdir(next, 0o700); err != nil {
		return err
	}
	// Written first, so that the sweep can remove a half-made entry.
	if err := os.WriteFile(filepath.Join(next, storeTaskDir), []byte(taskDir), 0o600); err != nil {
		return err
	}
	dst := filepath.Join(next, storeModel)
	if err := os.Rename(src, dst); errors.Is(err, syscall.EXDEV) {
		if err := copyTree(src, dst); err != nil {
			return err
		}
		if err := os.RemoveAll(src); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if err := os.RemoveAll(entry); err != nil {
		return err
	}
	return os.Rename(next, entry)
}

// copyTree copies a directory tree with its modes; symlinks are copied as
// links (the sandbox resolves them inside its own root).
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
			return os.Chmod(target, info.Mode().Perm())
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.Type().IsRegular():
			return copyFile(p, target, info.Mode().Perm())
		}
		return nil // devices, fifos and sockets are not part of a model
	})
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}

// sweepModelStore removes the entries whose task dir Nomad has removed (the
// allocation was garbage-collected), and entries that say nothing of theirs.
func sweepModelStore(storeDir string, log hclog.Logger) {
	storeMu.Lock()
	defer storeMu.Unlock()
	ents, err := os.ReadDir(storeDir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			log.Warn("cannot list the model store", "dir", storeDir, "error", err)
		}
		return
	}
	for _, e := range ents {
		entry := filepath.Join(storeDir, e.Name())
		b, err := os.ReadFile(filepath.Join(entry, storeTaskDir))
		if err == nil {
			if _, err = os.Stat(string(b)); err == nil {
				continue // the task dir is still there: the task may start again
			}
		}
		if !errors.Is(err, fs.ErrNotExist) {
			log.Warn("cannot tell whether a stored model is still needed", "entry", entry, "error", err)
			continue
		}
		if err := os.RemoveAll(entry); err != nil {
			log.Warn("cannot remove a stored model", "entry", entry, "error", err)
			continue
		}
		log.Info("removed the stored model of a garbage-collected task", "entry", entry)
	}
}
