package client

import (
	"context"
	"errors"
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
