package pyenv

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/modelnodes/modelnodes/internal/redact"
)

// Spec is everything that decides what an environment contains. Two specs
// with the same Key share one environment.
type Spec struct {
	// Requirements is the submission's requirements.txt (may be empty: the
	// environment is then a bare virtual environment, shared by every
	// submission without requirements on that interpreter).
	Requirements []byte
	// Python is the absolute path of one of the node's interpreters. uv never
	// downloads one (UV_PYTHON_DOWNLOADS=never).
	Python string
	// PythonVersion is the interpreter's version as fingerprinted ("3.13.0").
	PythonVersion string
	// Platform names the node's platform as fingerprinted
	// ("linux-x86_64-glibc2.36"); wheels differ between platforms.
	Platform string
	// Indexes are the package index URLs: the first is the default index
	// (PyPI when empty), the rest are extra indexes, which uv consults first.
	// They may carry credentials (https://user:token@host/simple); the key
	// and every message leave those out.
	Indexes []string
	// OnlyBinary installs wheels only (uv's --only-binary :all:): resolving
	// reads wheel metadata and installing unpacks archives, so no code of
	// any package runs while the environment is built, and a requirement
	// that only has a source distribution fails the build, saying so. It is
	// what makes a build on the trusted side (pyenv.RunOnHost) safe; a
	// requirements file's --no-binary is then refused.
	OnlyBinary bool
}

// keyVersion changes when the build itself changes in a way that makes old
// environments wrong (flags, layout); every key changes with it.
const keyVersion = 1

// Key is the spec's content address: 20 lowercase base32 characters (100 bits
// of SHA-256) over a canonical encoding of every field that can change the
// result. The requirements are normalized only where that cannot change what
// uv resolves (line endings, trailing blanks); their order and comments stay.
// Credentials in index URLs (user info, query) are left out, as
// internal/redact writes them: rotating a token does not rebuild.
func Key(s Spec) string {
	canon := struct {
		V             int      `json:"v"`
		Python        string   `json:"python"`
		PythonVersion string   `json:"python_version"`
		Platform      string   `json:"platform"`
		Indexes       []string `json:"indexes"`
		Requirements  string   `json:"requirements"`
		OnlyBinary    bool     `json:"only_binary,omitempty"` // omitted when false: earlier keys stay
	}{keyVersion, s.Python, s.PythonVersion, s.Platform, make([]string, len(s.Indexes)), string(normalizeRequirements(s.Requirements)), s.OnlyBinary}
	for i, ix := range s.Indexes {
		canon.Indexes[i] = redact.URL(ix)
	}
	b, err := json.Marshal(canon)
	if err != nil { // strings and ints only: cannot fail
		panic(err)
	}
	sum := sha256.Sum256(b)
	return strings.ToLower(base32.StdEncoding.EncodeToString(sum[:]))[:20]
}

