package runner_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	tipb "github.com/modelnodes/modelnodes/proto/train_infer"
	"github.com/modelnodes/modelnodes/runner/frame"
)

// Where CrunchDAO's runner (crunch-model-runner 0.4.2,
// model_runner/servicers/dynamic_subclass_servicer.py and
// train_infer_servicer.py) answers a fixed message, ours answers the same
// text, in its order of checks, with either runtime: the Python host and a
// Go model. The texts are written out here, not taken from frame's
// constants, so that a changed constant fails.
func TestStatusMessagesAreCrunchDAOs(t *testing.T) {
	for _, rt := range []struct {
		name, class, missing string
		worker               func(testing.TB) []string
	}{
		{"python", "crunch_base.Tracker", "MyTracker", func(t testing.TB) []string { return pythonWorker(t, "pymodel") }},
		{"go", "tracker.Base", "echo", exampleWorker},
	} {
		t.Run(rt.name, func(t *testing.T) {
			h := start(t, rt.worker(t)).ready()
			exact := func(what string, code, msg string, got interface {
				GetCode() string
				GetMessage() string
			}) {
				t.Helper()
				if got.GetCode() != code || got.GetMessage() != msg {
					t.Errorf("%s: %s %q, want %s %q", what, got.GetCode(), got.GetMessage(), code, msg)
				}
			}
			rest := func() interface {
				GetCode() string
				GetMessage() string
			} {
				t.Helper()
				res, err := h.ds.Rest(ctxTimeout(t, 10*time.Second), &emptypb.Empty{})
				if err != nil {
					t.Fatalf("Rest: %v", err)
				}
				return res.GetStatus()
			}
			// Their runner checks for an instance before the method name.
			exact("Call before Setup", "FAILED_PRECONDITION", "Setup has not been called yet", h.call("echo", nil).GetStatus())
			exact("empty methodName before Setup", "FAILED_PRECONDITION", "Setup has not been called yet", h.call("", nil).GetStatus())
			exact("Rest without an instance", "SUCCESS", "No instance exists to reset", rest())
			exact("empty className", "INVALID_ARGUMENT", "class_name cannot be empty", h.setup("", nil))
			exact("blank className", "INVALID_ARGUMENT", "class_name cannot be empty", h.setup("  ", nil))
			exact("Setup", "SUCCESS", "Instance created successfully", h.setup(rt.class, nil))
			exact("Setup again", "SUCCESS", "Instance already exists", h.setup(rt.class, nil))
			// And for an instance before the class name.
			exact("empty className with an instance", "SUCCESS", "Instance already exists", h.setup("", nil))
			exact("empty methodName", "INVALID_ARGUMENT", "methodName cannot be empty", h.call("", nil).GetStatus())
			exact("unknown method", "BAD_IMPLEMENTATION", `Method "nope" not found in class "`+rt.missing+`"`, h.call("nope", nil).GetStatus())
			exact("Rest", "SUCCESS", "Instance successfully reset", rest())
			exact("Call after Rest", "FAILED_PRECONDITION", "Setup has not been called yet", h.call("echo", nil).GetStatus())

			if rt.name == "python" {
				exact("className without a module", "SETUP_FAILED", "Invalid class name 'Tracker'. Use 'module.ClassName' format.", h.setup("Tracker", nil))
				exact("base missing from its module", "SETUP_FAILED", "Class 'Nope' not found in module 'crunch_base'.", h.setup("crunch_base.Nope", nil))
				exact("base module not importable", "BAD_IMPLEMENTATION", "No module named 'no_such_module'", h.setup("no_such_module.Base", nil))
				exact("no subclass", "BAD_IMPLEMENTATION", "No Inherited class found from <class 'crunch_base.Unused'>.", h.setup("crunch_base.Unused", nil))
				exact("Setup", "SUCCESS", "Instance created successfully", h.setup(rt.class, nil))
				exact("the model raised", "MODEL_FAILED", "The model raised an exception: the model is unhappy", h.call("fail", nil).GetStatus())
			}
			// TrainInfer before its Setup: FAILED_PRECONDITION "Call Setup first".
			_, err := h.ti.Infer(ctxTimeout(t, 10*time.Second), &tipb.InferRequest{})
			if rt.name == "python" && (status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != "Call Setup first") {
				t.Errorf("Infer before Setup: %v, want FailedPrecondition %q", err, "Call Setup first")
			}
		})
	}
	// The constants the runner and the Go models use are the same texts.
	if frame.MsgNotSetUp != "Setup has not been called yet" || frame.MsgInferNotSetUp != "Call Setup first" {
		t.Errorf("frame's messages drifted")
	}
}
