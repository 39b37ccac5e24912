package jobs

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"reflect"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Classes of refusal: Validate's and CheckModel's errors wrap one of these
// (errors.Is), so the scheduler can count refusals by class.
var (
	// ErrInterpolation: a string carries a character Nomad's interpolation
	// reads ($, {, }, %) or a control character.
	ErrInterpolation = errors.New("unsafe string")
	// ErrEntry: the entry is not a module name or a relative program path.
	ErrEntry = errors.New("bad entry")
	// ErrArtifact: the artifact URL or digest breaks the artifact policy.
	ErrArtifact = errors.New("artifact refused")
	// ErrModelDir: a host model dir where none may be used.
	ErrModelDir = errors.New("model dir refused")
)

// MaxStringLen bounds every string of a Model (bytes); the on-chain
// layout's longest field, artifact_uri, has at most 512.
const MaxStringLen = 1024

// forbidden are the characters that start Nomad's interpolation: ${...}
// (task environment, node attributes, meta) in artifact sources, driver
// config, service meta and template destinations, and %{...} in HCL
// templates. Nomad has no escape for them, so they are refused outright.
const forbidden = "${}%"

// checkStrings checks every string field of m, found by reflection so that
// a field added later is checked without anyone remembering to: no
// character Nomad interpolates, no control or format character (NUL, bidi
// overrides), valid
// UTF-8, at most MaxStringLen bytes. A field of a kind it does not know is
// an error, so a new kind of field (a list, a map) fails every model until
// it is handled here.
func checkStrings(m *Model) []error {
	var errs []error
	v := reflect.ValueOf(m).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		switch f.Type.Kind() {
		case reflect.String:
			if err := CheckString(v.Field(i).String()); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", fieldName(f), err))
			}
		case reflect.Int, reflect.Bool:
		default:
			errs = append(errs, fmt.Errorf("field %s of kind %s is not checked by jobs.checkStrings", f.Name, f.Type.Kind()))
		}
	}
	return errs
}

func fieldName(f reflect.StructField) string {
	if n, _, _ := strings.Cut(f.Tag.Get("json"), ","); n != "" {
		return n
	}
	return f.Name
}

// CheckString reports why s cannot travel from a source into a job spec:
// too long, not UTF-8, a character Nomad interpolates ($ { } %), or a
// control or format character. Every string field of a Model is checked so.
func CheckString(s string) error {
	if len(s) > MaxStringLen {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrInterpolation, len(s), MaxStringLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not UTF-8", ErrInterpolation, quote(s))
	}
	if i := strings.IndexAny(s, forbidden); i >= 0 {
		return fmt.Errorf("%w: %s contains %q, which Nomad interpolates", ErrInterpolation, quote(s), s[i])
	}
	for _, r := range s {
		// Format characters (bidi overrides, zero widths) would make logs
		// and the status API lie about what the string is.
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError {
			return fmt.Errorf("%w: %s contains the control or format character %U", ErrInterpolation, quote(s), r)
		}
	}
	return nil
}

// quote prints an attacker's string for logs and the status API: quoted,
// escaped, and cut to 80 bytes.
func quote(s string) string {
	if len(s) > 80 {
		return fmt.Sprintf("%q…", s[:80])
	}
	return fmt.Sprintf("%q", s)
}

