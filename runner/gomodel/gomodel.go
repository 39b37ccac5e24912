// Package gomodel lets a Go program be a model worker: it speaks the runner's
// frame protocol on the inherited socket and applies CrunchDAO's Setup / Call /
// Rest semantics, so a model only supplies a constructor and its methods.
//
//	func main() {
//		gomodel.Main(gomodel.Model{New: newTracker, Concurrency: 8})
//	}
package gomodel

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	"github.com/modelnodes/modelnodes/runner/frame"
)

// FDEnv names the environment variable that carries the worker's socket fd.
const FDEnv = "MODELNODES_WORKER_FD"

// Args are a request's arguments: positional ones in position order, keyword
// ones by name.
type Args struct {
	Positional []*commonspb.Variant
	Keyword    map[string]*commonspb.Variant
}

// At returns positional argument i, or an INVALID_ARGUMENT error when the
// caller sent fewer.
func (a Args) At(i int) (*commonspb.Variant, error) {
	if i >= len(a.Positional) {
		return nil, Errorf(frame.CodeInvalidArgument, "missing positional argument %d (got %d)", i, len(a.Positional))
	}
	return a.Positional[i], nil
}

// Instance is what Model.New builds: the participant's object.
type Instance interface {
	// Call runs a method. Return ErrNoMethod for a name the model lacks; a nil
	// Variant means the method returned nothing.
	Call(method string, args Args) (*commonspb.Variant, error)
}

// Model describes a Go model.
type Model struct {
	// New builds the instance for Setup's className (DynamicSubclass).
	New func(className string, args Args) (Instance, error)
	// Infer answers TrainInfer's Infer; stream says which service called.
	Infer func(stream bool, arg *commonspb.Variant) (*commonspb.Variant, error)
	// Concurrency is how many requests the model handles at once; values
	// below 2 serialize calls, as CrunchDAO's runner does.
	Concurrency int
}

// ErrNoMethod is what Instance.Call returns for an unknown method.
var ErrNoMethod = errors.New("no such method")

// Error is an error with a CrunchDAO status code.
type Error struct{ Code, Message string }

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns an *Error with the given status code.
func Errorf(code, format string, a ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, a...)}
}

