// Package indexauth gives a trusted-side environment build the credentials
// of the node's private package indexes (a mirror's token, NVIDIA's
// registry login), read from Vault at build time with the Vault token of
// the task being started, and puts them into that build's index URLs only.
//
// The credentials are one KV v2 secret (Source.Path, e.g.
// "secret/data/modelnodes/indexes") whose keys are index hosts, as the
// plugin's index_urls name them ("mirror.example" for any port,
// "mirror.example:8443" for one), and whose values are "username:password"
// or a token alone (sent as the username, as pip does with
// https://TOKEN@host/). They live in memory only: nothing here writes them
// to disk, and no error, log line or String of this package carries a
// username, password or token (hosts and paths only).
package indexauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/modelnodes/modelnodes/internal/redact"
)

// DefaultTimeout bounds one read of the credentials, Vault's retries
// included: a task's start must not hang on an unreachable Vault.
const DefaultTimeout = 10 * time.Second

// maxTokenBytes bounds the token file read (a Vault token is ~100 bytes).
const maxTokenBytes = 4096

// Source is where one build's credentials are read from.
type Source struct {
	// Path is the KV v2 secret's API path, "<mount>/data/<name>", as the
	// Vault policy that grants reading it names it.
	Path string
	// Address is Vault's address; empty: the process's VAULT_ADDR.
	Address string
	// TokenFile holds the Vault token to read with (a Nomad task's
	// secrets/vault_token). The process's own VAULT_TOKEN is never used.
	TokenFile string
	// Timeout bounds the read (default DefaultTimeout).
	Timeout time.Duration
}

// CheckPath checks a configured secret path: a KV v2 API path,
// "<mount>/data/<name>".
func CheckPath(p string) error {
	mount, name, ok := strings.Cut(strings.Trim(p, "/"), "/data/")
	if !ok || mount == "" || name == "" || strings.ContainsAny(p, " \t\r\n?#") {
		return fmt.Errorf("%q is not a KV v2 secret path: want <mount>/data/<name>, e.g. secret/data/modelnodes/indexes", p)
	}
	return nil
}

// Read reads the credentials with the token in TokenFile. A missing token,
// a denied read, a missing or deleted secret, an unreachable Vault and a
// malformed entry are errors: building without the credentials could
// resolve a private package's name on a public index instead.
func (s Source) Read(ctx context.Context) (Credentials, error) {
	if err := CheckPath(s.Path); err != nil {
		return Credentials{}, err
	}
	token, err := readToken(s.TokenFile)
	if err != nil {
		return Credentials{}, err
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	cfg := vaultapi.DefaultConfig() // the node's VAULT_CACERT and the like
	if cfg.Error != nil {
		return Credentials{}, fmt.Errorf("vault client: %w", cfg.Error)
	}
	if s.Address != "" {
		cfg.Address = s.Address
	}
	// NewClient prefers VAULT_AGENT_ADDR over Address: the task's token
	// goes to the task's Vault, not to an agent the plugin's environment
	// names.
	cfg.AgentAddress = ""
	cfg.Timeout = timeout
	// One retry for a blip; more would spend the whole timeout on a Vault
	// that is down and end with "deadline exceeded" instead of its reason.
	// Nomad restarts a task whose start failed.
	cfg.MaxRetries = 1
	defer cfg.HttpClient.CloseIdleConnections()
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		return Credentials{}, fmt.Errorf("vault client: %w", redact.Error(err))
	}
	c.SetToken(token) // replaces the process's VAULT_TOKEN, which NewClient read
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sec, err := c.Logical().ReadWithContext(ctx, s.Path)
	var re *vaultapi.ResponseError
	switch {
	case errors.As(err, &re) && re.StatusCode == http.StatusForbidden:
		return Credentials{}, fmt.Errorf("vault at %s denied reading %s with the task's Vault token: the job's Vault policy must allow \"read\" on that path: %w",
			redact.URL(cfg.Address), s.Path, vaultError{re})
	case errors.As(err, &re):
		return Credentials{}, fmt.Errorf("read %s from vault at %s: %w", s.Path, redact.URL(cfg.Address), vaultError{re})
	case err != nil:
		return Credentials{}, fmt.Errorf("read %s from vault at %s: %w", s.Path, redact.URL(cfg.Address), redact.Error(err))
	case sec == nil:
		return Credentials{}, fmt.Errorf("vault at %s has no secret at %s", redact.URL(cfg.Address), s.Path)
	}
	data, ok := sec.Data["data"].(map[string]any)
	if _, present := sec.Data["data"]; present && sec.Data["data"] == nil {
		return Credentials{}, fmt.Errorf("the secret at %s has no current version (deleted or destroyed)", s.Path)
	}
	if !ok {
		return Credentials{}, fmt.Errorf("%s is not a KV v2 secret (no data object)", s.Path)
	}
	creds, err := Parse(data)
	if err != nil {
		return Credentials{}, fmt.Errorf("%s: %w", s.Path, err)
	}
	return creds, nil
}

// vaultError is Vault's answer in one line ("vault answered 403: permission
// denied"): the API's own message spans lines and repeats the URL, and it
// ends up in a Nomad task event.
type vaultError struct{ re *vaultapi.ResponseError }

