package indexauth

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// secretWords appear only in credential values: no error, String or log
// of the package may contain them.
var secretWords = []string{"s3cret", "tok3n"}

func noSecret(t *testing.T, what, s string) {
	t.Helper()
	for _, w := range secretWords {
		if strings.Contains(s, w) {
			t.Errorf("%s shows a credential: %q", what, s)
		}
	}
}

func TestParse(t *testing.T) {
	for name, c := range map[string]struct {
		data  map[string]any
		hosts []string
		err   []string // substrings of the error; nil: none
	}{
		"login and token": {
			data:  map[string]any{"Mirror.Example": "reader:s3cret", "pypi.nvidia.com:443": "tok3n"},
			hosts: []string{"mirror.example", "pypi.nvidia.com:443"},
		},
		"empty secret": {data: map[string]any{}, hosts: []string{}},
		"a URL as key": {
			data: map[string]any{"https://mirror.example/simple": "u:s3cret"},
			err:  []string{`key "https://mirror.example/simple": want an index host`},
		},
		"user info in key": {data: map[string]any{"u@mirror.example": "u:s3cret"}, err: []string{`key "u@mirror.example"`}},
		"path in key":      {data: map[string]any{"mirror.example/simple": "u:s3cret"}, err: []string{`key "mirror.example/simple"`}},
		"bad port":         {data: map[string]any{"mirror.example:https": "u:s3cret"}, err: []string{`key "mirror.example:https"`}},
		"empty key":        {data: map[string]any{"": "u:s3cret"}, err: []string{`key ""`}},
		"number value":     {data: map[string]any{"mirror.example": 42}, err: []string{`key "mirror.example": want a non-empty string`}},
		"empty value":      {data: map[string]any{"mirror.example": ""}, err: []string{`key "mirror.example": want a non-empty string`}},
		"same host twice": {
			data: map[string]any{"mirror.example": "a:s3cret", "MIRROR.example": "b:tok3n"},
			err:  []string{"appears twice"},
		},
		"every fault at once": {
			data: map[string]any{"a/b": "x:s3cret", "ok.example": 1},
			err:  []string{`key "a/b"`, `key "ok.example"`},
		},
	} {
		t.Run(name, func(t *testing.T) {
			creds, err := Parse(c.data)
			if c.err == nil {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if got := creds.Hosts(); !reflect.DeepEqual(got, c.hosts) {
					t.Errorf("hosts %q, want %q", got, c.hosts)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse accepted %v", creds)
			}
			for _, want := range c.err {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			noSecret(t, "the error", err.Error())
		})
	}
}

func TestApply(t *testing.T) {
	creds, err := Parse(map[string]any{
		"mirror.example":      "reader:s3cret", // any port
		"mirror.example:8443": "other:s3cret2", // that port only
		"pypi.nvidia.com":     "tok3n",         // a token alone
		"odd.example":         "us er:p@ss/w:rd s3cret",
		"unused.example":      "nobody:s3cret3", // no index of this node
	})
	if err != nil {
		t.Fatal(err)
	}
	in := []string{
		"https://pypi.org/simple",
		"https://Mirror.Example/simple",
		"https://mirror.example:8443/simple",
		"https://mirror.example:9000/pypi/simple",
		"https://pypi.nvidia.com",
		"https://odd.example/simple",
	}
	out, unused, err := creds.Apply(in)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"https://pypi.org/simple",
		"https://reader:s3cret@Mirror.Example/simple",
		"https://other:s3cret2@mirror.example:8443/simple",
		"https://reader:s3cret@mirror.example:9000/pypi/simple",
		"https://tok3n@pypi.nvidia.com",
		"https://us%20er:p%40ss%2Fw%3Ard%20s3cret@odd.example/simple",
	}
	if !reflect.DeepEqual(out, want) {
		t.Errorf("Apply:\n got %q\nwant %q", out, want)
	}
	if !reflect.DeepEqual(unused, []string{"unused.example"}) {
		t.Errorf("unused %q, want [unused.example]", unused)
	}
	if in[1] != "https://Mirror.Example/simple" {
		t.Error("Apply changed its argument")
	}

	// Credentials in the plugin config and in the secret for one index.
	_, _, err = creds.Apply([]string{"https://me:inline-s3cret@mirror.example/simple"})
	if err == nil || !strings.Contains(err.Error(), "keep one") {
		t.Fatalf("inline and Vault credentials for one index: %v", err)
	}
	noSecret(t, "the conflict's error", err.Error())
	if strings.Contains(err.Error(), "inline") {
		t.Errorf("the conflict's error shows the inline credentials: %q", err)
	}

	// No credentials: the indexes as they were.
	out, unused, err = Credentials{}.Apply(in)
	if err != nil || !reflect.DeepEqual(out, in) || len(unused) != 0 {
		t.Errorf("zero Credentials: %q %q %v", out, unused, err)
	}
}

func TestCredentialsPrintNoSecret(t *testing.T) {
	creds, err := Parse(map[string]any{"mirror.example": "reader:s3cret", "pypi.nvidia.com": "tok3n"})
	if err != nil {
		t.Fatal(err)
	}
	s := fmt.Sprintf("%v %+v %#v %s", creds, creds, creds, creds)
	noSecret(t, "printing Credentials", s)
	if !strings.Contains(s, "mirror.example") {
		t.Errorf("printing Credentials does not name the hosts: %q", s)
	}
}

func TestCheckPath(t *testing.T) {
	for p, ok := range map[string]bool{
		"secret/data/modelnodes/indexes": true,
		"kv/data/indexes":                true,
		"secret/modelnodes/indexes":      false, // KV v1 shape, or v2 without data/
		"secret/data/":                   false,
		"/data/indexes":                  false,
		"secret/data/a b":                false,
		"secret/data/x?version=1":        false,
	} {
		if err := CheckPath(p); (err == nil) != ok {
			t.Errorf("CheckPath(%q) = %v", p, err)
		}
	}
}

// fakeVault answers KV v2 reads of one path with data for token only and
// records the tokens it was sent. It stands in for Vault where the real one
// cannot show the case (a Vault that hangs, the process's own environment);
// indexauth_e2e_test.go reads from the real Vault.
func fakeVault(t *testing.T, token string, data map[string]any, hang time.Duration) (addr string, seen func() []string) {
	t.Helper()
	var tokens []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokens = append(tokens, r.Header.Get("X-Vault-Token"))
		if hang > 0 {
			select {
			case <-time.After(hang):
			case <-r.Context().Done():
				return
			}
		}
		if r.Header.Get("X-Vault-Token") != token {
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"errors":["permission denied"]}`))
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"data": data, "metadata": map[string]any{"version": 1}}})
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() []string { return tokens }
}

func writeToken(t *testing.T, token string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vault_token")
	if err := os.WriteFile(p, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The task's token file is what Vault is sent, never the plugin's own
// VAULT_TOKEN, and VAULT_AGENT_ADDR does not divert it.
func TestReadUsesTheTasksTokenOnly(t *testing.T) {
	addr, seen := fakeVault(t, "task-token", map[string]any{"mirror.example": "reader:s3cret"}, 0)
	t.Setenv("VAULT_TOKEN", "plugin-token")
	t.Setenv("VAULT_AGENT_ADDR", "http://127.0.0.1:1")
	src := Source{Path: "secret/data/modelnodes/indexes", Address: addr, TokenFile: writeToken(t, "task-token")}
	creds, err := src.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := creds.Hosts(); !reflect.DeepEqual(got, []string{"mirror.example"}) {
		t.Errorf("hosts %q", got)
	}
	for _, tok := range seen() {
		if tok != "task-token" {
			t.Errorf("Vault was sent token %q, want only the task's", tok)
		}
	}
}

func TestReadFailures(t *testing.T) {
	good, _ := fakeVault(t, "task-token", map[string]any{"mirror.example": "reader:s3cret"}, 0)
	malformed, _ := fakeVault(t, "task-token", map[string]any{"mirror.example": 7, "a/b": "x:s3cret"}, 0)
	hung, _ := fakeVault(t, "task-token", nil, time.Minute)
	token := writeToken(t, "task-token")
	empty := writeToken(t, " ")
	for name, c := range map[string]struct {
		src  Source
		want string
	}{
		"no token file": {Source{Address: good, TokenFile: filepath.Join(t.TempDir(), "vault_token")}, "needs a vault block"},
		"empty token":   {Source{Address: good, TokenFile: empty}, "is empty"},
		"wrong token":   {Source{Address: good, TokenFile: writeToken(t, "other")}, "policy must allow \"read\""},
		"malformed":     {Source{Address: malformed, TokenFile: token}, `key "a/b"`},
		"vault hangs":   {Source{Address: hung, TokenFile: token, Timeout: 300 * time.Millisecond}, "deadline exceeded"},
		"vault is down": {Source{Address: "http://127.0.0.1:1", TokenFile: token, Timeout: 2 * time.Second}, "connection refused"},
		"not a v2 path": {Source{Address: good, TokenFile: token, Path: "secret/indexes"}, "not a KV v2 secret path"},
		"creds in addr": {Source{Address: "http://u:s3cret@127.0.0.1:1", TokenFile: token, Timeout: 2 * time.Second}, "127.0.0.1:1"},
	} {
		t.Run(name, func(t *testing.T) {
			if c.src.Path == "" {
				c.src.Path = "secret/data/modelnodes/indexes"
			}
			start := time.Now()
			_, err := c.src.Read(context.Background())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Read: %v, want an error saying %q", err, c.want)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("Read took %s", took)
			}
			noSecret(t, "the error", err.Error())
			if strings.Contains(err.Error(), "task-token") {
				t.Errorf("the error shows the token: %q", err)
			}
		})
	}
}

func TestRefused(t *testing.T) {
	indexes := []string{"https://pypi.org/simple", "http://127.0.0.1:45189/simple"}
	for out, want := range map[string]bool{
		// uv 0.13's own lines.
		"error: No solution found when resolving dependencies\n  cause: Because privpkg was not found in the package registry and you require privpkg==1.0, we can conclude that your requirements are unsatisfiable.\n" +
			"hint: An index URL (http://127.0.0.1:45189/simple) could not be queried due to a lack of valid authentication credentials (401 Unauthorized)": true,
		"error: Failed to download `privpkg==1.0`\n  Caused by: HTTP status client error (403 Forbidden) for url (http://REDACTED@127.0.0.1:45189/files/privpkg-1.0-py3-none-any.whl)": true,
		// Another port of the host, another host, no refusal.
		"hint: An index URL (http://127.0.0.1:451890/simple) could not be queried due to a lack of valid authentication credentials (401 Unauthorized)": false,
		"Caused by: HTTP status client error (401 Unauthorized) for url (https://evil.example/pkg.whl)":                                                 false,
		"  cause: Because pandas==0.0.1 was not found in the package registry (http://127.0.0.1:45189/simple)":                                          false,
		"": false,
	} {
		if got := Refused(out, indexes); got != want {
			t.Errorf("Refused(%q) = %v, want %v", out, got, want)
		}
	}
}
