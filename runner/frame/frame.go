// Package frame is the wire format between the runner and its model worker: a
// stream of length-prefixed frames over an inherited socket. It is small on
// purpose, so that a worker in any language can speak it with its standard
// library (the Python host does it with struct); docs/worker-protocol.md is the
// reference.
//
//	frame   = length:u32be kind:u8 id:u32be body      (length counts kind, id and body)
//	str     = n:u32be n bytes of UTF-8
//	variant = type:u8 n:u32be n bytes
//	args    = n:u32be n × (position:u32be variant)
//	kwargs  = n:u32be n × (keyword:str variant)
package frame

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

// Kind says what a frame carries.
type Kind uint8

// Frame kinds. Requests go from runner to worker and each gets exactly one
// Result with the same id; Hello is the worker's first frame.
const (
	KindHello      Kind = 0x01 // worker → runner, id 0: JSON Hello
	KindSetup      Kind = 0x02 // DynamicSubclass Setup: name=className, args, kwargs
	KindCall       Kind = 0x03 // DynamicSubclass Call: name=methodName, args, kwargs
	KindRest       Kind = 0x04 // DynamicSubclass Rest: empty body
	KindInferSetup Kind = 0x05 // TrainInfer Setup: stream:u8
	KindInfer      Kind = 0x06 // TrainInfer Infer: stream:u8 variant
	KindInferReset Kind = 0x07 // TrainInfer Reinitialize: stream:u8
	KindResult     Kind = 0x10 // worker → runner: code:str message:str present:u8 [variant]
)

func (k Kind) String() string {
	switch k {
	case KindHello:
		return "hello"
	case KindSetup:
		return "setup"
	case KindCall:
		return "call"
	case KindRest:
		return "rest"
	case KindInferSetup:
		return "infer-setup"
	case KindInfer:
		return "infer"
	case KindInferReset:
		return "infer-reset"
	case KindResult:
		return "result"
	}
	return fmt.Sprintf("kind(0x%02x)", uint8(k))
}

// Status codes a worker puts in a Result. They are CrunchDAO's Status.code
// strings and reach the coordinator unchanged.
const (
	CodeSuccess            = "SUCCESS"
	CodeInvalidArgument    = "INVALID_ARGUMENT"
	CodeBadImplementation  = "BAD_IMPLEMENTATION"
	CodeSetupFailed        = "SETUP_FAILED"
	CodeFailedPrecondition = "FAILED_PRECONDITION"
	CodeModelFailed        = "MODEL_FAILED"
	CodeUnknown            = "UNKNOWN"
)

// Status messages with a fixed text: CrunchDAO's runner's exact words
// (crunch-model-runner 0.4.2, model_runner/servicers/), so a coordinator
// that logs or matches them sees no difference. Workers send them; the
// Python host (runner/pyhost/host.py) spells the same texts, pinned by
// runner's TestStatusMessagesAreCrunchDAOs. A new instance is the one
// exception: a worker answers a Setup that built one with an empty message
// (the runner then remembers the Setup for replay) and the runner answers
// the coordinator MsgInstanceCreated.
const (
	MsgInstanceCreated  = "Instance created successfully"
	MsgInstanceExists   = "Instance already exists"
	MsgEmptyClassName   = "class_name cannot be empty"
	MsgNotSetUp         = "Setup has not been called yet"
	MsgEmptyMethodName  = "methodName cannot be empty"
	MsgNoInstanceToRest = "No instance exists to reset"
	MsgInstanceRest     = "Instance successfully reset"
	// MsgModelRaised starts the message of MODEL_FAILED: the model's
	// exception follows.
	MsgModelRaised = "The model raised an exception: "
	// MsgInferNotSetUp is the gRPC status message of an Infer before
	// TrainInfer's Setup (FAILED_PRECONDITION).
	MsgInferNotSetUp = "Call Setup first"
)

// MsgMethodNotFound is the BAD_IMPLEMENTATION message of a Call of a
// method the model's class lacks.
func MsgMethodNotFound(method, class string) string {
	return `Method "` + method + `" not found in class "` + class + `"`
}

// headerLen is kind plus id.
const headerLen = 5

// DefaultMaxFrame bounds a frame's length field; a larger claim is a protocol
// error, so a corrupt length cannot make the reader allocate gigabytes.
const DefaultMaxFrame = 256 << 20

