// Package redact takes credentials out of URLs before they are logged or
// served: RPC providers, feeds and CRL endpoints put API keys and tokens in
// the user info and the query string, while the places that show URLs (the
// scheduler's unauthenticated status API, every log) must not. Scheme, host
// and path stay, so an operator still sees which endpoint is meant.
package redact

import (
	"net/url"
	"regexp"
	"strings"
)

// Marker replaces what is redacted.
const Marker = "REDACTED"

// URL returns raw with its user info, query and fragment replaced by
// Marker; a URL that does not parse keeps only its scheme.
func URL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if i := strings.Index(raw, "://"); i >= 0 {
			return raw[:i] + "://" + Marker
		}
		return Marker
	}
	if u.User != nil {
		u.User = url.User(Marker)
	}
	if u.RawQuery != "" || u.ForceQuery {
		u.RawQuery, u.ForceQuery = Marker, false
	}
	if u.Fragment != "" {
		u.Fragment, u.RawFragment = Marker, ""
	}
	return u.String()
}

// urlPattern finds URLs inside text (net/http's url.Error and the Solana
// RPC and websocket clients' errors carry the whole URL).
var urlPattern = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.\-]*://[^\s"'<>\x60]+`)

// URLsIn returns s with every URL in it redacted as URL does.
func URLsIn(s string) string { return urlPattern.ReplaceAllStringFunc(s, URL) }

// Error wraps err so that its message has its URLs redacted as URLsIn does;
// errors.Is and errors.As still see the original. A nil err stays nil, and
// an error already wrapped is returned as is.
func Error(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*redacted); ok {
		return err
	}
	return &redacted{err}
}

type redacted struct{ err error }

func (r *redacted) Error() string { return URLsIn(r.err.Error()) }
func (r *redacted) Unwrap() error { return r.err }
