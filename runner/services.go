package runner

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	tipb "github.com/modelnodes/modelnodes/proto/train_infer"
	"github.com/modelnodes/modelnodes/runner/frame"
)

// Keys under which the worker supervisor remembers the requests that built
// the model's state, to replay them on a restarted worker.
const (
	stateDynamicSubclass  = "dynamic_subclass"
	stateTrainInfer       = "train_infer"
	stateTrainInferStream = "train_infer_stream"
)

type dynamicSubclass struct {
	dspb.UnimplementedDynamicSubclassServiceServer
	s *Server
}

func (d *dynamicSubclass) Setup(ctx context.Context, in *dspb.SetupRequest) (*dspb.SetupResponse, error) {
	if st := checkArgs(in.GetInstanceArguments(), in.GetInstanceKwArguments()); st != nil {
		d.s.metrics.calls.WithLabelValues("Setup", st.GetCode()).Inc()
		return &dspb.SetupResponse{Status: st}, nil
	}
	req := &frame.Request{Kind: frame.KindSetup, Name: in.GetClassName(),
		Args: in.GetInstanceArguments(), Kwargs: in.GetInstanceKwArguments()}
	res, err := d.s.do(ctx, "Setup", req)
	if err != nil {
		return nil, err
	}
	st := resultStatus(res)
	if res.Code == frame.CodeSuccess && res.Message == "" {
		// A new instance: rebuild it if the worker is ever restarted. A
		// replayed Setup finds it, so the coordinator's own Setup after a
		// restart is answered MsgInstanceExists, as without one.
		d.s.sup.Remember(stateDynamicSubclass, req)
		st.Message = frame.MsgInstanceCreated
	}
	return &dspb.SetupResponse{Status: st}, nil
}

func (d *dynamicSubclass) Call(ctx context.Context, in *dspb.CallRequest) (*dspb.CallResponse, error) {
	if st := checkArgs(in.GetMethodArguments(), in.GetMethodKwArguments()); st != nil {
		d.s.metrics.calls.WithLabelValues("Call", st.GetCode()).Inc()
		return &dspb.CallResponse{Status: st}, nil
	}
	res, err := d.s.do(ctx, "Call", &frame.Request{Kind: frame.KindCall, Name: in.GetMethodName(),
		Args: in.GetMethodArguments(), Kwargs: in.GetMethodKwArguments()})
	if err != nil {
		return nil, err
	}
	return &dspb.CallResponse{Status: resultStatus(res), MethodResponse: res.Value}, nil
}

func (d *dynamicSubclass) Rest(ctx context.Context, _ *emptypb.Empty) (*dspb.RestResponse, error) {
	d.s.sup.Forget(stateDynamicSubclass)
	res, err := d.s.do(ctx, "Rest", &frame.Request{Kind: frame.KindRest})
	if err != nil {
		return nil, err
	}
	return &dspb.RestResponse{Status: resultStatus(res)}, nil
}

// trainInfer serves TrainInferService; stream selects the streaming flavour,
// whose infer function is a generator fed one value per Infer.
type trainInfer struct {
	s      *Server
	stream bool
}

// The generated "unimplemented" embeddings sit one level deeper than
// trainInfer's methods, so trainInfer's win and both services share them.
type (
	unimplementedTrainInfer struct {
		tipb.UnimplementedTrainInferServiceServer
	}
	unimplementedTrainInferStream struct {
		tipb.UnimplementedTrainInferStreamServiceServer
	}
	trainInferUnary struct {
		trainInfer
		unimplementedTrainInfer
	}
	trainInferStream struct {
		trainInfer
		unimplementedTrainInferStream
	}
)

func (t *trainInfer) stateKey() string {
	if t.stream {
		return stateTrainInferStream
	}
	return stateTrainInfer
}

func (t *trainInfer) rpc(name string) string {
	if t.stream {
		return "Stream" + name
	}
	return name
}

func (t *trainInfer) Setup(ctx context.Context, _ *emptypb.Empty) (*emptypb.Empty, error) {
	req := &frame.Request{Kind: frame.KindInferSetup, Stream: t.stream}
	if _, err := t.run(ctx, "Setup", req); err != nil {
		return nil, err
	}
	t.s.sup.Remember(t.stateKey(), req)
	return &emptypb.Empty{}, nil
}

func (t *trainInfer) Infer(ctx context.Context, in *tipb.InferRequest) (*tipb.InferResponse, error) {
	arg := in.GetArgument()
	if arg == nil {
		arg = &commonspb.Variant{}
	}
	if err := arg.Validate(); err != nil {
		t.s.metrics.calls.WithLabelValues(t.rpc("Infer"), frame.CodeInvalidArgument).Inc()
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	res, err := t.run(ctx, "Infer", &frame.Request{Kind: frame.KindInfer, Stream: t.stream, Value: arg})
	if err != nil {
		return nil, err
	}
	return &tipb.InferResponse{Prediction: res.Value}, nil
}

func (t *trainInfer) Reinitialize(ctx context.Context, _ *emptypb.Empty) (*emptypb.Empty, error) {
	if _, err := t.run(ctx, "Reinitialize", &frame.Request{Kind: frame.KindInferReset, Stream: t.stream}); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// run sends a TrainInfer request; these RPCs carry no Status, so a failure
// becomes a gRPC error whose code follows the CrunchDAO status.
func (t *trainInfer) run(ctx context.Context, name string, req *frame.Request) (*frame.Result, error) {
	res, err := t.s.do(ctx, t.rpc(name), req)
	if err != nil {
		return nil, err
	}
	switch {
	case res.Code == frame.CodeFailedPrecondition:
		// Their runner's exact words (frame.MsgInferNotSetUp); the gRPC
		// code says the rest.
		return nil, status.Error(codes.FailedPrecondition, res.Message)
	case res.Code != frame.CodeSuccess:
		return nil, status.Error(statusCode(res.Code), res.Code+": "+res.Message)
	}
	return res, nil
}

// statusCode maps a CrunchDAO status code onto the gRPC code closest in
// meaning (a Python grpcio server answers UNKNOWN when a handler raises).
func statusCode(code string) codes.Code {
	switch code {
	case frame.CodeInvalidArgument:
		return codes.InvalidArgument
	case frame.CodeFailedPrecondition:
		return codes.FailedPrecondition
	case frame.CodeBadImplementation:
		return codes.Unimplemented
	}
	return codes.Unknown
}
