package pyversion

import (
	"bytes"
	"errors"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

func v(s string) Version {
	x, err := ParseVersion(s)
	if err != nil {
		panic(err)
	}
	return x
}

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "3.13.1", want: "3.13.1"},
		{in: "3.14.0rc1", want: "3.14.0rc1"},
		{in: "3.13.0+", want: "3.13.0+"},
		{in: "3.13", err: "want major.minor.micro"},
		{in: "3.x.1", err: "not a release number"},
		{in: "3.13.", err: "not a release number"},
		{in: "99999.1.1", err: "not a release number"},
		{in: "3.13.1 ", err: "unexpected"},
		{in: "-3.13.1", err: "not a release number"},
		{in: "3.13.1\x00", err: "unexpected"},
	} {
		got, err := ParseVersion(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseVersion(%q) = %v, %v; want error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestFormatAndParseList(t *testing.T) {
	got := FormatList([]Version{v("3.13.0"), v("3.11.2"), v("3.13.0"), v("3.9.18"), v("3.14.0rc1")})
	if want := "3.9.18,3.11.2,3.13.0,3.14.0rc1"; got != want {
		t.Fatalf("FormatList = %q, want %q", got, want)
	}
	vs, err := ParseList(got)
	if err != nil || FormatList(vs) != got {
		t.Fatalf("ParseList(%q) = %v, %v", got, vs, err)
	}
	vs, err = ParseList("3.11.2,garbage,3.13.0")
	if err == nil || len(vs) != 2 {
		t.Fatalf("ParseList with a bad entry = %v, %v; want the two good ones and an error", vs, err)
	}
}

// The matching rules, PEP 440's for requires-python and uv's for
// .python-version, on the versions a node could have.
func TestMatches(t *testing.T) {
	versions := []string{"2.7.18", "3.9.18", "3.10.0", "3.10.13", "3.11.2", "3.11.7", "3.12.0", "3.12.1", "3.13.0", "3.13.5", "3.14.0", "4.0.0", "3.14.0rc1"}
	for _, tc := range []struct {
		file, requires string // .python-version, requires-python
		want           string // the versions that match, comma-separated
	}{
		{requires: ">=3.10", want: "3.10.0,3.10.13,3.11.2,3.11.7,3.12.0,3.12.1,3.13.0,3.13.5,3.14.0,4.0.0"},
		{requires: ">=3.10,<3.13", want: "3.10.0,3.10.13,3.11.2,3.11.7,3.12.0,3.12.1"},
		{requires: " >= 3.10 , < 3.13 ", want: "3.10.0,3.10.13,3.11.2,3.11.7,3.12.0,3.12.1"},
		{requires: "~=3.11", want: "3.11.2,3.11.7,3.12.0,3.12.1,3.13.0,3.13.5,3.14.0"},
		{requires: "~=3.11.3", want: "3.11.7"},
		{requires: "==3.12.*", want: "3.12.0,3.12.1"},
		{requires: "==3.12", want: "3.12.0"}, // PEP 440: 3.12 is 3.12.0
		{requires: "!=3.12.*,>=3.11,<3.14", want: "3.11.2,3.11.7,3.13.0,3.13.5"},
		{requires: ">3.13", want: "3.13.5,3.14.0,4.0.0"},
		{requires: "<=3.10", want: "2.7.18,3.9.18,3.10.0"},
		{requires: "==3.*", want: "3.9.18,3.10.0,3.10.13,3.11.2,3.11.7,3.12.0,3.12.1,3.13.0,3.13.5,3.14.0"},
		{requires: ">=3.14", want: "3.14.0,4.0.0"},
		{requires: ">=3.13,<3.12", want: ""},
		{requires: "", want: strings.Join(versions, ",")}, // asks nothing: any, pre-releases too
		{file: "3.13", want: "3.13.0,3.13.5"},
		{file: "3.13.0", want: "3.13.0"},
		{file: "3", want: "3.9.18,3.10.0,3.10.13,3.11.2,3.11.7,3.12.0,3.12.1,3.13.0,3.13.5,3.14.0"},
		{file: "cpython-3.12", want: "3.12.0,3.12.1"},
		{file: "cpython@3.11.7", want: "3.11.7"},
		{file: "CPython3.11", want: "3.11.2,3.11.7"},
		{file: ">=3.13", want: "3.13.0,3.13.5,3.14.0,4.0.0"},
		{file: "# pinned by uv\n\n  3.12  \n3.11\n", want: "3.12.0,3.12.1"},
		{file: "system", want: strings.Join(versions, ",")},
		{file: "3.13\r\n", want: "3.13.0,3.13.5"},
		// .python-version chooses, requires-python must hold too.
		{file: "3.13", requires: ">=3.10", want: "3.13.0,3.13.5"},
		{file: "3.11", requires: ">=3.12", want: ""},
	} {
		var pv, pp []byte
		if tc.file != "" {
			pv = []byte(tc.file)
		}
		if tc.requires != "" || tc.file == "" {
			pp = []byte("[project]\nname = \"m\"\nrequires-python = \"" + tc.requires + "\"\n")
		}
		req, err := FromFiles(pv, pp)
		if err != nil {
			t.Errorf("%q / %q: %v", tc.file, tc.requires, err)
			continue
		}
		var got []string
		for _, s := range versions {
			if req.Matches(v(s)) {
				got = append(got, s)
			}
		}
		if strings.Join(got, ",") != tc.want {
			t.Errorf(".python-version %q, requires-python %q (%s): match %q, want %q", tc.file, tc.requires, req, strings.Join(got, ","), tc.want)
		}
	}
}

func TestRequestString(t *testing.T) {
	req, err := FromFiles([]byte("3.13\n"), []byte("[project]\nrequires-python = \">=3.10\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := req.String(), "3.13 (.python-version) and >=3.10 (requires-python in pyproject.toml)"; got != want {
		t.Fatalf("String = %q, want %q", got, want)
	}
	if got := (Request{}).String(); got != "any" {
		t.Fatalf("zero Request = %q", got)
	}
}

func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name          string
		file, project string
		err           string
	}{
		{name: "pypy", file: "pypy3.10", err: "nodes offer CPython only"},
		{name: "path", file: "/usr/bin/python3.13", err: "is a path"},
		{name: "free-threaded", file: "3.13t", err: "free-threaded"},
		{name: "platform key", file: "cpython-3.12.3-linux-x86_64-gnu", err: "platform-specific"},
		{name: "pre-release pin", file: "3.14.0rc1", err: "pre-releases"},
		{name: "four numbers", file: "3.13.1.2", err: "want a version"},
		{name: "garbage", file: "latest", err: "want a version"},
		{name: "interpolation", file: "${attr.unique.hostname}", err: "want a version"},
		{name: "nul", file: "3.13\x00", err: "not UTF-8 text"},
		{name: "bad utf-8", file: "3.13\xff", err: "not UTF-8 text"},
		{name: "NEL", file: ">=3.10,\u0085<3.13", err: "not printable ASCII"},
		{name: "no-break space", project: "requires-python = \">=3.10,\u00a0<3.13\"", err: "not printable ASCII"},
		{name: "bidi override", project: "requires-python = \">=3.10\u202e\"", err: "not printable ASCII"},
		{name: "huge file", file: strings.Repeat("#\n", MaxPythonVersionFile), err: "more than 4096"},
		{name: "huge line", file: strings.Repeat("3", 300), err: "more than 256"},
		{name: "empty specifier", file: ">=", err: "no version"},
		{name: "no operator", project: `requires-python = "3.10"`, err: "no operator"},
		{name: "arbitrary equality", project: `requires-python = "===3.10.1"`, err: "not supported"},
		{name: "wildcard with >=", project: `requires-python = ">=3.10.*"`, err: "only with == or !="},
		{name: "wildcard inside", project: `requires-python = "==3.*.1"`, err: "may only end"},
		{name: "compatible needs two numbers", project: `requires-python = "~=3"`, err: "at least two numbers"},
		{name: "pre-release specifier", project: `requires-python = ">=3.13.0b1"`, err: "pre-, post- and development"},
		{name: "epoch", project: `requires-python = ">=1!3.10"`, err: "epochs"},
		{name: "local", project: `requires-python = "==3.10+local"`, err: "local versions"},
		{name: "stray comma", project: `requires-python = ">=3.10,"`, err: "stray comma"},
		{name: "poetry or", project: `requires-python = ">=3.8 || >=3.10"`, err: "release number"},
		{name: "too many clauses", project: `requires-python = "` + strings.Repeat("!=3.1,", 20) + `>=3"`, err: "more than 16"},
		{name: "not a string", project: `requires-python = 3.10`, err: "not a string"},
		{name: "bad toml", project: `requires-python = ">=3.10`, err: "pyproject.toml"},
		{name: "toml with nul", project: "requires-python = \">=3.10\x00\"", err: "pyproject.toml"},
		{name: "huge pyproject", project: "# " + strings.Repeat("x", MaxPyprojectFile), err: "more than 262144"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pv, pp []byte
			if tc.file != "" {
				pv = []byte(tc.file)
			}
			if tc.project != "" {
				pp = []byte("[project]\n" + tc.project + "\n")
			}
			req, err := FromFiles(pv, pp)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("FromFiles = %s, %v; want an error with %q", req, err, tc.err)
			}
			if len(err.Error()) > 300 {
				t.Fatalf("the error quotes too much of the input (%d bytes): %.300s", len(err.Error()), err)
			}
		})
	}
}