func (e vaultError) Error() string {
	var msgs []string
	for _, m := range e.re.Errors {
		msgs = append(msgs, strings.Join(strings.Fields(m), " "))
	}
	return fmt.Sprintf("vault answered %d: %s", e.re.StatusCode, strings.Join(msgs, "; "))
}

func (e vaultError) Unwrap() error { return e.re }

func readToken(path string) (string, error) {
	if path == "" {
		return "", errors.New("no Vault token file: the job needs a vault block")
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("the task has no Vault token (%s): its job needs a vault block", path)
	}
	if err != nil {
		return "", fmt.Errorf("vault token: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenBytes+1))
	if err != nil {
		return "", fmt.Errorf("vault token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	switch {
	case len(b) > maxTokenBytes:
		return "", fmt.Errorf("vault token %s: more than %d bytes", path, maxTokenBytes)
	case token == "":
		return "", fmt.Errorf("vault token %s is empty", path)
	}
	return token, nil
}

// Credentials are index logins by host. The zero value has none. Its
// String names the hosts only.
type Credentials struct {
	byHost map[string]*url.Userinfo // keys lowercase "host" or "host:port"
}

// Parse reads a KV v2 secret's data: index host -> "username:password" or
// a token. Errors name the offending host, never a value.
func Parse(data map[string]any) (Credentials, error) {
	c := Credentials{byHost: make(map[string]*url.Userinfo, len(data))}
	var errs []error
	for k, v := range data {
		host := strings.ToLower(k)
		if u, err := url.Parse("//" + host); err != nil || u.Host != host || u.User != nil || host == "" {
			errs = append(errs, fmt.Errorf("key %q: want an index host, \"host\" or \"host:port\"", k))
			continue
		}
		if _, dup := c.byHost[host]; dup {
			errs = append(errs, fmt.Errorf("key %q: the host appears twice (keys are not case-sensitive)", k))
			continue
		}
		s, ok := v.(string)
		if !ok || s == "" {
			errs = append(errs, fmt.Errorf("key %q: want a non-empty string \"username:password\" or a token", k))
			continue
		}
		if user, pass, ok := strings.Cut(s, ":"); ok {
			c.byHost[host] = url.UserPassword(user, pass)
		} else {
			c.byHost[host] = url.User(s)
		}
	}
	// Map order is random: the same secret gives the same message.
	slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	if err := errors.Join(errs...); err != nil {
		return Credentials{}, err
	}
	return c, nil
}

// Hosts are the hosts that have credentials, sorted.
func (c Credentials) Hosts() []string {
	hosts := make([]string, 0, len(c.byHost))
	for h := range c.byHost {
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)
	return hosts
}

// String names the hosts only, so that a stray %v logs no secret.
func (c Credentials) String() string {
	return "index credentials for [" + strings.Join(c.Hosts(), " ") + "]"
}

// GoString is String: %#v logs no secret either.
func (c Credentials) GoString() string { return c.String() }

// Apply returns indexes with each one's credentials in its user info: those
// of its "host:port" when the secret has them, else those of its host name.
// An index without any stays as it is. unused lists the hosts that no index
// matched (a typo in the secret, or another node's indexes). An index that
// already carries credentials in the plugin config and has some in the
// secret too is an error: one place must say which login is meant.
func (c Credentials) Apply(indexes []string) (out, unused []string, err error) {
	used := map[string]bool{}
	out = make([]string, len(indexes))
	for i, ix := range indexes {
		u, err := url.Parse(ix)
		if err != nil || u.Host == "" {
			return nil, nil, fmt.Errorf("index %q is not a URL", redact.URL(ix))
		}
		host := strings.ToLower(u.Host)
		if _, ok := c.byHost[host]; !ok {
			host = strings.ToLower(u.Hostname())
		}
		login, ok := c.byHost[host]
		if !ok {
			out[i] = ix
			continue
		}
		used[host] = true
		if u.User != nil {
			return nil, nil, fmt.Errorf("index %s carries credentials in the plugin config and the Vault secret has some for %s too: keep one", redact.URL(ix), host)
		}
		u.User = login
		out[i] = u.String()
	}
	for _, h := range c.Hosts() {
		if !used[h] {
			unused = append(unused, h)
		}
	}
	return out, unused, nil
}

// Refused reports whether a failed build's output (uv's lines) says that
// one of indexes refused the node's login: a line with 401 Unauthorized or
// 403 Forbidden that names a URL on an index's host. The node's
// configuration is then wrong (credentials missing, stale or mistyped), not
// the model: a submission cannot choose the indexes, and a line about
// another host (a requirement's own URL) does not count.
func Refused(output string, indexes []string) bool {
	hosts := map[string]bool{}
	for _, ix := range indexes {
		if u, err := url.Parse(ix); err == nil && u.Host != "" {
			hosts[strings.ToLower(u.Host)] = true
		}
	}
	for _, line := range strings.Split(output, "\n") {
		if !strings.Contains(line, "401 Unauthorized") && !strings.Contains(line, "403 Forbidden") {
			continue
		}
		for _, raw := range urlInLine.FindAllString(line, -1) {
			if u, err := url.Parse(raw); err == nil && hosts[strings.ToLower(u.Host)] {
				return true
			}
		}
	}
	return false
}

// urlInLine finds the URLs uv prints, in parentheses or backquotes.
var urlInLine = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.\-]*://[^\s"'<>()\x60]+`)
