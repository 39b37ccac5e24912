package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/hashicorp/nomad/plugins/drivers"

	"github.com/modelnodes/modelnodes/runner/runneropts"
)

// The runner is not root: each task's runner runs as a user of its own from
// runner_uid_range (uid and gid alike), which no other task's runner and no
// model shares while the task lives. What it must read or write is given to
// that user when the task starts (grantRunner), and taken back when it ends
// (lockSecrets), before the id can go to another task's runner.

// runnerUser picks a free runner uid (its gid is the same number) for the
// task whose worker runs as workerUID.
func (d *Driver) runnerUser(cfg *drivers.TaskConfig, workerUID int) (int, error) {
	r := d.cfg().RunnerUIDRange
	lo, hi, err := parseRange(r)
	if err != nil {
		return 0, fmt.Errorf("modelbox: runner_%w", err)
	}
	if lo <= workerUID && workerUID <= hi {
		// Nomad's dynamic workload users come from the client's own range:
		// a model must never share a uid with some task's runner.
		return 0, fmt.Errorf("modelbox: the worker's uid %d is in runner_uid_range %s: give Nomad's dynamic users and the runners ranges apart", workerUID, r)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for id := lo; id <= hi; id++ {
		if _, used := d.runnerUIDs[id]; !used {
			d.runnerUIDs[id] = cfg.ID
			return id, nil
		}
	}
	return 0, fmt.Errorf("modelbox: runner_uid_range %s is exhausted", r)
}

func (d *Driver) releaseRunnerUID(uid int) {
	d.mu.Lock()
	delete(d.runnerUIDs, uid)
	d.mu.Unlock()
}

// markRunnerUID records a recovered task's runner uid as in use.
func (d *Driver) markRunnerUID(uid int, taskID string) {
	lo, hi, err := parseRange(d.cfg().RunnerUIDRange)
	if err != nil || uid < lo || uid > hi {
		return
	}
	d.mu.Lock()
	d.runnerUIDs[uid] = taskID
	d.mu.Unlock()
}

// grantRunner gives the runner's user (uid, gid alike) what it needs of
// the task: the host dir it writes the Python host into, the model error
// file, and the task's secrets dir, which only root and this runner may
// then enter (Nomad makes it 0777), with the files of it that the runner
// reads. Nomad's template renderer keeps a file's owner when it renders it
// again, so a renewed certificate stays the runner's. Files the runner reads
// from elsewhere must be readable to it as they are (local/ renders 0644).
func grantRunner(p *prepared, uid int) error {
	o := &p.opts
	for _, f := range []string{o.HostDir, o.ModelErrorFile} {
		if f == "" {
			continue
		}
		if err := os.Chown(f, uid, uid); err != nil {
			return fmt.Errorf("modelbox: give the runner %s: %w", f, err)
		}
	}
	secrets := p.cfg.TaskDir().SecretsDir
	if err := os.Chown(secrets, 0, uid); err != nil {
		return fmt.Errorf("modelbox: give the runner the secrets dir: %w", err)
	}
	if err := os.Chmod(secrets, 0o750); err != nil {
		return fmt.Errorf("modelbox: give the runner the secrets dir: %w", err)
	}
	// consul_token: Nomad's Consul hook writes a task's Consul token there
	// (0440, root's), which a runner watching Consul reads (runner/supersede).
	for _, f := range []string{o.TLSCert, o.TLSKey, o.TLSClientCA, o.VaultTokenFile, o.AuthzFile, o.CRLFile, o.DelegationFile, filepath.Join(secrets, "consul_token")} {
		if rel, err := filepath.Rel(secrets, f); f == "" || err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			continue
		}
		// Lstat and Lchown: a link in the secrets dir must not make the
		// driver give the runner a file elsewhere.
		fi, err := os.Lstat(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue // the runner says so when it looks
		}
		if err == nil && !fi.Mode().IsRegular() {
			err = errors.New("not a regular file")
		}
		if err == nil {
			err = os.Lchown(f, uid, uid)
		}
		if err != nil {
			return fmt.Errorf("modelbox: give the runner %s: %w", f, err)
		}
	}
	return nil
}

// relativeToTaskDir rewrites the runner's paths that lie in the task dir
// relative to it. The runner starts there (its working directory), so its
// user never has to pass through the directories above, which need not let
// it (a node's data_dir under a 0700 home, a test's temp dir).
func relativeToTaskDir(o *runneropts.Options, taskDir string) {
	for _, f := range []*string{&o.TLSCert, &o.TLSKey, &o.TLSClientCA, &o.VaultTokenFile, &o.AuthzFile, &o.CRLFile, &o.DelegationFile, &o.HostDir, &o.ModelErrorFile} {
		if rel, err := filepath.Rel(taskDir, *f); *f != "" && err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../") {
			*f = rel
		}
	}
}

// lockSecrets takes the task's secrets dir back from its runner's gid:
// root's alone again, so that the next runner given that id (another task)
// cannot enter it. It touches the dir only while that gid holds it.
func lockSecrets(cfg *drivers.TaskConfig, gid int) error {
	if gid == 0 || cfg == nil || cfg.AllocDir == "" {
		return nil
	}
	dir := cfg.TaskDir().SecretsDir
	fi, err := os.Lstat(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != 0 || int(st.Gid) != gid {
		return nil
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	return os.Chown(dir, 0, 0)
}