// Only [project].requires-python counts: a string that looks like it
// elsewhere is not taken for it.
func TestRequiresPythonReadsOnlyTheProjectTable(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{doc: "[project]\nrequires-python = \">=3.11\"", want: ">=3.11"},
		{doc: "project.requires-python = '>=3.11'", want: ">=3.11"},
		{doc: "project = { name = \"m\", requires-python = \">=3.11\" }", want: ">=3.11"},
		{doc: "[tool.poetry.dependencies]\npython = \"^3.8\"\nrequires-python = \">=3.12\"", want: ""},
		{doc: "[project]\ndescription = \"\"\"\nrequires-python = \">=3.12\"\n\"\"\"", want: ""},
		{doc: "# requires-python = \">=3.12\"\n[project]\nname = \"m\"", want: ""},
		{doc: "", want: ""},
	} {
		got, err := RequiresPython([]byte(tc.doc))
		if err != nil || got != tc.want {
			t.Errorf("RequiresPython(%q) = %q, %v; want %q", tc.doc, got, err, tc.want)
		}
	}
}

// Hostile TOML within the size cap is parsed or refused quickly and
// without much memory (BurntSushi/toml needed 3 GB for the nested tables).
func TestRequiresPythonHostileTOML(t *testing.T) {
	n := MaxPyprojectFile - 16
	for name, doc := range map[string]string{
		"nested arrays":    "a = " + strings.Repeat("[", n-8) + strings.Repeat("]", 4),
		"nested tables":    "a = " + strings.Repeat("{b=", n/3-4),
		"arrays of tables": "a = " + strings.Repeat("[{b=", n/4-4),
		"dotted key":       strings.Repeat("a.", n/2-4) + "a = 1",
		"long header":      "[" + strings.Repeat("a.", n/2-4) + "a]",
		"many tables":      strings.Repeat("[[x]]\n", n/6),
		"long string":      "[project]\nrequires-python = \"" + strings.Repeat("1", n-40) + "\"",
		"binary garbage":   string(bytes.Repeat([]byte{0xff, 0x00, '[', '"'}, n/4)),
	} {
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		t0 := time.Now()
		s, err := FromFiles(nil, []byte(doc))
		d := time.Since(t0)
		runtime.ReadMemStats(&m1)
		if alloc := m1.TotalAlloc - m0.TotalAlloc; d > 2*time.Second || alloc > 256<<20 {
			t.Errorf("%s: took %v and %d MiB", name, d, alloc>>20)
		}
		if err == nil && !s.Any() {
			t.Errorf("%s: read a request %s", name, s)
		}
	}
}

