package client

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

// Status is the outcome of one model's call.
type Status int

const (
	// Success: the model answered SUCCESS; Value holds its result (nil
	// when the method returned nothing).
	Success Status = iota
	// ModelError: the model answered with an error status (Code is
	// CrunchDAO's, e.g. MODEL_FAILED, BAD_IMPLEMENTATION) and Message.
	ModelError
	// Timeout: no answer by the call's deadline.
	Timeout
	// Unavailable: the model could not be reached (no connection, runner
	// draining, queue full, removed from the membership).
	Unavailable
	// Unauthenticated: TLS or authorization refused the call (either side).
	Unauthenticated
	// TooLarge: the model's reply was over its limit (Config.MaxReplyBytes,
	// or its share of Config.MaxFanoutBytes); it was refused from its
	// length prefix, unread. Code is RESOURCE_EXHAUSTED.
	TooLarge
)

var statusNames = [...]string{"success", "model_error", "timeout", "unavailable", "unauthenticated", "too_large"}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return "unknown"
}

// classify maps a gRPC error to a status and the code shown beside it.
// TrainInfer carries model errors as gRPC statuses, so INVALID_ARGUMENT,
// FAILED_PRECONDITION, UNIMPLEMENTED and UNKNOWN are the model's doing.
func classify(err error) (Status, string) {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return Timeout, commonspb.CodeName(codes.DeadlineExceeded)
	}
	st, _ := status.FromError(err)
	code := st.Code()
	switch code {
	case codes.DeadlineExceeded, codes.Canceled:
		return Timeout, commonspb.CodeName(code)
	case codes.Unauthenticated, codes.PermissionDenied:
		return Unauthenticated, commonspb.CodeName(code)
	case codes.Unavailable:
		if isTLSFailure(st.Message()) {
			return Unauthenticated, commonspb.CodeName(codes.Unauthenticated)
		}
		return Unavailable, commonspb.CodeName(code)
	case codes.ResourceExhausted:
		return Unavailable, commonspb.CodeName(code)
	}
	return ModelError, commonspb.CodeName(code)
}

// isTooLarge recognizes grpc-go's refusal of a reply over the call's
// receive limit, raised on our side: its message names the limit, which
// tells it from a runner's RESOURCE_EXHAUSTED (its queue is full, or our
// request was over its own limit). A runner that forges it only
// misreports itself.
func isTooLarge(err error, limit int) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.ResourceExhausted {
		return false
	}
	msg := st.Message()
	if !strings.HasPrefix(msg, "grpc: ") || !strings.Contains(msg, "larger than max") {
		return false
	}
	lim := " " + strconv.Itoa(limit)
	return strings.HasSuffix(msg, lim+")") || strings.HasSuffix(msg, lim)
}

// tooLargeText explains a TooLarge result: the limit, how many models
// shared the fan-out's budget, and the size the model announced when
// grpc-go says it.
func tooLargeText(err error, limit, models int) string {
	msg := fmt.Sprintf("reply larger than %d bytes, the limit per reply", limit)
	if models > 1 {
		msg = fmt.Sprintf("reply larger than %d bytes, the limit for each of the %d models of this call", limit, models)
	}
	st, _ := status.FromError(err)
	var sent, lim int
	if i := strings.LastIndexByte(st.Message(), '('); i >= 0 {
		if n, _ := fmt.Sscanf(st.Message()[i:], "(%d vs. %d)", &sent, &lim); n == 2 {
			msg += fmt.Sprintf(" (it had %d)", sent)
		}
	}
	return msg
}

// isTLSFailure recognizes handshake refusals, which grpc-go reports as
// UNAVAILABLE connection errors: our verification of the runner, or the
// runner's alert about our certificate.
func isTLSFailure(msg string) bool {
	for _, s := range []string{"authentication handshake failed", "tls: ", "x509: ", "credentials: "} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
