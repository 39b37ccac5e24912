package commonspb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"
)

// Helpers for the Variant encoding shared by every CrunchDAO model runner:
// DOUBLE and INT are 8 little-endian bytes, STRING and JSON are UTF-8, PARQUET
// and ARROW are the file or IPC-stream bytes.

// ErrInvalidVariant is wrapped by every error about a malformed Variant.
var ErrInvalidVariant = errors.New("invalid variant")

// Double returns a DOUBLE variant.
func Double(f float64) *Variant {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, math.Float64bits(f))
	return &Variant{Type: VariantType_DOUBLE, Value: b}
}

// Int returns an INT variant.
func Int(i int64) *Variant {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, uint64(i))
	return &Variant{Type: VariantType_INT, Value: b}
}

// String returns a STRING variant.
func String(s string) *Variant { return &Variant{Type: VariantType_STRING, Value: []byte(s)} }

// RawJSON returns a JSON variant holding text as is (see EncodeJSON to build it
// from a Go value).
func RawJSON(text []byte) *Variant { return &Variant{Type: VariantType_JSON, Value: text} }

// Parquet returns a PARQUET variant holding a Parquet file.
func Parquet(file []byte) *Variant { return &Variant{Type: VariantType_PARQUET, Value: file} }

// Arrow returns an ARROW variant holding an Arrow IPC stream.
func Arrow(stream []byte) *Variant { return &Variant{Type: VariantType_ARROW, Value: stream} }

// AsDouble decodes a DOUBLE variant.
func (v *Variant) AsDouble() (float64, error) {
	if err := v.expect(VariantType_DOUBLE); err != nil {
		return 0, err
	}
	return math.Float64frombits(binary.LittleEndian.Uint64(v.GetValue())), nil
}

// AsInt decodes an INT variant.
func (v *Variant) AsInt() (int64, error) {
	if err := v.expect(VariantType_INT); err != nil {
		return 0, err
	}
	return int64(binary.LittleEndian.Uint64(v.GetValue())), nil
}

// AsString decodes a STRING variant.
func (v *Variant) AsString() (string, error) {
	if err := v.expect(VariantType_STRING); err != nil {
		return "", err
	}
	return string(v.GetValue()), nil
}

// AsJSON decodes a JSON variant into plain Go values (map[string]any, []any,
// float64, string, bool, nil), accepting NaN and ±Infinity as Python writes them.
func (v *Variant) AsJSON() (any, error) {
	if err := v.expect(VariantType_JSON); err != nil {
		return nil, err
	}
	return DecodeJSON(v.GetValue())
}

func (v *Variant) expect(t VariantType) error {
	if v.GetType() != t {
		return fmt.Errorf("%w: want %s, got %s", ErrInvalidVariant, t, v.GetType())
	}
	return v.Validate()
}

// Validate checks that the value is well formed for its type: 8 bytes for
// DOUBLE and INT, UTF-8 for STRING, parseable JSON (Python dialect) for JSON,
// no bytes for NONE. PARQUET and ARROW are left to the model's decoder.
func (v *Variant) Validate() error {
	b := v.GetValue()
	switch t := v.GetType(); t {
	case VariantType_NONE:
		if len(b) != 0 {
			return fmt.Errorf("%w: NONE carries %d bytes", ErrInvalidVariant, len(b))
		}
	case VariantType_DOUBLE, VariantType_INT:
		if len(b) != 8 {
			return fmt.Errorf("%w: %s needs 8 bytes, got %d", ErrInvalidVariant, t, len(b))
		}
	case VariantType_STRING:
		if !utf8.Valid(b) {
			return fmt.Errorf("%w: STRING is not valid UTF-8", ErrInvalidVariant)
		}
	case VariantType_JSON:
		if err := ValidateJSON(b); err != nil {
			return err
		}
	case VariantType_PARQUET, VariantType_ARROW:
	default:
		return fmt.Errorf("%w: unknown type %d", ErrInvalidVariant, int32(t))
	}
	return nil
}
