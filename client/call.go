package client

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/modelnodes/modelnodes/client/credentials"
	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/client/failures"
	"github.com/modelnodes/modelnodes/client/internal/fanout"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	tipb "github.com/modelnodes/modelnodes/proto/train_infer"
)

// Args are one model's arguments: positional ones in order, keyword ones by
// name. Infer takes Positional[0].
type Args struct {
	Positional []*commonspb.Variant
	Keyword    map[string]*commonspb.Variant
}

// ArgsFunc gives each model its own arguments. An error fails that model's
// call (status ModelError, code INVALID_ARGUMENT) without calling it.
type ArgsFunc func(discovery.Model) (Args, error)

// Same gives every model the same arguments.
func Same(a Args) ArgsFunc { return func(discovery.Model) (Args, error) { return a, nil } }

// Positional gives every model the same positional arguments.
func Positional(v ...*commonspb.Variant) ArgsFunc { return Same(Args{Positional: v}) }

// Request says whom to call and how.
type Request struct {
	// Args gives each model its arguments; nil sends none.
	Args ArgsFunc
	// Timeout is each model's own deadline (within ctx's); 0 takes
	// Config.Timeout.
	Timeout time.Duration
	// Models restricts the call to these model ids (unknown ones get
	// Unavailable results); nil calls every model.
	Models []string
	// Concurrency bounds calls in flight; 0 takes Config.Concurrency.
	Concurrency int
}

// Result is one model's outcome.
type Result struct {
	Model  discovery.Model
	Status Status
	// Code is CrunchDAO's status code (SUCCESS, MODEL_FAILED, …) when the
	// model answered one, else the gRPC code (DEADLINE_EXCEEDED, …).
	Code string
	// Message is the model's or the transport's explanation.
	Message string
	// Value is the model's result on Success (nil when it returned none).
	Value *commonspb.Variant
	// Latency is how long this model's call took (up to the fan-out's
	// return for a call still running then).
	Latency time.Duration
}

// OK reports whether the model answered successfully.
func (r Result) OK() bool { return r.Status == Success }

// The RPC names used in metrics.
const (
	RPCSetup = "setup"
	RPCCall  = "call"
	RPCRest  = "rest"
	RPCInfer = "infer"
	// RPCInferSetup is TrainInfer's Setup.
	RPCInferSetup = "infer_setup"
	RPCHealth     = "health"
)

// answer is what one RPC produced before classification.
type answer struct {
	code, msg string // a CrunchDAO status, when the RPC carries one
	value     *commonspb.Variant
	err       error
	// unavailable marks an answer that says the model cannot take calls
	// (health NOT_SERVING) rather than a model error.
	unavailable bool
}

// Setup builds the model's instance of className's subclass on every model
// (DynamicSubclass Setup); args are the constructor's.
func (c *Client) Setup(ctx context.Context, className string, req Request) []Result {
	return c.fan(ctx, RPCSetup, req, setupRPC(className))
}

func setupRPC(className string) rpcFunc {
	return func(ctx context.Context, m *member, a Args, opts ...grpc.CallOption) answer {
		res, err := m.ds.Setup(ctx, &dspb.SetupRequest{
			ClassName: className, InstanceArguments: positional(a), InstanceKwArguments: keyword(a),
		}, opts...)
		return answer{code: res.GetStatus().GetCode(), msg: res.GetStatus().GetMessage(), err: err}
	}
}

// rpcFunc is one model's RPC in a fan-out; opts carry the call's reply
// limit.
type rpcFunc func(context.Context, *member, Args, ...grpc.CallOption) answer

// Call calls method on every model (DynamicSubclass Call).
func (c *Client) Call(ctx context.Context, method string, req Request) []Result {
	return c.fan(ctx, RPCCall, req, func(ctx context.Context, m *member, a Args, opts ...grpc.CallOption) answer {
		res, err := m.ds.Call(ctx, &dspb.CallRequest{
			MethodName: method, MethodArguments: positional(a), MethodKwArguments: keyword(a),
		}, opts...)
		return answer{code: res.GetStatus().GetCode(), msg: res.GetStatus().GetMessage(), value: res.GetMethodResponse(), err: err}
	})
}

