package jobs

import (
	"errors"
	"fmt"
	"strings"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/driver/taskconfig"
	"github.com/modelnodes/modelnodes/names"
)

// Options are the deployment's choices, the same for every model.
type Options struct {
	Region      string   `json:"region,omitempty"`
	Namespace   string   `json:"namespace,omitempty"`
	Datacenters []string `json:"datacenters,omitempty"` // default ["*"]
	Priority    int      `json:"priority,omitempty"`    // default 50
	// Driver is the name the modelbox plugin reports (default "modelbox").
	Driver string `json:"driver,omitempty"`
	// VaultRole is the JWT role runners log in with (default "runner");
	// PKIIssuePath the PKI endpoint (default "pki_int/issue/runner");
	// CertTTL the certificate's lifetime (default "24h").
	VaultRole    string `json:"vault_role,omitempty"`
	PKIIssuePath string `json:"pki_issue_path,omitempty"`
	CertTTL      string `json:"cert_ttl,omitempty"`
	// RunnerVaultAddr, when set, is the Vault address runners reach: each
	// runner then signs its own certificate (pki_int/sign/runner) for a key
	// it keeps in Vault (runner-keys/<job id>, runner/vaultkey), so the key
	// survives renewals, restarts and rescheduling, and the job renders the
	// cruncher's wallet delegation from its Nomad variable
	// (nomad/jobs/<job id>, item "delegation"). Empty: a Nomad template
	// issues a fresh key with every certificate (PKIIssuePath), which a
	// delegation cannot follow.
	RunnerVaultAddr string `json:"runner_vault_addr,omitempty"`
	// RunnerConsulAddr, when set, is the node's Consul agent as runners
	// reach it (e.g. https://127.0.0.1:8501; RunnerConsulCACert its CA on
	// the node): each runner then watches its crunch's service there and
	// stops answering once Nomad has placed its model elsewhere (another
	// passing instance, registered after its own: runner/supersede), so a
	// model never answers from an allocation Nomad replaced while its
	// runner lived on. The task gets a Consul token for it (service read).
	RunnerConsulAddr   string `json:"runner_consul_addr,omitempty"`
	RunnerConsulCACert string `json:"runner_consul_ca_cert,omitempty"`
	// CRLURL is where runners fetch the CA's revocation list (e.g.
	// https://vault.service.consul:8200/v1/pki_int/issuers: every issuer's
	// full and delta list, docs/vault.md). Secure jobs
	// need it: the driver refuses a caller check without a revocation list.
	CRLURL string `json:"crl_url,omitempty"`
	// Plaintext runs runners without TLS and without Vault (tests and
	// laptops only: CrunchDAO's client refuses it in secure mode).
	Plaintext bool `json:"plaintext,omitempty"`
	// GPUNodeClass, when set, also constrains GPU models to nodes of this
	// node class (besides requesting the "gpu" device).
	GPUNodeClass string `json:"gpu_node_class,omitempty"`

	// Disconnect is the disconnect block of every model's job whose crunch
	// has no entry in CrunchDisconnect (by crunch name or on-chain id).
	// Only the setting a job gets is folded into its SpecHash (none when
	// off): changing one crunch's entry rewrites that crunch's jobs only,
	// and jobs without a block keep the hash they always had.
	Disconnect       Disconnect            `json:"-"`
	CrunchDisconnect map[string]Disconnect `json:"-"`

	// The policy below decides which models may run, not the shape of
	// their jobs: it stays out of SpecHash (json:"-"), so changing it
	// rewrites no job. See CheckModel.

	// ArtifactHosts are the hosts artifacts may be fetched from: a host
	// name (any port), host:port, or *.domain. Empty: no artifact URL is
	// accepted.
	ArtifactHosts []string `json:"-"`
	// AllowHTTPArtifacts accepts plain http artifact URLs (development:
	// anyone on the path can swap the code; the digest still catches it).
	AllowHTTPArtifacts bool `json:"-"`
	// AllowHostModelDirs accepts models whose code is a directory on the
	// node (Model.ModelDir; development only).
	AllowHostModelDirs bool `json:"-"`
}

