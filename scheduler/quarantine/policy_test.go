package quarantine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writePolicy(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.hcl")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The operator's file changes the defaults code by code, and a crunch's
// block changes the default block's: what is not written is inherited.
func TestLoadMergesOverTheDefaults(t *testing.T) {
	c, err := Load(writePolicy(t, `
default {
  codes            = { LOW_PERFORMANCE = "count", MULTIPLE_FAILED = "restart" }
  quarantine_after = 5
  window           = "30m"
}
crunch "mid-one" {
  codes            = { MULTIPLE_TIMEOUT = "quarantine" }
  restart_interval = "5m"
  report_rate      = 0.5
  report_burst     = 4
}
`))
	if err != nil {
		t.Fatal(err)
	}
	def, mid, other := c.For("unlisted"), c.For("mid-one"), DefaultPolicy()
	for _, tc := range []struct {
		p    Policy
		code string
		want Action
	}{
		{other, "BAD_IMPLEMENTATION", ActionQuarantine},
		{other, "LOW_PERFORMANCE", ActionQuarantine},
		{other, "MULTIPLE_TIMEOUT", ActionRestart},
		{other, "CONNECTION_FAILED", ActionRestart},
		{other, "SOMETHING_NEW", ActionCount},
		{def, "LOW_PERFORMANCE", ActionCount},
		{def, "MULTIPLE_FAILED", ActionRestart},
		{def, "BAD_IMPLEMENTATION", ActionQuarantine},
		{mid, "MULTIPLE_TIMEOUT", ActionQuarantine},
		{mid, "LOW_PERFORMANCE", ActionCount},
		{mid, "CONNECTION_FAILED", ActionRestart},
	} {
		if got := tc.p.Action(tc.code); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.code, got, tc.want)
		}
	}
	if def.QuarantineAfter != 5 || def.Window != 30*time.Minute || def.RestartInterval != time.Minute || def.ReportRate != 1 || def.ReportBurst != 20 {
		t.Errorf("default block: %+v", def)
	}
	if mid.QuarantineAfter != 5 || mid.Window != 30*time.Minute || mid.RestartInterval != 5*time.Minute || mid.ReportRate != 0.5 || mid.ReportBurst != 4 {
		t.Errorf("crunch block: %+v", mid)
	}
	if DefaultPolicy().Action("LOW_PERFORMANCE") != ActionQuarantine {
		t.Error("loading a file changed the built-in defaults")
	}
}

// A file with a mistake is refused whole, saying where.
func TestLoadRefusesMistakes(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{`default { codes = { BAD_IMPLEMENTATION = "stop" } }`, `action "stop" is none of count, restart, quarantine`},
		{`default { codes = { "bad code" = "count" } }`, `code "bad code"`},
		{`default { codes = { "${x}" = "count" } }`, `Variables not allowed`},
		{`crunch "a" { window = "soon" }`, `window "soon"`},
		{`crunch "a" { restart_interval = "-1m" }`, `restart_interval "-1m"`},
		{`crunch "a" { quarantine_after = -1 }`, `quarantine_after -1`},
		{`crunch "a" { report_rate = 0 }`, `report_rate 0`},
		{`crunch "a" { report_burst = 0 }`, `report_burst 0`},
		{"crunch \"a\" {}\ncrunch \"a\" {}", `crunch "a" is named twice`},
		{`crunch "a" { quarantine = 3 }`, `Unsupported argument`},
		{`policy {}`, `Unsupported block type`},
	} {
		_, err := Load(writePolicy(t, tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.text, err, tc.want)
		}
	}
}
