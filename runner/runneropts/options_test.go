package runneropts_test

import (
	"flag"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/runner/runneropts"
)

// populated sets every field of Options, by reflection, to a value that
// differs from its default, so a field the flag table forgets cannot come
// back from Args.
func populated(t *testing.T) runneropts.Options {
	t.Helper()
	var o runneropts.Options
	def := reflect.ValueOf(runneropts.Defaults())
	v := reflect.ValueOf(&o).Elem()
	for i := range v.NumField() {
		f, name := v.Field(i), v.Type().Field(i).Name
		switch f.Interface().(type) {
		case string:
			f.SetString("v-" + name)
		case bool:
			f.SetBool(true)
		case time.Duration:
			f.SetInt(int64(time.Duration(i+1) * 1500 * time.Millisecond))
		case int, int64:
			f.SetInt(int64(1000 + i))
		case uint:
			f.SetUint(uint64(1000 + i))
		case []string:
			// A blank inside an item: the worker wrapper must keep it.
			f.Set(reflect.ValueOf([]string{"a-" + name, "b " + name}))
			if name != "WorkerWrapper" {
				f.Set(reflect.ValueOf([]string{"a-" + name, "b-" + name}))
			}
		case map[string]string:
			// Commas, spaces and '=' in paths: the JSON form keeps them.
			f.Set(reflect.ValueOf(map[string]string{"/a, b=c/" + name: "/model", "/x": "/env"}))
		default:
			t.Fatalf("field %s has a type the test does not fill: %s", name, f.Type())
		}
		if reflect.DeepEqual(f.Interface(), def.Field(i).Interface()) {
			t.Fatalf("field %s: the test value is the default", name)
		}
	}
	return o
}

func parse(t *testing.T, args []string) runneropts.Options {
	t.Helper()
	o := runneropts.Defaults()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	o.Flags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return o
}

func TestArgsRoundTrip(t *testing.T) {
	for name, o := range map[string]runneropts.Options{
		"every field set": populated(t),
		"defaults":        runneropts.Defaults(),
		// A zero field means zero, not the default: it must survive too.
		"zero": {},
		"driver-like": func() runneropts.Options {
			o := runneropts.Defaults()
			o.ModelDir, o.Plaintext, o.LogJSON = "/m", true, true
			o.WorkerWrapper = []string{"/plugin", "sandbox", "--spec", "/a b/sandbox.json"}
			o.CRLURLs = []string{"https://vault:8200/v1/pki_int/issuers"}
			o.Entry = "--plaintext" // a value that looks like a flag stays a value
			return o
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			args := o.Args()
			if got := parse(t, args); !reflect.DeepEqual(got, o) {
				t.Fatalf("Args %q parse back to\n%+v\nwant\n%+v", args, got, o)
			}
		})
	}
	if args := runneropts.Defaults().Args(); len(args) != 0 {
		t.Errorf("the defaults need no flag, got %q", args)
	}
}

// Every flag the command defines is written by Args when its field is set,
// and Args writes no other.
func TestEveryFlagIsWritten(t *testing.T) {
	var defined []string
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	o := runneropts.Defaults()
	o.Flags(fs)
	fs.VisitAll(func(f *flag.Flag) { defined = append(defined, f.Name) })

	var written []string
	for _, a := range populated(t).Args() {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		written = append(written, name)
	}
	slices.Sort(written)
	if !slices.Equal(defined, written) {
		t.Fatalf("flags defined:\n%q\nwritten by Args:\n%q", defined, written)
	}
	if n := reflect.TypeFor[runneropts.Options]().NumField(); len(defined) != n {
		t.Errorf("%d flags for %d fields: each field is one flag", len(defined), n)
	}
}

// The defaults shown in --help are the values a parse starts from.
func TestFlagDefaultsAreTheDefaults(t *testing.T) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	o := runneropts.Defaults()
	o.Flags(fs)
	for name, want := range map[string]string{
		"listen": "127.0.0.1:50051", "runtime": "python", "max-recv-bytes": fmt.Sprint(64 << 20),
		"crl-grace": "1h0m0s", "plaintext": "false", "max-streams-per-conn": "32", "worker-wrapper": "",
	} {
		if got := fs.Lookup(name).DefValue; got != want {
			t.Errorf("--%s default %q, want %q", name, got, want)
		}
	}
}