func (o *Options) withDefaults() Options {
	r := *o
	if len(r.Datacenters) == 0 {
		r.Datacenters = []string{"*"}
	}
	if r.Priority == 0 {
		r.Priority = 50
	}
	if r.Driver == "" {
		r.Driver = "modelbox"
	}
	if r.VaultRole == "" {
		r.VaultRole = "runner"
	}
	if r.PKIIssuePath == "" {
		r.PKIIssuePath = "pki_int/issue/runner"
	}
	if r.CertTTL == "" {
		r.CertTTL = "24h"
	}
	return r
}

// CheckInterval is the Consul health check's interval. Consul runs a new
// check's first probe after a random stagger of up to one interval, so it
// sets how soon a started model becomes discoverable (half of it on average,
// the largest stage of authorization → callable) and how soon a dead one
// leaves; 10,000 models make 2,000 cheap local probes a second cluster-wide.
const CheckInterval = 5 * time.Second

// Names inside every job.
const (
	GroupName = "model"
	TaskName  = "model"
	PortLabel = "grpc"
	// HealthPortLabel serves only plaintext gRPC health, for Consul.
	HealthPortLabel = "health"
	// MetricsPortLabel serves the runner's Prometheus /metrics, registered
	// in Consul as names.MetricsService.
	MetricsPortLabel = "metrics"
	// TLSBundle holds certificate, chain and key (one pkiCert template: two
	// would issue two key pairs); ClientCA the root coordinators chain to.
	TLSBundle = "secrets/tls.pem"
	ClientCA  = "secrets/ca.crt"
	// ConsulTokenFile is where Nomad puts a task's Consul token (tasks
	// with a consul block), relative to the task dir.
	ConsulTokenFile = "secrets/consul_token"
	// DelegationFile is the cruncher's wallet delegation, rendered from the
	// job's variable; empty until someone writes one.
	DelegationFile = "local/delegation.json"
	// DelegationItem is the item of the job's variable nomad/jobs/<job id>
	// that holds the delegation (model-runner delegation sign's output).
	DelegationItem = "delegation"
)

// ResourcesDir is where a submission's resources are, relative to its code
// (CrunchDAO's runner links them as code/resources).
const ResourcesDir = "resources"

// CertTemplate renders the runner's bundle as docs/vault.md prescribes; the
// common name is derived from the job id, which Vault's runner role binds.
func CertTemplate(issuePath, ttl string) string {
	return fmt.Sprintf(`{{ with pkiCert %q (printf "common_name=%%s.%s" (env "NOMAD_JOB_ID")) "ttl=%s" }}
{{- .Cert }}
{{ .CA }}
{{ .Key }}
{{ end }}
`, issuePath, names.RunnerDomain, ttl)
}

// DelegationTemplate renders the delegation item of the job's own variable,
// which every task of the job may read; nothing while there is none.
// (nomadVar alone would hold the task until the variable exists: listing
// first renders an empty file instead.)
var DelegationTemplate = fmt.Sprintf(`{{ $p := printf "nomad/jobs/%%s" (env "NOMAD_JOB_ID") }}`+
	`{{ range nomadVarList $p }}{{ if eq .Path $p }}{{ with nomadVar .Path }}{{ with index . %q }}{{ .Value }}{{ end }}{{ end }}{{ end }}{{ end }}`,
	DelegationItem)

