// Package names is the naming contract between the parts of Model Nodes:
// the scheduler names jobs and Consul services and writes meta keys, the
// driver and the runner name certificates and check the coordinator's, the
// coordinator's client watches services and asks Vault for its certificate,
// and the deploy scripts write Consul and Vault policies for the same names
// (through cmd/modelnodes-names, never a copy of the rules). Every one of
// them goes through this package, so a name means the same thing everywhere.
//
// A crunch's name comes from the chain, CrunchDAO's feed or YAML: any string.
// Consul service names, DNS names and certificate names need a lowercase DNS
// label, so Crunch maps every name to one, injectively: two crunches never
// share a service, a certificate name or a Vault identity.
//
// The package depends on the standard library only.
package names

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// Name prefixes and domains.
const (
	// JobPrefix starts every job id the scheduler owns ("model-node-<short
	// id>"); Vault's runner role issues certificates only to jobs named so.
	JobPrefix = "model-node-"
	// RunnerDomain ends a runner's certificate name, "<job id>.crunchdao.internal":
	// the name CrunchDAO's client expects.
	RunnerDomain = "crunchdao.internal"
	// ServicePrefix starts the Consul service of a crunch's models,
	// "crunch-<crunch label>".
	ServicePrefix = "crunch-"
	// CoordinatorDomain ends a coordinator's certificate name,
	// "<crunch label>.coordinator.modelnodes.internal".
	CoordinatorDomain = "coordinator.modelnodes.internal"
	// CoordinatorURIPrefix starts the URI SAN that names a coordinator's
	// crunch, "spiffe://modelnodes/crunch/<crunch label>"; runners admit a
	// caller only when it names their model's crunch.
	CoordinatorURIPrefix = "spiffe://modelnodes/crunch/"
	// CoordinatorAppRolePrefix starts the Vault AppRole of a crunch's
	// coordinator, "coordinator-<crunch label>".
	CoordinatorAppRolePrefix = "coordinator-"
)

// Meta keys the scheduler writes on each job and on its Consul service
// (the first five on both; the coordinator's client reads them from Consul).
const (
	MetaModelID  = "model_id" // the model's short id: names the job and the runner's certificate
	MetaModel    = "model"    // the full on-chain model id
	MetaCrunch   = "crunch"   // the crunch's on-chain id (base58), or its name when it has none
	MetaCruncher = "cruncher" // the cruncher's wallet (base58)
	MetaHotkey   = "hotkey"   // the cruncher's hotkey for the model

	// Job meta only.
	MetaCrunchName  = "crunch_name"
	MetaSubmission  = "submission_id"
	MetaCoordinator = "coordinator"
	MetaCertHash    = "coordinator_cert_hash"
	MetaCertHash2   = "coordinator_cert_hash_secondary"
	// MetaManaged marks the jobs the scheduler owns, MetaSpec holds the
	// fingerprint of what a job was built from, MetaSource the source that
	// authorized it.
	MetaManaged = "modelnodes_managed"
	MetaSpec    = "modelnodes_spec"
	MetaSource  = "modelnodes_source"
	// MetaAuthorization, MetaAuthorizedSlot and MetaAuthorizedChain are
	// the entry that authorized the job (an account address), the slot of
	// the reading that put its version in force and the chain's genesis
	// hash (source.Origin): what a restarted scheduler reads again before
	// it may stop a job its first readings lack.
	MetaAuthorization   = "authorization"
	MetaAuthorizedSlot  = "authorized_slot"
	MetaAuthorizedChain = "authorized_chain"
	// MetaQuarantineCode, MetaQuarantineAt and MetaQuarantineBy are on a
	// job the scheduler holds stopped after its coordinator reported it
	// (scheduler/quarantine): the failure code, when (RFC 3339) and the
	// reporting coordinator's key hash. The record itself is in Consul KV.
	MetaQuarantineCode = "quarantine_code"
	MetaQuarantineAt   = "quarantine_at"
	MetaQuarantineBy   = "quarantine_coordinator"
)

