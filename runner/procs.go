package runner

import (
	"os"
	"runtime"
)

// LimitProcs sets the process's GOMAXPROCS to 1 for a runner whose model
// takes one call at a time (workerConcurrency 1: every Python model), unless
// the environment sets GOMAXPROCS. It acts on the whole process: call it
// from a runner's main, not from a library.
//
// Such a runner has at most one call on its worker; a second P only lets
// the Go scheduler spread each call's few goroutines (the connection's
// reader, the handler, the writer) over two threads, where every handoff is
// a futex wake-up, idle threads spin and steal, and the response's HTTP/2
// frames may leave in two writes (the writer flushes on its own thread
// before the handler queued the trailers). With one P the same work runs on
// one thread in turn: about a fifth less CPU per call, with the same latency
// and throughput (docs/performance.md, "Side by side").
func LimitProcs(workerConcurrency int) {
	if workerConcurrency == 1 && os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
}
