// Package jobs turns one model authorization into one Nomad job: the
// modelbox driver (docs/driver.md), resources from the hardware type, a
// Consul service with a gRPC health check, a Vault workload identity and the
// template that renders the runner's certificate (docs/vault.md), and
// restart, reschedule and update policies. The job id is derived from the
// model's on-chain ids; the full ids travel in meta only.
package jobs

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/modelnodes/modelnodes/names"
)

// Hardware is the kind of node a model needs.
type Hardware string

const (
	CPU Hardware = "cpu"
	GPU Hardware = "gpu"
)

// Model is one authorized model, as every source of desired state reports
// it. Ids are kept exactly as the source spells them (base58 keys, CrunchDAO
// ids); the job builder derives DNS-safe names from them.
type Model struct {
	// Crunch is the crunch's name (e.g. "mid-one"); the Consul service is
	// "crunch-<name>" (lowercased, see ServiceName).
	Crunch string `json:"crunch" yaml:"crunch"`
	// CrunchID is the crunch's on-chain id (base58 public key), if known.
	CrunchID string `json:"crunch_id,omitempty" yaml:"crunch_id,omitempty"`
	// ModelID is the model's full id (base58 or CrunchDAO's id).
	ModelID string `json:"model_id" yaml:"model_id"`
	// Cruncher is the cruncher's wallet (base58) and Hotkey its hotkey.
	Cruncher string `json:"cruncher,omitempty" yaml:"cruncher,omitempty"`
	Hotkey   string `json:"hotkey,omitempty" yaml:"hotkey,omitempty"`
	// SubmissionID names the submitted code; ArtifactURL is where the node
	// fetches it (an https URL on a host the operator allows, see
	// Options.CheckModel) and ArtifactSHA256 its digest (hex, required with
	// an artifact), checked by Nomad before the model starts.
	SubmissionID   string `json:"submission_id,omitempty" yaml:"submission_id,omitempty"`
	ArtifactURL    string `json:"artifact_url,omitempty" yaml:"artifact_url,omitempty"`
	ArtifactSHA256 string `json:"artifact_sha256,omitempty" yaml:"artifact_sha256,omitempty"`
	// ResourcesURL and ResourcesSHA256 are the submission's optional
	// resources archive (fitted weights and other files its code reads),
	// under the same rules as the artifact; Nomad unpacks it into the
	// model's resources/ directory, where the code sees it read-only, as
	// CrunchDAO's runner shows it (<code>/resources). Only with an artifact.
	ResourcesURL    string `json:"resources_url,omitempty" yaml:"resources_url,omitempty"`
	ResourcesSHA256 string `json:"resources_sha256,omitempty" yaml:"resources_sha256,omitempty"`
	// ModelDir is a submission already on the node (development only,
	// refused unless Options.AllowHostModelDirs); used when ArtifactURL is
	// empty. No source but the operator's YAML file can set it.
	ModelDir string `json:"model_dir,omitempty" yaml:"model_dir,omitempty"`
	// Runtime is "python" (default) or "executable"; Entry as in
	// docs/driver.md: a dotted Python module name, or the relative path of
	// the program in the model (checkEntry).
	Runtime string `json:"runtime,omitempty" yaml:"runtime,omitempty"`
	Entry   string `json:"entry,omitempty" yaml:"entry,omitempty"`

	Hardware Hardware `json:"hardware" yaml:"hardware"`
	CPU      int      `json:"cpu_mhz,omitempty" yaml:"cpu_mhz,omitempty"`     // default 500 (cpu) / 2000 (gpu)
	MemoryMB int      `json:"memory_mb,omitempty" yaml:"memory_mb,omitempty"` // default 512 (cpu) / 4096 (gpu)
	GPUs     int      `json:"gpus,omitempty" yaml:"gpus,omitempty"`           // default 1 on gpu

	// Coordinator is the wallet of the crunch's coordinator; CertHash and
	// CertHashSecondary the lowercase hex SHA-256 of the public keys it
	// may call with (docs/onchain.md).
	Coordinator       string `json:"coordinator,omitempty" yaml:"coordinator,omitempty"`
	CertHash          string `json:"cert_hash,omitempty" yaml:"cert_hash,omitempty"`
	CertHashSecondary string `json:"cert_hash_secondary,omitempty" yaml:"cert_hash_secondary,omitempty"`

	// Name, when set, is the short id (job model-node-<Name>, certificate
	// model-node-<Name>.crunchdao.internal) instead of the hash. The
	// scheduler sets it to the model id (AssignNames) when no other model
	// claims the same name: CrunchDAO's client expects its model id there.
	// An operator's YAML may claim another name. It must be a lowercase
	// RFC 1123 label of at most 52 characters without the shape of a
	// hashed short id.
	Name string `json:"name,omitempty" yaml:"name,omitempty"`

	// Running is the desired state: false means the model must be stopped.
	Running bool `json:"running" yaml:"running"`
}

