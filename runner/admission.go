package runner

import (
	"context"
	"errors"
	"io"
	"time"

	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Admission bounds the request bytes an (authorized) caller can make the
// runner hold. grpc-go reads and decodes a unary request completely before
// any handler or interceptor runs, so the model's services are registered as
// streams (the wire is the same for a unary call) and their request is only
// read once a budget admits it:
//
//   - before reading, a call reserves the largest request (MaxRecvBytes) of a
//     runner-wide budget, waiting its turn (its data stays under HTTP/2 flow
//     control meanwhile: at most one stream window buffered);
//   - once decoded, the reservation shrinks to the request's real size, held
//     until the call answers (queued requests are memory too).
//
// With MaxConcurrentStreams per connection this bounds what a runner holds:
// budget + connections × streams × stream window.
type admission struct {
	budget  *semaphore.Weighted
	maxRecv int64
	wait    time.Duration
	metrics *metrics
}

// modelService re-declares the unary methods of desc as streams that call
// the generated handlers with a decoder behind the admission budget, and
// with the interceptors chained.
func (a *admission) modelService(desc *grpc.ServiceDesc, interceptors []grpc.UnaryServerInterceptor) *grpc.ServiceDesc {
	out := &grpc.ServiceDesc{ServiceName: desc.ServiceName, HandlerType: desc.HandlerType, Metadata: desc.Metadata,
		Streams: append([]grpc.StreamDesc(nil), desc.Streams...)}
	chain := chainUnary(interceptors)
	for _, md := range desc.Methods {
		handler := md.Handler
		out.Streams = append(out.Streams, grpc.StreamDesc{StreamName: md.MethodName,
			Handler: func(srv any, ss grpc.ServerStream) error {
				ctx := ss.Context()
				var held int64
				defer func() {
					if held > 0 {
						a.release(held)
					}
				}()
				dec := func(m any) error {
					n, err := a.receive(ctx, ss, m)
					held = n
					return err
				}
				resp, err := handler(srv, ctx, dec, chain)
				if err != nil {
					return err
				}
				return ss.SendMsg(resp)
			}})
	}
	return out
}

// receive reads one request into m under the budget and returns the bytes
// it still holds.
func (a *admission) receive(ctx context.Context, ss grpc.ServerStream, m any) (int64, error) {
	wctx, cancel := context.WithTimeout(ctx, a.wait)
	defer cancel()
	start := time.Now()
	if err := a.budget.Acquire(wctx, a.maxRecv); err != nil {
		a.metrics.admissionWaits.WithLabelValues("refused").Inc()
		if ctx.Err() != nil {
			return 0, status.FromContextError(ctx.Err()).Err()
		}
		return 0, status.Error(codes.ResourceExhausted, "the runner holds as many request bytes as it may; retry shortly")
	}
	a.metrics.admissionWaits.WithLabelValues("admitted").Inc()
	a.metrics.admissionWait.Observe(time.Since(start).Seconds())
	a.metrics.admittedBytes.Add(float64(a.maxRecv))
	if err := ss.RecvMsg(m); err != nil {
		a.release(a.maxRecv)
		if errors.Is(err, io.EOF) {
			return 0, status.Error(codes.InvalidArgument, "the call carried no request message")
		}
		return 0, err
	}
	msg, ok := m.(proto.Message)
	if !ok {
		a.release(a.maxRecv)
		return 0, errors.New("runner: request is not a protobuf message")
	}
	n := min(int64(proto.Size(msg)), a.maxRecv)
	a.release(a.maxRecv - n)
	return n, nil
}

func (a *admission) release(n int64) {
	if n > 0 {
		a.budget.Release(n)
		a.metrics.admittedBytes.Sub(float64(n))
	}
}

// chainUnary runs interceptors in order around the handler, as
// grpc.ChainUnaryInterceptor does for real unary methods.
func chainUnary(interceptors []grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	if len(interceptors) == 0 {
		return nil
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		next := handler
		for i := len(interceptors) - 1; i >= 0; i-- {
			ic, h := interceptors[i], next
			next = func(ctx context.Context, req any) (any, error) { return ic(ctx, req, info, h) }
		}
		return next(ctx, req)
	}
}

// largeBuffersUnpooled is grpc-go's default buffer pool, except that
// buffers over 1 MiB (a whole large request, materialized for decoding) are
// not kept for reuse: a pooled 64 MiB buffer survives garbage collections
// and would count twice against what the request budget means to bound.
type largeBuffersUnpooled struct{ mem.BufferPool }

const largestPooledBuffer = 1 << 20

func (p largeBuffersUnpooled) Get(n int) *[]byte {
	if n > largestPooledBuffer {
		b := make([]byte, n)
		return &b
	}
	return p.BufferPool.Get(n)
}

func (p largeBuffersUnpooled) Put(b *[]byte) {
	if cap(*b) > largestPooledBuffer {
		return
	}
	p.BufferPool.Put(b)
}

// MemoryLimit is a soft Go memory limit (runtime/debug.SetMemoryLimit) for a
// runner with these request bounds: a base for the runner itself, plus about
// four copies of the request budget (received, decoded, framed for the
// worker, and the collector's slack). Requests beyond it still work (the
// limit is soft); the collector just works harder near it.
func MemoryLimit(maxRecv int, maxInflight int64) int64 {
	if maxRecv <= 0 {
		maxRecv = DefaultMaxRecvBytes
	}
	if maxInflight <= 0 {
		maxInflight = 2 * int64(maxRecv)
	}
	return 64<<20 + 4*max(maxInflight, int64(maxRecv))
}
