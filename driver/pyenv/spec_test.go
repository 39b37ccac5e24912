package pyenv

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

func baseSpec(req string) Spec {
	return Spec{Requirements: []byte(req), Python: "/usr/bin/python3", PythonVersion: "3.11.2", Platform: "linux-x86_64-glibc2.36"}
}

func TestKey(t *testing.T) {
	base := Key(baseSpec("six==1.16.0\nidna==3.7\n"))
	if len(base) != 20 || strings.ToLower(base) != base {
		t.Fatalf("key %q: want 20 lowercase base32 characters", base)
	}
	for _, tc := range []struct {
		name string
		spec func() Spec
		same bool
	}{
		{"identical", func() Spec { return baseSpec("six==1.16.0\nidna==3.7\n") }, true},
		{"CRLF line endings", func() Spec { return baseSpec("six==1.16.0\r\nidna==3.7\r\n") }, true},
		{"trailing blanks and blank lines", func() Spec { return baseSpec("six==1.16.0  \nidna==3.7\t\n\n\n") }, true},
		{"no final newline", func() Spec { return baseSpec("six==1.16.0\nidna==3.7") }, true},
		{"credentials in an index URL", func() Spec {
			s := baseSpec("six==1.16.0\nidna==3.7\n")
			s.Indexes = []string{"https://user:secret@pypi.org/simple"}
			return s
		}, false}, // differs from no index at all, but not from other credentials: below
		{"reordered lines", func() Spec { return baseSpec("idna==3.7\nsix==1.16.0\n") }, false},
		{"a comment", func() Spec { return baseSpec("six==1.16.0\nidna==3.7 # pinned\n") }, false},
		{"another version", func() Spec { return baseSpec("six==1.16.0\nidna==3.8\n") }, false},
		{"another interpreter path", func() Spec {
			s := baseSpec("six==1.16.0\nidna==3.7\n")
			s.Python = "/usr/local/bin/python3"
			return s
		}, false},
		{"another python version", func() Spec {
			s := baseSpec("six==1.16.0\nidna==3.7\n")
			s.PythonVersion = "3.13.0"
			return s
		}, false},
		{"another platform", func() Spec {
			s := baseSpec("six==1.16.0\nidna==3.7\n")
			s.Platform = "linux-aarch64-glibc2.36"
			return s
		}, false},
		{"wheels only", func() Spec {
			s := baseSpec("six==1.16.0\nidna==3.7\n")
			s.OnlyBinary = true
			return s
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Key(tc.spec()) == base; got != tc.same {
				t.Errorf("same key as the base: %v, want %v", got, tc.same)
			}
		})
	}
	a, b := baseSpec("six"), baseSpec("six")
	a.Indexes = []string{"https://u:token1@mirror.example/simple", "https://pypi.nvidia.com"}
	b.Indexes = []string{"https://u:token2@mirror.example/simple", "https://pypi.nvidia.com"}
	if Key(a) != Key(b) {
		t.Error("a rotated index token changed the key")
	}
	b.Indexes = []string{"https://pypi.nvidia.com", "https://u:token2@mirror.example/simple"}
	if Key(a) == Key(b) {
		t.Error("swapping the default and the extra index kept the key")
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		req  string
		want string // "" = valid; else a substring of the error
	}{
		{"", ""},
		{"pandas==2.2.3\nscikit-learn>=1.5 ; python_version >= '3.10'\n", ""},
		{"# comment\n\nnumpy  # pinned later\n", ""},
		{"torch==2.5.1 \\\n    --hash=sha256:abc\n", ""},
		{"--only-binary :all:\nnumpy\n", ""},
		{"--prefer-binary\n--pre\n--no-binary=lightgbm\n", ""},
		{"pkg @ https://files.example/pkg-1.0-py3-none-any.whl\n", ""},
		{"six\n-r other.txt\n", "line 2: option \"-r\""},
		{"--requirement=other.txt\n", "option \"--requirement\""},
		{"-c constraints.txt\n", "option \"-c\""},
		{"-e .\n", "option \"-e\""},
		{"--index-url https://evil.example/simple\nsix\n", "option \"--index-url\""},
		{"-i https://evil.example/simple\n", "option \"-i\""},
		{"--extra-index-url=https://evil.example\n", "option \"--extra-index-url\""},
		{"--find-links /tmp\n", "option \"--find-links\""},
		{"six\n\n./vendored/pkg\n", "line 3: local paths"},
		{"/etc/passwd\n", "local paths"},
		{"~/pkg\n", "local paths"},
		{"pkg @ file:///root/secret.whl\n", "local paths"},
		{"six\x00\n", "NUL"},
		{strings.Repeat("six\n", 300000), "more than"},
	} {
		t.Run(tc.req, func(t *testing.T) {
			err := baseSpec(tc.req).Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name string
		spec Spec
		want string
	}{
		{"relative interpreter", Spec{Python: "python3", PythonVersion: "3.11", Platform: "p"}, "absolute"},
		{"no version", Spec{Python: "/usr/bin/python3", Platform: "p"}, "version"},
		{"index with a space", Spec{Python: "/usr/bin/python3", PythonVersion: "3.11", Platform: "p", Indexes: []string{"https://a/simple https://evil/simple"}}, "not an http(s) URL"},
		{"index not http", Spec{Python: "/usr/bin/python3", PythonVersion: "3.11", Platform: "p", Indexes: []string{"file:///srv/wheels"}}, "not an http(s) URL"},
		{"--no-binary with wheels only", Spec{Python: "/usr/bin/python3", PythonVersion: "3.11", Platform: "p", OnlyBinary: true, Requirements: []byte("six\n--no-binary=lightgbm\n")}, "line 2: --no-binary: this node installs wheels only"},
		{"index credentials stay out of the error", Spec{Python: "/usr/bin/python3", PythonVersion: "3.11", Platform: "p", Indexes: []string{"ftp://u:hunter2@x"}}, "ftp://REDACTED@x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.spec.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error %v, want one containing %q and no credentials", err, tc.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	c := &Cache{}
	for attempts, want := range map[int]time.Duration{1: time.Minute, 2: 2 * time.Minute, 3: 4 * time.Minute, 7: time.Hour, 50: time.Hour} {
		if got := c.backoff(attempts); got != want {
			t.Errorf("backoff(%d) = %s, want %s", attempts, got, want)
		}
	}
}

func TestStageOf(t *testing.T) {
	for line, want := range map[string]string{
		"Resolved 12 packages in 1.20s":   "downloading",
		"Downloading pandas (11.7MiB)":    "downloading",
		" Downloaded pandas":              "downloading",
		"Prepared 12 packages in 3.1s":    "installing",
		"Installed 12 packages in 80ms":   "",
		" + six==1.16.0":                  "",
		"Using Python 3.13.0 environment": "",
	} {
		if got := stageOf(line); got != want {
			t.Errorf("stageOf(%q) = %q, want %q", line, got, want)
		}
	}
}

func TestFingerprint(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3 on PATH: cannot fingerprint an interpreter")
	}
	in, err := Fingerprint(context.Background(), py)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^3\.\d+\.\d+`).MatchString(in.Version) || !strings.HasPrefix(in.Platform, "linux-") {
		t.Fatalf("fingerprint %+v", in)
	}
	if err := in.Spec([]byte("six\n")).Validate(); err != nil {
		t.Fatalf("the fingerprint does not make a valid spec: %v", err)
	}
	if _, err := Fingerprint(context.Background(), "python3"); err == nil {
		t.Fatal("a relative interpreter path was accepted")
	}
	if _, err := Fingerprint(context.Background(), "/bin/false"); err == nil {
		t.Fatal("a failing interpreter was accepted")
	}
}

// The node's default requirements join a submission's unless it names the
// same project (however it spells it): its own pin wins.
func TestWithDefaults(t *testing.T) {
	defaults := []string{"pandas>=2.2.3,<3", "pyarrow>=18.1,<19"}
	for name, c := range map[string]struct{ req, want string }{
		"none":              {"", "pandas>=2.2.3,<3  # the node's default\npyarrow>=18.1,<19  # the node's default\n"},
		"its own pandas":    {"Pandas==2.1.0\nscikit-learn\n", "Pandas==2.1.0\nscikit-learn\npyarrow>=18.1,<19  # the node's default\n"},
		"spelled otherwise": {"PyArrow_==1\n", "PyArrow_==1\npandas>=2.2.3,<3  # the node's default\n"},
		"both, with extras": {"pandas[performance]==2.2.3 ; python_version>'3.8'\npyarrow==18.1.0 \\\n  --hash=sha256:00\n", "pandas[performance]==2.2.3 ; python_version>'3.8'\npyarrow==18.1.0 \\\n  --hash=sha256:00\n"},
		"only in a comment": {"# pandas is not needed\nsix", "# pandas is not needed\nsix\npandas>=2.2.3,<3  # the node's default\npyarrow>=18.1,<19  # the node's default\n"},
	} {
		if got := string(WithDefaults([]byte(c.req), defaults)); got != c.want {
			t.Errorf("%s: got\n%q\nwant\n%q", name, got, c.want)
		}
	}
	if got := WithDefaults([]byte("six\n"), nil); string(got) != "six\n" {
		t.Errorf("no defaults changed the requirements: %q", got)
	}
}
