package redact

import (
	"errors"
	"fmt"
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

func TestError(t *testing.T) {
	base := errors.New(`Get "https://u:secret@feed.example/x?token=secret": refused`)
	err := Error(fmt.Errorf("feed: %w", base))
	if strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), "feed.example/x") {
		t.Fatalf("Error: %q", err)
	}
	if !errors.Is(err, base) {
		t.Fatal("the redacted error no longer wraps the original")
	}
	if Error(err) != err || Error(nil) != nil {
		t.Fatal("Error wraps twice, or wraps nil")
	}
}
