package names

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

func TestCrunch(t *testing.T) {
	long := strings.Repeat("a", MaxCrunchLabel)
	for _, tc := range []struct{ name, want string }{
		// A lowercase DNS label is its own label: existing crunches keep
		// their service and certificate names.
		{"alpha", "alpha"},
		{"mid-one", "mid-one"},
		{"datacrunch-2", "datacrunch-2"},
		{long, long},
		// Anything else: readable part, "--", 16 characters of its SHA-256.
		{"My_Crunch.v2", "my-crunch-v2--eocje7s2rsjigyf5"},
		{"Mid One", "mid-one--fo6pt5hdwpkimptu"},
		{"mid_one", "mid-one--55dfb42wijzrdb7o"},
		{"MID-ONE", "mid-one--eylujtae2bmhyje6"},
		{"a--b", "a-b--scbhulswgyni7v3s"},
		{"-alpha", "alpha--4zfrpnvdmnqwhkfz"},
		{"é", "x--jkmvk7sagpbvhhpc"},
		{"__", "x--tei7juvrqrl4i4tg"},
		{long + "a", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa--x7c74drwafjmvggf"},
		{"", ""},
	} {
		if got := Crunch(tc.name); got != tc.want {
			t.Errorf("Crunch(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// Every name gets a DNS label that fits a Consul service and a certificate,
// and no two names share one: the bug this package fixes was "My_Crunch" and
// "my-crunch" sharing a service while the coordinator watched a third.
func TestCrunchIsAnInjectiveLabel(t *testing.T) {
	names := []string{
		"My_Crunch", "my-crunch", "my_crunch", "MY-CRUNCH", "my.crunch", "my crunch", "my--crunch",
		"my-crunch-", "-my-crunch", "My_Crunch.v2", "my-crunch-v2", "my_crunch_v2",
	}
	// A name built to look like another's hashed label is hashed itself.
	names = append(names, Crunch("My_Crunch"), Crunch("My_Crunch.v2"))
	r := rand.New(rand.NewPCG(1, 2))
	const alphabet = "abcXYZ019-_. é$"
	for range 20000 {
		var b strings.Builder
		for range 1 + r.IntN(70) {
			b.WriteString(string([]rune(alphabet)[r.IntN(len([]rune(alphabet)))]))
		}
		names = append(names, b.String())
	}
	owner := map[string]string{}
	for _, n := range names {
		l := Crunch(n)
		if !IsLabel(l, MaxCrunchLabel) {
			t.Fatalf("Crunch(%q) = %q: not a lowercase DNS label of at most %d characters", n, l, MaxCrunchLabel)
		}
		if len(Service(n)) > 63 || len(CoordinatorCommonName(n)) > 253 {
			t.Fatalf("names of %q too long for Consul or DNS: %q %q", n, Service(n), CoordinatorCommonName(n))
		}
		if o, ok := owner[l]; ok && o != n {
			t.Fatalf("%q and %q share the label %q", o, n, l)
		}
		owner[l] = n
	}
}

func TestDerivedNames(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{Service("alpha"), "crunch-alpha"},
		{Service("My_Crunch.v2"), "crunch-my-crunch-v2--eocje7s2rsjigyf5"},
		{Service(""), ""},
		{CoordinatorCommonName("alpha"), "alpha.coordinator.modelnodes.internal"},
		{CoordinatorURI("alpha"), "spiffe://modelnodes/crunch/alpha"},
		{CoordinatorURI("My_Crunch.v2"), "spiffe://modelnodes/crunch/my-crunch-v2--eocje7s2rsjigyf5"},
		{CoordinatorAppRole("My_Crunch.v2"), "coordinator-my-crunch-v2--eocje7s2rsjigyf5"},
		{Job("abc"), "model-node-abc"},
		{RunnerCommonName("model-node-abc"), "model-node-abc.crunchdao.internal"},
		{ModelServerName("abc"), "model-node-abc.crunchdao.internal"},
		// The short id of a model is stable: jobs named before this
		// package existed keep their names.
		{ModelShortID("9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin", "m1"), ModelShortID("9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin", "m1")},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	if a, b := ModelShortID("c", "m"), ModelShortID("c\x00m", ""); a == b {
		t.Errorf("crunch and model id are not kept apart: %q", a)
	}
	if s := ModelShortID("c", "m"); len(s) != 16 || !IsLabel(s, 16) {
		t.Errorf("ModelShortID = %q: want 16 lowercase base32 characters", s)
	}
}

func TestIsLabel(t *testing.T) {
	for _, tc := range []struct {
		s    string
		max  int
		want bool
	}{
		{"a", 1, true}, {"a-1", 3, true}, {"a-1", 2, false}, {"", 5, false}, {"-a", 5, false},
		{"a-", 5, false}, {"A", 5, false}, {"a_b", 5, false}, {"a.b", 5, false}, {"é", 5, false},
	} {
		if got := IsLabel(tc.s, tc.max); got != tc.want {
			t.Errorf("IsLabel(%q, %d) = %v, want %v", tc.s, tc.max, got, tc.want)
		}
	}
}

func ExampleCrunch() {
	fmt.Println(Crunch("alpha"))
	fmt.Println(Crunch("My_Crunch.v2"))
	fmt.Println(Service("My_Crunch.v2"))
	// Output:
	// alpha
	// my-crunch-v2--eocje7s2rsjigyf5
	// crunch-my-crunch-v2--eocje7s2rsjigyf5
}

// A model id names its job only when it is a lowercase DNS label that fits
// and cannot be mistaken for a hashed short id.
func TestModelName(t *testing.T) {
	for id, want := range map[string]string{
		"1234":                  "1234",
		"py-tracker":            "py-tracker",
		strings.Repeat("a", 52): strings.Repeat("a", 52),
		strings.Repeat("a", 53): "",
		"Py-Tracker":            "",
		"model_1":               "",
		"-x":                    "",
		"":                      "",
		"abcdefghij234567":      "", // the shape of ModelShortID
		ModelShortID("c", "m"):  "",
		"abcdefghij234568":      "abcdefghij234568", // 8 is not base32
		"abcdefghij23456":       "abcdefghij23456",
	} {
		if got := ModelName(id); got != want {
			t.Errorf("ModelName(%q) = %q, want %q", id, got, want)
		}
	}
	for range 1000 {
		if s := ModelShortID(strconv.Itoa(rand.Int()), "m"); !IsHashedShortID(s) {
			t.Fatalf("%s is not recognized as a hashed short id", s)
		}
	}
}
