// Package procfs reads the few facts about a process that the driver and the
// benchmarks need from /proc.
package procfs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Stat is a process's state letter (R, S, Z…) and start time in clock ticks
// since boot (fields 3 and 22 of /proc/<pid>/stat).
type Stat struct {
	State      byte
	StartTicks uint64
}

// ReadStat reads /proc/<pid>/stat.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Stat{}, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields after it start after its last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	ticks, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("/proc/%d/stat: start time: %w", pid, err)
	}
	return Stat{State: f[0][0], StartTicks: ticks}, nil
}

// Running reports whether pid is a live process (not gone, not a zombie
// waiting for its parent).
func Running(pid int) bool {
	st, err := ReadStat(pid)
	return err == nil && st.State != 'Z'
}

// RSSMiB is the resident memory of pid (VmRSS) in MiB.
func RSSMiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}
