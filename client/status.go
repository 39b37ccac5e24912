package client

import (
	"context"
	"errors"
	"strings"
	"unicode"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
)

var statusNames = [...]string{"success", "model_error", "timeout", "unavailable", "unauthenticated"}

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
		return Timeout, codeName(codes.DeadlineExceeded)
	}
	st, _ := status.FromError(err)
	code := st.Code()
	switch code {
	case codes.DeadlineExceeded, codes.Canceled:
		return Timeout, codeName(code)
	case codes.Unauthenticated, codes.PermissionDenied:
		return Unauthenticated, codeName(code)
	case codes.Unavailable:
		if isTLSFailure(st.Message()) {
			return Unauthenticated, codeName(codes.Unauthenticated)
		}
		return Unavailable, codeName(code)
	case codes.ResourceExhausted:
		return Unavailable, codeName(code)
	}
	return ModelError, codeName(code)
}

// codeName spells a gRPC code as the protocol does (DEADLINE_EXCEEDED), the
// same style as CrunchDAO's status codes beside it.
func codeName(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
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
