package runner_test

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	"github.com/modelnodes/modelnodes/runner"
)

// Calls whose requests do not fit the request-byte budget wait for it, in
// turn, and are refused with RESOURCE_EXHAUSTED once they have waited the
// call timeout: the runner never holds more than the budget.
func TestRequestBudgetQueuesThenRefuses(t *testing.T) {
	h := start(t, hostileWorker(t), func(c *runner.Config) {
		c.MaxRecvBytes, c.MaxInflightBytes, c.CallTimeout = 1<<20, 1<<20, 1200*time.Millisecond
	}).ready()
	wantCode(t, "setup", h.setup("x.Base", nil), "SUCCESS", "")
	// Each call carries 600 KiB: only one fits the 1 MiB budget at a time,
	// and each holds it for the 0.8 s the model takes.
	payload := commonspb.String(string(bytes.Repeat([]byte("a"), 600<<10)))
	req := &dspb.CallRequest{MethodName: "sleep", MethodArguments: args(commonspb.Double(0.8), payload)}
	got := make(chan codes.Code, 3)
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := h.ds.Call(ctxTimeout(t, 10*time.Second), req)
			if err == nil && res.GetStatus().GetCode() != "SUCCESS" {
				t.Errorf("call: %v", res.GetStatus())
			}
			got <- status.Code(err)
		}()
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	close(got)
	n := map[codes.Code]int{}
	for c := range got {
		n[c]++
	}
	// The first runs at once, the second waits 0.8 s (within the 1.2 s
	// timeout), the third would wait 1.6 s.
	if n[codes.OK] != 2 || n[codes.ResourceExhausted] != 1 {
		t.Errorf("outcomes %v, want 2 OK (one queued) and 1 RESOURCE_EXHAUSTED", n)
	}
}
