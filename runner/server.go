// Package runner is the trusted half of a model node: a gRPC server that makes
// one model callable, wire-compatible with CrunchDAO's model runner protocol
// (DynamicSubclassService, TrainInferService, TrainInferStreamService), plus
// the standard health and reflection services. The model itself runs in a
// separate worker process (package worker); the runner holds the TLS key, which
// the worker never sees.
package runner

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/modelnodes/modelnodes/delegation"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	tipb "github.com/modelnodes/modelnodes/proto/train_infer"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/runner/frame"
	"github.com/modelnodes/modelnodes/runner/runneropts"
	"github.com/modelnodes/modelnodes/runner/worker"
)

// DefaultMaxRecvBytes is the largest request accepted: CrunchDAO's runner
// takes 64 MiB (grpc-go's own default is 4 MiB).
const DefaultMaxRecvBytes = runneropts.DefaultMaxRecvBytes

// DefaultMaxStreamsPerConn is a connection's concurrent calls: with the
// 4 MiB stream window, a connection can make the runner buffer at most
// 32 × 4 MiB of requests that wait for admission.
const DefaultMaxStreamsPerConn = runneropts.DefaultMaxStreamsPerConn

// Service names, as health checks and reflection know them.
const (
	ServiceDynamicSubclass  = "dynamic_subclass.DynamicSubclassService"
	ServiceTrainInfer       = "train_infer.TrainInferService"
	ServiceTrainInferStream = "train_infer.TrainInferStreamService"
)

// Config configures a runner.
type Config struct {
	// TLS is the server's certificate; nil serves plaintext (only with an
	// explicit choice: see cmd/model-runner's --plaintext). With a CA file,
	// callers must present a client certificate that chains to it.
	TLS *tlsfiles.Reloader
	// MaxRecvBytes bounds a request; DefaultMaxRecvBytes when 0.
	MaxRecvBytes int
	// MaxInflightBytes bounds the request bytes the runner receives or
	// holds for queued and running calls at once (see admission); more
	// calls wait for their turn, at most CallTimeout, then get
	// RESOURCE_EXHAUSTED. At least MaxRecvBytes; 2 × MaxRecvBytes when 0.
	// Decoding costs about twice a request's size while it is read.
	MaxInflightBytes int64
	// MaxStreamsPerConn bounds the concurrent calls of one connection
	// (HTTP/2 MAX_CONCURRENT_STREAMS; clients queue the rest);
	// DefaultMaxStreamsPerConn when 0.
	MaxStreamsPerConn uint32
	// CallTimeout caps every call, whatever deadline the caller set; a
	// request still running on the worker past it means the worker hung
	// (it is killed and restarted). Default 5 minutes.
	CallTimeout time.Duration
	// Authorizer, when set, admits only the crunch's coordinator: others
	// are refused at the TLS handshake, and every model call is checked
	// again when its headers arrive (health and reflection are open to
	// whoever passed the handshake). Needs TLS with a client CA.
	Authorizer *authz.Authorizer
	// Delegation, when set, returns the cruncher's wallet delegation, which
	// the runner sends as response headers on every model call.
	Delegation func() *delegation.Proof
	// Worker says how to run the model worker.
	Worker worker.Config
	// Faulty, when set, says why the model cannot run at all (the driver
	// could not build its environment): no worker starts, the runner stays
	// up and healthy while the model's services are NOT_SERVING, as for a
	// submission that failed to import, and every model call answers
	// BAD_IMPLEMENTATION with this text, which CrunchDAO's client reports as
	// the model's fault.
	Faulty string
	// Logger receives structured logs.
	Logger hclog.Logger
	// Registerer receives the Prometheus metrics; nil keeps them private.
	Registerer prometheus.Registerer
}

// Server is a running model runner.
type Server struct {
	cfg     Config
	log     hclog.Logger
	grpc    *grpc.Server
	health  *health.Server
	sup     *worker.Supervisor
	metrics *metrics
}