// checkEntry applies entry's grammar: for the python runtime a dotted
// module name (identifiers separated by dots, or empty: the driver's
// default); for an executable a relative path inside the model of letters,
// digits and ._+- with no empty, "." or ".." segment and no segment that
// starts with '-' (it would read as an option).
func checkEntry(runtime, entry string) error {
	if len(entry) > 255 {
		return fmt.Errorf("%w: %d bytes, more than 255", ErrEntry, len(entry))
	}
	if runtime == "executable" {
		if entry == "" {
			return fmt.Errorf(`%w: runtime "executable" needs entry, the program in the model`, ErrEntry)
		}
		for _, seg := range strings.Split(entry, "/") {
			if seg == "" || seg == "." || seg == ".." || seg[0] == '-' || strings.IndexFunc(seg, func(r rune) bool {
				return !(r < utf8.RuneSelf && (isAlnum(byte(r)) || strings.ContainsRune("._+-", r)))
			}) >= 0 {
				return fmt.Errorf("%w: %s is not a relative program path inside the model (letters, digits, ._+-, no .. or leading / or -)", ErrEntry, quote(entry))
			}
		}
		return nil
	}
	if entry == "" {
		return nil
	}
	for _, id := range strings.Split(entry, ".") {
		if id == "" || id[0] >= '0' && id[0] <= '9' || strings.IndexFunc(id, func(r rune) bool {
			return !(r < utf8.RuneSelf && (isAlnum(byte(r)) || r == '_'))
		}) >= 0 {
			return fmt.Errorf("%w: %s is not a dotted Python module name", ErrEntry, quote(entry))
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// parseArtifactURL checks what does not depend on the deployment: an
// absolute http(s) URL with a host, no user info, no query or fragment, no
// go-getter syntax (a forced getter "git::", a "//" subdirectory).
//
// All query strings are refused, not only the keys go-getter reads
// (archive, checksum, filename; per getter sshkey, ref, depth, rev,
// aws_access_key_id, aws_access_key_secret, aws_access_token, aws_profile,
// region, version...): that set differs per getter and per go-getter
// release, Nomad merges the job's getter options into the same query, and
// the digest travels separately (ArtifactSHA256), so a model needs none.
// The price: presigned URLs (S3, GCS) cannot be used.
func parseArtifactURL(raw string) (*url.URL, error) {
	bad := func(why string) (*url.URL, error) {
		return nil, fmt.Errorf("%w: URL %s %s", ErrArtifact, quote(raw), why)
	}
	if strings.Contains(raw, "::") {
		return bad("forces a go-getter getter (xxx::)")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return bad("does not parse")
	}
	switch {
	case u.Scheme != "https" && u.Scheme != "http":
		return bad("is not https://")
	case u.Opaque != "" || u.Host == "" || u.Hostname() == "":
		return bad("has no host")
	case u.User != nil:
		return bad("carries user info")
	case u.RawQuery != "" || u.ForceQuery:
		return bad("has a query string (go-getter reads its parameters)")
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return bad("has a fragment")
	case strings.Contains(u.Path, "//"):
		return bad("names a go-getter subdirectory (//)")
	case strings.Contains(u.Host, "\\") || strings.ContainsAny(u.Path, "\\ "):
		return bad("has a backslash or space")
	}
	return u, nil
}

// checkModelDir: an absolute, clean path of safe characters.
func checkModelDir(dir string) error {
	if !strings.HasPrefix(dir, "/") || path.Clean(dir) != dir || strings.ContainsAny(dir, " \\\"'") {
		return fmt.Errorf("%w: %s is not a clean absolute path", ErrModelDir, quote(dir))
	}
	return nil
}

// CheckModel reports what makes m unusable under these options: Validate,
// then the deployment's policy. Artifacts must come over https (http only
// with AllowHTTPArtifacts) from a host of ArtifactHosts; a host model dir
// needs AllowHostModelDirs. Both jobs.Build and the scheduler's watcher
// call it, so a refused model is skipped with its reason instead of failing
// a reconcile pass. A nil o is the zero Options.
func (o *Options) CheckModel(m *Model) error {
	if o == nil {
		o = &Options{}
	}
	if err := m.Validate(); err != nil {
		return err
	}
	if m.ModelDir != "" && !o.AllowHostModelDirs {
		return fmt.Errorf("%w: model dir %s is a path on the node; host model dirs are for development only (scheduler --allow-host-model-dirs)", ErrModelDir, quote(m.ModelDir))
	}
	for _, raw := range []string{m.ArtifactURL, m.ResourcesURL} {
		if raw == "" {
			continue
		}
		if err := o.CheckArtifactURL(raw); err != nil {
			return err
		}
	}
	return nil
}

// CheckArtifactURL applies the deployment's policy to the URL of an archive
// a node fetches (the code artifact or the resources), or a URL such a
// fetch is redirected to. A nil o is the zero Options.
func (o *Options) CheckArtifactURL(raw string) error {
	if o == nil {
		o = &Options{}
	}
	u, err := parseArtifactURL(raw)
	if err != nil {
		return err
	}
	if u.Scheme == "http" && !o.AllowHTTPArtifacts {
		return fmt.Errorf("%w: URL %s is plain http; only https artifacts are fetched (scheduler --allow-http-artifacts for development)", ErrArtifact, quote(raw))
	}
	if len(o.ArtifactHosts) == 0 {
		return fmt.Errorf("%w: URL %s: no artifact host is allowed; the operator lists the hosts models may be fetched from with the scheduler's --artifact-hosts", ErrArtifact, quote(raw))
	}
	if !hostAllowed(o.ArtifactHosts, u) {
		return fmt.Errorf("%w: URL %s: host %s is not in the scheduler's --artifact-hosts", ErrArtifact, quote(raw), quote(u.Hostname()))
	}
	return nil
}

// hostAllowed: an entry is a host name (any port), host:port, or
// "*.domain" (any host under domain, not domain itself); case-insensitive.
func hostAllowed(hosts []string, u *url.URL) bool {
	name := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	hostPort := strings.ToLower(u.Host)
	for _, h := range hosts {
		h = strings.ToLower(strings.TrimSpace(h))
		switch {
		case h == "":
		case strings.HasPrefix(h, "*."):
			if strings.HasSuffix(name, h[1:]) {
				return true
			}
		case h == name || h == hostPort:
			return true
		}
	}
	return false
}
