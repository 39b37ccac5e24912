package procfs

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestReadStatAndRSS(t *testing.T) {
	st, err := ReadStat(os.Getpid())
	if err != nil || st.StartTicks == 0 || st.State == 'Z' {
		t.Fatalf("ReadStat(self) = %+v, %v", st, err)
	}
	if rss, err := RSSMiB(os.Getpid()); err != nil || rss <= 0 {
		t.Fatalf("RSSMiB(self) = %v, %v", rss, err)
	}
	// A child that exited but was not reaped is a zombie: not running.
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for Running(pid) {
		if time.Now().After(deadline) {
			t.Fatal("an exited, unreaped child still counts as running")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if syscall.Kill(pid, 0) != nil {
		t.Fatal("the zombie was reaped early; the test proves nothing")
	}
	_ = cmd.Wait()
	if Running(pid) {
		t.Fatal("a reaped process counts as running")
	}
}
