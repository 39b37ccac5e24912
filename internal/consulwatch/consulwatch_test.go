package consulwatch

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
)

// The loop as Consul drives it: the first answer and an index that moved
// are changes, an elapsed wait at the same index is not, a failed query is
// reported with its backoff and changes nothing, and fn ends the watch.
func TestRun(t *testing.T) {
	// Answers in order: index 5, 5 (wait elapsed), a 500, 7.
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch n.Add(1) {
		case 1, 2:
			w.Header().Set("X-Consul-Index", "5")
		case 3:
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		default:
			w.Header().Set("X-Consul-Index", strconv.Itoa(7))
		}
		_, _ = w.Write([]byte(`[{"Service":{"ID":"a","Port":1}}]`))
	}))
	defer srv.Close()
	client, err := consulapi.NewClient(&consulapi.Config{Address: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	var errs []time.Duration
	h := &Health{Client: client, Service: "crunch-demo", Wait: func() time.Duration { return time.Second },
		OnError: func(_ error, retryIn time.Duration) { errs = append(errs, retryIn) }}
	var changes []bool
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = h.Run(ctx, func(entries []*consulapi.ServiceEntry, changed bool) bool {
		if len(entries) != 1 || entries[0].Service.ID != "a" {
			t.Errorf("entries %v", entries)
		}
		changes = append(changes, changed)
		return len(changes) < 3
	})
	if err != nil {
		t.Fatalf("Run = %v, want nil when fn ends it", err)
	}
	if want := []bool{true, false, true}; len(changes) != 3 || changes[0] != want[0] || changes[1] != want[1] || changes[2] != want[2] {
		t.Fatalf("changed = %v, want %v", changes, want)
	}
	if len(errs) != 1 || errs[0] != 100*time.Millisecond {
		t.Fatalf("errors reported with backoffs %v, want one of 100ms", errs)
	}
	// ctx's end ends it with ctx's error.
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := h.Run(ctx2, func([]*consulapi.ServiceEntry, bool) bool { return true }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run after cancel = %v", err)
	}
}
