package pyenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// lockedFile is a file held under flock(2). flock locks belong to the open file
// description, so two Acquires in the same process conflict exactly as two
// processes do: one mechanism serializes goroutines and processes alike.
type lockedFile struct {
	f *os.File
}

// tryLock opens (creating) path and takes the lock how (unix.LOCK_SH or
// unix.LOCK_EX) without blocking; ok is false when another holder has it.
// The lock is taken on the file the path names once it is held: a lock file
// removed and recreated meanwhile (Collect removes the lock file of an
// environment it deletes) is opened again, so two holders can never lock two
// different inodes of one path.
func tryLock(path string, how int) (l *lockedFile, ok bool, err error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, false, fmt.Errorf("open lock %s: %w", path, err)
		}
		if err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, false, nil
			}
			return nil, false, fmt.Errorf("lock %s: %w", path, err)
		}
		same, err := sameFile(f, path)
		if err != nil {
			f.Close()
			return nil, false, err
		}
		if same {
			return &lockedFile{f: f}, true, nil
		}
		f.Close()
	}
}

// lock waits for the lock how on path until ctx ends. It polls instead of
// blocking in flock(2) so that a caller whose task is stopped stops waiting
// for another process's build of many minutes.
func lock(ctx context.Context, path string, how int) (*lockedFile, error) {
	wait := 20 * time.Millisecond
	for {
		l, ok, err := tryLock(path, how)
		if err != nil || ok {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		case <-time.After(wait):
		}
		if wait < 500*time.Millisecond {
			wait *= 2
		}
	}
}

func sameFile(f *os.File, path string) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("stat lock %s: %w", path, err)
	}
	pi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat lock %s: %w", path, err)
	}
	return os.SameFile(fi, pi), nil
}

// unlock releases the lock; closing the descriptor is what releases it.
func (l *lockedFile) unlock() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}
