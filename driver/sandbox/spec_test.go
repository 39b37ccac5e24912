package sandbox

import "testing"

// A spec is validated before anything is isolated: no root needed. (The
// sandbox itself is tested as root, in the e2e-tagged sandbox_test.go.)
func TestSpecRefusesRoot(t *testing.T) {
	s := &Spec{UID: 0, GID: 0, Root: "/x", Landlock: LandlockOff}
	if err := s.Validate(); err == nil {
		t.Fatal("a spec running the worker as root was accepted")
	}
	s = &Spec{UID: 1000, GID: 1000, Root: "/x", Landlock: "maybe"}
	if err := s.Validate(); err == nil {
		t.Fatal("an unknown landlock mode was accepted")
	}
}
