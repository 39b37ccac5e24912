package main

import (
	"io"
	"strings"
	"testing"

	"github.com/modelnodes/modelnodes/driver/sandbox/seccomp"
)

// The profile the binary prints ends with the hash nodes report, for either
// setting of allow_written_executables.
func TestPrintSeccompProfile(t *testing.T) {
	for _, tc := range []struct {
		args []string
		o    seccomp.Options
	}{
		{nil, seccomp.Options{}},
		{[]string{"-allow-written-executables"}, seccomp.Options{AllowWrittenExecutables: true}},
	} {
		var out strings.Builder
		if rc := printSeccompProfile(&out, io.Discard, tc.args); rc != 0 {
			t.Fatalf("seccomp-profile %v: exit %d", tc.args, rc)
		}
		if want := seccomp.Canonical(tc.o) + "hash " + seccomp.Hash(tc.o) + "\n"; out.String() != want {
			t.Errorf("seccomp-profile %v printed:\n%s\nwant:\n%s", tc.args, out.String(), want)
		}
	}
	if rc := printSeccompProfile(io.Discard, io.Discard, []string{"-nope"}); rc != 2 {
		t.Errorf("an unknown flag: exit %d, want 2", rc)
	}
}
