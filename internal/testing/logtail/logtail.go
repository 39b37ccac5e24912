// Package logtail returns the end of a log: what a failure report shows of
// an agent's, a child process's or a model's output.
package logtail

import "bytes"

// Lines returns the last n lines of b, without the trailing newlines.
func Lines(b []byte, n int) []byte {
	b = bytes.TrimRight(b, "\n")
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			if n--; n == 0 {
				return b[i+1:]
			}
		}
	}
	return b
}
