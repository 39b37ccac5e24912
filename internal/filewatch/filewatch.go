// Package filewatch notices that files changed, by polling: the runner's TLS
// material, authorization policy, CRL and delegation are files that Nomad
// templates rewrite (in place or by rename), and polling sees both.
package filewatch

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// Stamp summarizes size, modification time and inode of each named file
// (empty names are skipped): it changes whenever one of them is rewritten.
func Stamp(paths ...string) (string, error) {
	var b strings.Builder
	for _, p := range paths {
		if p == "" {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		var ino uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ino = st.Ino
		}
		fmt.Fprintf(&b, "%s:%d:%d:%d;", p, fi.Size(), fi.ModTime().UnixNano(), ino)
	}
	return b.String(), nil
}

// Every calls fn every interval until ctx ends.
func Every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}