// New builds a runner; Serve starts it.
func New(cfg Config) *Server {
	if cfg.MaxRecvBytes <= 0 {
		cfg.MaxRecvBytes = DefaultMaxRecvBytes
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 5 * time.Minute
	}
	if cfg.MaxInflightBytes <= 0 {
		cfg.MaxInflightBytes = 2 * int64(cfg.MaxRecvBytes)
	}
	// A budget below one request would make every large call wait forever.
	cfg.MaxInflightBytes = max(cfg.MaxInflightBytes, int64(cfg.MaxRecvBytes))
	if cfg.MaxStreamsPerConn == 0 {
		cfg.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, health: health.NewServer(), metrics: newMetrics(cfg.Registerer)}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(certExpiry{tls: cfg.TLS, now: time.Now})
	}

	wc := cfg.Worker
	if wc.Logger == nil {
		wc.Logger = cfg.Logger.Named("worker")
	}
	// A request outliving the longest call anybody may wait for is a hang.
	wc.HangTimeout = cfg.CallTimeout + 5*time.Second
	wc.MaxFrame = max(wc.MaxFrame, cfg.MaxRecvBytes+1<<20)
	wc.OnState = s.workerState
	// While a worker restarts, calls wait for the next one and health stays
	// as it was: CrunchDAO's client reconnects (and sets the model up
	// again) when it reads NOT_SERVING after a failed call.
	wc.OnRestarting = func() { s.metrics.up.Set(0) }
	wc.OnHeld = s.metrics.held
	wc.OnRestart = s.metrics.restarts.Inc
	s.sup = worker.New(wc)
	s.workerState(nil)
	if cfg.Faulty != "" {
		s.workerState(&frame.Hello{LoadError: cfg.Faulty})
	}

	creds := insecure.NewCredentials()
	opts := append(TransportOptions(),
		grpc.MaxRecvMsgSize(cfg.MaxRecvBytes),
		grpc.MaxSendMsgSize(1<<31-1),
		grpc.MaxConcurrentStreams(cfg.MaxStreamsPerConn),
		experimental.BufferPool(largeBuffersUnpooled{mem.DefaultBufferPool()}),
		// Calls run on a few long-lived goroutines (grpc-go starts one
		// per call when all are busy) rather than a new goroutine each,
		// whose stack grows again on every call.
		grpc.NumStreamWorkers(streamWorkers),
	)
	var interceptors []grpc.UnaryServerInterceptor
	if cfg.Authorizer != nil {
		// The handshake refuses callers who may not call, so they never
		// send a byte the runner reads; the tap re-checks each call before
		// its message is read (the policy or CRL may have changed since
		// the connection opened); the interceptor is defence in depth.
		if cfg.TLS != nil {
			creds = credentials.NewTLS(cfg.TLS.ServerConfigWith(cfg.Authorizer.VerifyConnection))
		}
		opts = append(opts, grpc.InTapHandle(cfg.Authorizer.TapHandle(IsModelMethod)))
		interceptors = append(interceptors, cfg.Authorizer.UnaryInterceptor(IsModelMethod))
	} else if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS.ServerConfig())
	}
	if cfg.Delegation != nil {
		interceptors = append(interceptors, delegationHeaders(cfg.Delegation))
	}
	s.grpc = grpc.NewServer(append(opts, grpc.Creds(creds))...)
	adm := &admission{budget: semaphore.NewWeighted(cfg.MaxInflightBytes), maxRecv: int64(cfg.MaxRecvBytes),
		wait: cfg.CallTimeout, metrics: s.metrics}
	s.grpc.RegisterService(adm.modelService(&dspb.DynamicSubclassService_ServiceDesc, interceptors), &dynamicSubclass{s: s})
	s.grpc.RegisterService(adm.modelService(&tipb.TrainInferService_ServiceDesc, interceptors), &trainInferUnary{trainInfer: trainInfer{s: s}})
	s.grpc.RegisterService(adm.modelService(&tipb.TrainInferStreamService_ServiceDesc, interceptors), &trainInferStream{trainInfer: trainInfer{s: s, stream: true}})
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	return s
}

// streamWorkers is how many goroutines keep serving calls (see
// grpc.NumStreamWorkers): one model answers one call at a time unless it
// says otherwise, so a few cover the common case.
const streamWorkers = 4

// HTTP/2 flow-control windows of a runner. Static windows turn off grpc-go's
// bandwidth-delay probing, whose pings cost a coordinator one more write per
// call on each of its (many) connections; 4 MiB per stream still moves a
// 64 MiB request at ~80 MB/s over a 50 ms round trip.
const (
	streamWindow = 4 << 20
	connWindow   = 8 << 20
)

// TransportOptions are the runner's connection-level gRPC settings (flow
// control and keepalive), exported so benchmarks measure what ships.
func TransportOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		// CrunchDAO's client pings every 300 s; grpc-go's default
		// enforcement (5 min) allows it, so keep it.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Minute, PermitWithoutStream: true}),
	}
}

// IsModelMethod reports whether a full gRPC method name belongs to the
// model's services (as opposed to health or reflection).
func IsModelMethod(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/dynamic_subclass.") || strings.HasPrefix(fullMethod, "/train_infer.")
}

// delegationHeaders sends the wallet delegation with every model call's
// response headers, as CrunchDAO's runner does.
func delegationHeaders(proof func() *delegation.Proof) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if p := proof(); p != nil && IsModelMethod(info.FullMethod) {
			_ = grpc.SetHeader(ctx, p.Headers())
		}
		return handler(ctx, req)
	}
}

// ServeHealth serves only the health service on lis until ctx ends: a port
// for Consul's gRPC checks that opens nothing of the model.
func (s *Server) ServeHealth(ctx context.Context, lis net.Listener) error {
	hs := grpc.NewServer()
	healthpb.RegisterHealthServer(hs, s.health)
	go func() {
		<-ctx.Done()
		hs.Stop()
	}()
	s.log.Info("health-only endpoint serving", "address", lis.Addr().String())
	return hs.Serve(lis)
}

