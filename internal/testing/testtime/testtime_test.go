package testtime

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want float64
		err  bool
	}{
		{"", 1, false},
		{"1", 1, false},
		{"2.5", 2.5, false},
		{"100", 100, false},
		{"0.5", 0, true}, // shorter deadlines than written: refused
		{"0", 0, true},
		{"-3", 0, true},
		{"101", 0, true},
		{"NaN", 0, true},
		{"Inf", 0, true},
		{"ten", 0, true},
	} {
		got, err := parse(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parse(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
		if err != nil && !strings.Contains(err.Error(), Env) {
			t.Errorf("parse(%q): %v does not name %s", tc.in, err, Env)
		}
	}
}

// The factor comes from the environment once; a deadline is multiplied by it.
func TestScaledFollowsTheEnvironment(t *testing.T) {
	t.Setenv(Env, "2.5")
	factor = onceFromEnv()
	t.Cleanup(func() { factor = onceFromEnv() })
	if got := Scaled(30 * time.Second); got != 75*time.Second {
		t.Errorf("Scaled(30s) with %s=2.5 = %v, want 1m15s", Env, got)
	}
}

// A wrong value stops the test run with a message naming the variable.
func TestFactorRefusesGarbage(t *testing.T) {
	t.Setenv(Env, "fast")
	factor = onceFromEnv()
	t.Cleanup(func() { factor = onceFromEnv() })
	defer func() {
		r := recover()
		if err, ok := r.(error); !ok || !strings.Contains(err.Error(), `"fast"`) {
			t.Errorf("Factor() with %s=fast: recovered %v, want an error naming the value", Env, r)
		}
	}()
	Factor()
}
