// Package leftovers finds what a stopped cluster may have left on this host:
// processes under its state dir, loopback ports still bound, and the cgroups
// Nomad and the modelbox driver made for its allocations. The test cluster
// and the demo use it to make, and prove, a complete teardown.
package leftovers

import (
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/modelnodes/modelnodes/internal/procfs"
)

// Processes returns the running processes (this one excepted) whose working
// directory or command line lies under dir, or that hold a file under dir
// open: agents and the tasks they started, which run in their own process
// groups and survive an agent that was killed rather than stopped, and
// Nomad's logmon, which holds the tasks' log files open and outlives a
// killed agent whatever its working directory.
func Processes(dir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	prefix := strings.TrimSuffix(dir, "/") + "/"
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || !procfs.Running(pid) {
			continue
		}
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.HasPrefix(cwd+"/", prefix) || strings.Contains(string(cmdline), prefix) || holdsOpen(pid, prefix) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// holdsOpen reports whether pid has a file under prefix open.
func holdsOpen(pid int, prefix string) bool {
	fdDir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return false
	}
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && strings.HasPrefix(target, prefix) {
			return true
		}
	}
	return false
}

// Kill sends SIGKILL to pids and returns those it reached.
func Kill(pids []int) []int {
	var killed []int
	for _, pid := range pids {
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			killed = append(killed, pid)
		}
	}
	return killed
}

// Listening returns the ports among ports that something still holds on
// 127.0.0.1 (they cannot be bound).
func Listening(ports []int) []int {
	var busy []int
	for _, p := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			busy = append(busy, p)
			continue
		}
		l.Close()
	}
	return busy
}

// ModelboxCgroups returns the modelbox driver's cgroups of the allocations
// (named <alloc id>.<task>…; under each controller on cgroups v1, at the
// root on v2) that still exist.
func ModelboxCgroups(allocIDs []string) []string {
	return glob(allocIDs, "/sys/fs/cgroup/*/modelbox/", "/sys/fs/cgroup/modelbox/")
}

// AllocCgroups returns every cgroup Nomad and the modelbox driver made for
// the allocations that still exists.
func AllocCgroups(allocIDs []string) []string {
	return append(ModelboxCgroups(allocIDs), glob(allocIDs,
		"/sys/fs/cgroup/*/nomad/", "/sys/fs/cgroup/*/nomad/*/", "/sys/fs/cgroup/nomad.slice/*/")...)
}

func glob(allocIDs []string, parents ...string) []string {
	var dirs []string
	for _, id := range allocIDs {
		for _, parent := range parents {
			m, _ := filepath.Glob(parent + id + ".*")
			dirs = append(dirs, m...)
		}
	}
	return dirs
}

// RemoveEmptyTree removes the empty directories of a cgroup tree,
// children first: rmdir removes only cgroups without processes, so one in
// use is left alone.
func RemoveEmptyTree(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() {
			RemoveEmptyTree(filepath.Join(dir, e.Name()))
		}
	}
	_ = syscall.Rmdir(dir)
}

// AllocIDs returns the ids of the allocation directories that the Nomad
// clients under root left (<data_dir>/alloc/<id>, data dirs at most three
// levels below root): allocations whose cgroups may outlive them when the
// servers forgot them before their tasks were destroyed.
func AllocIDs(root string) []string {
	var ids []string
	if root == "" {
		return nil
	}
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if d.Name() != "alloc" {
			// Data dirs sit a few levels down (nomad/data, clients'
			// dirs); below that lie environments and models.
			if rel, _ := filepath.Rel(root, path); strings.Count(rel, string(filepath.Separator)) >= 3 {
				return filepath.SkipDir
			}
			return nil
		}
		entries, _ := os.ReadDir(path)
		for _, e := range entries {
			if e.IsDir() && uuidLike.MatchString(e.Name()) {
				ids = append(ids, e.Name())
			}
		}
		return filepath.SkipDir
	})
	return ids
}

var uuidLike = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
