package leftovers

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// A process that holds a file of the dir open is found even when neither
// its working directory nor its command line names the dir: Nomad's logmon
// keeps the tasks' log files open and outlives a killed agent, from
// wherever that agent was started.
func TestProcessesHoldingAFileOpen(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "alloc", "logs", ".model.stdout.fifo")
	if err := os.MkdirAll(filepath.Dir(log), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(log, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "60")
	cmd.Dir = "/"
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if got := Processes(dir); !slices.Contains(got, cmd.Process.Pid) {
		t.Fatalf("Processes(%s) = %v, want the process holding %s open (pid %d)", dir, got, log, cmd.Process.Pid)
	}
	if got := Kill(Processes(dir)); !slices.Contains(got, cmd.Process.Pid) {
		t.Fatalf("Kill reached %v, not %d", got, cmd.Process.Pid)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the process still runs after Kill")
	}
	if got := Processes(dir); len(got) != 0 {
		t.Errorf("Processes after the kill: %v", got)
	}
}