// normalizeRequirements turns CRLF into LF, strips trailing spaces and tabs
// of each line and trailing blank lines, and ends a non-empty file with one
// newline. pip's and uv's parsers ignore all of these.
func normalizeRequirements(req []byte) []byte {
	lines := strings.Split(strings.ReplaceAll(string(req), "\r\n", "\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " \t\r")
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if len(lines) == 0 {
		return nil
	}
	return []byte(strings.Join(lines, "\n") + "\n")
}

// MaxRequirementsBytes bounds a submission's requirements file: a real one
// is a few hundred bytes, with hashes a few tens of kilobytes.
const MaxRequirementsBytes = 1 << 20

// allowedOptions are the requirements-file options that only narrow what uv
// may pick from the configured indexes. Every other option (-r, -c, -e,
// --index-url, --find-links, ...) would make the result depend on something
// that is not in the key (another file, another index), so it is refused.
var allowedOptions = map[string]bool{
	"--only-binary":   true,
	"--no-binary":     true,
	"--prefer-binary": true,
	"--pre":           true,
}

// Validate checks the spec before anything runs. The requirements come from a
// submission, so they are attacker-controlled: a line that names a local path
// or another file, or an option that changes where packages come from, is
// refused with its line number.
func (s Spec) Validate() error {
	if !filepath.IsAbs(s.Python) {
		return fmt.Errorf("python interpreter %q is not an absolute path", s.Python)
	}
	if s.PythonVersion == "" || s.Platform == "" {
		return fmt.Errorf("python version and platform are required for the key")
	}
	for _, ix := range s.Indexes {
		if err := CheckIndexURL(ix); err != nil {
			return err
		}
	}
	if len(s.Requirements) > MaxRequirementsBytes {
		return fmt.Errorf("requirements: %d bytes, more than %d", len(s.Requirements), MaxRequirementsBytes)
	}
	if bytes.IndexByte(s.Requirements, 0) >= 0 {
		return fmt.Errorf("requirements: contains a NUL byte")
	}
	for _, line := range logicalLines(string(normalizeRequirements(s.Requirements))) {
		if err := checkRequirement(line.text); err != nil {
			return fmt.Errorf("requirements line %d: %w", line.n, err)
		}
		if s.OnlyBinary && strings.HasPrefix(line.text, "--no-binary") {
			return fmt.Errorf("requirements line %d: --no-binary: this node installs wheels only (no package code runs while it builds)", line.n)
		}
	}
	return nil
}

// CheckIndexURL checks one package index URL (credentials, if any, are
// left out of the error).
func CheckIndexURL(ix string) error {
	u, err := url.Parse(ix)
	// uv takes the extra indexes as one space-separated variable.
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || strings.ContainsAny(ix, " \t\r\n") {
		return fmt.Errorf("index %q is not an http(s) URL", redact.URL(ix))
	}
	return nil
}

type logicalLine struct {
	n    int // the first physical line, from 1
	text string
}

// logicalLines joins backslash continuations and drops comments (a "#" at the
// start or after whitespace, as pip parses them) and blank lines.
func logicalLines(req string) []logicalLine {
	var out []logicalLine
	var cur strings.Builder
	start := 0
	for i, l := range strings.Split(req, "\n") {
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(l, `\`) {
			cur.WriteString(strings.TrimSuffix(l, `\`))
			cur.WriteString(" ")
			continue
		}
		cur.WriteString(l)
		text := stripComment(cur.String())
		cur.Reset()
		if text != "" {
			out = append(out, logicalLine{n: start, text: text})
		}
	}
	return out
}

func stripComment(l string) string {
	if strings.HasPrefix(strings.TrimSpace(l), "#") {
		return ""
	}
	if i := strings.Index(l, " #"); i >= 0 {
		l = l[:i]
	}
	if i := strings.Index(l, "\t#"); i >= 0 {
		l = l[:i]
	}
	return strings.TrimSpace(l)
}

func checkRequirement(line string) error {
	if strings.HasPrefix(line, "-") {
		opt := line
		if i := strings.IndexAny(opt, " =\t"); i >= 0 {
			opt = opt[:i]
		}
		if !allowedOptions[opt] {
			return fmt.Errorf("option %q is not allowed (an environment is keyed by this file's content alone)", opt)
		}
		return nil
	}
	// A local path or file URL would install something the key does not
	// cover, from the build's own view of the file system.
	lower := strings.ToLower(line)
	if strings.HasPrefix(line, ".") || strings.HasPrefix(line, "/") || strings.HasPrefix(line, "~") ||
		strings.Contains(lower, "file:") {
		return fmt.Errorf("local paths are not allowed: %q", firstField(line))
	}
	return nil
}

func firstField(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return s
}

// projectName matches the distribution name at the start of a requirement
// (PEP 508).
var projectName = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?`)

// normalizeName is PEP 503's normalized form of a project name.
func normalizeName(name string) string {
	return strings.ToLower(nameSeparators.ReplaceAllString(name, "-"))
}

var nameSeparators = regexp.MustCompile(`[-_.]+`)

// WithDefaults returns req with each of defaults (requirement lines the node
// adds to every environment, such as CrunchDAO images' pandas and pyarrow)
// appended unless req already names that project: a submission's own pin
// wins. The result is what the environment is keyed and built by.
func WithDefaults(req []byte, defaults []string) []byte {
	if len(defaults) == 0 {
		return req
	}
	named := map[string]bool{}
	for _, l := range logicalLines(string(normalizeRequirements(req))) {
		if n := projectName.FindString(l.text); n != "" && !strings.HasPrefix(l.text, "-") {
			named[normalizeName(n)] = true
		}
	}
	out := append([]byte{}, req...)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	for _, d := range defaults {
		if n := projectName.FindString(d); n != "" && !named[normalizeName(n)] {
			out = append(out, strings.TrimSpace(d)+"  # the node's default\n"...)
		}
	}
	return out
}
