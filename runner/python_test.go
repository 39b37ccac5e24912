package runner_test

import (
	"math"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/modelnodes/modelnodes/names"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	tipb "github.com/modelnodes/modelnodes/proto/train_infer"
	"github.com/modelnodes/modelnodes/runner"
)

func args(vs ...*commonspb.Variant) []*commonspb.Argument {
	out := make([]*commonspb.Argument, len(vs))
	for i, v := range vs {
		out[i] = &commonspb.Argument{Position: uint32(i), Data: v}
	}
	return out
}

func kw(k string, v *commonspb.Variant) *commonspb.KwArgument {
	return &commonspb.KwArgument{Keyword: k, Data: v}
}

func (h *harness) setup(className string, a []*commonspb.Argument, k ...*commonspb.KwArgument) *commonspb.Status {
	h.t.Helper()
	res, err := h.ds.Setup(ctxTimeout(h.t, 20*time.Second), &dspb.SetupRequest{ClassName: className, InstanceArguments: a, InstanceKwArguments: k})
	if err != nil {
		h.t.Fatalf("Setup(%q): %v", className, err)
	}
	return res.GetStatus()
}

func (h *harness) call(method string, a []*commonspb.Argument, k ...*commonspb.KwArgument) *dspb.CallResponse {
	h.t.Helper()
	res, err := h.ds.Call(ctxTimeout(h.t, 20*time.Second), &dspb.CallRequest{MethodName: method, MethodArguments: a, MethodKwArguments: k})
	if err != nil {
		h.t.Fatalf("Call(%q): %v", method, err)
	}
	return res
}

func wantCode(t *testing.T, what string, st *commonspb.Status, code string, msgPart string) {
	t.Helper()
	if st.GetCode() != code || !strings.Contains(st.GetMessage(), msgPart) {
		t.Errorf("%s: status %s %q, want %s containing %q", what, st.GetCode(), st.GetMessage(), code, msgPart)
	}
}

func TestPythonSetupStatuses(t *testing.T) {
	h := start(t, pythonWorker(t, "pymodel")).ready()
	h.waitHealth(names.HealthLoaded, healthpb.HealthCheckResponse_SERVING) // its model loaded
	wantCode(t, "Call before Setup", h.call("echo", nil).GetStatus(), "FAILED_PRECONDITION", "Setup")
	wantCode(t, "empty className", h.setup("", nil), "INVALID_ARGUMENT", "class_name")
	wantCode(t, "className without module", h.setup("Tracker", nil), "SETUP_FAILED", "module")
	wantCode(t, "base missing from module", h.setup("crunch_base.Nope", nil), "SETUP_FAILED", "Class 'Nope' not found")
	wantCode(t, "base module not importable", h.setup("no_such_module.Base", nil), "BAD_IMPLEMENTATION", "no_such_module")
	wantCode(t, "no subclass", h.setup("crunch_base.Unused", nil), "BAD_IMPLEMENTATION", "No Inherited class")
	if !pythonHas("pyarrow") {
		wantCode(t, "PARQUET constructor argument without pyarrow", h.setup("crunch_base.Tracker", nil, kw("offset", commonspb.Parquet([]byte("PAR1")))),
			"BAD_IMPLEMENTATION", "PARQUET arguments need pyarrow")
	}
	wantCode(t, "unknown constructor keyword", h.setup("crunch_base.Tracker", nil, kw("bogus", commonspb.Int(1))), "SETUP_FAILED", "bogus")
	wantCode(t, "constructor arguments", h.setup("crunch_base.Tracker", args(commonspb.Double(2)), kw("offset", commonspb.Int(10))), "SUCCESS", "")
	wantCode(t, "second Setup", h.setup("crunch_base.Tracker", nil), "SUCCESS", "Instance already exists")

	// The participant's subclass was picked, not the benchmark beside the base,
	// with the constructor's arguments: 3 * 2.0 + 10.
	res := h.call("predict", args(commonspb.Int(3)))
	wantCode(t, "predict", res.GetStatus(), "SUCCESS", "")
	if f, err := res.GetMethodResponse().AsDouble(); err != nil || f != 16 {
		t.Errorf("predict(3) = %v (%v), want DOUBLE 16", res.GetMethodResponse(), err)
	}

	rest, err := h.ds.Rest(ctxTimeout(t, 10*time.Second), &emptypb.Empty{})
	if err != nil || rest.GetStatus().GetCode() != "SUCCESS" {
		t.Fatalf("Rest: %v %v", rest, err)
	}
	wantCode(t, "Call after Rest", h.call("echo", nil).GetStatus(), "FAILED_PRECONDITION", "")
	rest, err = h.ds.Rest(ctxTimeout(t, 10*time.Second), &emptypb.Empty{})
	if err != nil || rest.GetStatus().GetCode() != "SUCCESS" {
		t.Fatalf("Rest without an instance: %v %v", rest, err)
	}
}

