//go:build e2e

package scheduler

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/scheduler/source/yamlfile"
)

// slowJobs spaces registrations out so that a pass is still running when
// the test restarts Nomad.
type slowJobs struct{ NomadJobs }

func (s slowJobs) Register(ctx context.Context, job *nomadapi.Job, idx uint64) error {
	time.Sleep(40 * time.Millisecond)
	return s.NomadJobs.Register(ctx, job, idx)
}

// agentProcess finds the Nomad agent of a test cluster (its working dir is
// <cluster>/nomad) and returns its pid, argv and environment.
func agentProcess(t *testing.T, dir string) (int, []string, []string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if cwd != dir {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := bytes.Split(bytes.TrimRight(cmdline, "\x00"), []byte{0})
		if len(args) < 2 || string(args[1]) != "agent" {
			continue
		}
		environ, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		var argv, env []string
		for _, a := range args {
			argv = append(argv, string(a))
		}
		for _, kv := range bytes.Split(bytes.TrimRight(environ, "\x00"), []byte{0}) {
			env = append(env, string(kv))
		}
		return pid, argv, env
	}
	t.Fatalf("no Nomad agent running in %s", dir)
	return 0, nil, nil
}

// Nomad is restarted (SIGTERM, then started again with the same
// configuration) while the scheduler is registering 40 models: every model
// ends up with exactly one job, none stopped. The dev agent keeps its state
// in memory, so the restarted Nomad has forgotten the jobs registered
// before: the next level-triggered pass registers them again, once.
func TestNomadRestartedMidReconcile(t *testing.T) {
	cl := testcluster.Start(t, testcluster.Nomad)
	nc := nomad.Wrap(cl.Nomad.Client)
	dir := filepath.Join(cl.Dir, "nomad")
	pid, argv, env := agentProcess(t, dir)

	var ms []jobs.Model
	for i := range 40 {
		ms = append(ms, fileModel(fmt.Sprintf("r%02d", i)))
	}
	s := startScheduler(t, slowJobs{nc}, nc, nil, &yamlfile.Source{Path: modelsFile(t, ms...)})
	waitJobs(t, nc, 30*time.Second, "the pass under way", func(m map[string]nomad.JobStub) bool { return len(m) >= 5 })

	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatal("Nomad did not stop within 20 s of SIGTERM")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("Nomad stopped mid-pass")
	log, err := os.OpenFile(filepath.Join(dir, "nomad-restarted.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = dir, env, log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Stop the restarted agent before the cluster's own cleanup runs.
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})

	got := waitJobs(t, nc, 90*time.Second, "all 40 models registered after the restart", func(m map[string]nomad.JobStub) bool {
		if len(m) != 40 {
			return false
		}
		for _, j := range m {
			if j.Stop {
				return false
			}
		}
		return true
	})
	// The observer lost its event stream with Nomad and read the state again.
	deadline = time.Now().Add(20 * time.Second)
	for s.s.Observer.Reads() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the observer did not re-read Nomad's allocations after the restart")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for id := range got {
		j, _, err := cl.Nomad.Client.Jobs().Info(id, nil)
		if err != nil {
			t.Fatal(err)
		}
		if *j.Version != 0 {
			t.Errorf("job %s is at version %d: registered more than once", id, *j.Version)
		}
	}
	s.stop()
}
