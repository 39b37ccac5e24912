package jobs

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/modelnodes/modelnodes/names"
)

var rfc1123 = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func model() *Model {
	return &Model{
		Crunch: "Mid One", CrunchID: "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin",
		ModelID: "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU", Cruncher: "HN7cABqLq46Es1jh92dQQisAq662SmxELLLsHHe4YWrH",
		ArtifactURL: "https://models.example/a.tar.gz", ArtifactSHA256: strings.Repeat("ab", 32),
		Hardware: CPU, Running: true, CertHash: strings.Repeat("cd", 32), SubmissionID: "sub-42",
	}
}

// opts are production options: https artifacts from models.example, and
// runners fetch the revocation list.
func opts() *Options {
	return &Options{ArtifactHosts: []string{"models.example"}, CRLURL: "https://vault.example:8200/v1/pki_int/crl/pem"}
}

func TestJobIDIsDeterministicAndDNSSafe(t *testing.T) {
	m := model()
	id := JobID(m)
	if id != JobID(model()) {
		t.Fatal("the same model got two job ids")
	}
	if !rfc1123.MatchString(id) || len(id) > 63 || !strings.HasPrefix(id, "model-node-") {
		t.Fatalf("job id %q is not an RFC 1123 label named model-node-*", id)
	}
	if strings.Contains(id, strings.ToLower(m.ModelID[:8])) {
		t.Fatalf("job id %q carries the base58 id", id)
	}
	other := model()
	other.ModelID += "x"
	if JobID(other) == id {
		t.Fatal("two models share a job id")
	}
	// Resources or state do not change the identity, only the spec.
	changed := model()
	changed.MemoryMB, changed.Running = 2048, false
	if JobID(changed) != id || SpecHash(changed, &Options{}) == SpecHash(m, &Options{}) {
		t.Fatal("a resource change must keep the job id and change the spec hash")
	}
}