func TestPythonCallVariantsAndArguments(t *testing.T) {
	h := start(t, pythonWorker(t, "pymodel")).ready()
	wantCode(t, "setup", h.setup("crunch_base.Tracker", nil), "SUCCESS", "")

	// Every scalar type survives a round trip through Python with its type.
	for _, v := range []*commonspb.Variant{
		commonspb.Double(-1.25), commonspb.Int(math.MinInt64), commonspb.String("héllo ✓"),
	} {
		res := h.call("echo", args(v))
		wantCode(t, "echo "+v.GetType().String(), res.GetStatus(), "SUCCESS", "")
		if res.GetMethodResponse().GetType() != v.GetType() || string(res.GetMethodResponse().GetValue()) != string(v.GetValue()) {
			t.Errorf("echo(%s) = %v", v.GetType(), res.GetMethodResponse())
		}
	}
	// JSON in Python's dialect, NaN and Infinity included, both ways.
	res := h.call("echo", args(commonspb.RawJSON([]byte(`{"x": [1, NaN, -Infinity], "y": "z"}`))))
	got, err := res.GetMethodResponse().AsJSON()
	if err != nil {
		t.Fatalf("echo JSON: %v (%v)", err, res.GetStatus())
	}
	xs := got.(map[string]any)["x"].([]any)
	if xs[0] != 1.0 || !math.IsNaN(xs[1].(float64)) || !math.IsInf(xs[2].(float64), -1) {
		t.Errorf("echo JSON = %v", got)
	}
	// None in, None out: SUCCESS with no methodResponse.
	res = h.call("echo", args(&commonspb.Variant{Type: commonspb.VariantType_NONE}))
	if res.GetStatus().GetCode() != "SUCCESS" || res.MethodResponse != nil {
		t.Errorf("echo(None) = %v", res)
	}
	// Results are typed by value: bool -> INT, list -> JSON.
	if v, err := h.call("truth", nil).GetMethodResponse().AsInt(); err != nil || v != 1 {
		t.Errorf("truth() = %v %v, want INT 1", v, err)
	}
	types := h.call("types", args(commonspb.Int(1), commonspb.Double(1), commonspb.String("s"), commonspb.RawJSON([]byte("[]"))))
	if string(types.GetMethodResponse().GetValue()) != `["int", "float", "str", "list"]` {
		t.Errorf("types() = %s", types.GetMethodResponse().GetValue())
	}
	// Positional arguments go by position, not by order on the wire.
	res = h.call("add", []*commonspb.Argument{
		{Position: 1, Data: commonspb.String("b")}, {Position: 0, Data: commonspb.String("a")}})
	if s, _ := res.GetMethodResponse().AsString(); s != "ab" {
		t.Errorf("add(b@1, a@0) = %q, want \"ab\"", s)
	}
	// A keyword the method accepts is passed; one it does not is dropped.
	res = h.call("predict", args(commonspb.Int(2)), kw("scale", commonspb.Int(5)), kw("unknown", commonspb.Int(1)))
	wantCode(t, "predict with an unknown kwarg", res.GetStatus(), "SUCCESS", "")
	if v, _ := res.GetMethodResponse().AsInt(); v != 10 {
		t.Errorf("predict(2, scale=5) = %v, want INT 10", res.GetMethodResponse())
	}
	// A keyword naming a parameter already filled positionally is dropped too.
	res = h.call("predict", args(commonspb.Int(2), commonspb.Int(3)), kw("x", commonspb.Int(100)))
	if v, _ := res.GetMethodResponse().AsInt(); v != 6 {
		t.Errorf("predict(2, 3, x=100) = %v, want INT 6", res.GetMethodResponse())
	}
	wantCode(t, "missing positional", h.call("add", args(commonspb.Int(1))).GetStatus(), "INVALID_ARGUMENT", "b")
	wantCode(t, "unknown method", h.call("nope", nil).GetStatus(), "BAD_IMPLEMENTATION", "nope")
	wantCode(t, "empty method", h.call("", nil).GetStatus(), "INVALID_ARGUMENT", "methodName")
	wantCode(t, "raising method", h.call("fail", nil).GetStatus(), "MODEL_FAILED", "The model raised an exception: the model is unhappy")
	wantCode(t, "unencodable result", h.call("unencodable", nil).GetStatus(), "MODEL_FAILED", "object")
	// A result that cannot be encoded is the model's failure, whatever
	// breaks: CrunchDAO's client reads INVALID_ARGUMENT as the coordinator's
	// own mistake, and UNKNOWN hides whose fault it is.
	for kind, msg := range map[string]string{
		"set":       "returned a set",
		"surrogate": "cannot be encoded: UnicodeEncodeError",
		"circular":  "Circular reference",
		"huge int":  "does not fit in 64 bits",
	} {
		wantCode(t, "result "+kind, h.call("unencodable_as", args(commonspb.String(kind))).GetStatus(), "MODEL_FAILED", msg)
	}
	wantCode(t, "bad JSON", h.call("echo", args(commonspb.RawJSON([]byte("{nope")))).GetStatus(), "INVALID_ARGUMENT", "JSON")
	wantCode(t, "7-byte DOUBLE", h.call("echo", args(&commonspb.Variant{Type: commonspb.VariantType_DOUBLE, Value: make([]byte, 7)})).GetStatus(),
		"INVALID_ARGUMENT", "8 bytes")
	// The model's prints go to the log, not into the protocol.
	if v, err := h.call("noisy", nil).GetMethodResponse().AsInt(); err != nil || v != 1 {
		t.Errorf("noisy() = %v %v", v, err)
	}

	// PARQUET and ARROW need pyarrow in the model's environment: with it,
	// bytes that are no table are the caller's mistake; without it, the
	// submission's requirements are at fault (python_e2e_test.go decodes real
	// tables in environments from PyPI).
	for _, v := range []*commonspb.Variant{commonspb.Parquet([]byte("PAR1")), commonspb.Arrow([]byte{0xff})} {
		st := h.call("types", args(v)).GetStatus()
		if pythonHas("pyarrow") {
			wantCode(t, v.GetType().String(), st, "INVALID_ARGUMENT", "argument 0")
		} else {
			wantCode(t, v.GetType().String(), st, "BAD_IMPLEMENTATION", v.GetType().String()+" arguments need pyarrow")
		}
	}
	if t.Failed() {
		return
	}
	wantCode(t, "still serving", h.call("echo", args(commonspb.Int(1))).GetStatus(), "SUCCESS", "")
}

