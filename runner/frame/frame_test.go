package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"
	"testing/iotest"
	"time"

	"google.golang.org/protobuf/proto"

	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

func TestRequestRoundTrip(t *testing.T) {
	reqs := []*Request{
		{Kind: KindSetup, ID: 1, Name: "mod.Base",
			Args:   []*commonspb.Argument{{Position: 1, Data: commonspb.Int(7)}, {Position: 0, Data: commonspb.String("a")}},
			Kwargs: []*commonspb.KwArgument{{Keyword: "k", Data: commonspb.Double(0.5)}}},
		{Kind: KindCall, ID: 1<<32 - 1, Name: "predict"},
		{Kind: KindRest, ID: 3},
		{Kind: KindInferSetup, ID: 4, Stream: true},
		{Kind: KindInfer, ID: 5, Value: commonspb.RawJSON([]byte(`{"x": NaN}`))},
		{Kind: KindInferReset, ID: 6},
	}
	var stream []byte
	for _, r := range reqs {
		stream = AppendRequest(stream, r)
	}
	rd := NewReader(bytes.NewReader(stream), 0)
	for _, want := range reqs {
		k, id, body, err := rd.Next()
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeRequest(k, id, body)
		if err != nil {
			t.Fatalf("%s: %v", want.Kind, err)
		}
		if got.Kind != want.Kind || got.ID != want.ID || got.Name != want.Name || got.Stream != want.Stream ||
			len(got.Args) != len(want.Args) || len(got.Kwargs) != len(want.Kwargs) {
			t.Fatalf("round trip: got %+v want %+v", got, want)
		}
		for i := range want.Args {
			if !proto.Equal(got.Args[i], want.Args[i]) {
				t.Errorf("arg %d: %v != %v", i, got.Args[i], want.Args[i])
			}
		}
		for i := range want.Kwargs {
			if !proto.Equal(got.Kwargs[i], want.Kwargs[i]) {
				t.Errorf("kwarg %d: %v != %v", i, got.Kwargs[i], want.Kwargs[i])
			}
		}
		if want.Value != nil && !proto.Equal(got.Value, want.Value) {
			t.Errorf("value: %v != %v", got.Value, want.Value)
		}
	}
	if _, _, _, err := rd.Next(); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
}

func TestResultRoundTrip(t *testing.T) {
	for _, want := range []*Result{
		{ID: 9, Code: CodeSuccess, Value: commonspb.Double(3)},
		{ID: 10, Code: CodeSuccess},
		{ID: 11, Code: CodeModelFailed, Message: "ValueError: boom"},
	} {
		b := AppendResult(nil, want)
		k, id, body, err := NewReader(bytes.NewReader(b), 0).Next()
		if err != nil || k != KindResult {
			t.Fatalf("kind %s err %v", k, err)
		}
		got, err := DecodeResult(id, body)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != want.ID || got.Code != want.Code || got.Message != want.Message || !proto.Equal(got.Value, want.Value) {
			t.Errorf("got %+v want %+v", got, want)
		}
	}
}

func TestCorruptFramesAreProtocolErrors(t *testing.T) {
	good := AppendResult(nil, &Result{ID: 1, Code: CodeSuccess, Value: commonspb.Int(1)})
	cases := map[string][]byte{
		"length too large":   {0x7f, 0xff, 0xff, 0xff, byte(KindResult), 0, 0, 0, 1},
		"length too small":   {0, 0, 0, 2, 1, 2},
		"truncated mid body": good[:len(good)-3],
	}
	for name, b := range cases {
		_, _, _, err := NewReader(bytes.NewReader(b), 1<<20).Next()
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: err = %v, want ErrProtocol", name, err)
		}
	}
	// A body whose inner lengths lie.
	for name, body := range map[string][]byte{
		"string longer than body": {0, 0, 1, 0, 'S'},
		"no code":                 {0, 0, 0, 0, 0, 0, 0, 0, 0},
		"stray bytes":             append(good[9:], 0xaa),
	} {
		if _, err := DecodeResult(1, body); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: err = %v, want ErrProtocol", name, err)
		}
	}
	huge := AppendRequest(nil, &Request{Kind: KindCall, Name: "m"})
	huge = append(huge[:len(huge)-8], 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0) // args count 4 billion
	if _, err := DecodeRequest(KindCall, 1, huge[9:]); !errors.Is(err, ErrProtocol) {
		t.Errorf("lying args count: err = %v, want ErrProtocol", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(AppendRequest(nil, &Request{Kind: KindCall, ID: 1, Name: "m", Args: []*commonspb.Argument{{Data: commonspb.Int(1)}}}))
	f.Add(AppendResult(nil, &Result{ID: 2, Code: CodeSuccess, Value: commonspb.String("x")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		rd := NewReader(bytes.NewReader(b), 1<<16)
		for {
			k, id, body, err := rd.Next()
			if err != nil {
				return
			}
			if k == KindResult {
				if r, err := DecodeResult(id, body); err == nil {
					again, err := DecodeResult(id, AppendResult(nil, r)[9:])
					if err != nil || again.Code != r.Code || again.Message != r.Message {
						t.Fatalf("result does not survive a round trip: %v", err)
					}
				}
			} else {
				_, _ = DecodeRequest(k, id, body)
			}
		}
	})
}

// A peer that claims the largest frame and then sends nothing must not make
// the reader allocate the claimed size: the runner would hold 256 MiB per
// hostile worker before a single byte of the body arrived.
func TestClaimedLengthIsNotAllocatedUpFront(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	hdr := []byte{0, 0, 0, 0, byte(KindResult), 0, 0, 0, 1}
	binary.BigEndian.PutUint32(hdr, DefaultMaxFrame)
	done := make(chan error, 1)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	go func() {
		_, _, _, err := NewReader(pr, 0).Next()
		done <- err
	}()
	if _, err := pw.Write(hdr); err != nil {
		t.Fatal(err)
	}
	// 1 MiB of the body arrives, then the peer stalls.
	if _, err := pw.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	runtime.ReadMemStats(&after)
	grew := after.TotalAlloc - before.TotalAlloc
	t.Logf("a 256 MiB header followed by 1 MiB allocated %d KiB", grew>>10)
	if grew > 8<<20 {
		t.Errorf("a 256 MiB header followed by 1 MiB allocated %d MiB; want a few MiB at most", grew>>20)
	}
	_ = pw.CloseWithError(io.ErrUnexpectedEOF)
	if err := <-done; !errors.Is(err, ErrProtocol) {
		t.Errorf("stream cut inside the frame: %v, want ErrProtocol", err)
	}
}

// The body still arrives whole when it trickles in across many growths.
func TestLargeBodyReadIncrementally(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), (3<<20)/16+7)
	msg := AppendHello(nil, body)
	_, _, got, err := NewReader(iotest.OneByteReader(bytes.NewReader(msg[:1<<16])), 0).Next()
	if err == nil {
		t.Fatalf("a cut frame was read: %d bytes", len(got))
	}
	_, _, got, err = NewReader(bytes.NewReader(msg), 0).Next()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("read %d bytes (%v), want the %d-byte body", len(got), err, len(body))
	}
}
