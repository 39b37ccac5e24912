package runner_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	tipb "github.com/modelnodes/modelnodes/proto/train_infer"
	"github.com/modelnodes/modelnodes/runner"
)

// The Go example model through every RPC with every Variant type.
func TestGoModelEveryRPCAndVariant(t *testing.T) {
	h := start(t, exampleWorker(t)).ready()
	for _, svc := range []string{runner.ServiceDynamicSubclass, runner.ServiceTrainInfer, runner.ServiceTrainInferStream} {
		h.waitHealth(svc, healthpb.HealthCheckResponse_SERVING)
	}
	wantCode(t, "Call before Setup", h.call("echo", nil).GetStatus(), "FAILED_PRECONDITION", "")
	wantCode(t, "empty className", h.setup("", nil), "INVALID_ARGUMENT", "")
	wantCode(t, "setup", h.setup("tracker.Base", args(commonspb.Int(4)), kw("name", commonspb.String("n"))), "SUCCESS", "")
	wantCode(t, "second setup", h.setup("tracker.Base", nil), "SUCCESS", "Instance already exists")
	cfg := h.call("config", nil)
	if got := string(cfg.GetMethodResponse().GetValue()); got != `{"args": {"args": ["INT:8"], "kwargs": {"name": "STRING:1"}}, "className": "tracker.Base"}` {
		t.Errorf("config() = %s", got)
	}

	variants := []*commonspb.Variant{
		commonspb.Double(3.5), commonspb.Int(-9), commonspb.String("ü"),
		commonspb.RawJSON([]byte(`[NaN, {"a": Infinity}]`)),
		commonspb.Parquet([]byte("PAR1....PAR1")), commonspb.Arrow([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}),
	}
	for _, v := range variants {
		res := h.call("echo", args(v))
		if res.GetStatus().GetCode() != "SUCCESS" || !proto.Equal(res.GetMethodResponse(), v) {
			t.Errorf("echo(%s) = %v", v.GetType(), res)
		}
		ctx := ctxTimeout(t, 10*time.Second)
		for name, infer := range map[string]func() (*tipb.InferResponse, error){
			"TrainInfer":       func() (*tipb.InferResponse, error) { return h.ti.Infer(ctx, &tipb.InferRequest{Argument: v}) },
			"TrainInferStream": func() (*tipb.InferResponse, error) { return h.ts.Infer(ctx, &tipb.InferRequest{Argument: v}) },
		} {
			res, err := infer()
			if err != nil || !proto.Equal(res.GetPrediction(), v) {
				t.Errorf("%s.Infer(%s) = %v, %v", name, v.GetType(), res, err)
			}
		}
	}
	if _, err := h.ti.Setup(ctxTimeout(t, 5*time.Second), &emptypb.Empty{}); err != nil {
		t.Errorf("TrainInfer.Setup: %v", err)
	}
	if _, err := h.ts.Reinitialize(ctxTimeout(t, 5*time.Second), &emptypb.Empty{}); err != nil {
		t.Errorf("TrainInferStream.Reinitialize: %v", err)
	}
	if v, _ := h.call("add", args(commonspb.Int(2), commonspb.Int(40))).GetMethodResponse().AsInt(); v != 42 {
		t.Errorf("add(2, 40) = %d", v)
	}
	wantCode(t, "missing positional", h.call("add", args(commonspb.Int(2))).GetStatus(), "INVALID_ARGUMENT", "missing positional argument 1")
	wantCode(t, "unknown method", h.call("nope", nil).GetStatus(), "BAD_IMPLEMENTATION", "nope")
	wantCode(t, "7-byte DOUBLE", h.call("echo", args(&commonspb.Variant{Type: commonspb.VariantType_DOUBLE, Value: []byte{1, 2, 3, 4, 5, 6, 7}})).GetStatus(),
		"INVALID_ARGUMENT", "8 bytes")
	wantCode(t, "non-JSON JSON", h.call("echo", args(commonspb.RawJSON([]byte(`{"a": nan}`)))).GetStatus(), "INVALID_ARGUMENT", "JSON")
	if _, err := h.ti.Infer(ctxTimeout(t, 5*time.Second), &tipb.InferRequest{Argument: commonspb.RawJSON([]byte("]"))}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Infer with bad JSON: %v, want InvalidArgument", err)
	}
	if v, _ := h.call("add", args(commonspb.Double(1), commonspb.Double(0.5))).GetMethodResponse().AsDouble(); v != 1.5 {
		t.Errorf("still serving after bad input: add = %v", v)
	}
}