func pythonHas(module string) bool {
	return exec.Command("python3", "-c", "import "+module).Run() == nil
}

func TestPythonTrainInfer(t *testing.T) {
	h := start(t, pythonWorker(t, "pymodel")).ready()
	h.waitHealth(runner.ServiceTrainInfer, healthpb.HealthCheckResponse_SERVING)
	ctx := ctxTimeout(t, 20*time.Second)
	if _, err := h.ti.Infer(ctx, &tipb.InferRequest{Argument: commonspb.Int(1)}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Infer before Setup: %v, want FailedPrecondition", err)
	}
	if _, err := h.ti.Setup(ctx, &emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	res, err := h.ti.Infer(ctx, &tipb.InferRequest{Argument: commonspb.String("x")})
	if err != nil || string(res.GetPrediction().GetValue()) != `{"got": "x"}` {
		t.Fatalf("Infer: %v %v", res, err)
	}
	if _, err := h.ti.Reinitialize(ctx, &emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.ti.Infer(ctx, &tipb.InferRequest{Argument: &commonspb.Variant{Type: commonspb.VariantType_INT, Value: []byte{1}}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Infer with a 1-byte INT: %v, want InvalidArgument", err)
	}
	// This model's infer is a plain function: the streaming service refuses it.
	if _, err := h.ts.Setup(ctx, &emptypb.Empty{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("stream Setup of a non-generator infer: %v, want Unimplemented (BAD_IMPLEMENTATION)", err)
	}
}

func TestPythonTrainInferStream(t *testing.T) {
	h := start(t, pythonWorker(t, "pystream")).ready()
	h.waitHealth(runner.ServiceTrainInferStream, healthpb.HealthCheckResponse_SERVING)
	ctx := ctxTimeout(t, 20*time.Second)
	if _, err := h.ts.Setup(ctx, &emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	for i, want := range []float64{1, 3, 6} {
		res, err := h.ts.Infer(ctx, &tipb.InferRequest{Argument: commonspb.Double(float64(i + 1))})
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := res.GetPrediction().AsDouble(); got != want {
			t.Errorf("running total after %d = %v, want %v", i+1, got, want)
		}
	}
	// Reinitialize starts a fresh generator: the total restarts.
	if _, err := h.ts.Reinitialize(ctx, &emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	res, err := h.ts.Infer(ctx, &tipb.InferRequest{Argument: commonspb.Double(10)})
	if got, _ := res.GetPrediction().AsDouble(); err != nil || got != 10 {
		t.Errorf("after Reinitialize: %v %v, want 10", res, err)
	}
}

func TestPythonBrokenSubmission(t *testing.T) {
	h := start(t, pythonWorker(t, "pybroken")).ready()
	// The runner takes calls, but the model did not load: its services say so.
	h.waitHealth(runner.ServiceDynamicSubclass, healthpb.HealthCheckResponse_NOT_SERVING)
	// Overall SERVING (coordinators call it and see BAD_IMPLEMENTATION),
	// "loaded" NOT_SERVING: a new version's canary never turns healthy.
	h.waitHealth("", healthpb.HealthCheckResponse_SERVING)
	h.waitHealth(names.HealthLoaded, healthpb.HealthCheckResponse_NOT_SERVING)
	wantCode(t, "Setup of a submission that fails to import", h.setup("crunch_base.Tracker", nil),
		"BAD_IMPLEMENTATION", "a_module_that_does_not_exist")
}

// CrunchDAO's client reconnects a model whose health check fails: health must
// stay SERVING before Setup and while a long call runs.
func TestHealthServingDuringLongCall(t *testing.T) {
	h := start(t, pythonWorker(t, "pymodel")).ready() // before any Setup
	wantCode(t, "setup", h.setup("crunch_base.Tracker", nil), "SUCCESS", "")
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.call("sleep", args(commonspb.Double(1.5)))
	}()
	time.Sleep(300 * time.Millisecond)
	res, err := h.health.Check(ctxTimeout(t, 500*time.Millisecond), &healthpb.HealthCheckRequest{})
	if err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health during a long call: %v %v, want SERVING at once", res, err)
	}
	<-done
}