func TestBuild(t *testing.T) {
	m := model()
	job, err := Build(m, opts())
	if err != nil {
		t.Fatal(err)
	}
	if *job.ID != JobID(m) || job.Meta[names.MetaModel] != m.ModelID || job.Meta[names.MetaCrunch] != m.CrunchID || job.Meta[names.MetaManaged] != "true" {
		t.Fatalf("job id/meta: %s %v", *job.ID, job.Meta)
	}
	task := job.TaskGroups[0].Tasks[0]
	if task.Driver != "modelbox" || task.Config["model_dir"] != "local/model" || task.Config["port"] != "grpc" {
		t.Fatalf("task: %s %v", task.Driver, task.Config)
	}
	tls := task.Config["tls"].([]map[string]any)[0]
	if tls["cert"] != "secrets/tls.pem" || tls["key"] != "secrets/tls.pem" {
		t.Fatalf("tls: %v", tls)
	}
	if task.Vault == nil || task.Vault.Role != "runner" || task.Vault.Env == nil || *task.Vault.Env || len(task.Templates) != 2 ||
		!strings.Contains(*task.Templates[0].EmbeddedTmpl, `pkiCert "pki_int/issue/runner"`) ||
		!strings.Contains(*task.Templates[0].EmbeddedTmpl, `env "NOMAD_JOB_ID"`) {
		t.Fatalf("vault/template: %+v", task.Vault)
	}
	if *task.Artifacts[0].GetterSource != m.ArtifactURL || task.Artifacts[0].GetterOptions["checksum"] != "sha256:"+m.ArtifactSHA256 {
		t.Fatalf("artifact: %+v", task.Artifacts[0])
	}
	svc := job.TaskGroups[0].Services[0]
	if svc.Provider != "consul" || svc.Name != "crunch-mid-one--fo6pt5hdwpkimptu" || svc.PortLabel != "grpc" ||
		svc.Checks[0].Type != "grpc" || svc.Checks[0].PortLabel != "health" || svc.Checks[0].GRPCUseTLS ||
		svc.Meta[names.MetaModelID] != ShortID(m) || svc.Meta[names.MetaCruncher] != m.Cruncher || svc.Meta[names.MetaSubmission] != "sub-42" {
		t.Fatalf("service: %+v", svc)
	}
	// mTLS on the model port; Consul checks the plaintext health-only port.
	if task.Config["health_port"] != "health" || len(job.TaskGroups[0].Networks[0].DynamicPorts) != 3 {
		t.Fatalf("health port: %v %+v", task.Config["health_port"], job.TaskGroups[0].Networks[0].DynamicPorts)
	}
	// The runner's metrics on a port of their own, registered for
	// Prometheus under the one metrics service, saying whose they are.
	if ms := job.TaskGroups[0].Services[1]; task.Config["metrics_port"] != "metrics" || ms.Name != names.MetricsService || ms.PortLabel != "metrics" ||
		ms.Meta[names.MetaModelID] != ShortID(m) || ms.Meta[names.MetaCrunch] != m.CrunchID || len(ms.Checks) != 0 {
		t.Fatalf("metrics: %v %+v", task.Config["metrics_port"], ms)
	}
	az := task.Config["authz"].([]map[string]any)[0]
	if az["crunch"] != "Mid One" || len(az["cert_hashes"].([]string)) != 1 || az["cert_hashes"].([]string)[0] != m.CertHash {
		t.Fatalf("authz: only the crunch's coordinator with the on-chain key may call: %v", az)
	}
	if task.Resources.Devices != nil || *task.Resources.MemoryMB != 512 {
		t.Fatal("a CPU model must not ask for a GPU")
	}

	m.Hardware = GPU
	o := opts()
	o.GPUNodeClass = "gpu"
	job, err = Build(m, o)
	if err != nil {
		t.Fatal(err)
	}
	tg := job.TaskGroups[0]
	if d := tg.Tasks[0].Resources.Devices; len(d) != 1 || d[0].Name != "gpu" || *d[0].Count != 1 {
		t.Fatalf("GPU model devices: %+v", d)
	}
	if len(tg.Constraints) != 1 || tg.Constraints[0].RTarget != "gpu" {
		t.Fatalf("GPU node class constraint: %+v", tg.Constraints)
	}

	bad := model()
	bad.Hardware = "tpu"
	if _, err := Build(bad, opts()); err == nil || !strings.Contains(err.Error(), "tpu") {
		t.Fatalf("invalid hardware accepted: %v", err)
	}
}

// With RunnerVaultAddr the runner keeps one key per model in Vault and signs
// its own certificates: no template issues a key, the driver gets a vault
// block, and the cruncher's delegation comes from the job's variable.
func TestBuildStableKey(t *testing.T) {
	m := model()
	o := opts()
	o.RunnerVaultAddr = "https://vault.service.consul:8200"
	job, err := Build(m, o)
	if err != nil {
		t.Fatal(err)
	}
	if SpecHash(m, o) == SpecHash(m, opts()) {
		t.Error("switching to stable keys must change the spec hash, or running jobs keep the old TLS setup")
	}
	task := job.TaskGroups[0].Tasks[0]
	tls := task.Config["tls"].([]map[string]any)[0]
	v, _ := tls["vault"].([]map[string]any)
	if len(v) != 1 || v[0]["address"] != o.RunnerVaultAddr || v[0]["sign_path"] != "pki_int/sign/runner" ||
		tls["cert"] != nil || tls["key"] != nil || tls["client_ca"] != ClientCA {
		t.Fatalf("tls: %v", tls)
	}
	if task.Config["delegation"] != DelegationFile {
		t.Errorf("delegation: %v", task.Config["delegation"])
	}
	var dests []string
	for _, tp := range task.Templates {
		dests = append(dests, *tp.DestPath)
		if strings.Contains(*tp.EmbeddedTmpl, "pkiCert") {
			t.Errorf("a pkiCert template would issue a fresh key: %s", *tp.EmbeddedTmpl)
		}
	}
	if strings.Join(dests, ",") != ClientCA+","+DelegationFile {
		t.Errorf("templates render %v", dests)
	}
	if task.Vault == nil || task.Vault.Role != "runner" || task.Vault.Env == nil || *task.Vault.Env ||
		task.Vault.ChangeMode == nil || *task.Vault.ChangeMode != "noop" {
		t.Errorf("the runner needs the task's Vault token, in secrets/ only (env = false), and a new token after max TTL must not restart the model (change_mode = noop): %+v", task.Vault)
	}
}

