package variants_test

import (
	"math"
	"reflect"
	"testing"

	"github.com/modelnodes/modelnodes/client/variants"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

func TestTableRoundTrip(t *testing.T) {
	tbl, err := variants.Table(
		variants.Column{Name: "x", Values: []float64{1.5, math.Inf(1), -2}},
		variants.Column{Name: "n", Values: []int64{1, 2, 1 << 40}},
		variants.Column{Name: "s", Values: []string{"a", "é", ""}},
		variants.Column{Name: "b", Values: []bool{true, false, true}},
	)
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Release()
	want := []map[string]any{
		{"x": 1.5, "n": int64(1), "s": "a", "b": true},
		{"x": math.Inf(1), "n": int64(2), "s": "é", "b": false},
		{"x": -2.0, "n": int64(1 << 40), "s": "", "b": true},
	}
	for name, enc := range map[string]func() (*commonspb.Variant, error){
		"parquet": func() (*commonspb.Variant, error) { return variants.Parquet(tbl) },
		"arrow":   func() (*commonspb.Variant, error) { return variants.Arrow(tbl) },
	} {
		v, err := enc()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := v.Validate(); err != nil {
			t.Errorf("%s: produced an invalid Variant: %v", name, err)
		}
		got, err := variants.Decode(v)
		if err != nil {
			t.Fatalf("%s decode: %v", name, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s round trip:\n got %#v\nwant %#v", name, got, want)
		}
	}
	// Magic bytes prove the formats: a Parquet file, an Arrow IPC stream.
	p, _ := variants.Parquet(tbl)
	if b := p.GetValue(); string(b[:4]) != "PAR1" || string(b[len(b)-4:]) != "PAR1" {
		t.Errorf("PARQUET value is not a Parquet file")
	}
}

func TestTableRefusesRaggedColumns(t *testing.T) {
	if _, err := variants.Table(
		variants.Column{Name: "a", Values: []int64{1, 2}},
		variants.Column{Name: "b", Values: []int64{1}},
	); err == nil {
		t.Error("columns of 2 and 1 rows made a table")
	}
	if _, err := variants.Table(variants.Column{Name: "a", Values: []uint8{1}}); err == nil {
		t.Error("an unsupported column type made a table")
	}
}

func TestDecodeScalarsAndJSON(t *testing.T) {
	for _, tc := range []struct {
		v    *commonspb.Variant
		want any
	}{
		{commonspb.Double(0.25), 0.25},
		{commonspb.Int(-7), int64(-7)},
		{commonspb.String("hé"), "hé"},
		{commonspb.RawJSON([]byte(`{"a": [1, NaN]}`)), map[string]any{"a": []any{1.0, math.NaN()}}},
	} {
		got, err := variants.Decode(tc.v)
		if err != nil {
			t.Fatalf("%s: %v", tc.v.GetType(), err)
		}
		if tc.v.GetType() == commonspb.VariantType_JSON {
			a := got.(map[string]any)["a"].([]any)
			if len(a) != 2 || !math.IsNaN(a[1].(float64)) {
				t.Errorf("JSON with NaN decoded as %v", got)
			}
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %#v, want %#v", tc.v.GetType(), got, tc.want)
		}
	}
	if _, err := variants.Decode(nil); err != variants.ErrNone {
		t.Errorf("nil Variant: %v, want ErrNone", err)
	}
	if _, err := variants.Decode(commonspb.Parquet([]byte("not parquet"))); err == nil {
		t.Error("garbage PARQUET decoded")
	}
}