// The modelbox driver's task events about a model's environment carry
// EventEnvironment among their details, set to the build's stage; the
// scheduler's observer reads EnvironmentFailed to say why a running model
// answers nothing but BAD_IMPLEMENTATION.
const (
	EventEnvironment    = "environment"
	EventEnvironmentKey = "environment_key"
	EnvironmentFailed   = "failed"
	EnvironmentReady    = "ready"
)

// MetricsService is the Consul service under which every runner's
// Prometheus endpoint is registered (its meta names the crunch and the
// model). It lies inside ServicePrefix, which only the models' namespace
// may register (deploy/consul/setup), and no crunch's service can take it:
// a crunch's label never starts with "-".
const MetricsService = ServicePrefix + "-metrics"

// TagCanary tags a model's Consul instance while it is the canary of a new
// version (a new submission) that Nomad has not promoted yet: the running
// version keeps serving beside it, and is not superseded by it
// (runner/supersede), until the promotion retags it (Nomad's canary_tags).
const TagCanary = "canary"

// HealthLoaded is the gRPC health service a runner reports SERVING while
// its worker is up and its model loaded, NOT_SERVING when the model failed
// to load (an import error, an environment that cannot be built): the
// overall health ("") stays SERVING then, so that coordinators can call
// the model and see BAD_IMPLEMENTATION. A new version's check reads it, so
// that a canary that cannot load never turns healthy (jobs.CheckLoaded).
const HealthLoaded = "modelnodes.Loaded"

// Node attributes the modelbox driver reports and jobs are constrained
// with (docs/driver.md).
const (
	// AttrPythonVersions lists the versions of the node's Python
	// interpreters, sorted and comma-separated ("3.11.2,3.13.0").
	AttrPythonVersions = "driver.modelbox.python.versions"
	// AttrSeccompProfile is the short hash of the seccomp profile the
	// node's driver installs in every model worker's sandbox
	// (driver/sandbox/seccomp.Hash); "unsupported" where the kernel cannot
	// filter system calls (the driver then reports itself unhealthy).
	AttrSeccompProfile = "driver.modelbox.seccomp.profile"
	// MetaSeccompProfile is the model service's Consul meta key holding
	// AttrSeccompProfile of the node the model runs on: Nomad interpolates
	// the attribute when it registers the service.
	MetaSeccompProfile = "seccomp_profile"
	// MetaPython is the job meta key holding the Python a submission asks
	// for ("3.13 (.python-version)"), when it asks.
	MetaPython = "python"
)

// MaxCrunchLabel is the longest label Crunch returns: "crunch-" plus it stays
// well within Consul's and DNS's 63 characters.
const MaxCrunchLabel = 50

// hashedPart is how many base32 characters of the name's SHA-256 a hashed
// label carries (80 bits: finding another name with the same label is a
// 2^80 search).
const hashedPart = 16

// readablePart is how much of the sanitized name a hashed label keeps, for
// people reading it.
const readablePart = MaxCrunchLabel - len("--") - hashedPart

// Base32 is the lowercase, unpadded base32 encoding of the hashes in names
// (RFC 4648's alphabet in lower case: every character is DNS-safe).
var Base32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Crunch returns the DNS label that stands for a crunch's name in service,
// certificate and Vault names. A name that already is a lowercase DNS label
// of at most MaxCrunchLabel characters without "--" is its own label
// ("alpha" -> "alpha"). Any other name gets a readable part (lower case,
// every run of other characters turned into one '-') and, after "--", 16
// characters of its SHA-256 ("My_Crunch.v2" -> "my-crunch-v2--<hash>"). A
// plain label never holds "--" and a hashed one always does, so no two names
// share a label. The empty name has none ("").
func Crunch(name string) string {
	if name == "" {
		return ""
	}
	if IsLabel(name, MaxCrunchLabel) && !strings.Contains(name, "--") {
		return name
	}
	var b strings.Builder
	dash := false
	for _, c := range strings.ToLower(name) {
		if 'a' <= c && c <= 'z' || '0' <= c && c <= '9' {
			b.WriteRune(c)
			dash = false
		} else if !dash {
			b.WriteByte('-')
			dash = true
		}
	}
	readable := strings.Trim(b.String(), "-")
	if len(readable) > readablePart {
		readable = strings.TrimRight(readable[:readablePart], "-")
	}
	if readable == "" {
		readable = "x"
	}
	sum := sha256.Sum256([]byte(name))
	return readable + "--" + Base32.EncodeToString(sum[:])[:hashedPart]
}

