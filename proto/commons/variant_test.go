package commonspb

import (
	"errors"
	"math"
	"reflect"
	"testing"

	"google.golang.org/grpc/codes"
)

func TestScalarRoundTrip(t *testing.T) {
	if f, err := Double(-2.5).AsDouble(); err != nil || f != -2.5 {
		t.Fatalf("double: %v %v", f, err)
	}
	// struct.pack("<d", 1.0) in Python.
	if got := Double(1).GetValue(); !reflect.DeepEqual(got, []byte{0, 0, 0, 0, 0, 0, 0xf0, 0x3f}) {
		t.Fatalf("DOUBLE 1.0 encodes as %x, want little-endian IEEE-754", got)
	}
	if i, err := Int(math.MinInt64).AsInt(); err != nil || i != math.MinInt64 {
		t.Fatalf("int: %v %v", i, err)
	}
	if got := Int(-2).GetValue(); !reflect.DeepEqual(got, []byte{0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) {
		t.Fatalf("INT -2 encodes as %x", got)
	}
	if s, err := String("héllo").AsString(); err != nil || s != "héllo" {
		t.Fatalf("string: %q %v", s, err)
	}
}

func TestValidateRejectsMalformed(t *testing.T) {
	for name, v := range map[string]*Variant{
		"double with 7 bytes": {Type: VariantType_DOUBLE, Value: make([]byte, 7)},
		"int with 9 bytes":    {Type: VariantType_INT, Value: make([]byte, 9)},
		"string not utf-8":    {Type: VariantType_STRING, Value: []byte{0xff, 0xfe}},
		"json not json":       {Type: VariantType_JSON, Value: []byte("{not json")},
		"json trailing data":  {Type: VariantType_JSON, Value: []byte("[1] [2]")},
		"none with bytes":     {Type: VariantType_NONE, Value: []byte{1}},
		"unknown type":        {Type: 42},
	} {
		if err := v.Validate(); !errors.Is(err, ErrInvalidVariant) {
			t.Errorf("%s: Validate() = %v, want ErrInvalidVariant", name, err)
		}
	}
	if _, err := (&Variant{Type: VariantType_STRING}).AsDouble(); err == nil {
		t.Error("AsDouble on a STRING must fail")
	}
}

func TestJSONPythonDialect(t *testing.T) {
	// What json.dumps({"a": float("nan"), "b": [float("inf"), -float("inf")], "c": "NaN"}) writes.
	in := []byte(`{"a": NaN, "b": [Infinity, -Infinity, 1e400, -0.5], "c": "NaN \u00e9\"", "d": null, "e": true}`)
	v, err := DecodeJSON(in)
	if err != nil {
		t.Fatal(err)
	}
	m := v.(map[string]any)
	if !math.IsNaN(m["a"].(float64)) {
		t.Errorf("a = %v, want NaN", m["a"])
	}
	b := m["b"].([]any)
	if !math.IsInf(b[0].(float64), 1) || !math.IsInf(b[1].(float64), -1) || !math.IsInf(b[2].(float64), 1) || b[3] != -0.5 {
		t.Errorf("b = %v", b)
	}
	if m["c"] != "NaN é\"" || m["d"] != nil || m["e"] != true {
		t.Errorf("c, d, e = %q %v %v", m["c"], m["d"], m["e"])
	}
	out, err := EncodeJSON(v)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"a": NaN, "b": [Infinity, -Infinity, Infinity, -0.5], "c": "NaN é\"", "d": null, "e": true}`
	if string(out) != want {
		t.Errorf("EncodeJSON = %s\nwant        %s", out, want)
	}
	for _, bad := range []string{``, `NaNa`, `[1,]`, `{"a" 1}`, `01`, `1.`, `"abc`, `-`, `Inf`, `{1: 2}`} {
		if _, err := DecodeJSON([]byte(bad)); err == nil {
			t.Errorf("DecodeJSON(%q) accepted malformed input", bad)
		}
	}
}

func TestJSONDepthBounded(t *testing.T) {
	deep := make([]byte, 0, 4*maxJSONDepth)
	for i := 0; i < 2*maxJSONDepth; i++ {
		deep = append(deep, '[')
	}
	if _, err := DecodeJSON(deep); err == nil {
		t.Fatal("a 2000-deep document must be refused, not recurse without bound")
	}
}

func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{`{"a": NaN}`, `[1, -Infinity, "x\u0041"]`, `null`, `{"k": [true, false, {}]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := DecodeJSON(b)
		if err != nil {
			return
		}
		out, err := EncodeJSON(v)
		if err != nil {
			t.Fatalf("decoded value does not encode: %v", err)
		}
		if _, err := DecodeJSON(out); err != nil {
			t.Fatalf("re-encoded %q does not decode: %v", out, err)
		}
	})
}

func TestCodeName(t *testing.T) {
	for c, want := range map[codes.Code]string{codes.DeadlineExceeded: "DEADLINE_EXCEEDED", codes.OK: "OK",
		codes.Unauthenticated: "UNAUTHENTICATED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED"} {
		if got := CodeName(c); got != want {
			t.Errorf("CodeName(%v) = %q, want %q", c, got, want)
		}
	}
}