// CATemplate renders the public root CA and every issuer of pki_int (no
// Vault policy needed: pki/cert/ca, LIST pki_int/issuers and
// pki_int/issuer/<id>/json are unauthenticated). Coordinators' certificates
// chain to the root, and each issuer signs its own revocation list, which
// the runner fetches (crl_url .../v1/pki_int/issuers) and checks against
// this bundle. Every issuer, not pki_int/cert/ca_chain: after
// `deploy/vault/setup rotate-intermediate` that holds only the new default
// issuer, and the runner would refuse the previous issuer's still-valid
// certificates for want of a list it can verify. Nomad re-reads the issuer
// list every 5 minutes (consul-template's default lease for secrets without
// one) and re-renders, with SIGHUP, when an issuer appears.
const CATemplate = `{{ with secret "pki/cert/ca" }}{{ .Data.certificate }}{{ end }}
{{ range secrets "pki_int/issuers" }}{{ with secret (printf "pki_int/issuer/%s/json" .) }}{{ .Data.certificate }}
{{ end }}{{ end }}
`

// HealthyDeadline is how long a model's allocation has to turn healthy:
// the longest environment build (the driver's default build_timeout) and
// the model's own start.
const HealthyDeadline = 35 * time.Minute

// Build returns the job of one model. The model must pass
// opts.CheckModel, and a secure job needs a revocation list (CRLURL): the
// modelbox driver refuses to start a runner that checks callers without one.
func Build(m *Model, opts *Options) (*nomadapi.Job, error) {
	if opts == nil {
		opts = &Options{}
	}
	if err := opts.CheckModel(m); err != nil {
		return nil, fmt.Errorf("model %s of crunch %s: %w", quote(m.ModelID), quote(m.Crunch), err)
	}
	if !opts.Plaintext && opts.CRLURL == "" {
		return nil, errors.New("secure jobs need a revocation list: set the CRL URL (scheduler --crl-url, e.g. Vault's issuer list /v1/pki_int/issuers)")
	}
	o := opts.withDefaults()
	id := JobID(m)
	job := nomadapi.NewServiceJob(id, id, o.Region, o.Priority)
	if o.Region == "" {
		job.Region = nil // the API client's region, as for a job file without one
	}
	if o.Namespace != "" {
		job.Namespace = &o.Namespace
	}
	job.Datacenters = o.Datacenters
	job.Meta = jobMeta(m, opts)

	cfg := taskConfig(m, &o)
	task := nomadapi.NewTask(TaskName, o.Driver)
	task.Config = cfg.Map()
	cpu, mem, gpus := resources(m)
	task.Resources = &nomadapi.Resources{CPU: &cpu, MemoryMB: &mem}
	if gpus > 0 {
		n := uint64(gpus)
		task.Resources.Devices = []*nomadapi.RequestedDevice{{Name: "gpu", Count: &n}}
	}
	if m.ArtifactURL != "" {
		art := &nomadapi.TaskArtifact{GetterSource: new(m.ArtifactURL), RelativeDest: new("local/model")}
		if m.ArtifactSHA256 != "" {
			art.GetterOptions = map[string]string{"checksum": "sha256:" + m.ArtifactSHA256}
		}
		task.Artifacts = []*nomadapi.TaskArtifact{art}
		if m.ResourcesURL != "" {
			// Unpacked inside the model, after it: the code reads
			// resources/ relative to itself, as under CrunchDAO's runner,
			// and the driver moves and mounts the whole model read-only.
			task.Artifacts = append(task.Artifacts, &nomadapi.TaskArtifact{
				GetterSource:  new(m.ResourcesURL),
				RelativeDest:  new("local/model/" + ResourcesDir),
				GetterOptions: map[string]string{"checksum": "sha256:" + m.ResourcesSHA256},
			})
		}
	}
	if !o.Plaintext {
		// env = false: Nomad would otherwise put VAULT_TOKEN in the task's
		// environment, which it interpolates into the artifact source,
		// the driver config and service meta; the runner reads
		// secrets/vault_token instead. change_mode = noop: the JWT role's
		// tokens have a finite max TTL (deploy/vault/setup), after which
		// Nomad logs in again and rewrites that file; the runner re-reads
		// it at every signing, so the model need not restart (Nomad's
		// default, "restart", would restart every model once a max TTL).
		task.Vault = &nomadapi.Vault{Role: o.VaultRole, Env: new(false), ChangeMode: new("noop")}
		task.Identities = []*nomadapi.WorkloadIdentity{{
			Name: "vault_default", Audience: []string{"vault.io"}, TTL: time.Hour,
		}}
		ca := &nomadapi.Template{
			EmbeddedTmpl: new(CATemplate),
			DestPath:     new(ClientCA),
			ChangeMode:   new("signal"),
			ChangeSignal: new("SIGHUP"),
		}
		if o.RunnerVaultAddr != "" {
			task.Templates = []*nomadapi.Template{ca, {
				EmbeddedTmpl: new(DelegationTemplate),
				DestPath:     new(DelegationFile),
				ChangeMode:   new("signal"),
				ChangeSignal: new("SIGHUP"),
				// A new delegation reaches the runner within a second or
				// two, not after Nomad's default 5 s template quiescence.
				Wait: &nomadapi.WaitConfig{Min: new(time.Second), Max: new(5 * time.Second)},
			}}
		} else {
			task.Templates = []*nomadapi.Template{{
				EmbeddedTmpl: new(CertTemplate(o.PKIIssuePath, o.CertTTL)),
				DestPath:     new(TLSBundle),
				Perms:        new("0600"),
				ChangeMode:   new("signal"),
				ChangeSignal: new("SIGHUP"),
			}, ca}
		}
	}
	if o.RunnerConsulAddr != "" {
		// The runner reads its flags from MODEL_RUNNER_* and Consul's
		// client its settings from CONSUL_*; the consul block gets the
		// task a Consul token (CONSUL_HTTP_TOKEN) from its workload
		// identity.
		task.Consul = &nomadapi.Consul{}
		task.Env = map[string]string{
			"CONSUL_HTTP_ADDR": o.RunnerConsulAddr,
			// Nomad writes the task's token there (its Consul hook); the
			// runner starts in the task dir. Without it a Consul with ACLs
			// answers an empty list, which is no evidence: the runner
			// would never learn it was replaced.
			"CONSUL_HTTP_TOKEN_FILE":       ConsulTokenFile,
			"MODEL_RUNNER_CONSUL_SERVICE":  names.Service(m.Crunch),
			"MODEL_RUNNER_CONSUL_MODEL_ID": ShortID(m),
		}
		if o.RunnerConsulCACert != "" {
			task.Env["CONSUL_CACERT"] = o.RunnerConsulCACert
		}
	}
	task.KillTimeout = new(10 * time.Second)

	tg := nomadapi.NewTaskGroup(GroupName, 1)
	ports := []nomadapi.Port{{Label: PortLabel}}
	check := nomadapi.ServiceCheck{
		Name:     "grpc-health",
		Type:     "grpc",
		Interval: CheckInterval,
		Timeout:  2 * time.Second,
	}
	if !o.Plaintext {
		ports = append(ports, nomadapi.Port{Label: HealthPortLabel})
		check.PortLabel = HealthPortLabel
	}
	ports = append(ports, nomadapi.Port{Label: MetricsPortLabel})
	tg.Networks = []*nomadapi.NetworkResource{{DynamicPorts: ports}}
	tg.Services = []*nomadapi.Service{{
		Name:      names.Service(m.Crunch),
		Provider:  "consul", // Nomad's own provider cannot run gRPC checks
		PortLabel: PortLabel,
		// What coordinators check a runner's wallet delegation against
		// (client.DelegationFromMeta) travels with the service.
		Meta: map[string]string{
			names.MetaModelID:  ShortID(m),
			names.MetaModel:    m.ModelID,
			names.MetaCrunch:   crunchMeta(m),
			names.MetaCruncher: m.Cruncher,
			// The node's seccomp profile, filled in by Nomad: a security
			// team reads from Consul which filter each model runs under.
			names.MetaSeccompProfile: "${attr." + names.AttrSeccompProfile + "}",
		},
		Checks: []nomadapi.ServiceCheck{check},
		// A canary's instance says so until it is promoted, so that the
		// version it replaces does not take it for its replacement yet.
		CanaryTags: []string{names.TagCanary},
	}, {
		// The runner's metrics, for Prometheus' Consul discovery
		// (deploy/monitoring): one service for every model, its meta
		// saying whose. No check: a scrape says whether it answers.
		Name:      names.MetricsService,
		Provider:  "consul",
		PortLabel: MetricsPortLabel,
		Tags:      []string{"metrics"},
		Meta: map[string]string{
			names.MetaModelID: ShortID(m),
			names.MetaCrunch:  crunchMeta(m),
		},
	}}
	if m.Hotkey != "" {
		tg.Services[0].Meta[names.MetaHotkey] = m.Hotkey
	}
	// The submission a coordinator is served: CrunchDAO's orchestrator
	// announces it as the model's deployment (scheduler/orchws), so a new
	// submission's canary is a new deployment to their client.
	if m.SubmissionID != "" {
		tg.Services[0].Meta[names.MetaSubmission] = m.SubmissionID
	}
	// A crashing model restarts in place a few times, then Nomad reschedules
	// it with exponential delays; the scheduler's crash-loop backoff sits on
	// top (docs/scheduler.md).
	tg.RestartPolicy = &nomadapi.RestartPolicy{
		Attempts: new(3), Interval: new(5 * time.Minute), Delay: new(5 * time.Second), Mode: new("fail"),
	}
	tg.ReschedulePolicy = &nomadapi.ReschedulePolicy{
		Delay: new(30 * time.Second), DelayFunction: new("exponential"), MaxDelay: new(time.Hour),
		Unlimited: new(true),
	}
	// A python model's start includes building its environment when the
	// node does not have it yet (the driver's build_timeout, 30 minutes by
	// default; a torch environment takes minutes): the deadlines leave room
	// for it, as CrunchDAO's jobs do for their large images.
	//
	// A new version (a new submission) starts as a canary beside the
	// running one, which keeps serving: coordinators move to the canary
	// once it passes its check (the newest passing instance wins), Nomad
	// promotes it after MinHealthyTime and only then stops the old
	// allocation. A canary that fails is removed and the job reverted to
	// the running version (AutoRevert), which was never stopped; the
	// scheduler does not retry the failed version at once (Reconciler
	// RolloutRetry). Without the canary, Nomad stops the one allocation
	// before placing its replacement: a gap coordinators see as failed
	// calls.
	// A node that stops heartbeating may only be cut off: see Disconnect.
	// Nomad alone would update the block in place, but it changes the
	// spec hash in the job's meta, and a meta change replaces allocations
	// (meta reaches the task's environment): a changed setting rolls the
	// models out like a new version, each as a canary beside the running
	// one.
	tg.Disconnect = opts.DisconnectFor(m).block()
	tg.Update = &nomadapi.UpdateStrategy{
		MaxParallel: new(1), Canary: new(1), AutoPromote: new(true), AutoRevert: new(true),
		HealthCheck: new("checks"), MinHealthyTime: new(10 * time.Second),
		HealthyDeadline: new(HealthyDeadline), ProgressDeadline: new(HealthyDeadline + 5*time.Minute),
	}
	// The "gpu" device request already keeps GPU models off nodes without
	// one; a node class narrows it further where operators use classes.
	if m.Hardware == GPU {
		if o.GPUNodeClass != "" {
			tg.Constraints = append(tg.Constraints, nomadapi.NewConstraint("${node.class}", "=", o.GPUNodeClass))
		}
	}
	tg.AddTask(task)
	job.AddTaskGroup(tg)
	return job, nil
}

