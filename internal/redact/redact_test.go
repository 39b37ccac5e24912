package redact

import (
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for raw, want := range map[string]string{
		"https://user:pw@rpc.example/v1?api-key=k#frag": "https://REDACTED@rpc.example/v1?REDACTED#REDACTED",
		"https://vault:8200/v1/pki_int/issuers":         "https://vault:8200/v1/pki_int/issuers",
		"http://host/%zz?token=k":                       "http://REDACTED",
	} {
		if got := URL(raw); got != want {
			t.Errorf("URL(%q) = %q, want %q", raw, got, want)
		}
	}
}

func TestURLsIn(t *testing.T) {
	s := `Post "https://u:secret@rpc.example/?api-key=secret": dial tcp: refused; ws://h/ws?t=secret lost`
	got := URLsIn(s)
	if strings.Contains(got, "secret") || !strings.Contains(got, "rpc.example") || !strings.Contains(got, "dial tcp: refused") {
		t.Fatalf("URLsIn: %q", got)
	}
}
