package jobs_test

// These tests run the jobs jobs.Build makes through Nomad's own client code
// at the pinned version (github.com/hashicorp/nomad v1.11.3): the task
// environment builder with a Vault token set as the vault hook sets it, the
// artifact getter (the real one: a go-getter subprocess fetching from a
// loopback server that records every request), the driver config decoding
// the task runner does before it starts a task (hclutils.ParseHclInterface
// with the task environment as variables, then the modelbox driver's
// schema), the service interpolation and the template destinations. A
// cruncher's string that reached any of them with ${VAULT_TOKEN} in it would
// carry the runner's token away (issue 13 item 1).

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/hashicorp/nomad/client/taskenv"
	"github.com/hashicorp/nomad/helper/pluginutils/hclspecutils"
	"github.com/hashicorp/nomad/helper/pluginutils/hclutils"
	"github.com/hashicorp/nomad/nomad/structs"
	"github.com/hashicorp/nomad/plugins/drivers"

	"github.com/modelnodes/modelnodes/driver"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
)

// vaultToken is what the vault hook would give the task.
const vaultToken = "hvs.SECRET-runner-token-5b1d0c"

// artifactServer serves one model artifact and records every request.
type artifactServer struct {
	*httptest.Server
	body   []byte
	sha256 string
	mu     sync.Mutex
	seen   []string // request URIs and headers
}

func newArtifactServer(t *testing.T) *artifactServer {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	src := []byte("def predict(x):\n    return x\n")
	_ = tw.WriteHeader(&tar.Header{Name: "main.py", Mode: 0o644, Size: int64(len(src))})
	_, _ = tw.Write(src)
	_ = tw.Close()
	_ = gz.Close()
	a := &artifactServer{body: buf.Bytes()}
	sum := sha256.Sum256(a.body)
	a.sha256 = hex.EncodeToString(sum[:])
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.seen = append(a.seen, r.RequestURI+" "+fmt.Sprint(r.Header))
		a.mu.Unlock()
		_, _ = w.Write(a.body)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *artifactServer) requests() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return strings.Join(a.seen, "\n")
}

// toStructs turns the API job into the server's job as Nomad's HTTP API
// does (Canonicalize, then the same field names); the fields the tests
// depend on are checked to have survived.
func toStructs(t *testing.T, job *nomadapi.Job) *structs.Job {
	t.Helper()
	job.Canonicalize()
	b, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	var sj structs.Job
	if err := json.Unmarshal(b, &sj); err != nil {
		t.Fatalf("api job to structs: %v", err)
	}
	at, st := job.TaskGroups[0].Tasks[0], sj.TaskGroups[0].Tasks[0]
	if (at.Vault == nil) != (st.Vault == nil) || at.Vault != nil && *at.Vault.Env != st.Vault.Env ||
		len(at.Artifacts) != len(st.Artifacts) || len(at.Templates) != len(st.Templates) ||
		!reflect.DeepEqual(sj.TaskGroups[0].Services[0].Meta, job.TaskGroups[0].Services[0].Meta) {
		t.Fatalf("the conversion lost a field: %+v vs %+v", at.Vault, st.Vault)
	}
	return &sj
}

// expansion is everything Nomad's client derives from the job's strings.
type expansion struct {
	artifactErr error
	requests    string // what the artifact server saw
	config      driver.TaskConfig
	configJSON  string
	services    string
	templates   []string
	env         map[string]string
	secretsDir  string
	taskDir     string
}