// TLSReloaded records the outcome of a TLS reload (for metrics and logs).
func (s *Server) TLSReloaded(err error) {
	if err != nil {
		s.metrics.tlsLoads.WithLabelValues("error").Inc()
		s.log.Error("TLS files changed but cannot be used; keeping the previous ones", "error", err)
		return
	}
	s.metrics.tlsLoads.WithLabelValues("ok").Inc()
	s.log.Info("TLS files reloaded")
}

// Serve runs the worker and serves lis until ctx ends, then stops gracefully:
// health turns NOT_SERVING, in-flight calls get up to drain to finish.
func (s *Server) Serve(ctx context.Context, lis net.Listener, drain time.Duration) error {
	wctx, stopWorker := context.WithCancel(context.Background())
	workerDone := make(chan struct{})
	go func() {
		defer close(workerDone)
		if s.cfg.Faulty == "" {
			s.sup.Run(wctx)
		}
	}()
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.grpc.Serve(lis) }()
	s.log.Info("model runner serving", "address", lis.Addr().String(), "tls", s.cfg.TLS != nil)

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}
	s.health.Shutdown()
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(drain):
		s.grpc.Stop()
	}
	stopWorker()
	<-workerDone
	return err
}

// workerState turns the worker's hello into health statuses: "" is SERVING
// whenever a worker takes calls (or calls wait for one being restarted: the
// supervisor reports no state then); a service is SERVING when the model
// loaded and implements it.
func (s *Server) workerState(h *frame.Hello) {
	up := h != nil
	s.metrics.up.Set(b2f(up))
	s.health.SetServingStatus("", servingStatus(up))
	has := map[string]bool{}
	if up && h.LoadError == "" {
		for _, svc := range h.Services {
			has[svc] = true
		}
	}
	s.health.SetServingStatus(names.HealthLoaded, servingStatus(up && h.LoadError == ""))
	s.health.SetServingStatus(ServiceDynamicSubclass, servingStatus(has["dynamic_subclass"]))
	s.health.SetServingStatus(ServiceTrainInfer, servingStatus(has["train_infer"]))
	s.health.SetServingStatus(ServiceTrainInferStream, servingStatus(has["train_infer_stream"]))
}

func servingStatus(ok bool) healthpb.HealthCheckResponse_ServingStatus {
	if ok {
		return healthpb.HealthCheckResponse_SERVING
	}
	return healthpb.HealthCheckResponse_NOT_SERVING
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// do sends one request to the worker under the call timeout, accounting for
// it in the metrics. A nil result comes with a gRPC status error.
func (s *Server) do(ctx context.Context, rpc string, req *frame.Request) (*frame.Result, error) {
	start := time.Now()
	s.metrics.inflight.Inc()
	defer s.metrics.inflight.Dec()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
	defer cancel()
	var res *frame.Result
	var err error
	if s.cfg.Faulty != "" {
		res = &frame.Result{Code: frame.CodeBadImplementation, Message: s.cfg.Faulty}
	} else {
		res, err = s.sup.Do(ctx, req)
	}
	outcome := ""
	switch {
	case err == nil:
		outcome = res.Code
	case errors.Is(err, worker.ErrWorkerDied):
		// The model's fault: answered as a status, like any model failure.
		res = &frame.Result{Code: frame.CodeUnknown, Message: fmt.Sprintf("%v; the model worker is being restarted", err)}
		outcome, err = res.Code, nil
	default:
		err = grpcError(err)
		outcome = commonspb.CodeName(status.Code(err))
	}
	s.metrics.calls.WithLabelValues(rpc, outcome).Inc()
	s.metrics.latency.WithLabelValues(rpc).Observe(time.Since(start).Seconds())
	if err != nil {
		s.log.Debug("call refused", "rpc", rpc, "error", err)
	}
	return res, err
}

func grpcError(err error) error {
	switch {
	case errors.Is(err, worker.ErrUnavailable):
		return status.Error(codes.Unavailable, "the model worker is not running; retry shortly")
	case errors.Is(err, worker.ErrBusy):
		return status.Error(codes.ResourceExhausted, "the model's call queue is full; retry shortly")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "the model did not answer before the deadline")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "the call was cancelled")
	}
	return status.Error(codes.Internal, err.Error())
}

// checkArgs validates every variant before it reaches the model, so a
// malformed value gets the same INVALID_ARGUMENT from any runtime.
func checkArgs(args []*commonspb.Argument, kwargs []*commonspb.KwArgument) *commonspb.Status {
	for _, a := range args {
		if err := a.GetData().Validate(); err != nil {
			return &commonspb.Status{Code: frame.CodeInvalidArgument, Message: fmt.Sprintf("argument %d: %v", a.GetPosition(), err)}
		}
	}
	for _, k := range kwargs {
		if err := k.GetData().Validate(); err != nil {
			return &commonspb.Status{Code: frame.CodeInvalidArgument, Message: fmt.Sprintf("argument %q: %v", k.GetKeyword(), err)}
		}
	}
	return nil
}

func resultStatus(r *frame.Result) *commonspb.Status {
	return &commonspb.Status{Code: r.Code, Message: r.Message}
}
