package pyversion

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	toml "github.com/pelletier/go-toml/v2"
)

// The files a submission chooses its Python with, at the root of its code.
const (
	PythonVersionFile = ".python-version"
	PyprojectFile     = "pyproject.toml"
)

// Size caps of those files: a real .python-version is one short line, a real
// pyproject.toml a few KiB. Larger files are refused, not cut.
const (
	MaxPythonVersionFile = 4 << 10
	MaxPyprojectFile     = 256 << 10
)

// maxRequestText bounds one request's text (a line of .python-version, the
// requires-python string).
const maxRequestText = 256

// Where a part of a request comes from, as errors and the status API say.
const (
	SourcePythonVersion  = PythonVersionFile
	SourceRequiresPython = "requires-python in " + PyprojectFile
)

// Request is the Python a submission asks for. The zero Request asks for
// nothing: the node's default interpreter runs it.
type Request struct {
	parts []part
}

// part is one file's request.
type part struct {
	source  string
	text    string
	clauses []clause
}

// Any reports a request that accepts every interpreter.
func (r Request) Any() bool { return len(r.parts) == 0 }

// String says what the submission asks for and where, e.g.
// ">=3.14 (requires-python in pyproject.toml)"; "any" for the zero Request.
// Its text passed the grammar, so it holds no character a log, a job or
// Nomad's interpolation would read specially.
func (r Request) String() string {
	if r.Any() {
		return "any"
	}
	s := make([]string, len(r.parts))
	for i, p := range r.parts {
		s[i] = fmt.Sprintf("%s (%s)", p.text, p.source)
	}
	return strings.Join(s, " and ")
}

// Matches reports whether an interpreter of version v satisfies the
// request. A pre-release or development build satisfies only the zero
// Request.
func (r Request) Matches(v Version) bool {
	if r.Any() {
		return true
	}
	if !v.Final() {
		return false
	}
	for _, p := range r.parts {
		for _, c := range p.clauses {
			if !c.matches(v) {
				return false
			}
		}
	}
	return true
}

// Best returns the index of the highest version in vs that satisfies the
// request (the first of equal ones, so the caller's order breaks ties),
// and false when none does.
func (r Request) Best(vs []Version) (int, bool) {
	best := -1
	for i, v := range vs {
		if r.Matches(v) && (best < 0 || Compare(v, vs[best]) > 0) {
			best = i
		}
	}
	return best, best >= 0
}

// ParsePythonVersion reads a .python-version file as uv does: the first line
// that is neither blank nor a comment ('#'). The forms accepted are a
// version ("3", "3.13", "3.13.1"; the shorter ones accept any later number),
// the same after "cpython", "cpython-" or "cpython@", "cpython" alone (any),
// "system" (pyenv's word for the node's own Python: any), or a specifier set
// (">=3.12"). Other implementations, free-threaded builds, paths and
// platform-specific names are refused with a reason. A file with no such
// line asks for nothing.
func ParsePythonVersion(b []byte) (Request, error) {
	line, err := firstLine(b)
	if err != nil || line == "" {
		return Request{}, err
	}
	clauses, err := parseVersionRequest(line)
	if err != nil {
		return Request{}, fmt.Errorf("%s: %w", PythonVersionFile, err)
	}
	if clauses == nil {
		return Request{}, nil
	}
	return Request{parts: []part{{source: SourcePythonVersion, text: line, clauses: clauses}}}, nil
}

func firstLine(b []byte) (string, error) {
	if len(b) > MaxPythonVersionFile {
		return "", fmt.Errorf("%s: %d bytes, more than %d", PythonVersionFile, len(b), MaxPythonVersionFile)
	}
	if !utf8.Valid(b) || bytes.IndexByte(b, 0) >= 0 {
		return "", fmt.Errorf("%s is not UTF-8 text", PythonVersionFile)
	}
	for l := range strings.Lines(string(b)) {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if len(l) > maxRequestText {
			return "", fmt.Errorf("%s: a line of %d bytes, more than %d", PythonVersionFile, len(l), maxRequestText)
		}
		if err := printable(l); err != nil {
			return "", fmt.Errorf("%s: %w", PythonVersionFile, err)
		}
		return l, nil
	}
	return "", nil
}

// printable refuses what a request's text cannot hold: anything but
// printable ASCII, spaces and tabs. The text travels into logs, job meta
// and the status API; strings.TrimSpace would otherwise let a Unicode space
// or a control character such as NEL (U+0085) through the grammar.
func printable(s string) error {
	for _, r := range s {
		if (r < 0x20 && r != '\t') || r > 0x7e {
			return fmt.Errorf("%q holds %U, not printable ASCII", clip(s), r)
		}
	}
	return nil
}

// versionRequest is a .python-version line after the implementation: a
// version of one to three numbers, nothing else.
var versionRequest = regexp.MustCompile(`^[0-9]+(\.[0-9]+){0,2}$`)

// What a refused line looks like, to say why it is refused.
var (
	freeThreaded  = regexp.MustCompile(`^[0-9]+(\.[0-9]+){0,2}(t|\+freethreaded)$`)
	platformBuild = regexp.MustCompile(`^[0-9]+(\.[0-9]+){0,2}(\+[a-z]+)?-`)
	preRelease    = regexp.MustCompile(`^[0-9]+(\.[0-9]+){0,2}(a|b|rc)[0-9]+$`)
)

