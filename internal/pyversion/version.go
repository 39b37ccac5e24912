// Package pyversion reads which Python a submission asks for and matches it
// against the interpreters a node has. A submission asks in uv's way: a
// `.python-version` file at its root ("3.13", "3.13.1", "cpython-3.13",
// ">=3.12") first, else `requires-python` in the [project] table of its
// `pyproject.toml` (a PEP 440 specifier set such as ">=3.10,<3.13"); when
// both are there, an interpreter must satisfy both. The node's driver uses it
// to choose the interpreter, the scheduler to constrain a model's job to
// nodes that have one (Request.ListRegexp).
//
// Every input is the submission's, so attacker-controlled: sizes are
// capped, and anything outside the grammar is an error that says what was
// refused, never a guess.
package pyversion

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Version is a CPython release as platform.python_version() reports it:
// major.minor.micro, and for a pre-release or development build the rest
// ("3.14.0rc1", "3.13.0+"). A version with a suffix never satisfies a
// request: PEP 440 leaves pre-releases out unless asked for, and requests
// may not name one.
type Version struct {
	Major, Minor, Micro int
	// Suffix is what follows the micro number ("rc1", "+"), empty for a
	// final release.
	Suffix string
}

// maxComponent bounds each number of a version, so that no input makes
// strconv or the comparisons work on absurd values.
const maxComponent = 9999

// ParseVersion reads "3.13.1" or "3.14.0rc1" (three numbers, an optional
// suffix of letters, digits, '+' and '.').
func ParseVersion(s string) (Version, error) {
	parts := strings.SplitN(s, ".", 3)
	if len(parts) != 3 {
		return Version{}, fmt.Errorf("python version %q: want major.minor.micro", clip(s))
	}
	var v Version
	var err error
	if v.Major, err = number(parts[0]); err == nil {
		v.Minor, err = number(parts[1])
	}
	if err != nil {
		return Version{}, fmt.Errorf("python version %q: %w", clip(s), err)
	}
	micro := parts[2]
	i := 0
	for i < len(micro) && micro[i] >= '0' && micro[i] <= '9' {
		i++
	}
	if v.Micro, err = number(micro[:i]); err != nil {
		return Version{}, fmt.Errorf("python version %q: %w", clip(s), err)
	}
	v.Suffix = micro[i:]
	for _, c := range v.Suffix {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '.') {
			return Version{}, fmt.Errorf("python version %q: unexpected %q", clip(s), c)
		}
	}
	return v, nil
}

// number reads a release number: decimal digits only, at most maxComponent.
func number(s string) (int, error) {
	if s == "" || len(s) > 4 {
		return 0, fmt.Errorf("%q is not a release number", clip(s))
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a release number", clip(s))
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > maxComponent {
		return 0, fmt.Errorf("%q is not a release number", clip(s))
	}
	return n, nil
}

func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d%s", v.Major, v.Minor, v.Micro, v.Suffix)
}

// Final reports a final release (no pre-release or development suffix).
func (v Version) Final() bool { return v.Suffix == "" }

// Compare orders versions by their numbers, then suffix (as text; a
// pre-release sorts after its final release here, which only affects the
// order of listings).
func Compare(a, b Version) int {
	return cmp.Or(cmp.Compare(a.Major, b.Major), cmp.Compare(a.Minor, b.Minor),
		cmp.Compare(a.Micro, b.Micro), strings.Compare(a.Suffix, b.Suffix))
}

// ListSeparator separates the versions of FormatList.
const ListSeparator = ","

// FormatList is the node attribute's form of a set of versions: sorted,
// without duplicates, comma-separated ("3.11.2,3.13.0").
func FormatList(vs []Version) string {
	s := slices.Clone(vs)
	slices.SortFunc(s, Compare)
	s = slices.Compact(s)
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = v.String()
	}
	return strings.Join(out, ListSeparator)
}

// ParseList reads FormatList's form. Entries that are not versions are
// skipped and reported in the error, so one odd interpreter does not hide
// the node's others.
func ParseList(s string) ([]Version, error) {
	var out []Version
	var errs []error
	for f := range strings.SplitSeq(s, ListSeparator) {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := ParseVersion(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, v)
	}
	return out, errors.Join(errs...)
}

// clip shortens hostile input quoted in an error.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