// Service is the Consul service of a crunch's models: "crunch-<Crunch(name)>".
// One instance per model; the instance's meta says which model and crunch.
func Service(crunch string) string {
	if crunch == "" {
		return ""
	}
	return ServicePrefix + Crunch(crunch)
}

// CoordinatorCommonName is the name on a crunch's coordinator's certificate.
func CoordinatorCommonName(crunch string) string {
	return Crunch(crunch) + "." + CoordinatorDomain
}

// CoordinatorURI is the URI SAN on a crunch's coordinator's certificate: what
// a runner of that crunch's models requires of a caller.
func CoordinatorURI(crunch string) string { return CoordinatorURIPrefix + Crunch(crunch) }

// CoordinatorAppRole is the Vault AppRole of a crunch's coordinator.
func CoordinatorAppRole(crunch string) string { return CoordinatorAppRolePrefix + Crunch(crunch) }

// ModelShortID is a model's short id when its authorization names none: 16
// base32 characters of the SHA-256 of its crunch (the on-chain id, or the
// name when there is none) and its model id. It names the job and the
// runner's certificate.
func ModelShortID(crunch, modelID string) string {
	sum := sha256.Sum256([]byte(crunch + "\x00" + modelID))
	return Base32.EncodeToString(sum[:10])
}

// MaxModelName is the longest short id a model id or an authorization's
// name may give: "model-node-" plus it fits Nomad's and DNS's 63
// characters.
const MaxModelName = 52

// IsHashedShortID reports whether s has the shape of a ModelShortID: 16
// characters of Base32's alphabet.
func IsHashedShortID(s string) bool {
	if len(s) != 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '2' <= c && c <= '7') {
			return false
		}
	}
	return true
}

// ModelName returns the short id a model id gives by itself, so that the
// runner's certificate is model-node-<model id>.crunchdao.internal, the
// name CrunchDAO's secure client checks; "" when the id cannot give one:
// it is not a lowercase DNS label of at most MaxModelName characters, or
// it has the shape of a hashed short id (IsHashedShortID: a model id must
// never name another model's hashed job). Whether a model may take the
// name is decided with every other model's claim (jobs.AssignNames): a
// model id is not unique across crunches.
func ModelName(modelID string) string {
	if !IsLabel(modelID, MaxModelName) || IsHashedShortID(modelID) {
		return ""
	}
	return modelID
}

// Job is the Nomad job id of the model with this short id: "model-node-<short id>".
func Job(shortID string) string { return JobPrefix + shortID }

// RunnerCommonName is the name on the certificate of a job's runner:
// "<job id>.crunchdao.internal".
func RunnerCommonName(jobID string) string { return jobID + "." + RunnerDomain }

// ModelServerName is the name the runner serving the model with this short
// id presents, "model-node-<short id>.crunchdao.internal": what a
// coordinator verifies.
func ModelServerName(shortID string) string { return RunnerCommonName(Job(shortID)) }

// IsLabel reports whether s is a lowercase RFC 1123 label (a-z, 0-9 and '-',
// neither first nor last) of at most max characters.
func IsLabel(s string, max int) bool {
	if s == "" || len(s) > max || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
