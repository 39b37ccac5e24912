package driver_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers/testutils"
	"golang.org/x/sys/unix"

	"github.com/modelnodes/modelnodes/driver"
	"github.com/modelnodes/modelnodes/driver/pyenv"
	"github.com/modelnodes/modelnodes/driver/pyenv/pyenvtest"
	"github.com/modelnodes/modelnodes/internal/pyversion"
)

func TestChooseInterpreter(t *testing.T) {
	node := []pyenv.Interpreter{
		{Path: "/usr/bin/python3", Version: "3.11.2"}, // the default
		{Path: "/opt/py313/bin/python3", Version: "3.13.0"},
		{Path: "/opt/py312/bin/python3", Version: "3.12.1"},
		{Path: "/usr/local/bin/python3.13", Version: "3.13.0"},
		{Path: "/opt/py314/bin/python3", Version: "3.14.0rc1"},
	}
	for _, tc := range []struct {
		file, project string
		want, err     string
	}{
		{want: "/usr/bin/python3"}, // no request: the default
		{project: "[project]\nname = \"m\"", want: "/usr/bin/python3"},
		{file: "3.13", want: "/opt/py313/bin/python3"}, // the first of two 3.13.0
		{file: "3.12.1", want: "/opt/py312/bin/python3"},
		{file: "cpython-3.11", want: "/usr/bin/python3"},
		{project: `requires-python = ">=3.10"`, want: "/opt/py313/bin/python3"}, // the highest
		{project: `requires-python = ">=3.10,<3.13"`, want: "/opt/py312/bin/python3"},
		{file: "3.11", project: `requires-python = ">=3.10"`, want: "/usr/bin/python3"},
		{project: `requires-python = ">=3.14"`,
			err: "the submission asks for python >=3.14 (requires-python in pyproject.toml); this node has 3.11.2, 3.12.1, 3.13.0, 3.14.0rc1"},
		{file: "3.12", project: `requires-python = ">=3.13"`,
			err: "asks for python 3.12 (.python-version) and >=3.13 (requires-python in pyproject.toml)"},
	} {
		var pv, pp []byte
		if tc.file != "" {
			pv = []byte(tc.file + "\n")
		}
		if tc.project != "" {
			pp = []byte("[project]\n" + strings.TrimPrefix(tc.project, "[project]\n") + "\n")
		}
		req, err := pyversion.FromFiles(pv, pp)
		if err != nil {
			t.Fatal(err)
		}
		got, err := driver.ChooseInterpreter(req, node)
		switch {
		case tc.err != "":
			if !errors.Is(err, driver.ErrNoInterpreter) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: chose %s, %v; want an error with %q", req, got.Path, err, tc.err)
			}
		case err != nil || got.Path != tc.want:
			t.Errorf("%s: chose %s, %v; want %s", req, got.Path, err, tc.want)
		}
	}
	if _, err := driver.ChooseInterpreter(pyversion.Request{}, nil); !errors.Is(err, driver.ErrNoInterpreter) {
		t.Errorf("no interpreters: %v", err)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The submission's files are read as root from untrusted content: no
// symlink is followed, nothing but a regular file within its cap is read,
// and nothing blocks.
func TestReadPythonRequest(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	write(t, secret, "3.13\n")
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  string // the request, or the error's text
		fails bool
	}{
		{name: "nothing", setup: func(*testing.T, string) {}, want: "any"},
		{name: "python-version", setup: func(t *testing.T, dir string) { write(t, filepath.Join(dir, ".python-version"), "3.13\n") },
			want: "3.13 (.python-version)"},
		{name: "pyproject", setup: func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, "pyproject.toml"), "[project]\nrequires-python = \">=3.10\"\n")
		}, want: ">=3.10 (requires-python in pyproject.toml)"},
		{name: "symlink", setup: func(t *testing.T, dir string) {
			if err := os.Symlink(secret, filepath.Join(dir, ".python-version")); err != nil {
				t.Fatal(err)
			}
		}, want: ".python-version is a symbolic link", fails: true},
		{name: "fifo", setup: func(t *testing.T, dir string) {
			if err := unix.Mkfifo(filepath.Join(dir, "pyproject.toml"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, want: "pyproject.toml is not a regular file", fails: true},
		{name: "directory", setup: func(t *testing.T, dir string) {
			if err := os.Mkdir(filepath.Join(dir, ".python-version"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, want: ".python-version is not a regular file", fails: true},
		{name: "huge sparse file", setup: func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "pyproject.toml"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(filepath.Join(dir, "pyproject.toml"), 8<<30); err != nil {
				t.Fatal(err)
			}
		}, want: "pyproject.toml has 8589934592 bytes, more than 262144", fails: true},
		{name: "bad request", setup: func(t *testing.T, dir string) { write(t, filepath.Join(dir, ".python-version"), "pypy3.10\n") },
			want: "nodes offer CPython only", fails: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			done := make(chan struct{})
			var req pyversion.Request
			var err error
			go func() { defer close(done); req, err = driver.ReadPythonRequest(dir) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("ReadPythonRequest blocks")
			}
			if tc.fails {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("= %s, %v; want an error with %q", req, err, tc.want)
				}
				return
			}
			if err != nil || req.String() != tc.want {
				t.Fatalf("= %s, %v; want %s", req, err, tc.want)
			}
		})
	}
}

// otherPython returns an interpreter of another version than def's, from
// pyenv's versions on this machine, or skips the test saying why.
func otherPython(t *testing.T, def string) (string, string) {
	t.Helper()
	root := os.Getenv("PYENV_ROOT")
	if root == "" {
		home, _ := os.UserHomeDir()
		root = filepath.Join(home, ".pyenv")
	}
	ms, _ := filepath.Glob(filepath.Join(root, "versions", "3.*", "bin", "python3"))
	for _, m := range ms {
		in, err := pyenv.Fingerprint(context.Background(), m)
		if err == nil && in.Version != def {
			return m, in.Version
		}
	}
	t.Skipf("no second Python 3 under %s/versions to fingerprint beside %s", root, def)
	return "", ""
}

// The node's interpreters become node attributes: the default's version
// and platform, and every version, sorted, once; one that cannot be
// fingerprinted is left out without hiding the others.
func TestInterpreterAttributes(t *testing.T) {
	def := pyenvtest.Python(t)
	other, otherVersion := otherPython(t, def.Version)
	link := filepath.Join(t.TempDir(), "python-link")
	if err := os.Symlink(def.Path, link); err != nil {
		t.Fatal(err)
	}
	h := testutils.NewDriverHarness(t, driver.NewWithIsolator(hclog.NewNullLogger(), &fakeIsolator{}))
	var data []byte
	if err := base.MsgPackEncode(&data, map[string]any{"model_store": t.TempDir(), "python": def.Path,
		"python_interpreters": []string{other, link, "/nonexistent/python3", "/bin/true", def.Path}}); err != nil {
		t.Fatal(err)
	}
	if err := h.SetConfig(&base.Config{PluginConfig: data}); err != nil {
		t.Fatal(err)
	}
	ch, err := h.Fingerprint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fp := <-ch
	want := pyversion.FormatList([]pyversion.Version{mustVersion(t, def.Version), mustVersion(t, otherVersion)})
	for k, v := range map[string]string{
		driver.AttrPython:         def.Version,
		driver.AttrPythonVersions: want,
		driver.AttrPythonPlatform: def.Platform,
	} {
		got, ok := fp.Attributes[k].GetString()
		if !ok || got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	// The attribute is what jobs are constrained with.
	req, _ := pyversion.ParsePythonVersion([]byte(otherVersion))
	re, err := req.ListRegexp()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(re).MatchString(want) {
		t.Errorf("the constraint %s does not accept the node's %s", re, want)
	}
}

func mustVersion(t *testing.T, s string) pyversion.Version {
	t.Helper()
	v, err := pyversion.ParseVersion(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