// taskConfig is the modelbox driver's config block for m.
func taskConfig(m *Model, o *Options) *taskconfig.Config {
	runtime := m.Runtime
	if runtime == "" {
		runtime = "python"
	}
	cfg := &taskconfig.Config{ModelDir: "local/model", Runtime: runtime, Port: PortLabel, Entry: m.Entry}
	if m.ArtifactURL == "" {
		cfg.ModelDir = m.ModelDir
	}
	if o.Plaintext {
		cfg.Plaintext = true
	} else {
		cfg.TLS = &taskconfig.TLS{ClientCA: ClientCA}
		if o.RunnerVaultAddr != "" {
			cfg.TLS.Vault = &taskconfig.TLSVault{
				Address: o.RunnerVaultAddr, SignPath: strings.Replace(o.PKIIssuePath, "/issue/", "/sign/", 1), TTL: o.CertTTL,
			}
			cfg.Delegation = DelegationFile
		} else {
			cfg.TLS.Cert, cfg.TLS.Key = TLSBundle, TLSBundle
		}
		// Only the crunch's coordinator may call: its certificate must name
		// the crunch and, when the chain records them, its key must hash to
		// one of the coordinator's on-chain hashes (docs/security.md).
		cfg.Authz = &taskconfig.Authz{Crunch: m.Crunch, CRLURL: o.CRLURL}
		for _, h := range []string{m.CertHash, m.CertHashSecondary} {
			if h != "" {
				cfg.Authz.CertHashes = append(cfg.Authz.CertHashes, h)
			}
		}
		// mTLS on the model port refuses Consul's check (it has no client
		// certificate): the runner also serves plaintext gRPC health, and
		// nothing else, on its own port.
		cfg.HealthPort = HealthPortLabel
	}
	cfg.MetricsPort = MetricsPortLabel
	return cfg
}