// ErrProtocol is wrapped by every error about a malformed frame.
var ErrProtocol = errors.New("worker protocol error")

// Request is a runner → worker frame.
type Request struct {
	Kind   Kind
	ID     uint32
	Name   string // className for Setup, methodName for Call
	Args   []*commonspb.Argument
	Kwargs []*commonspb.KwArgument
	Stream bool               // TrainInfer kinds: the streaming service
	Value  *commonspb.Variant // Infer's argument
}

// Result is a worker → runner answer to the request with the same ID.
type Result struct {
	ID      uint32
	Code    string
	Message string
	Value   *commonspb.Variant // nil when the call returned nothing
}

// Hello is the body of the worker's first frame (JSON).
type Hello struct {
	// Protocol is the framing version; this package speaks 1.
	Protocol int `json:"protocol"`
	// Concurrency is how many requests the worker takes at once; 1 (the
	// default) means calls to the model are serialized.
	Concurrency int `json:"concurrency"`
	// Runtime names the worker, e.g. "python 3.11.2" or "go1.26".
	Runtime string `json:"runtime"`
	// Services lists what the model implements: "dynamic_subclass",
	// "train_infer", "train_infer_stream".
	Services []string `json:"services"`
	// LoadError is set when the submission failed to load; Setup reports it.
	LoadError string `json:"load_error,omitempty"`
}

// ProtocolVersion is the framing version this package speaks.
const ProtocolVersion = 1

// AppendRequest appends r's frame to dst.
func AppendRequest(dst []byte, r *Request) []byte {
	start := len(dst)
	dst = appendHeader(dst, r.Kind, r.ID)
	switch r.Kind {
	case KindSetup, KindCall:
		dst = appendStr(dst, r.Name)
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(r.Args)))
		for _, a := range r.Args {
			dst = binary.BigEndian.AppendUint32(dst, a.GetPosition())
			dst = appendVariant(dst, a.GetData())
		}
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(r.Kwargs)))
		for _, k := range r.Kwargs {
			dst = appendStr(dst, k.GetKeyword())
			dst = appendVariant(dst, k.GetData())
		}
	case KindInferSetup, KindInferReset:
		dst = append(dst, boolByte(r.Stream))
	case KindInfer:
		dst = append(dst, boolByte(r.Stream))
		dst = appendVariant(dst, r.Value)
	}
	return finish(dst, start)
}

// AppendResult appends r's frame to dst.
func AppendResult(dst []byte, r *Result) []byte {
	start := len(dst)
	dst = appendHeader(dst, KindResult, r.ID)
	dst = appendStr(dst, r.Code)
	dst = appendStr(dst, r.Message)
	if r.Value == nil {
		dst = append(dst, 0)
	} else {
		dst = append(dst, 1)
		dst = appendVariant(dst, r.Value)
	}
	return finish(dst, start)
}

// AppendHello appends a hello frame whose body is the given JSON.
func AppendHello(dst []byte, helloJSON []byte) []byte {
	start := len(dst)
	dst = appendHeader(dst, KindHello, 0)
	dst = append(dst, helloJSON...)
	return finish(dst, start)
}

func appendHeader(dst []byte, k Kind, id uint32) []byte {
	dst = append(dst, 0, 0, 0, 0, byte(k))
	return binary.BigEndian.AppendUint32(dst, id)
}

func finish(dst []byte, start int) []byte {
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst
}

func appendStr(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(s)))
	return append(dst, s...)
}

func appendVariant(dst []byte, v *commonspb.Variant) []byte {
	dst = append(dst, byte(v.GetType()))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(v.GetValue())))
	return append(dst, v.GetValue()...)
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// Reader reads frames from a stream.
type Reader struct {
	r   *bufio.Reader
	max int
}

// NewReader returns a Reader that refuses frames longer than maxFrame bytes
// (DefaultMaxFrame when maxFrame <= 0).
func NewReader(r io.Reader, maxFrame int) *Reader {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	return &Reader{r: bufio.NewReaderSize(r, 64<<10), max: maxFrame}
}