// expand runs the job's task through Nomad's client code with a Vault
// token, as a node would before the model starts.
func expand(t *testing.T, job *nomadapi.Job, art *artifactServer) *expansion {
	t.Helper()
	sj := toStructs(t, job)
	tg := sj.TaskGroups[0]
	task := tg.Tasks[0]
	alloc := &structs.Allocation{ID: "3f1c2e5a-0000-4000-8000-000000000001", Name: sj.ID + ".model[0]",
		Namespace: "default", TaskGroup: tg.Name, Job: sj}
	node := &structs.Node{ID: "node-1", Name: "node-1", Datacenter: "dc1", NodeClass: "gpu",
		Attributes: map[string]string{"unique.hostname": "node-1"}, Meta: map[string]string{"rack": "r1"}}
	allocDir := t.TempDir()
	taskDir := filepath.Join(allocDir, "model")
	secrets := filepath.Join(taskDir, "secrets")
	if err := os.MkdirAll(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	b := taskenv.NewBuilder(node, alloc, task, "global").
		SetAllocDir("/alloc").SetTaskLocalDir("/local").SetSecretsDir("/secrets").
		SetClientSharedAllocDir(allocDir).SetClientTaskRoot(taskDir).
		SetClientTaskLocalDir(taskDir).SetClientTaskSecretsDir(secrets)
	// The vault hook (task_runner_getters.go) sets the token with the
	// task's vault.env as the inject flag.
	inject := task.Vault != nil && task.Vault.Env
	b.SetVaultToken(vaultToken, "", inject)
	env := b.Build()
	x := &expansion{env: env.Map(), secretsDir: secrets, taskDir: taskDir}

	// Artifacts: the source and options as the artifact hook hands them
	// to go-getter, then the GET go-getter's http getter makes.
	for _, a := range task.Artifacts {
		src, err := getterURL(env, a)
		if err == nil {
			err = fetch(src, a.GetterOptions["checksum"], getterHeaders(env, a))
		}
		x.artifactErr = errors.Join(x.artifactErr, err)
	}
	if art != nil {
		x.requests = art.requests()
	}

	// Driver config: what TaskRunner.runDriver decodes (task_runner.go).
	vars, _, err := env.AllValues()
	if err != nil {
		t.Fatal(err)
	}
	schema, err := driver.New(hclog.NewNullLogger()).TaskConfigSchema()
	if err != nil {
		t.Fatal(err)
	}
	spec, diags := hclspecutils.Convert(schema)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	// A config Nomad cannot parse fails the task's validation: no leak.
	val, diags, errs := hclutils.ParseHclInterface(task.Config, spec, vars)
	if diags.HasErrors() {
		x.configJSON = fmt.Sprint("refused: ", errs)
	} else {
		var tc drivers.TaskConfig
		if err := tc.EncodeDriverConfig(val); err != nil {
			t.Fatal(err)
		}
		if err := tc.DecodeDriverConfig(&x.config); err != nil {
			t.Fatal(err)
		}
		cj, _ := json.Marshal(x.config)
		x.configJSON = string(cj)
	}

	// Services (group_service_hook.go, checks_hook.go) and templates'
	// destinations (template.go: ClientPath interpolates).
	sv, _ := json.Marshal(taskenv.InterpolateServices(env, tg.Services))
	x.services = string(sv)
	for _, tmpl := range task.Templates {
		dest, _ := env.ClientPath(tmpl.DestPath, true)
		x.templates = append(x.templates, dest)
	}
	return x
}

// leaks reports where the token (or the secrets dir, which holds it) shows
// up in what Nomad made of the job.
func (x *expansion) leaks() []string {
	var out []string
	check := func(where, s string) {
		if strings.Contains(s, vaultToken) {
			out = append(out, where+" carries the Vault token: "+s)
		} else if strings.Contains(s, x.secretsDir) || strings.Contains(s, "/secrets/vault_token") {
			out = append(out, where+" names the secrets dir: "+s)
		}
	}
	check("artifact request", x.requests)
	if x.artifactErr != nil {
		check("artifact error", x.artifactErr.Error())
	}
	check("driver config", x.configJSON)
	check("services", x.services)
	for _, d := range x.templates {
		if strings.Contains(d, vaultToken) {
			out = append(out, "template destination carries the Vault token: "+d)
		}
	}
	if v, ok := x.env["VAULT_TOKEN"]; ok {
		out = append(out, "the task environment has VAULT_TOKEN="+v)
	}
	return out
}

// httpOptions: a loopback artifact server over plain http (development),
// the options a test deployment uses.
func httpOptions() *jobs.Options {
	return &jobs.Options{AllowHTTPArtifacts: true, ArtifactHosts: []string{"127.0.0.1"},
		CRLURL: "https://vault.example:8200/v1/pki_int/crl/pem"}
}

func goodModel(a *artifactServer) *jobs.Model {
	return &jobs.Model{
		Crunch: "mid-one", CrunchID: "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin",
		ModelID: "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU", Cruncher: "HN7cABqLq46Es1jh92dQQisAq662SmxELLLsHHe4YWrH",
		Hotkey: "5ZWj7a1f8tWkjBESHKgrLmXshuXxqeY9SYcfbshpAqPG", SubmissionID: "sub-1",
		ArtifactURL: a.URL + "/models/a.tar.gz", ArtifactSHA256: a.sha256, Entry: "model.main",
		Coordinator: "Cq4VvDFmNMMrf6DMJxLXU1GkLJUEkAhY7uAJbqqoK8pN", CertHash: strings.Repeat("cd", 32),
		Hardware: jobs.CPU, Running: true,
	}
}

// Models that pass: Nomad's client makes nothing of them that carries the
// token, and does what the model asked (the artifact is fetched and
// checked, the entry reaches the driver as written).
func TestBuiltJobsKeepTheVaultTokenFromNomadInterpolation(t *testing.T) {
	art := newArtifactServer(t)
	stable := httpOptions()
	stable.RunnerVaultAddr = "https://vault.example:8200"
	exe := goodModel(art)
	exe.Runtime, exe.Entry, exe.Hardware = "executable", "bin/model-server", jobs.GPU
	for name, tc := range map[string]struct {
		m    *jobs.Model
		opts *jobs.Options
	}{
		"python, issued certificate": {goodModel(art), httpOptions()},
		"executable on a GPU":        {exe, httpOptions()},
		"stable key in Vault":        {goodModel(art), stable},
	} {
		t.Run(name, func(t *testing.T) {
			job, err := jobs.Build(tc.m, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			x := expand(t, job, art)
			if l := x.leaks(); len(l) > 0 {
				t.Fatalf("Nomad's client leaks the runner's Vault token:\n%s", strings.Join(l, "\n"))
			}
			if x.artifactErr != nil {
				t.Fatalf("the artifact was not fetched: %v", x.artifactErr)
			}
			for i, d := range x.templates {
				if want := filepath.Join(x.taskDir, *job.TaskGroups[0].Tasks[0].Templates[i].DestPath); d != want {
					t.Errorf("template destination %s, want %s", d, want)
				}
			}
			if x.config.Entry != tc.m.Entry || x.config.Authz == nil || x.config.Authz.Crunch != tc.m.Crunch {
				t.Fatalf("decoded driver config: %s", x.configJSON)
			}
		})
	}
}

// The harness finds a leak when there is one: the job the builder made
// before issue 13 (vault env left at its default, the cruncher's strings
// taken verbatim) hands the token to the artifact host, the driver config
// and the task environment.
func TestExpansionSeesTheOldLeak(t *testing.T) {
	art := newArtifactServer(t)
	m := goodModel(art)
	job, err := jobs.Build(m, httpOptions())
	if err != nil {
		t.Fatal(err)
	}
	task := job.TaskGroups[0].Tasks[0]
	task.Vault.Env = nil // the default: true
	*task.Artifacts[0].GetterSource += "?t=${VAULT_TOKEN}"
	task.Config["entry"] = "${VAULT_TOKEN}"
	x := expand(t, job, art)
	got := strings.Join(x.leaks(), "\n")
	for _, want := range []string{"artifact request carries", "driver config carries", "VAULT_TOKEN="} {
		if !strings.Contains(got, want) {
			t.Errorf("the harness missed a leak (%s); it saw:\n%s", want, got)
		}
	}
}

// hostile are strings a cruncher might try: Nomad's interpolation (task
// environment, node attributes, HCL templates), consul-template syntax,
// control characters.
var hostile = []string{
	"${VAULT_TOKEN}", "${env.VAULT_TOKEN}", "${env[\"VAULT_TOKEN\"]}", "%{VAULT_TOKEN}", "${NOMAD_SECRETS_DIR}/vault_token",
	"$VAULT_TOKEN", "{{ env \"VAULT_TOKEN\" }}", "${node.unique.name}", "a\x00b", "a\nb", "a%2Fb",
}

// withHostile returns the good model with field set to a hostile payload,
// placed where it would do harm (a URL keeps its shape).
func withHostile(m jobs.Model, field reflect.StructField, p string) *jobs.Model {
	v := reflect.ValueOf(&m).Elem().FieldByIndex(field.Index)
	switch field.Name {
	case "ArtifactURL":
		v.SetString(m.ArtifactURL + "?t=" + p)
	default:
		v.SetString(p)
	}
	return &m
}

// Every string field of a model, each hostile payload: jobs.Build refuses
// the model, or (should it ever accept one) Nomad's client makes nothing of
// it that carries the token.
func TestHostileModelsAreRefused(t *testing.T) {
	art := newArtifactServer(t)
	good := goodModel(art)
	typ := reflect.TypeOf(*good)
	n := 0
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Type.Kind() != reflect.String {
			continue
		}
		for _, p := range append(hostile, art.URL+"/x?t=${VAULT_TOKEN}") {
			n++
			m := withHostile(*good, f, p)
			job, err := jobs.Build(m, httpOptions())
			if err == nil {
				x := expand(t, job, art)
				if l := x.leaks(); len(l) > 0 {
					t.Errorf("%s = %q: accepted, and Nomad's client leaks the token:\n%s", f.Name, p, strings.Join(l, "\n"))
				} else {
					t.Errorf("%s = %q: accepted", f.Name, p)
				}
				continue
			}
			if !errors.Is(err, jobs.ErrInterpolation) && !errors.Is(err, jobs.ErrArtifact) && !errors.Is(err, jobs.ErrEntry) {
				// Refused for another reason is still refused, but the
				// reason must name the danger where one was found.
				if strings.ContainsAny(p, "${}%\x00\n") {
					t.Errorf("%s = %q: refused without naming it: %v", f.Name, p, err)
				}
			}
		}
	}
	if art.requests() != "" {
		t.Errorf("the artifact server was asked for something: %s", art.requests())
	}
	t.Logf("%d hostile models refused", n)
}

// getterURL is getURL of Nomad 1.11.3's
// client/allocrunner/taskrunner/getter/util.go (unexported there; importing
// that package would pull go-getter's S3, GCS and Docker clients into this
// module): the source interpolated with the task environment, then each
// getter option interpolated and set as a query parameter.
func getterURL(env *taskenv.TaskEnv, a *structs.TaskArtifact) (string, error) {
	u, err := url.Parse(env.ReplaceEnv(a.GetterSource))
	if err != nil {
		return "", err
	}
	q := u.Query()
	for k, v := range a.GetterOptions {
		q.Set(k, env.ReplaceEnv(v))
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// getterHeaders is getHeaders of the same file.
func getterHeaders(env *taskenv.TaskEnv, a *structs.TaskArtifact) http.Header {
	h := http.Header{}
	for k, v := range a.GetterHeaders {
		h.Set(k, env.ReplaceEnv(v))
	}
	return h
}

// fetch GETs src as go-getter's http getter does and checks the digest
// named by the checksum option (go-getter strips the option from the
// query first).
func fetch(src, checksum string, h http.Header) error {
	u, err := url.Parse(src)
	if err != nil {
		return err
	}
	q := u.Query()
	q.Del("checksum")
	u.RawQuery = q.Encode()
	req, err := http.NewRequest(http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header = h
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	if _, err := body.ReadFrom(resp.Body); err != nil {
		return err
	}
	sum := sha256.Sum256(body.Bytes())
	if want := strings.TrimPrefix(checksum, "sha256:"); want != hex.EncodeToString(sum[:]) {
		return fmt.Errorf("checksum mismatch: got %x, want %s", sum, want)
	}
	return nil
}

// The model's service meta carries the node's seccomp profile: Nomad's
// client fills the attribute in from the node's fingerprint, as its group
// service hook does when it registers the service (driver e2e
// TestE2EStableRunnerKey reads it back from Consul).
func TestServiceMetaCarriesTheNodesSeccompProfile(t *testing.T) {
	job, err := jobs.Build(goodModel(newArtifactServer(t)), httpOptions())
	if err != nil {
		t.Fatal(err)
	}
	sj := toStructs(t, job)
	tg := sj.TaskGroups[0]
	alloc := &structs.Allocation{ID: "3f1c2e5a-0000-4000-8000-000000000002", Name: sj.ID + ".model[0]",
		Namespace: "default", TaskGroup: tg.Name, Job: sj}
	node := &structs.Node{ID: "node-1", Name: "node-1", Datacenter: "dc1",
		Attributes: map[string]string{names.AttrSeccompProfile: "0123456789abcdef"}}
	services := taskenv.InterpolateServices(taskenv.NewBuilder(node, alloc, nil, "global").Build(), tg.Services)
	if got := services[0].Meta[names.MetaSeccompProfile]; got != "0123456789abcdef" {
		t.Errorf("service meta %s = %q, want the node's attribute", names.MetaSeccompProfile, got)
	}
}