// Validate reports what makes m unusable for a job, whatever the
// deployment's options (Options.CheckModel adds those). Every source calls
// it: the strings come from crunchers (chain, feed, YAML) and reach the job
// spec, where Nomad interpolates ${...} with the task's environment; its
// interpolation has no escape, so the only safe rule is to refuse the
// characters that start it (see checkStrings).
func (m *Model) Validate() error {
	errs := checkStrings(m)
	if m.Crunch == "" {
		errs = append(errs, errors.New("no crunch"))
	}
	if m.ModelID == "" {
		errs = append(errs, errors.New("no model id"))
	}
	switch m.Hardware {
	case CPU, GPU:
	default:
		errs = append(errs, fmt.Errorf("hardware %s is neither cpu nor gpu", quote(string(m.Hardware))))
	}
	switch m.Runtime {
	case "", "python", "executable":
		if err := checkEntry(m.Runtime, m.Entry); err != nil {
			errs = append(errs, err)
		}
	default:
		errs = append(errs, fmt.Errorf("runtime %s is neither python nor executable", quote(m.Runtime)))
	}
	if m.Name != "" && !names.IsLabel(m.Name, names.MaxModelName) {
		errs = append(errs, fmt.Errorf("name %s is not a lowercase DNS label of at most %d characters", quote(m.Name), names.MaxModelName))
	} else if m.Name != "" && names.IsHashedShortID(m.Name) && m.Name != Key(m) {
		errs = append(errs, fmt.Errorf("name %s has the shape of a hashed short id (16 characters of a-z and 2-7): it could name another model's job", quote(m.Name)))
	}
	switch {
	case m.ArtifactURL == "" && m.ModelDir == "":
		errs = append(errs, errors.New("neither an artifact nor a model dir"))
	case m.ArtifactURL != "" && m.ModelDir != "":
		errs = append(errs, fmt.Errorf("%w: both an artifact and a model dir", ErrModelDir))
	case m.ArtifactURL != "":
		if _, err := parseArtifactURL(m.ArtifactURL); err != nil {
			errs = append(errs, err)
		}
		if m.ArtifactSHA256 == "" {
			errs = append(errs, fmt.Errorf("%w: no sha256: an artifact is only fetched with its digest", ErrArtifact))
		}
	default:
		if err := checkModelDir(m.ModelDir); err != nil {
			errs = append(errs, err)
		}
	}
	switch {
	case m.ResourcesURL == "" && m.ResourcesSHA256 != "":
		errs = append(errs, fmt.Errorf("%w: a resources digest without a resources URL", ErrArtifact))
	case m.ResourcesURL != "" && m.ArtifactURL == "":
		errs = append(errs, fmt.Errorf("%w: resources come only with an artifact (they are unpacked into it)", ErrArtifact))
	case m.ResourcesURL != "":
		if _, err := parseArtifactURL(m.ResourcesURL); err != nil {
			errs = append(errs, fmt.Errorf("resources: %w", err))
		}
		if m.ResourcesSHA256 == "" {
			errs = append(errs, fmt.Errorf("%w: resources: no sha256: an archive is only fetched with its digest", ErrArtifact))
		}
	}
	for _, d := range []string{m.ArtifactSHA256, m.ResourcesSHA256} {
		if d != "" && (!isHex(d, 64) || d == strings.Repeat("0", 64)) {
			errs = append(errs, fmt.Errorf("%w: digest %s is not 64 lowercase hex digits, or is zero", ErrArtifact, quote(d)))
		}
	}
	for _, h := range []string{m.CertHash, m.CertHashSecondary} {
		if h != "" && !isHex(h, 64) {
			errs = append(errs, fmt.Errorf("coordinator certificate hash %s is not 64 lowercase hex digits", quote(h)))
		}
	}
	if m.CPU < 0 || m.MemoryMB < 0 || m.GPUs < 0 {
		errs = append(errs, errors.New("negative resources"))
	}
	return errors.Join(errs...)
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// ShortID is the model's DNS-safe id: Name when set (AssignNames sets it
// to the model id when that is the model's alone), else Key.
func ShortID(m *Model) string {
	if m.Name != "" {
		return m.Name
	}
	return Key(m)
}

// Key identifies the model whatever its name: names.ModelShortID of its
// crunch (the on-chain id, or the name) and model id. Entries with the
// same key are the same model (source.Dedupe); entries of two crunches
// never share one. 80 bits keep collisions out of reach for any realistic
// number of models; the same model always gets the same key, whichever
// scheduler instance computes it. It is the short id of a model that has
// no name of its own.
func Key(m *Model) string {
	crunch := m.CrunchID
	if crunch == "" {
		crunch = m.Crunch
	}
	return names.ModelShortID(crunch, m.ModelID)
}

// Claim is the name m asks for: its Name when an operator's YAML set one,
// else names.ModelName of its model id ("" when neither gives one).
func Claim(m *Model) string {
	if m.Name != "" {
		return m.Name
	}
	return names.ModelName(m.ModelID)
}

// Contest is a name that more than one model claims.
type Contest struct {
	Name string
	// Keys are the claimants' keys (Key), sorted; each got its key as
	// its short id.
	Keys []string
}

// AssignNames decides every model's short id from all the models the
// scheduler runs, whatever their source or crunch: a model's claim (Claim)
// becomes its Name when no model of another key claims the same name; a
// contested name goes to none of its claimants, each of which is named by
// its key (Name ""), and is returned. Model ids come from crunchers and
// are not unique across crunches: a rule that gave the name to one
// claimant (the first, the oldest) would let an authorization of another
// crunch take a model's job, its service instance and its certificate
// name. The rule depends on the set only, not on its order, so every
// scheduler instance computes the same names. Models of the same key must
// have been merged first (source.Dedupe). With hashed set, model ids claim
// nothing (only names set by an operator do).
func AssignNames(ms []*Model, hashed bool) []Contest {
	claims := map[string][]string{} // name -> claimants' keys
	want := make([]string, len(ms))
	for i, m := range ms {
		c := m.Name
		if c == "" && !hashed {
			c = names.ModelName(m.ModelID)
		}
		want[i] = c
		if c == "" {
			continue
		}
		k := Key(m)
		if !slices.Contains(claims[c], k) {
			claims[c] = append(claims[c], k)
		}
	}
	var out []Contest
	for i, m := range ms {
		if c := want[i]; c != "" && len(claims[c]) > 1 {
			m.Name = ""
			continue
		}
		m.Name = want[i]
	}
	for _, c := range slices.Sorted(maps.Keys(claims)) {
		if keys := claims[c]; len(keys) > 1 {
			slices.Sort(keys)
			out = append(out, Contest{Name: c, Keys: keys})
		}
	}
	return out
}

// Named returns a copy of m with the name it gets when no model of another
// key claims the same one (AssignNames of m alone): what the scheduler
// names it unless its name is contested.
func Named(m *Model) *Model {
	c := *m
	AssignNames([]*Model{&c}, false)
	return &c
}

// JobID is the Nomad job id of m: "model-node-<ShortID>" (at most 63
// characters).
// It is also the runner's certificate name (names.RunnerCommonName).
func JobID(m *Model) string { return names.Job(ShortID(m)) }

// SpecHash fingerprints everything the job is built from (the model and the
// builder's options): the reconciler compares it with the one in a job's
// meta to decide whether the job must be updated, without reading the job.
func SpecHash(m *Model, o *Options) string {
	var d *Disconnect
	if o != nil {
		if dc := o.DisconnectFor(m); dc.LostAfter > 0 {
			d = &dc
		}
	}
	b, _ := json.Marshal(struct {
		V int
		M *Model
		O *Options
		// Only when set: jobs without a disconnect block keep their hash.
		D *Disconnect `json:",omitempty"`
	}{specVersion, m, o, d})
	sum := sha256.Sum256(b)
	return names.Base32.EncodeToString(sum[:15])
}

// specVersion changes whenever Build changes the jobs it produces for the
// same input, so that an upgraded scheduler rolls the new shape out
// (3: vault { env = false }; 4: services named by names.Service, which maps
// a crunch name that is no DNS label injectively; 5: healthy and progress
// deadlines that leave room for an environment build; 6: the node's seccomp
// profile in the service's meta; 7: canary rollouts, the runner's metrics
// on a port of their own, registered in Consul, and the submission in the
// service's meta).
const specVersion = 7
