// Command example-model is a model written in Go, run by model-runner as an
// executable worker (--runtime executable). It shows the shape of a Go model
// and serves the project's tests and benchmarks:
//
//   - echo(x) returns x unchanged (any Variant type, PARQUET and ARROW included);
//   - add(a, b) adds two INTs or DOUBLEs;
//   - describe(*args, **kwargs) returns JSON naming each argument's type;
//   - config() returns the constructor's arguments as JSON;
//   - Infer echoes its argument (TrainInfer and TrainInferStream).
package main

import (
	"fmt"
	"os"
	"runtime"

	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	"github.com/modelnodes/modelnodes/runner/frame"
	"github.com/modelnodes/modelnodes/runner/gomodel"
)

func main() {
	// An echo does almost no work per call: one P avoids waking idle Ps
	// across the node's few cores, which costs more than the echo itself
	// (p50 174 µs vs 247 µs through the runner on 2 vCPUs). A model that
	// computes should leave GOMAXPROCS alone.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	gomodel.Main(gomodel.Model{
		New:         newEcho,
		Infer:       func(_ bool, v *commonspb.Variant) (*commonspb.Variant, error) { return v, nil },
		Concurrency: 64, // stateless: calls may run in parallel
	})
}

type echo struct{ config map[string]any }

func newEcho(className string, args gomodel.Args) (gomodel.Instance, error) {
	cfg := map[string]any{"className": className, "args": describe(args)}
	return &echo{config: cfg}, nil
}

func (e *echo) Call(method string, args gomodel.Args) (*commonspb.Variant, error) {
	switch method {
	case "echo":
		if len(args.Positional) == 0 {
			return nil, nil
		}
		return args.Positional[0], nil
	case "add":
		return add(args)
	case "describe":
		return commonspb.JSON(describe(args))
	case "config":
		return commonspb.JSON(e.config)
	}
	return nil, gomodel.ErrNoMethod
}

func add(args gomodel.Args) (*commonspb.Variant, error) {
	a, err := args.At(0)
	if err != nil {
		return nil, err
	}
	b, err := args.At(1)
	if err != nil {
		return nil, err
	}
	switch {
	case a.GetType() == commonspb.VariantType_INT && b.GetType() == commonspb.VariantType_INT:
		x, _ := a.AsInt()
		y, _ := b.AsInt()
		return commonspb.Int(x + y), nil
	case a.GetType() == commonspb.VariantType_DOUBLE && b.GetType() == commonspb.VariantType_DOUBLE:
		x, _ := a.AsDouble()
		y, _ := b.AsDouble()
		return commonspb.Double(x + y), nil
	}
	return nil, gomodel.Errorf(frame.CodeInvalidArgument, "add wants two INTs or two DOUBLEs, got %s and %s", a.GetType(), b.GetType())
}

func describe(args gomodel.Args) map[string]any {
	pos := make([]any, len(args.Positional))
	for i, v := range args.Positional {
		pos[i] = fmt.Sprintf("%s:%d", v.GetType(), len(v.GetValue()))
	}
	kw := map[string]any{}
	for k, v := range args.Keyword {
		kw[k] = fmt.Sprintf("%s:%d", v.GetType(), len(v.GetValue()))
	}
	return map[string]any{"args": pos, "kwargs": kw}
}