func TestBest(t *testing.T) {
	vs := []Version{v("3.11.2"), v("3.13.0"), v("3.12.1"), v("3.13.0"), v("3.14.0rc1")}
	for _, tc := range []struct {
		requires string
		want     int
	}{
		{">=3.10", 1},   // the highest, the first of two equal ones
		{"<3.13", 2},    // 3.12.1
		{"==3.11.*", 0}, //
		{">=3.14", -1},  // the pre-release does not count
	} {
		req, err := ParseRequiresPython(tc.requires)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := req.Best(vs)
		if got != tc.want || ok != (tc.want >= 0) {
			t.Errorf("Best(%s) = %d, %v; want %d", tc.requires, got, ok, tc.want)
		}
	}
	if i, ok := (Request{}).Best(vs); !ok || i != 4 {
		// The zero Request accepts all; the driver never asks it (it takes
		// its default interpreter), but Best stays consistent.
		t.Errorf("zero Request: Best = %d, %v", i, ok)
	}
}

// The regexp a job is constrained with accepts a node's version list
// exactly when the list holds a version the request matches.
func TestListRegexpAgreesWithMatches(t *testing.T) {
	lists := []string{
		"3.11.2", "3.13.0", "3.11.2,3.13.0", "3.9.18,3.10.13", "3.12.0", "3.12.1", "3.12.10",
		"3.14.0rc1", "3.14.0rc1,3.11.2", "3.11.25", "3.0.0", "3.9.9", "3.19.0", "3.20.0", "3.1.1", "2.7.18,3.6.15",
		"3.11.7,3.12.1,3.13.0", "4.0.0", "3.13.0+", "", "3.99.99", "3.10.0",
	}
	for _, spec := range []string{
		">=3.10", ">=3.10,<3.13", "~=3.11", "~=3.11.3", "==3.12.*", "==3.12", "!=3.12.*,>=3.11,<3.14",
		">3.13", "<=3.10", "==3.*", ">=3.14", "!=3.11.2", "==3.11.7", ">=3.12.1,<3.12.10",
		"<3.10", ">=3.9,<3.20", "==3.0.*", ">=3.1.5,<3.1.20",
	} {
		req, err := ParseRequiresPython(spec)
		if err != nil {
			t.Fatal(err)
		}
		re, err := req.ListRegexp()
		if err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		if strings.ContainsAny(re, "${}%") {
			t.Fatalf("%s: %s holds a character Nomad interpolates", spec, re)
		}
		rx := regexp.MustCompile(re)
		for _, l := range lists {
			vs, _ := ParseList(l)
			_, want := req.Best(vs)
			if got := rx.MatchString(l); got != want {
				t.Errorf("%s: regexp %s on %q = %v, want %v", spec, re, l, got, want)
			}
		}
	}
}

