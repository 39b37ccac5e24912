package envflag

import (
	"bytes"
	"flag"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestEnvironmentFillsUnsetFlags(t *testing.T) {
	t.Setenv("MR_CALL_TIMEOUT", "3s")
	t.Setenv("MR_LISTEN", "from-env")
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	timeout := fs.Duration("call-timeout", time.Minute, "")
	listen := fs.String("listen", "default", "")
	if err := Parse(fs, "MR", []string{"--listen", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	if *timeout != 3*time.Second {
		t.Errorf("call-timeout = %s, want 3s from MR_CALL_TIMEOUT", *timeout)
	}
	if *listen != "from-flag" {
		t.Errorf("listen = %q: the command line must win over the environment", *listen)
	}
}

func TestBadEnvironmentValueNamesVariable(t *testing.T) {
	t.Setenv("MR_CALL_TIMEOUT", "soon")
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Duration("call-timeout", time.Minute, "")
	err := Parse(fs, "MR", nil)
	if err == nil || !strings.Contains(err.Error(), "MR_CALL_TIMEOUT") {
		t.Fatalf("err = %v, want one naming MR_CALL_TIMEOUT", err)
	}
}

func TestUsageListsEnvironment(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	fs.String("model-dir", "", "the submission")
	Usage(fs, "MR", "usage: x")()
	if !strings.Contains(out.String(), "--model-dir  [$MR_MODEL_DIR]") {
		t.Fatalf("usage lacks the env var:\n%s", out.String())
	}
}

func TestSplitList(t *testing.T) {
	for in, want := range map[string][]string{
		"":                nil,
		" , ,":            nil,
		"a":               {"a"},
		" a , b,,c ":      {"a", "b", "c"},
		"https://x/a,b c": {"https://x/a", "b c"},
	} {
		if got := SplitList(in); !slices.Equal(got, want) || (want == nil && got != nil) {
			t.Errorf("SplitList(%q) = %q, want %q", in, got, want)
		}
	}
}
