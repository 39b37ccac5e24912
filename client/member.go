package client

import (
	"context"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/modelnodes/modelnodes/client/discovery"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	tipb "github.com/modelnodes/modelnodes/proto/train_infer"
)

// member is one model's connection. Fan-outs hold a reference while they
// call it; a retired member closes its connection when the last one goes.
type member struct {
	model  discovery.Model // guarded by Client.mu (its Meta may change)
	cc     *grpc.ClientConn
	ds     dspb.DynamicSubclassServiceClient
	ti     tipb.TrainInferServiceClient
	health healthpb.HealthClient

	// ready: fan-outs may call it (its Setup on join succeeded, or none
	// is configured).
	ready atomic.Bool
	// ctx ends when the member is retired (stops its Setup on join).
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	refs    int
	retired bool
}

func newMember(md discovery.Model, cc *grpc.ClientConn) *member {
	ctx, cancel := context.WithCancel(context.Background())
	return &member{
		ctx:    ctx,
		cancel: cancel,
		model:  md,
		cc:     cc,
		ds:     dspb.NewDynamicSubclassServiceClient(cc),
		ti:     tipb.NewTrainInferServiceClient(cc),
		health: healthpb.NewHealthClient(cc),
	}
}

func (m *member) acquire() {
	m.mu.Lock()
	m.refs++
	m.mu.Unlock()
}

func (m *member) release() {
	m.mu.Lock()
	m.refs--
	closeNow := m.retired && m.refs == 0
	m.mu.Unlock()
	if closeNow {
		_ = m.cc.Close()
	}
}

// retire closes the connection now if unused, else after the last call.
func (m *member) retire() {
	m.cancel()
	m.mu.Lock()
	m.retired = true
	closeNow := m.refs == 0
	m.mu.Unlock()
	if closeNow {
		go m.cc.Close() // Close waits for goroutines: keep the caller's lock short
	}
}
