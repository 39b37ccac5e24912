package jobs

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// Every string field of Model, set to a string with '$' (or a control
// character), makes Validate fail naming that field: the check walks the
// struct, so a field added later is covered without a list to update.
func TestValidateChecksEveryStringField(t *testing.T) {
	typ := reflect.TypeOf(Model{})
	strs := 0
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Type.Kind() != reflect.String {
			continue
		}
		strs++
		for _, bad := range []string{"a$b", "a{b", "a}b", "a%b", "a\x00b", "a\tb", "a\u202eb", "a\xffb", strings.Repeat("a", MaxStringLen+1)} {
			m := model()
			reflect.ValueOf(m).Elem().Field(i).SetString(bad)
			err := m.Validate()
			if !errors.Is(err, ErrInterpolation) || !strings.Contains(err.Error(), fieldName(f)+":") {
				t.Errorf("%s = %q: %v, want an unsafe-string error naming %s", f.Name, bad, err, fieldName(f))
			}
		}
	}
	if strs < 16 {
		t.Fatalf("only %d string fields found", strs)
	}
	if err := model().Validate(); err != nil {
		t.Fatalf("the good model: %v", err)
	}
}

func TestEntryGrammar(t *testing.T) {
	for _, tc := range []struct {
		runtime, entry string
		ok             bool
	}{
		{"python", "", true},
		{"python", "main", true},
		{"python", "pkg.sub_mod.Model2", true},
		{"python", "_private", true},
		{"python", "pkg..mod", false},
		{"python", ".pkg", false},
		{"python", "pkg.", false},
		{"python", "2pkg", false},
		{"python", "pkg/mod", false},
		{"python", "pkg-mod", false},
		{"python", "mod name", false},
		{"python", "módulo", false},
		{"executable", "", false},
		{"executable", "model-server", true},
		{"executable", "bin/model_server.v2+x", true},
		{"executable", "/bin/sh", false},
		{"executable", "-c", false},
		{"executable", "bin/-x", false},
		{"executable", "../../bin/sh", false},
		{"executable", "bin/../../x", false},
		{"executable", "./run", false},
		{"executable", "bin//run", false},
		{"executable", "run;id", false},
		{"executable", "run me", false},
	} {
		m := model()
		m.Runtime, m.Entry = tc.runtime, tc.entry
		err := m.Validate()
		if tc.ok && err != nil || !tc.ok && !errors.Is(err, ErrEntry) {
			t.Errorf("%s entry %q: %v (want ok=%v)", tc.runtime, tc.entry, err, tc.ok)
		}
	}
}

func TestArtifactPolicy(t *testing.T) {
	sha := strings.Repeat("ab", 32)
	prod := &Options{ArtifactHosts: []string{"models.example", "cdn.example:8443", "*.bucket.example"}}
	dev := &Options{ArtifactHosts: []string{"127.0.0.1"}, AllowHTTPArtifacts: true}
	for _, tc := range []struct {
		url, sha string
		opts     *Options
		want     string // "" = accepted, else a piece of the reason
	}{
		{"https://models.example/a.tar.gz", sha, prod, ""},
		{"https://MODELS.example:443/a/b.tar.gz", sha, prod, ""},
		{"https://cdn.example:8443/a.tar.gz", sha, prod, ""},
		{"https://cdn.example/a.tar.gz", sha, prod, "not in the scheduler's --artifact-hosts"},
		{"https://x.bucket.example/a.tar.gz", sha, prod, ""},
		{"https://bucket.example/a.tar.gz", sha, prod, "not in"},
		{"https://evil.example/a.tar.gz", sha, prod, "not in"},
		{"https://models.example.evil.example/a.tar.gz", sha, prod, "not in"},
		{"https://models.example/a.tar.gz", sha, &Options{}, "--artifact-hosts"},
		{"http://models.example/a.tar.gz", sha, prod, "--allow-http-artifacts"},
		{"http://127.0.0.1:8080/a.tar.gz", sha, dev, ""},
		{"https://models.example/a.tar.gz", "", prod, "no sha256"},
		{"https://models.example/a.tar.gz", strings.Repeat("0", 64), prod, "is zero"},
		{"https://models.example/a.tar.gz", strings.Repeat("AB", 32), prod, "lowercase hex"},
		{"git::https://models.example/a.git", sha, prod, "forces a go-getter getter"},
		{"s3::https://models.example/a", sha, prod, "forces"},
		{"gcs::https://models.example/a", sha, prod, "forces"},
		{"hg::https://models.example/a", sha, prod, "forces"},
		{"git@github.com:x/y.git", sha, prod, "artifact refused"},
		{"file:///etc/passwd", sha, prod, "not https"},
		{"ftp://models.example/a", sha, prod, "not https"},
		{"models.example/a.tar.gz", sha, prod, "not https"},
		{"https://user:pw@models.example/a.tar.gz", sha, prod, "user info"},
		{"https://user@models.example/a.tar.gz", sha, prod, "user info"},
		{"https://models.example/a.tar.gz?archive=false", sha, prod, "query string"},
		{"https://models.example/a.tar.gz?checksum=md5:00", sha, prod, "query string"},
		{"https://models.example/a.tar.gz?sshkey=x", sha, prod, "query string"},
		{"https://models.example/a.tar.gz?", sha, prod, "query string"},
		{"https://models.example/a.tar.gz#frag", sha, prod, "fragment"},
		{"https://models.example/repo//sub", sha, prod, "subdirectory"},
		{"https:///a.tar.gz", sha, prod, "no host"},
		{"https://models.example/a%2e.tar.gz", sha, prod, "interpolates"},
	} {
		// The code artifact, then the resources archive beside a good
		// artifact: the same policy holds for both.
		for _, archive := range []string{"artifact", "resources"} {
			m := model()
			o := *tc.opts
			if archive == "artifact" {
				m.ArtifactURL, m.ArtifactSHA256 = tc.url, tc.sha
			} else if len(o.ArtifactHosts) > 0 {
				m.ArtifactURL = "https://code.example/a.tar.gz"
				o.ArtifactHosts = append(append([]string{}, o.ArtifactHosts...), "code.example")
				m.ResourcesURL, m.ResourcesSHA256 = tc.url, tc.sha
			} else {
				m.ResourcesURL, m.ResourcesSHA256 = tc.url, tc.sha
			}
			err := o.CheckModel(m)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("%s %s: refused: %v", archive, tc.url, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("%s %s (sha %q): %v, want a refusal saying %q", archive, tc.url, tc.sha, err, tc.want)
			case tc.want != "" && !errors.Is(err, ErrArtifact) && !errors.Is(err, ErrInterpolation):
				t.Errorf("%s %s: %v is not classed as an artifact refusal", archive, tc.url, err)
			}
			// jobs.Build applies the same policy.
			o.CRLURL = "https://vault.example/v1/pki_int/crl/pem"
			if _, berr := Build(m, &o); (berr == nil) != (err == nil) {
				t.Errorf("%s %s: CheckModel says %v, Build says %v", archive, tc.url, err, berr)
			}
		}
	}
}