func TestListRegexpRefusals(t *testing.T) {
	if _, err := (Request{}).ListRegexp(); err == nil {
		t.Error("the zero Request got a regexp")
	}
	req, _ := ParseRequiresPython(">=3.13,<3.12")
	if _, err := req.ListRegexp(); !errors.Is(err, ErrMatchesNothing) {
		t.Errorf("an empty range: %v, want ErrMatchesNothing", err)
	}
	var many []string
	for i := range 15 {
		many = append(many, "!=3."+string(rune('0'+i%10))+"."+string(rune('1'+i%9)))
	}
	req, err := ParseRequiresPython(strings.Join(many, ","))
	if err != nil {
		t.Fatal(err)
	}
	re, err := req.ListRegexp()
	if err == nil && len(re) > MaxRegexp {
		t.Errorf("a %d-byte regexp", len(re))
	}
}

func TestNumberRange(t *testing.T) {
	for lo := range 100 {
		for hi := lo; hi < 100; hi++ {
			var ns []int
			for n := lo; n <= hi; n++ {
				ns = append(ns, n)
			}
			rx := regexp.MustCompile(`\A` + group(ns) + `\z`)
			for n := range 100 {
				if got := rx.MatchString(strconv.Itoa(n)); got != (n >= lo && n <= hi) {
					t.Fatalf("%d..%d as %s: %d matches = %v", lo, hi, group(ns), n, got)
				}
			}
		}
	}
	if got := group([]int{1, 2, 3, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 99}); got != "([1-3]|7|1[0-9]|20|99)" {
		t.Errorf("group = %s", got)
	}
}

// The parsers never panic on any input, and whatever they accept has a
// regexp that agrees with Matches.
func FuzzFromFiles(f *testing.F) {
	for _, s := range []string{"3.13", ">=3.10,<3.13", "~=3.11.2", "!=3.12.*", "cpython@3.12", "# c\n3", "==3.*,!=3.9.1"} {
		f.Add([]byte(s), []byte("[project]\nrequires-python = \""+s+"\""))
	}
	f.Fuzz(func(t *testing.T, pv, pp []byte) {
		req, err := FromFiles(pv, pp)
		if err != nil || req.Any() {
			return
		}
		re, err := req.ListRegexp()
		if err != nil {
			return
		}
		rx := regexp.MustCompile(re)
		for _, l := range []string{"3.11.2", "3.13.0", "3.12.1,3.13.5", "2.7.18", "3.0.0", "3.9.99", "4.1.0"} {
			vs, _ := ParseList(l)
			if _, want := req.Best(vs); rx.MatchString(l) != want {
				t.Fatalf("%s: regexp %s on %s = %v", req, re, l, !want)
			}
		}
	})
}
