package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/variants"
	"github.com/modelnodes/modelnodes/internal/envflag"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

const callSynopsis = `coordinator call METHOD [flags]: call METHOD on every model (or the --model ones) at once
and print one line per model: status, CrunchDAO code, latency, and the value or message.

Arguments are JSON: --args '[1, 2.5, "text", {"a": [1, 2]}]' and --kwargs '{"k": 3}'.
Integers become INT, other numbers DOUBLE, strings STRING, objects and arrays JSON.
Tables: {"$parquet": {"col": [1.5, 2]}} or {"$arrow": {...}} (columns of numbers, strings or
booleans); {"$json": ...} forces JSON. --infer (no METHOD) calls TrainInfer Setup, then Infer
with the first argument. Exit status 3 when some model did not answer SUCCESS, 1 when there was
no model to call (discovery found none).`

func call(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	c.register(fs)
	argsJSON := fs.String("args", "[]", "positional arguments, a JSON array")
	kwargsJSON := fs.String("kwargs", "{}", "keyword arguments, a JSON object")
	only := fs.String("model", "", "call only these model ids (comma separated)")
	setup := fs.String("setup", "", "first call Setup with this class (module.BaseClass) on the models called")
	infer := fs.Bool("infer", false, "call TrainInfer Infer (after TrainInfer Setup) instead of DynamicSubclass Call")
	timeout := fs.Duration("timeout", 30*time.Second, "deadline of each model's call")
	deadline := fs.Duration("deadline", 0, "deadline of the whole fan-out (0: none beyond --timeout)")
	asJSON := fs.Bool("json", false, "print results as JSON lines instead of a table")
	pos, err := parse(fs, args, callSynopsis, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 && !*infer {
		return usageError{errors.New("call needs exactly one METHOD")}
	}
	a, err := parseArgs(*argsJSON, *kwargsJSON)
	if err != nil {
		return usageError{err}
	}
	cl, stop, err := c.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer stop()
	req := client.Request{Args: client.Same(a), Timeout: *timeout, Models: nil}
	if *only != "" {
		req.Models = envflag.SplitList(*only)
	}
	if *deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *deadline)
		defer cancel()
	}
	var results []client.Result
	failed := false
	if *setup != "" || *infer {
		setupReq := req
		setupReq.Args = nil
		var sres []client.Result
		if *infer {
			sres = cl.InferSetup(ctx, setupReq)
		} else {
			sres = cl.Setup(ctx, *setup, setupReq)
		}
		for _, r := range sres {
			if !r.OK() {
				failed = true
				r.Message = "Setup: " + r.Message
				results = append(results, r)
				req.Models = remove(req.Models, r.Model.ID, sres)
			}
		}
	}
	if req.Models == nil || len(req.Models) > 0 {
		if *infer {
			results = append(results, cl.Infer(ctx, req)...)
		} else {
			results = append(results, cl.Call(ctx, pos[0], req)...)
		}
	}
	sort.SliceStable(results, func(i, j int) bool { return results[i].Model.ID < results[j].Model.ID })
	for _, r := range results {
		if !r.OK() {
			failed = true
		}
	}
	if *asJSON {
		err = printJSON(stdout, results)
	} else {
		err = printTable(stdout, results)
	}
	if err != nil {
		return err
	}
	if len(results) == 0 {
		// "0/0 succeeded" is no success: a monitor reading the exit status
		// must see that nothing answered.
		return errNoModel
	}
	if failed {
		return errSomeFailed
	}
	return nil
}

// remove drops id from the models to call: a model whose Setup failed is
// not called (its result is the Setup failure).
func remove(models []string, id string, all []client.Result) []string {
	if models == nil {
		for _, r := range all {
			models = append(models, r.Model.ID)
		}
	}
	return slices.DeleteFunc(slices.Clone(models), func(m string) bool { return m == id })
}

func printTable(w io.Writer, results []client.Result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MODEL\tSTATUS\tCODE\tLATENCY\tRESULT")
	ok := 0
	for _, r := range results {
		if r.OK() {
			ok++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Model.ID, r.Status, r.Code, latency(r.Latency), oneLine(display(r), 100))
	}
	fmt.Fprintf(tw, "\n%d/%d succeeded\n", ok, len(results))
	return tw.Flush()
}

// printJSON writes one JSON object per result: model, target, status,
// code, message, type and value (when the model returned one), latency_ms.
// Values may hold NaN or Infinity, written as Python's json writes them.
func printJSON(w io.Writer, results []client.Result) error {
	for _, r := range results {
		j := map[string]any{"model": r.Model.ID, "target": r.Model.Target, "status": r.Status.String(), "code": r.Code,
			"latency_ms": float64(r.Latency.Microseconds()) / 1000}
		if r.Message != "" {
			j["message"] = r.Message
		}
		if r.Value != nil {
			j["type"] = r.Value.GetType().String()
			v, err := variants.Decode(r.Value)
			if err != nil {
				v = "undecodable: " + err.Error()
			}
			j["value"] = v
		}
		b, err := commonspb.EncodeJSON(j)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "%s\n", b); err != nil {
			return err
		}
	}
	return nil
}