// Main serves m on the socket named by MODELNODES_WORKER_FD (default 3) and
// exits when the runner closes it.
func Main(m Model) {
	if err := Serve(m); err != nil {
		fmt.Fprintln(os.Stderr, "model worker:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Serve is Main without the exit.
func Serve(m Model) error {
	fd := 3
	if s := os.Getenv(FDEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("%s=%q: %w", FDEnv, s, err)
		}
		fd = n
	}
	f := os.NewFile(uintptr(fd), "worker-socket")
	conn, err := net.FileConn(f)
	if err != nil {
		return fmt.Errorf("fd %d is not a socket: %w", fd, err)
	}
	_ = f.Close()
	return ServeConn(conn, m)
}

// ServeConn serves m on conn until the runner closes it.
func ServeConn(conn net.Conn, m Model) error {
	defer conn.Close()
	s := &server{m: m, conn: conn}
	conc := max(m.Concurrency, 1)
	hello := frame.Hello{Protocol: frame.ProtocolVersion, Concurrency: conc, Runtime: runtime.Version()}
	if m.New != nil {
		hello.Services = append(hello.Services, "dynamic_subclass")
	}
	if m.Infer != nil {
		hello.Services = append(hello.Services, "train_infer", "train_infer_stream")
	}
	hj, _ := json.Marshal(hello)
	if _, err := conn.Write(frame.AppendHello(nil, hj)); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	rd := frame.NewReader(conn, 0)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		k, id, body, err := rd.Next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		req, err := frame.DecodeRequest(k, id, body)
		if err != nil {
			return err
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			s.reply(s.handle(req))
		}()
	}
}

type server struct {
	m    Model
	conn net.Conn

	wmu sync.Mutex // serializes writes of whole frames

	imu  sync.RWMutex // Setup and Rest exclude calls
	inst Instance
}

func (s *server) reply(r *frame.Result) {
	b := frame.AppendResult(nil, r)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, _ = s.conn.Write(b) // a dead runner ends the read loop
}

func (s *server) handle(req *frame.Request) (res *frame.Result) {
	res = &frame.Result{ID: req.ID, Code: frame.CodeSuccess}
	defer func() {
		if p := recover(); p != nil {
			res = &frame.Result{ID: req.ID, Code: frame.CodeModelFailed, Message: fmt.Sprintf("%spanic: %v", frame.MsgModelRaised, p)}
		}
	}()
	var err error
	switch req.Kind {
	case frame.KindSetup:
		res.Message, err = s.setup(req)
	case frame.KindCall:
		res.Value, err = s.call(req)
	case frame.KindRest:
		s.imu.Lock()
		res.Message = frame.MsgInstanceRest
		if s.inst == nil {
			res.Message = frame.MsgNoInstanceToRest
		}
		s.inst = nil
		s.imu.Unlock()
	case frame.KindInferSetup, frame.KindInferReset:
		if s.m.Infer == nil {
			err = Errorf(frame.CodeBadImplementation, "the model has no infer function")
		}
	case frame.KindInfer:
		if s.m.Infer == nil {
			err = Errorf(frame.CodeBadImplementation, "the model has no infer function")
			break
		}
		res.Value, err = s.m.Infer(req.Stream, req.Value)
	default:
		err = Errorf(frame.CodeInvalidArgument, "unsupported request %s", req.Kind)
	}
	if err != nil {
		var se *Error
		if !errors.As(err, &se) {
			se = &Error{Code: frame.CodeModelFailed, Message: frame.MsgModelRaised + err.Error()}
		}
		return &frame.Result{ID: req.ID, Code: se.Code, Message: se.Message}
	}
	return res
}

// setup and call check in the order of CrunchDAO's runner and answer its
// fixed messages (frame.Msg*).
func (s *server) setup(req *frame.Request) (string, error) {
	s.imu.Lock()
	defer s.imu.Unlock()
	if s.inst != nil {
		return frame.MsgInstanceExists, nil
	}
	if strings.TrimSpace(req.Name) == "" {
		return "", Errorf(frame.CodeInvalidArgument, frame.MsgEmptyClassName)
	}
	if s.m.New == nil {
		return "", Errorf(frame.CodeBadImplementation, "the model implements no DynamicSubclass")
	}
	args, err := toArgs(req)
	if err != nil {
		return "", err
	}
	inst, err := s.m.New(req.Name, args)
	if err != nil {
		var se *Error
		if errors.As(err, &se) {
			return "", err
		}
		return "", Errorf(frame.CodeSetupFailed, "%v", err)
	}
	s.inst = inst
	return "", nil
}

func (s *server) call(req *frame.Request) (*commonspb.Variant, error) {
	s.imu.RLock()
	defer s.imu.RUnlock()
	if s.inst == nil {
		return nil, Errorf(frame.CodeFailedPrecondition, frame.MsgNotSetUp)
	}
	if req.Name == "" {
		return nil, Errorf(frame.CodeInvalidArgument, frame.MsgEmptyMethodName)
	}
	args, err := toArgs(req)
	if err != nil {
		return nil, err
	}
	v, err := s.inst.Call(req.Name, args)
	if errors.Is(err, ErrNoMethod) {
		return nil, &Error{Code: frame.CodeBadImplementation, Message: frame.MsgMethodNotFound(req.Name, typeName(s.inst))}
	}
	return v, err
}

// typeName is the name of v's type without its package or pointers: the
// "class" MsgMethodNotFound names.
func typeName(v any) string {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Name() == "" {
		return fmt.Sprintf("%T", v)
	}
	return t.Name()
}

// toArgs orders positional arguments by position and checks every variant.
func toArgs(req *frame.Request) (Args, error) {
	pos := append([]*commonspb.Argument(nil), req.Args...)
	sort.SliceStable(pos, func(i, j int) bool { return pos[i].GetPosition() < pos[j].GetPosition() })
	a := Args{Keyword: make(map[string]*commonspb.Variant, len(req.Kwargs))}
	for i, p := range pos {
		if i > 0 && pos[i-1].GetPosition() == p.GetPosition() {
			return a, Errorf(frame.CodeInvalidArgument, "two arguments at position %d", p.GetPosition())
		}
		if err := p.GetData().Validate(); err != nil {
			return a, Errorf(frame.CodeInvalidArgument, "argument %d: %v", p.GetPosition(), err)
		}
		a.Positional = append(a.Positional, p.GetData())
	}
	for _, k := range req.Kwargs {
		if err := k.GetData().Validate(); err != nil {
			return a, Errorf(frame.CodeInvalidArgument, "argument %q: %v", k.GetKeyword(), err)
		}
		a.Keyword[k.GetKeyword()] = k.GetData()
	}
	return a, nil
}