func TestListFlags(t *testing.T) {
	o := parse(t, []string{"--coordinator-cert-hash", " ab, ,cd ", "--worker-wrapper", "/bin/sandbox  run", "--tls-crl-url="})
	if !slices.Equal(o.CoordinatorCertHashes, []string{"ab", "cd"}) || !slices.Equal(o.WorkerWrapper, []string{"/bin/sandbox", "run"}) || o.CRLURLs != nil {
		t.Fatalf("lists: %q %q %q", o.CoordinatorCertHashes, o.WorkerWrapper, o.CRLURLs)
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	o.Flags(fs)
	if err := fs.Parse([]string{"--worker-wrapper", `["unterminated`}); err == nil || !strings.Contains(err.Error(), "JSON array") {
		t.Errorf("a broken JSON wrapper: %v", err)
	}
	if err := fs.Parse([]string{"--max-queue", "many"}); err == nil {
		t.Error("a non-number --max-queue was accepted")
	}
}

// The worker's argv names paths where the sandbox shows them: the longest
// mapped directory that holds a path wins; paths outside every one are kept.
func TestWorkerPath(t *testing.T) {
	o := runneropts.Options{WorkerPaths: map[string]string{
		"/var/lib/nomad/alloc/1234/model/local/model": "/model",
		"/var/lib/nomad/alloc/1234/model/private":     "/modelbox",
		"/var/lib/modelbox/envs/abc/":                 "/env",
	}}
	for in, want := range map[string]string{
		"/var/lib/nomad/alloc/1234/model/local/model":            "/model",
		"/var/lib/nomad/alloc/1234/model/local/model/main.py":    "/model/main.py",
		"/var/lib/nomad/alloc/1234/model/local/modelx":           "/var/lib/nomad/alloc/1234/model/local/modelx",
		"/var/lib/modelbox/envs/abc/bin/python":                  "/env/bin/python",
		"/usr/bin/python3":                                       "/usr/bin/python3",
		"/var/lib/nomad/alloc/1234/model/private/host/pyhost.py": "/modelbox/host/pyhost.py",
	} {
		if got := o.WorkerPath(in); got != want {
			t.Errorf("WorkerPath(%q) = %q, want %q", in, got, want)
		}
	}
	o.ModelDir, o.Runtime, o.Plaintext, o.MaxStreamsPerConn = "/m", "python", true, 1
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	o.WorkerPaths["relative"] = "/x"
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--worker-paths") {
		t.Errorf("a relative worker path was accepted: %v", err)
	}
}

func TestCommandLineOnly(t *testing.T) {
	if got := runneropts.CommandLineOnly(); !slices.Equal(got, []string{"authz-any-coordinator-key", "authz-without-crl"}) {
		t.Fatalf("command-line-only flags: %q", got)
	}
}

func TestValidate(t *testing.T) {
	secure := func(edit func(o *runneropts.Options)) runneropts.Options {
		o := runneropts.Defaults()
		o.ModelDir, o.TLSCert, o.TLSKey, o.TLSClientCA = "/m", "c.pem", "k.pem", "ca.pem"
		o.Crunch, o.CoordinatorCertHashes, o.CRLURLs = "alpha", []string{"ab"}, []string{"https://v/crl"}
		if edit != nil {
			edit(&o)
		}
		return o
	}
	for name, c := range map[string]struct {
		o    runneropts.Options
		want string // "" accepts
	}{
		"secure":            {secure(nil), ""},
		"plaintext laptop":  {runneropts.Options{ModelDir: "/m", Runtime: "python", Plaintext: true, MaxStreamsPerConn: 1}, ""},
		"no model dir":      {secure(func(o *runneropts.Options) { o.ModelDir = "" }), "--model-dir is required"},
		"bad runtime":       {secure(func(o *runneropts.Options) { o.Runtime = "java" }), `--runtime "java"`},
		"executable, entry": {secure(func(o *runneropts.Options) { o.Runtime = "executable" }), "needs --entry"},
		"no tls":            {secure(func(o *runneropts.Options) { o.TLSCert, o.TLSKey = "", "" }), "refusing to serve without TLS"},
		"plaintext and tls": {secure(func(o *runneropts.Options) { o.Plaintext = true }), "--plaintext conflicts"},
		"vault and files":   {secure(func(o *runneropts.Options) { o.VaultSign = "pki_int/sign/runner" }), "--tls-vault-sign replaces"},
		"vault without key": {secure(func(o *runneropts.Options) { o.TLSCert, o.TLSKey, o.VaultSign = "", "", "pki_int/sign/runner" }), "needs --tls-vault-key"},
		"key without vault": {secure(func(o *runneropts.Options) { o.CertTTL = time.Hour }), "only work with --tls-vault-sign"},
		"two crl sources":   {secure(func(o *runneropts.Options) { o.CRLFile = "crl.pem" }), "exclude each other"},
		"checks without ca": {secure(func(o *runneropts.Options) { o.TLSClientCA = "" }), "need --tls-client-ca"},
		"file and crunch":   {secure(func(o *runneropts.Options) { o.AuthzFile = "a.json" }), "--authz-file replaces"},
		"no crl":            {secure(func(o *runneropts.Options) { o.CRLURLs = nil }), "without a revocation list"},
		"no crl, dev":       {secure(func(o *runneropts.Options) { o.CRLURLs, o.WithoutCRL = nil, true }), ""},
		"dev switch alone": {secure(func(o *runneropts.Options) {
			o.Crunch, o.CoordinatorCertHashes, o.CRLURLs, o.AnyCoordinatorKey = "", nil, nil, true
		}), "only change the caller checks"},
		"streams":  {secure(func(o *runneropts.Options) { o.MaxStreamsPerConn = 1<<16 + 1 }), "want 1 to 65536"},
		"inflight": {secure(func(o *runneropts.Options) { o.MaxInflightBytes = 1 }), "at least --max-recv-bytes"},
		"launcher": {secure(func(o *runneropts.Options) { o.WorkerLauncher = true }), ""},
		"launcher and wrapper": {secure(func(o *runneropts.Options) {
			o.WorkerLauncher, o.WorkerWrapper = true, []string{"/plugin", "sandbox"}
		}), "exclude each other"},
	} {
		err := c.o.Validate()
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}
