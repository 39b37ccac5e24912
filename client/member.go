package client

import (
	"context"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
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
	// predecessor is the member this one replaces (the model moved: a
	// new version's allocation, another node), which fan-outs keep calling
	// while this one's Setup on join runs, then retired once it is ready:
	// make before break. Guarded by Client.mu.
	predecessor *member
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

// callable returns whom fan-outs call for m's model now: m once ready, else
// its predecessor while that one is ready and its connection not failing;
// nil when neither. Client.mu held.
func (m *member) callable() *member {
	if m.ready.Load() {
		return m
	}
	if p := m.predecessor; p != nil && p.ready.Load() {
		switch p.cc.GetState() {
		case connectivity.TransientFailure, connectivity.Shutdown:
		default:
			return p
		}
	}
	return nil
}

// retireAll retires m and its predecessor. Client.mu held.
func (m *member) retireAll() {
	if p := m.predecessor; p != nil {
		m.predecessor = nil
		p.retire()
	}
	m.retire()
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
