package main

import (
	"slices"
	"testing"
)

func TestRequirements(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []file
		want  []string
	}{
		{"none", []file{{"main.py", 0o644, []byte("import os\n")}}, nil},
		{"pins, comments and blanks", []file{{"requirements.txt", 0o644, []byte("# from PyPI\n\npandas==2.2.3  # data frames\r\n  scikit-learn==1.6.1\n")}},
			[]string{"pandas==2.2.3", "scikit-learn==1.6.1"}},
		{"only at the root's name", []file{{"requirements.txt.bak", 0o644, []byte("six\n")}}, nil},
	} {
		if got := requirements(tc.files); !slices.Equal(got, tc.want) {
			t.Errorf("%s: requirements = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestBuiltIn(t *testing.T) {
	for msg, want := range map[string]string{
		"Environment vis5nfw3yzytdtif3pw6 built in 7.3s":   "7.3 s",
		"Environment vis5nfw3yzytdtif3pw6 built in 1m2.5s": "62.5 s",
		"Environment vis5nfw3yzytdtif3pw6 is ready":        "Environment vis5nfw3yzytdtif3pw6 is ready",
		"Environment k built in soon":                      "Environment k built in soon",
	} {
		if got := builtIn(msg); got != want {
			t.Errorf("builtIn(%q) = %q, want %q", msg, got, want)
		}
	}
}

func TestPredictions(t *testing.T) {
	for _, tc := range []struct {
		result string
		want   []float64
		ok     bool
	}{
		{`PARQUET 2 rows [{"prediction": 0.5}, {"prediction": 6.5}]`, []float64{0.5, 6.5}, true},
		{`PARQUET 0 rows []`, []float64{}, true},
		{`INT 42`, nil, false},
		{`ARROW 1 rows [{"prediction": 1}]`, nil, false},
		{`PARQUET 1 rows [{"prediction": "x"}]`, nil, false},
		{`Setup: the model's environment failed: [x]`, nil, false},
	} {
		got, err := predictions(tc.result)
		if (err == nil) != tc.ok || (tc.ok && !slices.Equal(got, tc.want)) {
			t.Errorf("predictions(%q) = %v, %v; want %v (ok %v)", tc.result, got, err, tc.want, tc.ok)
		}
	}
}

func TestShorten(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly ten", 11, "exactly ten"},
		{"a longer reason", 8, "a longe…"},
		{"╰─▶ Because", 4, "╰─▶…"},
	} {
		if got := shorten(tc.in, tc.n); got != tc.want {
			t.Errorf("shorten(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}
