package client

import (
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/modelnodes/modelnodes/client/discovery"
)

// A model removed while a call uses its connection keeps the connection
// until that call releases it; an unused one is closed at once.
func TestRetiredMemberClosesAfterLastCall(t *testing.T) {
	dial := func() *member {
		cc, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		return newMember(discovery.Model{ID: "m", Target: "127.0.0.1:1"}, cc)
	}
	shutdown := func(m *member) bool {
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			if m.cc.GetState() == connectivity.Shutdown {
				return true
			}
			time.Sleep(5 * time.Millisecond)
		}
		return false
	}

	busy := dial()
	busy.acquire()
	busy.acquire()
	busy.retire()
	busy.release()
	time.Sleep(20 * time.Millisecond)
	if busy.cc.GetState() == connectivity.Shutdown {
		t.Fatal("closed while a call still used it")
	}
	busy.release()
	if !shutdown(busy) {
		t.Error("not closed after the last call released it")
	}

	idle := dial()
	idle.retire()
	if !shutdown(idle) {
		t.Error("an unused retired connection was not closed")
	}
}
