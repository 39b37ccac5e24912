package scheduler

import (
	"errors"
	"net/url"
	"regexp"
	"strings"

	"github.com/modelnodes/modelnodes/jobs"
)

// urlPattern finds URLs inside error messages (net/http's url.Error, the
// Solana RPC and websocket clients' errors carry the whole URL).
var urlPattern = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.\-]*://[^\s"'<>\x60]+`)

// RedactURLs returns s with the user info, query and fragment of every URL
// in it replaced by "REDACTED": RPC providers put API keys there (and
// user:password), and the status API is unauthenticated. Scheme, host and
// path stay, so an operator still sees which endpoint failed.
func RedactURLs(s string) string {
	return urlPattern.ReplaceAllStringFunc(s, func(raw string) string {
		u, err := url.Parse(raw)
		if err != nil {
			if i := strings.Index(raw, "://"); i >= 0 {
				return raw[:i] + "://REDACTED"
			}
			return "REDACTED"
		}
		if u.User != nil {
			u.User = url.User("REDACTED")
		}
		if u.RawQuery != "" || u.ForceQuery {
			u.RawQuery, u.ForceQuery = "REDACTED", false
		}
		if u.Fragment != "" {
			u.Fragment, u.RawFragment = "REDACTED", ""
		}
		return u.String()
	})
}

// redacted is an error whose message has its URLs redacted; errors.Is and
// errors.As still see the original.
type redacted struct{ err error }

func (r *redacted) Error() string { return RedactURLs(r.err.Error()) }
func (r *redacted) Unwrap() error { return r.err }

// redact wraps err so that its message carries no URL credentials. Every
// error the scheduler logs or serves passes through it.
func redact(err error) error {
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