// With RunnerConsulAddr the runner watches its crunch's service for a newer
// instance of its model: the task gets a Consul token, Consul's address and
// the runner's two flags in its environment, and nothing else changes.
func TestBuildRunnerWatchesConsul(t *testing.T) {
	m := model()
	o := opts()
	o.RunnerConsulAddr = "https://127.0.0.1:8501"
	o.RunnerConsulCACert = "/etc/consul.d/tls/ca/consul.pem"
	job, err := Build(m, o)
	if err != nil {
		t.Fatal(err)
	}
	task := job.TaskGroups[0].Tasks[0]
	want := map[string]string{
		"CONSUL_HTTP_ADDR": o.RunnerConsulAddr, "CONSUL_CACERT": o.RunnerConsulCACert, "CONSUL_HTTP_TOKEN_FILE": "secrets/consul_token",
		"MODEL_RUNNER_CONSUL_SERVICE": names.Service(m.Crunch), "MODEL_RUNNER_CONSUL_MODEL_ID": ShortID(m),
	}
	for k, v := range want {
		if task.Env[k] != v {
			t.Errorf("env %s = %q, want %q", k, task.Env[k], v)
		}
	}
	if task.Consul == nil {
		t.Error("no consul block: the task gets no Consul token")
	}
	if job.TaskGroups[0].Services[0].Meta[names.MetaModelID] != ShortID(m) {
		t.Error("the service meta's model id is not the one the runner watches")
	}
	plain, err := Build(m, opts())
	if err != nil {
		t.Fatal(err)
	}
	if pt := plain.TaskGroups[0].Tasks[0]; pt.Consul != nil || len(pt.Env) != 0 {
		t.Errorf("without RunnerConsulAddr: consul %v, env %v", pt.Consul, pt.Env)
	}
}

// AssignNames depends on the set of claims only: any order of the same
// models gives the same names; a name claimed by two keys goes to neither,
// one claimed twice by the same key (a duplicate entry) stays its own.
func TestAssignNamesIsOrderFree(t *testing.T) {
	models := []Model{
		{Crunch: "a", ModelID: "m1"}, {Crunch: "b", ModelID: "m1"}, {Crunch: "a", ModelID: "m2"},
		{Crunch: "c", ModelID: "x", Name: "m2"}, {Crunch: "a", ModelID: "m3"}, {Crunch: "a", ModelID: "m3"},
		{Crunch: "a", ModelID: "M4"},
	}
	want := map[string]string{"a/m1": "", "b/m1": "", "a/m2": "", "c/x": "", "a/m3": "m3", "a/M4": ""}
	for range 50 {
		ps := make([]*Model, len(models))
		for i, j := range rand.Perm(len(models)) {
			m := models[j]
			ps[i] = &m
		}
		contests := AssignNames(ps, false)
		for _, m := range ps {
			if got := m.Name; got != want[m.Crunch+"/"+m.ModelID] {
				t.Fatalf("%s/%s named %q, want %q", m.Crunch, m.ModelID, got, want[m.Crunch+"/"+m.ModelID])
			}
		}
		if len(contests) != 2 || contests[0].Name != "m1" || contests[1].Name != "m2" || len(contests[0].Keys) != 2 {
			t.Fatalf("contests %+v", contests)
		}
	}
}

// An operator's name may not have the shape of a hashed short id (it could
// be another model's), except the model's own key.
func TestValidateRefusesHashShapedNames(t *testing.T) {
	m := model()
	m.Name = "abcdefghij234567"
	if err := m.Validate(); err == nil || !strings.Contains(err.Error(), "shape of a hashed short id") {
		t.Errorf("hash-shaped name: %v", err)
	}
	m.Name = Key(m)
	if err := m.Validate(); err != nil {
		t.Errorf("the model's own key as its name: %v", err)
	}
}