// parseVersionRequest reads one .python-version line; nil clauses (and no
// error) mean any interpreter.
func parseVersionRequest(line string) ([]clause, error) {
	if strings.ContainsAny(line[:1], "<>=!~") {
		c, err := parseSpecifiers(line)
		if err == nil && c == nil {
			err = errors.New("empty specifier")
		}
		return c, err
	}
	l := strings.ToLower(line)
	switch {
	case l == "system" || l == "cpython" || l == "python":
		return nil, nil
	case strings.ContainsAny(l, `/\`):
		return nil, fmt.Errorf("%q is a path; a submission chooses its Python by version (3.13)", clip(line))
	}
	for _, other := range []string{"pypy", "graalpy", "pyodide", "jython", "ironpython", "micropython"} {
		if strings.HasPrefix(l, other) {
			return nil, fmt.Errorf("%q asks for %s; nodes offer CPython only", clip(line), other)
		}
	}
	ver := l
	for _, prefix := range []string{"cpython@", "cpython-", "cpython", "python"} {
		if rest, ok := strings.CutPrefix(l, prefix); ok {
			ver = rest
			break
		}
	}
	if !versionRequest.MatchString(ver) {
		why := "want a version such as 3.13 or 3.13.1, cpython-3.13, or a specifier such as >=3.12"
		switch {
		case freeThreaded.MatchString(ver):
			why = "free-threaded builds are not offered"
		case platformBuild.MatchString(ver):
			why = "a platform-specific build; write the version only (3.13)"
		case preRelease.MatchString(ver):
			why = "pre-releases are not supported"
		}
		return nil, fmt.Errorf("%q: %s", clip(line), why)
	}
	rel, err := parseRelease(ver)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", clip(line), err)
	}
	if len(rel) == 3 {
		return []clause{{op: "==", release: rel}}, nil
	}
	return []clause{{op: "==", release: rel, wildcard: true}}, nil
}

// ParseRequiresPython reads a requires-python value (a PEP 440 specifier
// set); an empty one asks for nothing.
func ParseRequiresPython(s string) (Request, error) {
	s = strings.TrimSpace(s)
	if len(s) > maxRequestText {
		return Request{}, fmt.Errorf("%s: %d bytes, more than %d", SourceRequiresPython, len(s), maxRequestText)
	}
	if err := printable(s); err != nil {
		return Request{}, fmt.Errorf("%s: %w", SourceRequiresPython, err)
	}
	clauses, err := parseSpecifiers(s)
	if err != nil {
		return Request{}, fmt.Errorf("%s: %w", SourceRequiresPython, err)
	}
	if clauses == nil {
		return Request{}, nil
	}
	return Request{parts: []part{{source: SourceRequiresPython, text: s, clauses: clauses}}}, nil
}

// RequiresPython returns the requires-python of a pyproject.toml's [project]
// table ("" when it has none). The file is parsed whole, with a real TOML
// parser, so a key that only looks like it (inside a string, in another
// table) is not taken for it. The parser is pelletier/go-toml/v2: it bounds
// the nesting of arrays and inline tables and stays linear on long dotted
// keys, where BurntSushi/toml (already in the module graph) spends
// quadratic memory (3 GB for 24 KiB of "a = {b={b=...").
func RequiresPython(pyproject []byte) (string, error) {
	if len(pyproject) > MaxPyprojectFile {
		return "", fmt.Errorf("%s: %d bytes, more than %d", PyprojectFile, len(pyproject), MaxPyprojectFile)
	}
	var doc struct {
		Project struct {
			RequiresPython any `toml:"requires-python"`
		} `toml:"project"`
	}
	if err := toml.Unmarshal(pyproject, &doc); err != nil {
		return "", fmt.Errorf("%s: %s", PyprojectFile, clip(firstErrorLine(err)))
	}
	switch v := doc.Project.RequiresPython.(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	default:
		return "", fmt.Errorf("%s: requires-python is a %T, not a string", PyprojectFile, v)
	}
}

// firstErrorLine keeps the TOML parser's message to its first line: its
// longer forms quote the input back.
func firstErrorLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	q := strconv.QuoteToGraphic(s)
	return q[1 : len(q)-1]
}

// FromFiles is a submission's request from the contents of its
// .python-version and pyproject.toml (nil: the file is absent). As with uv,
// .python-version chooses; a requires-python must hold as well, so a
// submission pinned to a version its own project excludes matches nothing
// and is reported rather than run on an interpreter it says it cannot use.
func FromFiles(pythonVersion, pyproject []byte) (Request, error) {
	var r Request
	if pythonVersion != nil {
		pv, err := ParsePythonVersion(pythonVersion)
		if err != nil {
			return Request{}, err
		}
		r.parts = append(r.parts, pv.parts...)
	}
	if pyproject != nil {
		s, err := RequiresPython(pyproject)
		if err != nil {
			return Request{}, err
		}
		rp, err := ParseRequiresPython(s)
		if err != nil {
			return Request{}, err
		}
		r.parts = append(r.parts, rp.parts...)
	}
	return r, nil
}