// display is a result's value (typed) or its message.
func display(r client.Result) string {
	if !r.OK() {
		return r.Message
	}
	if r.Value == nil {
		return "None"
	}
	v, err := variants.Decode(r.Value)
	if err != nil {
		return fmt.Sprintf("%s (%v)", r.Value.GetType(), err)
	}
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("STRING %q", x)
	case []map[string]any:
		return fmt.Sprintf("%s %d rows %s", r.Value.GetType(), len(x), encode(x))
	}
	return r.Value.GetType().String() + " " + encode(v)
}

func encode(v any) string {
	b, err := commonspb.EncodeJSON(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}

// parseArgs turns the JSON flags into Variants.
func parseArgs(argsJSON, kwargsJSON string) (client.Args, error) {
	var a client.Args
	pv, err := decodeJSON(argsJSON)
	if err != nil {
		return a, fmt.Errorf("--args: %w", err)
	}
	list, ok := pv.([]any)
	if !ok {
		return a, errors.New("--args must be a JSON array")
	}
	for i, x := range list {
		v, err := toVariant(x)
		if err != nil {
			return a, fmt.Errorf("--args[%d]: %w", i, err)
		}
		a.Positional = append(a.Positional, v)
	}
	kv, err := decodeJSON(kwargsJSON)
	if err != nil {
		return a, fmt.Errorf("--kwargs: %w", err)
	}
	obj, ok := kv.(map[string]any)
	if !ok {
		return a, errors.New("--kwargs must be a JSON object")
	}
	if len(obj) > 0 {
		a.Keyword = map[string]*commonspb.Variant{}
	}
	for k, x := range obj {
		v, err := toVariant(x)
		if err != nil {
			return a, fmt.Errorf("--kwargs[%q]: %w", k, err)
		}
		a.Keyword[k] = v
	}
	return a, nil
}

// toVariant types a decoded JSON value the way CrunchDAO's Python types
// results: int → INT, float → DOUBLE, str → STRING, dict/list → JSON.
func toVariant(x any) (*commonspb.Variant, error) {
	switch v := x.(type) {
	case string:
		return commonspb.String(v), nil
	case bool:
		if v {
			return commonspb.Int(1), nil
		}
		return commonspb.Int(0), nil
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return commonspb.Int(i), nil
		}
		f, err := v.Float64()
		if err != nil {
			return nil, err
		}
		return commonspb.Double(f), nil
	case map[string]any:
		if len(v) == 1 {
			for k, inner := range v {
				switch k {
				case "$json":
					return commonspb.JSON(plain(inner))
				case "$parquet", "$arrow":
					return table(k, inner)
				}
			}
		}
	case nil:
		return nil, errors.New("null has no Variant type")
	}
	return commonspb.JSON(plain(x))
}

// plain turns json.Numbers into int64 or float64 for JSON encoding.
func plain(x any) any {
	switch v := x.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		f, _ := v.Float64()
		return f
	case []any:
		out := make([]any, len(v))
		for i := range v {
			out[i] = plain(v[i])
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for k := range v {
			out[k] = plain(v[k])
		}
		return out
	}
	return x
}

// decodeJSON decodes a flag's JSON keeping integers apart from floats.
func decodeJSON(s string) (any, error) {
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, errors.New("trailing data after the JSON value")
	}
	return v, nil
}

// table builds a PARQUET or ARROW Variant from {"col": [values…]}.
func table(kind string, x any) (*commonspb.Variant, error) {
	cols, ok := x.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s wants an object of columns", kind)
	}
	names := make([]string, 0, len(cols))
	for n := range cols {
		names = append(names, n)
	}
	sort.Strings(names)
	var columns []variants.Column
	for _, n := range names {
		vals, ok := cols[n].([]any)
		if !ok || len(vals) == 0 {
			return nil, fmt.Errorf("%s column %q must be a non-empty array", kind, n)
		}
		col, err := column(n, vals)
		if err != nil {
			return nil, err
		}
		columns = append(columns, col)
	}
	tbl, err := variants.Table(columns...)
	if err != nil {
		return nil, err
	}
	defer tbl.Release()
	if kind == "$arrow" {
		return variants.Arrow(tbl)
	}
	return variants.Parquet(tbl)
}

func column(name string, vals []any) (variants.Column, error) {
	switch vals[0].(type) {
	case string:
		s := make([]string, len(vals))
		for i, v := range vals {
			x, ok := v.(string)
			if !ok {
				return variants.Column{}, fmt.Errorf("column %q mixes types", name)
			}
			s[i] = x
		}
		return variants.Column{Name: name, Values: s}, nil
	case bool:
		s := make([]bool, len(vals))
		for i, v := range vals {
			x, ok := v.(bool)
			if !ok {
				return variants.Column{}, fmt.Errorf("column %q mixes types", name)
			}
			s[i] = x
		}
		return variants.Column{Name: name, Values: s}, nil
	}
	ints := make([]int64, len(vals))
	floats := make([]float64, len(vals))
	allInt := true
	for i, v := range vals {
		tv, err := toVariant(v)
		if err != nil {
			return variants.Column{}, err
		}
		switch tv.GetType() {
		case commonspb.VariantType_INT:
			ints[i], _ = tv.AsInt()
			floats[i] = float64(ints[i])
		case commonspb.VariantType_DOUBLE:
			floats[i], _ = tv.AsDouble()
			allInt = false
		default:
			return variants.Column{}, fmt.Errorf("column %q mixes types", name)
		}
	}
	if allInt {
		return variants.Column{Name: name, Values: ints}, nil
	}
	return variants.Column{Name: name, Values: floats}, nil
}
