// Package variants encodes and decodes the table types of CrunchDAO's Variant
// (PARQUET: a Parquet file, what pandas' DataFrame becomes; ARROW: an Arrow
// IPC stream) with apache/arrow-go. Scalars and JSON are in proto/commons
// (commonspb.Double, AsJSON, …); Decode covers every type for display.
package variants

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"

	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

// Column is one named column of Go values: []float64, []int64, []int32,
// []string or []bool.
type Column struct {
	Name   string
	Values any
}

// Table builds an Arrow table from columns of equal length. Release it.
func Table(cols ...Column) (arrow.Table, error) {
	mem := memory.DefaultAllocator
	fields := make([]arrow.Field, len(cols))
	arrs := make([]arrow.Array, len(cols))
	defer func() {
		for _, a := range arrs {
			if a != nil {
				a.Release()
			}
		}
	}()
	rows := -1
	for i, c := range cols {
		var b array.Builder
		n := 0
		switch v := c.Values.(type) {
		case []float64:
			bb := array.NewFloat64Builder(mem)
			bb.AppendValues(v, nil)
			b, n = bb, len(v)
		case []int64:
			bb := array.NewInt64Builder(mem)
			bb.AppendValues(v, nil)
			b, n = bb, len(v)
		case []int32:
			bb := array.NewInt32Builder(mem)
			bb.AppendValues(v, nil)
			b, n = bb, len(v)
		case []string:
			bb := array.NewStringBuilder(mem)
			bb.AppendValues(v, nil)
			b, n = bb, len(v)
		case []bool:
			bb := array.NewBooleanBuilder(mem)
			bb.AppendValues(v, nil)
			b, n = bb, len(v)
		default:
			return nil, fmt.Errorf("variants: column %q: unsupported values %T", c.Name, c.Values)
		}
		if rows >= 0 && n != rows {
			b.Release()
			return nil, fmt.Errorf("variants: column %q has %d rows, the first column %d", c.Name, n, rows)
		}
		rows = n
		arrs[i] = b.NewArray()
		b.Release()
		fields[i] = arrow.Field{Name: c.Name, Type: arrs[i].DataType(), Nullable: true}
	}
	schema := arrow.NewSchema(fields, nil)
	rec := array.NewRecordBatch(schema, arrs, int64(max(rows, 0)))
	defer rec.Release()
	return array.NewTableFromRecords(schema, []arrow.RecordBatch{rec}), nil
}

// Arrow encodes a table as an ARROW Variant (IPC stream format).
func Arrow(tbl arrow.Table) (*commonspb.Variant, error) {
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(tbl.Schema()))
	tr := array.NewTableReader(tbl, -1)
	defer tr.Release()
	for tr.Next() {
		if err := w.Write(tr.RecordBatch()); err != nil {
			return nil, fmt.Errorf("variants: arrow: %w", err)
		}
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("variants: arrow: %w", err)
	}
	return commonspb.Arrow(buf.Bytes()), nil
}

// Parquet encodes a table as a PARQUET Variant (a Parquet file, snappy, with
// the Arrow schema stored so types survive the round trip; pandas reads it
// with pyarrow).
func Parquet(tbl arrow.Table) (*commonspb.Variant, error) {
	var buf bytes.Buffer
	props := parquet.NewWriterProperties(parquet.WithCompression(compress.Codecs.Snappy))
	if err := pqarrow.WriteTable(tbl, &buf, 64<<10, props, pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema())); err != nil {
		return nil, fmt.Errorf("variants: parquet: %w", err)
	}
	return commonspb.Parquet(buf.Bytes()), nil
}

// ReadTable decodes a PARQUET or ARROW Variant into a table. Release it.
func ReadTable(v *commonspb.Variant) (arrow.Table, error) {
	mem := memory.DefaultAllocator
	switch v.GetType() {
	case commonspb.VariantType_PARQUET:
		tbl, err := pqarrow.ReadTable(context.Background(), bytes.NewReader(v.GetValue()), nil, pqarrow.ArrowReadProperties{}, mem)
		if err != nil {
			return nil, fmt.Errorf("variants: parquet: %w", err)
		}
		return tbl, nil
	case commonspb.VariantType_ARROW:
		r, err := ipc.NewReader(bytes.NewReader(v.GetValue()), ipc.WithAllocator(mem))
		if err != nil {
			return nil, fmt.Errorf("variants: arrow: %w", err)
		}
		defer r.Release()
		var recs []arrow.RecordBatch
		defer func() {
			for _, rec := range recs {
				rec.Release()
			}
		}()
		for r.Next() {
			rec := r.RecordBatch()
			rec.Retain()
			recs = append(recs, rec)
		}
		if err := r.Err(); err != nil {
			return nil, fmt.Errorf("variants: arrow: %w", err)
		}
		return array.NewTableFromRecords(r.Schema(), recs), nil
	}
	return nil, fmt.Errorf("variants: %s is not a table type", v.GetType())
}

// Rows returns a table's rows as column name → Go value (numbers, strings,
// bools, nil for nulls), the shape JSON prints.
func Rows(tbl arrow.Table) []map[string]any {
	rows := make([]map[string]any, tbl.NumRows())
	for i := range rows {
		rows[i] = make(map[string]any, tbl.NumCols())
	}
	for c := 0; c < int(tbl.NumCols()); c++ {
		col := tbl.Column(c)
		name := col.Name()
		r := 0
		for _, chunk := range col.Data().Chunks() {
			for j := 0; j < chunk.Len(); j++ {
				rows[r][name] = value(chunk, j)
				r++
			}
		}
	}
	return rows
}

// value returns element j as a plain Go value; GetOneForMarshal would
// turn NaN and infinities into strings.
func value(a arrow.Array, j int) any {
	if a.IsNull(j) {
		return nil
	}
	switch a := a.(type) {
	case *array.Float64:
		return a.Value(j)
	case *array.Float32:
		return float64(a.Value(j))
	case *array.Int64:
		return a.Value(j)
	case *array.Int32:
		return int64(a.Value(j))
	case *array.String:
		return a.Value(j)
	case *array.LargeString:
		return a.Value(j)
	case *array.Boolean:
		return a.Value(j)
	}
	return a.GetOneForMarshal(j)
}

// ErrNone is what Decode returns for a nil Variant or type NONE.
var ErrNone = errors.New("variants: no value")

// Decode returns a Variant as a Go value: float64, int64, string, the JSON
// value (NaN and Infinity allowed), or a table's Rows.
func Decode(v *commonspb.Variant) (any, error) {
	switch v.GetType() {
	case commonspb.VariantType_DOUBLE:
		return v.AsDouble()
	case commonspb.VariantType_INT:
		return v.AsInt()
	case commonspb.VariantType_STRING:
		return v.AsString()
	case commonspb.VariantType_JSON:
		return v.AsJSON()
	case commonspb.VariantType_PARQUET, commonspb.VariantType_ARROW:
		tbl, err := ReadTable(v)
		if err != nil {
			return nil, err
		}
		defer tbl.Release()
		return Rows(tbl), nil
	}
	return nil, ErrNone
}