// Rest drops every model's instance (DynamicSubclass Rest).
func (c *Client) Rest(ctx context.Context, req Request) []Result {
	return c.fan(ctx, RPCRest, req, func(ctx context.Context, m *member, _ Args, opts ...grpc.CallOption) answer {
		res, err := m.ds.Rest(ctx, &emptypb.Empty{}, opts...)
		return answer{code: res.GetStatus().GetCode(), msg: res.GetStatus().GetMessage(), err: err}
	})
}

// Infer calls TrainInfer Infer on every model with Args.Positional[0]
// (TrainInfer Setup must have been called once: InferSetup).
func (c *Client) Infer(ctx context.Context, req Request) []Result {
	return c.fan(ctx, RPCInfer, req, func(ctx context.Context, m *member, a Args, opts ...grpc.CallOption) answer {
		var v *commonspb.Variant
		if len(a.Positional) > 0 {
			v = a.Positional[0]
		}
		res, err := m.ti.Infer(ctx, &tipb.InferRequest{Argument: v}, opts...)
		return answer{code: "SUCCESS", value: res.GetPrediction(), err: err}
	})
}

// InferSetup calls TrainInfer Setup on every model.
func (c *Client) InferSetup(ctx context.Context, req Request) []Result {
	return c.fan(ctx, RPCInferSetup, req, func(ctx context.Context, m *member, _ Args, opts ...grpc.CallOption) answer {
		_, err := m.ti.Setup(ctx, &emptypb.Empty{}, opts...)
		return answer{code: "SUCCESS", err: err}
	})
}

// Health asks every model's runner for its overall health (gRPC health
// service ""): Success with Value = STRING "SERVING" when it takes calls,
// Unavailable with Code = the serving status (NOT_SERVING) otherwise.
func (c *Client) Health(ctx context.Context, req Request) []Result {
	return c.fan(ctx, RPCHealth, req, func(ctx context.Context, m *member, _ Args, opts ...grpc.CallOption) answer {
		res, err := m.health.Check(ctx, &healthpb.HealthCheckRequest{}, opts...)
		st := res.GetStatus()
		if err != nil || st == healthpb.HealthCheckResponse_SERVING {
			return answer{code: "SUCCESS", value: commonspb.String(st.String()), err: err}
		}
		return answer{code: st.String(), msg: "runner health is " + st.String(), unavailable: true}
	})
}

// fan runs rpc on the selected members and turns every outcome into a
// Result, by ctx's deadline at the latest.
func (c *Client) fan(ctx context.Context, rpc string, req Request, do rpcFunc) []Result {
	members, missing := c.snapshot(req.Models)
	results := append(c.fanTargets(ctx, rpc, members, req, do), missing...)
	if len(missing) > 0 {
		slices.SortFunc(results, func(a, b Result) int { return strings.Compare(a.Model.ID, b.Model.ID) })
	}
	return results
}