// Next reads one frame and returns its kind, id and body. The body is a fresh
// slice the caller may keep. io.EOF means the stream ended between frames.
func (r *Reader) Next() (Kind, uint32, []byte, error) {
	var hdr [4 + headerLen]byte
	if _, err := io.ReadFull(r.r, hdr[:4]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return 0, 0, nil, unexpected(err)
		}
		return 0, 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if n < headerLen || int64(n) > int64(r.max) {
		return 0, 0, nil, fmt.Errorf("%w: frame length %d outside [%d, %d]", ErrProtocol, n, headerLen, r.max)
	}
	if _, err := io.ReadFull(r.r, hdr[4:]); err != nil {
		return 0, 0, nil, unexpected(err)
	}
	body, err := readBody(r.r, int(n-headerLen))
	if err != nil {
		return 0, 0, nil, unexpected(err)
	}
	return Kind(hdr[4]), binary.BigEndian.Uint32(hdr[5:]), body, nil
}

// firstChunk is the most a frame's body is given before its bytes arrive.
const firstChunk = 64 << 10

// readBody reads n bytes, growing the buffer only as bytes actually arrive
// (doubling, capped at n): a peer that claims a 256 MiB frame and sends
// nothing costs 64 KiB, not 256 MiB, and one that sends k bytes costs at
// most about 2k.
func readBody(r io.Reader, n int) ([]byte, error) {
	body := make([]byte, 0, min(n, firstChunk))
	for len(body) < n {
		if len(body) == cap(body) {
			grown := make([]byte, len(body), min(2*cap(body), n))
			copy(grown, body)
			body = grown
		}
		m, err := io.ReadFull(r, body[len(body):cap(body)])
		body = body[:len(body)+m]
		if err != nil {
			return nil, err
		}
	}
	return body, nil
}

func unexpected(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%w: stream ended inside a frame", ErrProtocol)
	}
	return err
}

// DecodeRequest parses the body of a request frame.
func DecodeRequest(k Kind, id uint32, body []byte) (*Request, error) {
	d := decoder{b: body}
	r := &Request{Kind: k, ID: id}
	switch k {
	case KindSetup, KindCall:
		r.Name = d.str()
		n := d.count(8)
		for i := 0; i < n && d.err == nil; i++ {
			r.Args = append(r.Args, &commonspb.Argument{Position: d.u32(), Data: d.variant()})
		}
		n = d.count(9)
		for i := 0; i < n && d.err == nil; i++ {
			r.Kwargs = append(r.Kwargs, &commonspb.KwArgument{Keyword: d.str(), Data: d.variant()})
		}
	case KindRest:
	case KindInferSetup, KindInferReset:
		r.Stream = d.byte() != 0
	case KindInfer:
		r.Stream = d.byte() != 0
		r.Value = d.variant()
	default:
		return nil, fmt.Errorf("%w: unexpected request kind %s", ErrProtocol, k)
	}
	return r, d.done()
}

// DecodeResult parses the body of a result frame.
func DecodeResult(id uint32, body []byte) (*Result, error) {
	d := decoder{b: body}
	r := &Result{ID: id, Code: d.str(), Message: d.str()}
	if d.byte() != 0 {
		r.Value = d.variant()
	}
	if r.Code == "" && d.err == nil {
		d.err = fmt.Errorf("%w: result without a status code", ErrProtocol)
	}
	return r, d.done()
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated %s", ErrProtocol, what)
	}
}

func (d *decoder) take(n int, what string) []byte {
	if d.err != nil || n < 0 || len(d.b) < n {
		d.fail(what)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if b := d.take(1, "byte"); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if b := d.take(4, "integer"); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

// count reads an element count and checks it against the bytes left, each
// element needing at least minSize bytes, so a lying count cannot make the
// decoder allocate.
func (d *decoder) count(minSize int) int {
	n := int(d.u32())
	if d.err == nil && n > len(d.b)/minSize {
		d.err = fmt.Errorf("%w: count %d exceeds the frame", ErrProtocol, n)
	}
	return n
}

func (d *decoder) str() string { return string(d.take(int(d.u32()), "string")) }

func (d *decoder) variant() *commonspb.Variant {
	t := commonspb.VariantType(d.byte())
	v := d.take(int(d.u32()), "variant")
	return &commonspb.Variant{Type: t, Value: v}
}

func (d *decoder) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d stray bytes after the body", ErrProtocol, len(d.b))
	}
	return d.err
}
