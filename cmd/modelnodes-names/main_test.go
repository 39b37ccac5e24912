package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/modelnodes/modelnodes/names"
)

func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// What the deploy scripts read is what package names computes, for any
// name the scheduler accepts, including one that looks like a flag.
func TestCrunchNames(t *testing.T) {
	for _, name := range []string{"alpha", "My_Crunch.v2", "-x", "--field"} {
		code, out, errs := runCLI("crunch", "--", name)
		want := "label=" + names.Crunch(name) + "\nservice=" + names.Service(name) +
			"\ncoordinator_cn=" + names.CoordinatorCommonName(name) + "\ncoordinator_uri=" + names.CoordinatorURI(name) +
			"\napprole=" + names.CoordinatorAppRole(name) + "\n"
		if code != 0 || out != want {
			t.Errorf("crunch %q: exit %d\n%s%s\nwant\n%s", name, code, out, errs, want)
		}
	}
	if code, out, _ := runCLI("crunch", "--field", "service", "My_Crunch.v2"); code != 0 || out != names.Service("My_Crunch.v2")+"\n" {
		t.Errorf("--field service: exit %d %q", code, out)
	}
	// Flags after the operand work too.
	if code, out, _ := runCLI("crunch", "My_Crunch.v2", "--field", "label"); code != 0 || out != names.Crunch("My_Crunch.v2")+"\n" {
		t.Errorf("--field after the name: exit %d %q", code, out)
	}
}

func TestModelNames(t *testing.T) {
	// A model id that is a DNS label names its job and certificate, as
	// CrunchDAO's client expects.
	code, out, errs := runCLI("model", "--crunch-id", "CrunchId111", "model-1")
	want := "short_id=model-1\njob=model-node-model-1\nrunner_cn=model-node-model-1.crunchdao.internal\n"
	if code != 0 || out != want {
		t.Errorf("model: exit %d\n%s%s\nwant\n%s", code, out, errs, want)
	}
	// Any other id (and any with --hashed) is named by its key.
	for _, args := range [][]string{{"Model_1"}, {"abcdefghij234567"}, {"--hashed", "model-1"}} {
		id := args[len(args)-1]
		short := names.ModelShortID("CrunchId111", id)
		want := "short_id=" + short + "\njob=model-node-" + short + "\nrunner_cn=model-node-" + short + ".crunchdao.internal\n"
		if code, out, errs := runCLI(append([]string{"model", "--crunch-id", "CrunchId111"}, args...)...); code != 0 || out != want {
			t.Errorf("model %v: exit %d\n%s%s\nwant\n%s", args, code, out, errs, want)
		}
	}
	if code, out, _ := runCLI("model", "--crunch", "c", "--name", "py-tracker", "--field", "job", "x"); code != 0 || out != "model-node-py-tracker\n" {
		t.Errorf("model --name: exit %d %q", code, out)
	}
	if code, out, _ := runCLI("contract", "--field", "coordinator_uri_prefix"); code != 0 || out != names.CoordinatorURIPrefix+"\n" {
		t.Errorf("contract: exit %d %q", code, out)
	}
}

// Mistakes get a clear message and a non-zero exit; names the scheduler
// refuses are refused with its reason, not mapped.
func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{nil, 2, "no command"},
		{[]string{"crunch"}, 2, "want exactly one NAME, got 0"},
		{[]string{"crunch", "a", "b"}, 2, "want exactly one NAME, got 2"},
		{[]string{"crunch", ""}, 2, "empty crunch name"},
		{[]string{"crunch", "a${VAULT_TOKEN}"}, 1, "which Nomad interpolates"},
		{[]string{"crunch", "a\nb"}, 1, "control or format character"},
		{[]string{"crunch", "--field", "nope", "a"}, 2, `unknown --field "nope" (want one of label, service`},
		{[]string{"model", "m"}, 2, "say which crunch"},
		{[]string{"model", "--crunch", "c", "--name", "Not_A_Label", "m"}, 1, "not a lowercase DNS label"},
		{[]string{"contract", "x"}, 2, "contract takes no operand"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
	} {
		code, out, errs := runCLI(tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.msg) || out != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d and %q", tc.args, code, out, errs, tc.code, tc.msg)
		}
	}
	if code, out, _ := runCLI("--help"); code != 0 || !strings.Contains(out, "modelnodes-names crunch [--field F] NAME") {
		t.Errorf("--help: exit %d\n%s", code, out)
	}
	if code, out, _ := runCLI("crunch", "-h"); code != 0 || !strings.Contains(out, "Usage:") {
		t.Errorf("crunch -h: exit %d\n%s", code, out)
	}
}
