package driver

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins/drivers"
	"golang.org/x/sys/unix"
)

// taskState is encoded into the TaskHandle's DriverState so a restarted
// plugin can find the task again (RecoverTask).
type taskState struct {
	TaskConfig *drivers.TaskConfig
	Pid        int
	// StartTicks is the runner's start time in /proc/<pid>/stat: a pid
	// reused by another process after a reboot or a long outage does not
	// match it.
	StartTicks uint64
	StartedAt  time.Time
	UID        int
	RunnerUID  int
	Isolation  *IsolationState
}

// taskHandle is one running task.
type taskHandle struct {
	log       hclog.Logger
	cfg       *drivers.TaskConfig
	pid       int
	startTick uint64
	uid       int
	runnerUID int
	iso       Isolation
	proc      *os.Process // nil after a recovery: the runner is not our child

	mu          sync.RWMutex
	state       drivers.TaskState
	startedAt   time.Time
	completedAt time.Time
	exit        *drivers.ExitResult
	done        chan struct{} // closed when the runner has exited and the task's processes are gone
}

func (h *taskHandle) status() *drivers.TaskStatus {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return &drivers.TaskStatus{
		ID:               h.cfg.ID,
		Name:             h.cfg.Name,
		State:            h.state,
		StartedAt:        h.startedAt,
		CompletedAt:      h.completedAt,
		ExitResult:       h.exit.Copy(),
		DriverAttributes: map[string]string{"pid": strconv.Itoa(h.pid)},
	}
}

func (h *taskHandle) running() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.state == drivers.TaskStateRunning
}

func (h *taskHandle) exitResult() *drivers.ExitResult {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.exit.Copy()
}

func (h *taskHandle) encodeState() taskState {
	return taskState{TaskConfig: h.cfg, Pid: h.pid, StartTicks: h.startTick, StartedAt: h.startedAt,
		UID: h.uid, RunnerUID: h.runnerUID, Isolation: h.iso.State()}
}

// watch waits for the runner to exit, then kills whatever of the task is
// left (the worker, anything the model forked) and records the result.
func (h *taskHandle) watch() {
	var res *drivers.ExitResult
	if h.proc != nil {
		ps, err := h.proc.Wait()
		res = exitResultOf(ps, err)
	} else {
		res = foreignExitResult(h.pid, waitForeign(h.pid))
	}
	if err := h.iso.KillAll(10 * time.Second); err != nil {
		h.log.Error("could not kill every process of the task", "error", err)
	}
	h.mu.Lock()
	h.state = drivers.TaskStateExited
	h.exit = res
	h.completedAt = time.Now()
	h.mu.Unlock()
	close(h.done)
	if res.Err != nil {
		h.log.Info("model runner exited", "exit_code", res.ExitCode, "signal", res.Signal, "error", res.Err)
	} else {
		h.log.Info("model runner exited", "exit_code", res.ExitCode, "signal", res.Signal)
	}
}

func exitResultOf(ps *os.ProcessState, err error) *drivers.ExitResult {
	if err != nil {
		return &drivers.ExitResult{ExitCode: 1, Err: err}
	}
	ws, _ := ps.Sys().(syscall.WaitStatus)
	r := &drivers.ExitResult{ExitCode: ws.ExitStatus()}
	if ws.Signaled() {
		r.Signal = int(ws.Signal())
		r.ExitCode = 128 + r.Signal
	}
	return r
}

// foreignExitResult is the result of a runner the driver recovered after a
// restart: only its parent learns its exit status, so it is unknown here.
// err is why waiting failed, if it did (nil: the runner exited).
func foreignExitResult(pid int, err error) *drivers.ExitResult {
	msg := fmt.Sprintf("model runner (pid %d) exited after the driver restarted; its exit status is unknown", pid)
	if err != nil {
		return &drivers.ExitResult{ExitCode: 1, Err: fmt.Errorf("%s: %w", msg, err)}
	}
	return &drivers.ExitResult{ExitCode: 1, Err: errors.New(msg)}
}

// waitForeign waits for a process that is not our child, with a pidfd.
func waitForeign(pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil // already gone
		}
		return pollExit(pid)
	}
	defer unix.Close(fd)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
			return pollExit(pid)
		}
		if fds[0].Revents&unix.POLLIN != 0 {
			return nil
		}
	}
}

// pollExit is the fallback for kernels without pidfd.
func pollExit(pid int) error {
	for syscall.Kill(pid, 0) == nil {
		time.Sleep(time.Second)
	}
	return nil
}
