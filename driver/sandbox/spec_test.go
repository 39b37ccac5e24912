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

// ListenInside is the sandbox's one way out: only a loopback address of the
// sandbox's own namespace may be named.
func TestSpecListenInsideIsLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"", true},
		{"127.0.0.1:3128", true},
		{"[::1]:3128", true},
		{"0.0.0.0:3128", false},
		{"10.0.0.1:3128", false},
		{"localhost:3128", false}, // a name: resolved by whom?
		{"127.0.0.1", false},
	} {
		s := &Spec{UID: 1000, GID: 1000, Root: "/x", Landlock: LandlockOff, ListenInside: tc.addr}
		if err := s.Validate(); (err == nil) != tc.ok {
			t.Errorf("ListenInside %q: err = %v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
}

// The seccomp mode is the default filter or "off"; anything else is a
// mistake, refused before anything runs.
func TestSpecSeccompMode(t *testing.T) {
	for mode, ok := range map[string]bool{SeccompDefault: true, SeccompOff: true, "on": false, "permissive": false} {
		s := &Spec{UID: 1000, GID: 1000, Root: "/x", Landlock: LandlockOff, Seccomp: mode}
		if err := s.Validate(); (err == nil) != ok {
			t.Errorf("Seccomp %q: err = %v, want ok=%v", mode, err, ok)
		}
	}
}
