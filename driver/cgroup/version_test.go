package cgroup

import (
	"os"
	"testing"
)

// scripts/v2vm boots its guests with one cgroup layout and says which in
// MODELNODES_EXPECT_CGROUP: a run meant to prove the v2 code path fails here
// when the package saw another layout, rather than passing on the wrong one.
func TestVersionIsTheBootedOne(t *testing.T) {
	want := os.Getenv("MODELNODES_EXPECT_CGROUP")
	if want == "" {
		t.Skip("MODELNODES_EXPECT_CGROUP is unset: nothing to compare with (scripts/v2vm sets it in its guests)")
	}
	if got := Version(); got != want {
		t.Fatalf("Version() = %s on a host booted with cgroup %s", got, want)
	}
}