func crunchMeta(m *Model) string {
	if m.CrunchID != "" {
		return m.CrunchID
	}
	return m.Crunch
}

func jobMeta(m *Model, opts *Options) map[string]string {
	meta := map[string]string{
		names.MetaManaged:    "true",
		names.MetaSpec:       SpecHash(m, opts),
		names.MetaModelID:    ShortID(m),
		names.MetaModel:      m.ModelID,
		names.MetaCrunch:     crunchMeta(m),
		names.MetaCrunchName: m.Crunch,
	}
	for k, v := range map[string]string{
		names.MetaCruncher: m.Cruncher, names.MetaHotkey: m.Hotkey, names.MetaSubmission: m.SubmissionID,
		names.MetaCoordinator: m.Coordinator, names.MetaCertHash: m.CertHash, names.MetaCertHash2: m.CertHashSecondary,
	} {
		if v != "" {
			meta[k] = v
		}
	}
	return meta
}

func resources(m *Model) (cpu, mem, gpus int) {
	cpu, mem = 500, 512
	if m.Hardware == GPU {
		cpu, mem, gpus = 2000, 4096, 1
	}
	if m.CPU > 0 {
		cpu = m.CPU
	}
	if m.MemoryMB > 0 {
		mem = m.MemoryMB
	}
	if m.GPUs > 0 && m.Hardware == GPU {
		gpus = m.GPUs
	}
	return cpu, mem, gpus
}

// CheckLoaded makes the model's Consul check read the runner's
// names.HealthLoaded status instead of its overall health, for a version
// that replaces a serving one: its canary then turns healthy only once its
// model loaded, and a new submission that cannot load (an import error)
// fails its rollout while the serving version goes on (docs/scheduler.md).
// A first version keeps the overall health, under which a model that fails
// to load is callable and answers BAD_IMPLEMENTATION, so that coordinators
// see the failure and report it. The check's service is no part of the
// spec hash: either way the job is the same model's.
func CheckLoaded(job *nomadapi.Job) {
	for _, tg := range job.TaskGroups {
		for _, svc := range tg.Services {
			for i := range svc.Checks {
				if svc.Checks[i].Type == "grpc" {
					svc.Checks[i].GRPCService = names.HealthLoaded
				}
			}
		}
	}
}