// A submission's resources archive is fetched with its digest into the
// model's resources/ directory, after the code; it needs both a URL and a
// digest, and an artifact to go into.
func TestResources(t *testing.T) {
	m := model()
	m.ResourcesURL, m.ResourcesSHA256 = "https://models.example/r.tar.gz", strings.Repeat("ef", 32)
	job, err := Build(m, opts())
	if err != nil {
		t.Fatal(err)
	}
	arts := job.TaskGroups[0].Tasks[0].Artifacts
	if len(arts) != 2 || *arts[0].RelativeDest != "local/model" || *arts[1].GetterSource != m.ResourcesURL ||
		*arts[1].RelativeDest != "local/model/resources" || arts[1].GetterOptions["checksum"] != "sha256:"+m.ResourcesSHA256 {
		t.Fatalf("artifacts: %+v", arts)
	}
	if SpecHash(m, opts()) == SpecHash(model(), opts()) {
		t.Error("adding resources does not change the spec hash: the job would not be updated")
	}
	for name, tc := range map[string]struct {
		change func(*Model)
		want   string
	}{
		"digest without URL":    {func(m *Model) { m.ResourcesURL = "" }, "a resources digest without a resources URL"},
		"URL without digest":    {func(m *Model) { m.ResourcesSHA256 = "" }, "resources: no sha256"},
		"with a host model dir": {func(m *Model) { m.ArtifactURL, m.ArtifactSHA256, m.ModelDir = "", "", "/srv/m" }, "only with an artifact"},
	} {
		bad := *m
		tc.change(&bad)
		if err := bad.Validate(); !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

// A host model dir is a path on the node: refused unless the deployment
// allows them (development).
func TestHostModelDirNeedsOption(t *testing.T) {
	m := model()
	m.ArtifactURL, m.ArtifactSHA256, m.ModelDir = "", "", "/srv/models/a"
	if err := opts().CheckModel(m); !errors.Is(err, ErrModelDir) || !strings.Contains(err.Error(), "--allow-host-model-dirs") {
		t.Fatalf("host model dir accepted without the option: %v", err)
	}
	o := opts()
	o.AllowHostModelDirs = true
	job, err := Build(m, o)
	if err != nil {
		t.Fatal(err)
	}
	if got := job.TaskGroups[0].Tasks[0].Config["model_dir"]; got != m.ModelDir {
		t.Fatalf("model_dir %v", got)
	}
	for _, dir := range []string{"relative/dir", "/srv/../etc", "/srv/models/", "/srv/a b"} {
		m.ModelDir = dir
		if err := o.CheckModel(m); !errors.Is(err, ErrModelDir) {
			t.Errorf("model dir %q: %v", dir, err)
		}
	}
	m.ModelDir, m.ArtifactURL, m.ArtifactSHA256 = "/srv/models/a", "https://models.example/a.tar.gz", strings.Repeat("ab", 32)
	if err := o.CheckModel(m); !errors.Is(err, ErrModelDir) {
		t.Errorf("both a model dir and an artifact: %v", err)
	}
}

// Secure jobs carry a revocation list, or the deployment says loudly that
// it runs without one.
func TestSecureJobsNeedACRL(t *testing.T) {
	m := model()
	o := opts()
	o.CRLURL = ""
	if _, err := Build(m, o); err == nil || !strings.Contains(err.Error(), "--crl-url") {
		t.Fatalf("secure job without a CRL built: %v", err)
	}
	if _, err := Build(m, &Options{Plaintext: true, ArtifactHosts: []string{"models.example"}}); err != nil {
		t.Fatalf("plaintext jobs have no TLS to revoke: %v", err)
	}
	job, err := Build(m, opts())
	if err != nil {
		t.Fatal(err)
	}
	az := job.TaskGroups[0].Tasks[0].Config["authz"].([]map[string]any)[0]
	if az["crl_url"] != opts().CRLURL {
		t.Fatalf("authz without the CRL: %v", az)
	}
}

// The policy options change which models run, not the jobs: changing the
// allowlist must not rewrite every job.
func TestPolicyIsNotInTheSpecHash(t *testing.T) {
	m := model()
	a, b := opts(), opts()
	b.ArtifactHosts = append(b.ArtifactHosts, "other.example")
	b.AllowHTTPArtifacts, b.AllowHostModelDirs = true, true
	if SpecHash(m, a) != SpecHash(m, b) {
		t.Fatal("policy options changed the spec hash")
	}
}
