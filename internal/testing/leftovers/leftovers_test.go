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

// AllocIDs finds the allocation directories of a demo's single client
// (nomad/data/alloc) and of a test cluster's several clients, and nothing
// that only looks like one: a non-uuid entry, a file, or an "alloc" dir
// deep inside an allocation (a model's own files).
func TestAllocIDs(t *testing.T) {
	root := t.TempDir()
	const a, b, deep = "0f8e1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "1f8e1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "2f8e1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
	for _, d := range []string{
		"nomad/data/alloc/" + a,
		"clients/c2/alloc/" + b,
		"nomad/data/alloc/not-an-alloc",
		"nomad/data/alloc/" + a + "/model/alloc/" + deep,
	} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "clients/c2/alloc/"+deep), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got := AllocIDs(root)
	slices.Sort(got)
	if want := []string{a, b}; !slices.Equal(got, want) {
		t.Fatalf("AllocIDs = %v, want %v", got, want)
	}
	if got := AllocIDs(""); got != nil {
		t.Fatalf("AllocIDs(\"\") = %v, want nothing", got)
	}
}
