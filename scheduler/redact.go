package scheduler

import (
	"errors"
	"github.com/modelnodes/modelnodes/internal/redact"
	"github.com/modelnodes/modelnodes/jobs"
)

// redacted is an error whose message has its URLs redacted; errors.Is and
// errors.As still see the original.
type redacted struct{ err error }

func (r *redacted) Error() string { return redact.URLsIn(r.err.Error()) }
func (r *redacted) Unwrap() error { return r.err }

// redactErr wraps err so that its message carries no URL credentials. Every
// error the scheduler logs or serves passes through it.
func redactErr(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*redacted); ok {
		return err
	}
	return &redacted{err}
}

// Refusal classes of skipped entries, the reason label of
// modelnodes_scheduler_refused_entries_total.
const (
	RefusedInterpolation = "interpolation" // $ { } % or control characters
	RefusedEntry         = "entry"         // entry grammar
	RefusedArtifact      = "artifact"      // artifact URL policy or digest
	RefusedModelDir      = "model_dir"     // host model dir
	RefusedInvalid       = "invalid"       // anything else (corrupt account, missing field)
)

// refusalClass classes a skipped entry's error.
func refusalClass(err error) string {
	switch {
	case errors.Is(err, jobs.ErrInterpolation):
		return RefusedInterpolation
	case errors.Is(err, jobs.ErrEntry):
		return RefusedEntry
	case errors.Is(err, jobs.ErrArtifact):
		return RefusedArtifact
	case errors.Is(err, jobs.ErrModelDir):
		return RefusedModelDir
	}
	return RefusedInvalid
}