// fanTargets calls do on members (each acquired; released here).
func (c *Client) fanTargets(ctx context.Context, rpc string, members []target, req Request, do rpcFunc) []Result {
	start := time.Now()
	results := make([]Result, 0, len(members))
	// An unusable client certificate fails every call the same clear way
	// instead of as many aborted handshakes.
	if c.cfg.TLS != nil {
		if err := credentials.Check(c.cfg.TLS, start); err != nil {
			for _, m := range members {
				r := Result{Model: m.model, Status: Unauthenticated, Code: "UNAUTHENTICATED", Message: err.Error()}
				c.record(rpc, r)
				results = append(results, r)
				m.release()
			}
			return results
		}
	}
	timeout := req.Timeout
	if timeout <= 0 {
		timeout = c.cfg.Timeout
	}
	conc := req.Concurrency
	if conc <= 0 {
		conc = c.cfg.Concurrency
	}
	// Every reply counts against the fan-out's budget until the caller
	// drops the results, so each model gets an equal share of it.
	limit := c.replyLimit(len(members))
	recvLimit := grpc.MaxCallRecvMsgSize(limit)
	// Each result is accounted once: by its call, or as a timeout when
	// the fan-out ended first.
	accounted := make([]atomic.Bool, len(members))
	outs := fanout.Run(ctx, len(members), fanout.Options{Concurrency: conc, Timeout: timeout}, func(ctx context.Context, i int) Result {
		m := members[i]
		defer m.release()
		t0 := time.Now()
		r := Result{Model: m.model}
		var a Args
		if req.Args != nil {
			var err error
			if a, err = req.Args(m.model); err != nil {
				r.Status, r.Code, r.Message = ModelError, "INVALID_ARGUMENT", fmt.Sprintf("arguments for %s: %v", m.model.ID, err)
				if accounted[i].CompareAndSwap(false, true) {
					c.record(rpc, r)
				}
				return r
			}
		}
		ans := do(ctx, m.member, a, recvLimit)
		r.Latency = time.Since(t0)
		switch {
		case ans.err != nil && isTooLarge(ans.err, limit):
			r.Status, r.Code = TooLarge, commonspb.CodeName(codes.ResourceExhausted)
			r.Message = tooLargeText(ans.err, limit, len(members))
		case ans.err != nil:
			r.Status, r.Code = classify(ans.err)
			r.Message = errorText(ans.err)
		case ans.code == "SUCCESS":
			r.Status, r.Code, r.Message, r.Value = Success, ans.code, ans.msg, ans.value
		case ans.unavailable:
			r.Status, r.Code, r.Message = Unavailable, ans.code, ans.msg
		default:
			r.Status, r.Code, r.Message = ModelError, ans.code, ans.msg
		}
		// Accounted here, not after the fan-out: at a deadline only the
		// unfinished calls are left to account for.
		if accounted[i].CompareAndSwap(false, true) {
			c.record(rpc, r)
		}
		return r
	})
	end := time.Since(start)
	for i, o := range outs {
		r := o.Value
		if !o.Done {
			// Still running (or never started) when ctx ended; the
			// running call releases its member when it returns.
			if !o.Started {
				members[i].release()
			}
			r = Result{Model: members[i].model, Status: Timeout, Code: "DEADLINE_EXCEEDED", Message: "no answer by the fan-out's deadline", Latency: end}
			if accounted[i].CompareAndSwap(false, true) {
				c.record(rpc, r)
			}
		}
		results = append(results, r)
	}
	return results
}

func (c *Client) record(rpc string, r Result) {
	o := failures.Failure
	switch r.Status {
	case Success:
		o = failures.Success
	case Timeout:
		o = failures.Timeout
	}
	c.failures.Record(r.Model.ID, rpc, r.Status.String(), o, r.Latency, r.Message)
}

// errorText is the gRPC status message without grpc-go's "rpc error: code
// = X desc =" prefix (the code is in Result.Code).
func errorText(err error) string {
	s := err.Error()
	if _, after, ok := strings.Cut(s, " desc = "); ok {
		return after
	}
	return s
}

func positional(a Args) []*commonspb.Argument {
	out := make([]*commonspb.Argument, len(a.Positional))
	for i, v := range a.Positional {
		out[i] = &commonspb.Argument{Position: uint32(i), Data: v}
	}
	return out
}

func keyword(a Args) []*commonspb.KwArgument {
	keys := make([]string, 0, len(a.Keyword))
	for k := range a.Keyword {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]*commonspb.KwArgument, len(keys))
	for i, k := range keys {
		out[i] = &commonspb.KwArgument{Keyword: k, Data: a.Keyword[k]}
	}
	return out
}
