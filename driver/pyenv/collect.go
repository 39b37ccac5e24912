package pyenv

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Collect brings the cache within BudgetBytes: it removes environments nobody
// holds, least recently used first, and when that is not enough and no build
// runs, uv's cache. An environment held by an Acquire (in this process or
// another) is never removed. It also removes what crashed builds left. Acquire
// runs it after each build; the driver may run it periodically. One Collect
// runs at a time; a second returns at once.
func (c *Cache) Collect() error {
	if err := c.init(); err != nil {
		return err
	}
	cl, ok, err := tryLock(c.path("locks", "collect.lock"), unix.LOCK_EX)
	if err != nil || !ok {
		return err
	}
	defer cl.unlock()
	c.removeLeftovers()
	if c.BudgetBytes <= 0 {
		return nil
	}
	u, err := c.usage()
	if err != nil {
		return err
	}
	log := c.logger()
	for _, key := range u.byLastUse() {
		if u.total <= c.BudgetBytes {
			return nil
		}
		use, ok, err := tryLock(c.path("use", key+".lock"), unix.LOCK_EX)
		if err != nil {
			return err
		}
		if !ok {
			log.Debug("environment in use, kept", "env", key)
			continue
		}
		freed := u.remove(key)
		err = c.evict(key)
		// The lock file goes while held exclusively: an Acquire that opened it
		// meanwhile notices (tryLock compares inodes) and opens the new one.
		_ = os.Remove(use.f.Name())
		use.unlock()
		if err != nil {
			return err
		}
		u.total -= freed
		log.Info("environment collected", "env", key, "freed_bytes", freed, "total_bytes", u.total, "budget_bytes", c.BudgetBytes)
	}
	if u.total <= c.BudgetBytes {
		return nil
	}
	// Environments hardlink their files from uv's cache, so removing the cache
	// takes nothing from them; it only makes the next build download again.
	ucl, ok, err := tryLock(c.path("locks", "uv-cache.lock"), unix.LOCK_EX)
	if err != nil || !ok {
		return err
	}
	defer ucl.unlock()
	if err := c.evictDir(c.path("uv-cache"), "uv-cache"); err != nil {
		return err
	}
	log.Info("uv cache cleared: environments in use exceed the budget", "budget_bytes", c.BudgetBytes)
	return os.MkdirAll(c.path("uv-cache"), 0o700)
}

// evict moves the environment out of envs/ in one rename (an Acquire sees it
// whole or not at all), then deletes it.
func (c *Cache) evict(key string) error {
	return c.evictDir(c.path("envs", key), key)
}

func (c *Cache) evictDir(dir, name string) error {
	trash, err := os.MkdirTemp(c.path("tmp"), "gc."+name+".")
	if err != nil {
		return fmt.Errorf("collect %s: %w", name, err)
	}
	// See build: a directory changes parent only when writable.
	if err := os.Chmod(dir, 0o700); err != nil {
		_ = os.Remove(trash)
		return fmt.Errorf("collect %s: %w", name, err)
	}
	if err := os.Rename(dir, filepath.Join(trash, "x")); err != nil {
		_ = os.Remove(trash)
		return fmt.Errorf("collect %s: %w", name, err)
	}
	return removeTree(trash)
}

// removeLeftovers deletes what an interrupted Collect left (tmp/gc.*) and the
// directories of builds whose process died (tmp/<key>.* whose build lock is
// free).
func (c *Cache) removeLeftovers() {
	entries, _ := os.ReadDir(c.path("tmp"))
	for _, e := range entries {
		name := e.Name()
		p := c.path("tmp", name)
		if strings.HasPrefix(name, "gc.") {
			_ = removeTree(p)
			continue
		}
		key, _, ok := strings.Cut(name, ".")
		if !ok {
			continue
		}
		bl, free, err := tryLock(c.path("locks", key+".lock"), unix.LOCK_EX)
		if err != nil || !free {
			continue
		}
		if err := removeTree(p); err != nil {
			c.logger().Warn("remove leftover build", "dir", p, "error", err)
		}
		bl.unlock()
	}
}

type inodeUse struct {
	size  int64  // bytes on disk
	links uint64 // hardlinks not yet removed
}

// usage is the cache's disk use with each inode counted once, and which
// inodes each environment holds how many links to: removing an environment
// frees an inode only when it holds all of its links.
type usage struct {
	total   int64
	inodes  map[[2]uint64]*inodeUse
	envs    map[string]map[[2]uint64]uint64
	lastUse map[string]time.Time
}

func (c *Cache) usage() (*usage, error) {
	u := &usage{inodes: map[[2]uint64]*inodeUse{}, envs: map[string]map[[2]uint64]uint64{}, lastUse: map[string]time.Time{}}
	envsDir := c.path("envs")
	err := filepath.WalkDir(c.Root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) { // removed by a concurrent build's cleanup
				return nil
			}
			return err
		}
		info, err := d.Info()
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		id := [2]uint64{uint64(st.Dev), st.Ino}
		if _, seen := u.inodes[id]; !seen {
			links := uint64(1) // a directory or link goes with the tree that holds it
			if info.Mode().IsRegular() {
				links = uint64(st.Nlink)
			}
			u.inodes[id] = &inodeUse{size: st.Blocks * 512, links: links}
			u.total += st.Blocks * 512
		}
		if rel, err := filepath.Rel(envsDir, p); err == nil && rel != "." && !strings.HasPrefix(rel, "..") {
			key, _, _ := strings.Cut(rel, string(filepath.Separator))
			if u.envs[key] == nil {
				u.envs[key] = map[[2]uint64]uint64{}
				u.lastUse[key] = time.Time{}
				if li, err := os.Stat(c.path("use", key+".lock")); err == nil {
					u.lastUse[key] = li.ModTime()
				}
			}
			u.envs[key][id]++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("measure %s: %w", c.Root, err)
	}
	return u, nil
}

// byLastUse lists the environments, least recently used first.
func (u *usage) byLastUse() []string {
	keys := make([]string, 0, len(u.envs))
	for k := range u.envs {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if !u.lastUse[keys[i]].Equal(u.lastUse[keys[j]]) {
			return u.lastUse[keys[i]].Before(u.lastUse[keys[j]])
		}
		return keys[i] < keys[j]
	})
	return keys
}

// remove accounts for removing an environment and returns the bytes it frees.
func (u *usage) remove(key string) int64 {
	var freed int64
	for id, n := range u.envs[key] {
		in := u.inodes[id]
		if n >= in.links {
			freed += in.size
			in.links = 0
		} else {
			in.links -= n
		}
	}
	delete(u.envs, key)
	return freed
}
