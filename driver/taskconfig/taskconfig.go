// Package taskconfig is the modelbox driver's task config block, the
// contract between whoever writes a model's job (package jobs) and the
// driver that runs it. It has no dependency on Nomad, so a job builder can
// import it without the plugin SDK; the driver's HCL spec (driver/about.go)
// is kept in sync with Config by a test.
package taskconfig

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"
)

// Config is a task's config block. The codec names are the block's keys.
type Config struct {
	// ModelDir is the model's directory: in the task dir (moved to the
	// driver's model store at start), or an absolute host path where the
	// plugin config allows host model dirs.
	ModelDir string `codec:"model_dir"`
	// Runtime is "python" or "executable".
	Runtime string `codec:"runtime"`
	// Entry is, for python, the module to import first; for executable,
	// the program in ModelDir.
	Entry string `codec:"entry"`
	// Port is the network port label the runner listens on.
	Port string `codec:"port"`
	// TLS is the runner's certificate; required unless Plaintext.
	TLS *TLS `codec:"tls"`
	// Authz says who may call the model.
	Authz *Authz `codec:"authz"`
	// Delegation is the cruncher's wallet delegation file, relative to the
	// task dir.
	Delegation string `codec:"delegation"`
	// HealthPort is a port label for a health-only endpoint, without TLS,
	// for Consul checks.
	HealthPort string `codec:"health_port"`
	// MetricsPort is a port label for the runner's Prometheus /metrics
	// (plaintext, nothing else served there).
	MetricsPort string `codec:"metrics_port"`
	// Plaintext serves without TLS (development only).
	Plaintext bool `codec:"plaintext"`
	// CallTimeout caps a call (a Go duration; the runner's default when
	// empty).
	CallTimeout string `codec:"call_timeout"`
	// MaxQueue is how many calls may wait for a busy model (the runner's
	// default when 0).
	MaxQueue int `codec:"max_queue"`
	// DiskMB bounds what the model writes (/tmp and /scratch together, a
	// tmpfs counted in the task's memory); the plugin's disk_mb when 0.
	DiskMB int `codec:"disk_mb"`
}

// TLS names the runner's TLS files, relative to the task dir (where Nomad
// templates render them, e.g. secrets/) or absolute. With a Vault block the
// runner gets its certificate from Vault itself instead of Cert and Key.
type TLS struct {
	Cert     string    `codec:"cert"`
	Key      string    `codec:"key"`
	ClientCA string    `codec:"client_ca"`
	Vault    *TLSVault `codec:"vault"`
}

// TLSVault has the runner sign its certificate with Vault PKI for a key kept
// in Vault's KV store (runner/vaultkey), so the key survives renewals,
// restarts and rescheduling: a cruncher's wallet delegation names it. The
// runner uses the task's Vault token (secrets/vault_token; the task needs a
// vault block).
type TLSVault struct {
	Address  string `codec:"address"`
	SignPath string `codec:"sign_path"` // default pki_int/sign/runner
	// KeyPath is the KV v2 entry MOUNT/NAME (default runner-keys/<job id>);
	// CommonName the certificate's name (default names.RunnerCommonName(<job id>): <job id>.crunchdao.internal).
	// Vault's runner policy and role admit only these defaults.
	KeyPath    string `codec:"key_path"`
	CommonName string `codec:"common_name"`
	TTL        string `codec:"ttl"`
}

// Authz says who may call the model (runner/authz): the coordinator of
// Crunch whose key hashes to one of CertHashes, minus the CRL. PolicyFile
// (a JSON policy re-read when it changes) replaces Crunch and CertHashes. No
// hash admits nobody. A revocation list source (CRL or CRLURL) is required;
// the runner's development switches that open the door
// (--authz-any-coordinator-key, --authz-without-crl) cannot be set from a job.
type Authz struct {
	Crunch     string   `codec:"crunch"`
	CertHashes []string `codec:"cert_hashes"`
	PolicyFile string   `codec:"policy_file"`
	CRL        string   `codec:"crl"`
	// CRLURL is one or more URLs, comma-separated: a CRL, or a Vault PKI
	// mount's issuer list (.../v1/pki_int/issuers) for every issuer's CRL.
	CRLURL string `codec:"crl_url"`
	// CRLGrace is how long past nextUpdate a list is still used (the
	// runner's --crl-grace; default 1h).
	CRLGrace string `codec:"crl_grace"`
}

// Map returns c as a Nomad job's task config holds it (api.Task.Config):
// each set field under its key, each set block as a list of one map. Unset
// fields are left out, so the driver's defaults apply.
func (c *Config) Map() map[string]any { return toMap(reflect.ValueOf(c).Elem()) }

func toMap(v reflect.Value) map[string]any {
	m := map[string]any{}
	for i := range v.NumField() {
		f, key := v.Field(i), v.Type().Field(i).Tag.Get("codec")
		switch {
		case f.IsZero():
		case f.Kind() == reflect.Pointer:
			m[key] = []map[string]any{toMap(f.Elem())}
		default:
			m[key] = f.Interface()
		}
	}
	return m
}

// Validate reports every rule c breaks; allowedRuntimes are the node's (the
// plugin config's allowed_runtimes).
func (c *Config) Validate(allowedRuntimes []string) error {
	var errs []error
	if c.ModelDir == "" {
		errs = append(errs, errors.New("model_dir is required"))
	}
	if !slices.Contains(allowedRuntimes, c.Runtime) {
		errs = append(errs, fmt.Errorf("runtime %q is not allowed on this node (allowed: %s)", c.Runtime, strings.Join(allowedRuntimes, ", ")))
	}
	if c.Runtime == "executable" && c.Entry == "" {
		errs = append(errs, errors.New(`runtime "executable" needs entry, the program in model_dir`))
	}
	if c.Runtime == "executable" && (filepath.IsAbs(c.Entry) || strings.Contains(c.Entry, "..")) {
		errs = append(errs, fmt.Errorf("entry %q must name a program inside model_dir", c.Entry))
	}
	if c.TLS == nil && !c.Plaintext {
		errs = append(errs, errors.New("a tls block is required (or plaintext = true, for development only)"))
	}
	if c.TLS != nil && c.Plaintext {
		errs = append(errs, errors.New("tls and plaintext = true exclude each other"))
	}
	if t := c.TLS; t != nil && t.Vault == nil && (t.Cert == "" || t.Key == "") {
		errs = append(errs, errors.New("tls needs cert and key, or a vault block"))
	}
	if t := c.TLS; t != nil && t.Vault != nil {
		if t.Cert != "" || t.Key != "" {
			errs = append(errs, errors.New("tls.vault replaces tls.cert and tls.key: use one or the other"))
		}
		if t.Vault.Address == "" {
			errs = append(errs, errors.New("tls.vault.address is required"))
		}
		if t.Vault.TTL != "" {
			if _, err := time.ParseDuration(t.Vault.TTL); err != nil {
				errs = append(errs, fmt.Errorf("tls.vault.ttl: %w", err))
			}
		}
	}
	if c.Authz != nil && (c.TLS == nil || c.TLS.ClientCA == "") {
		errs = append(errs, errors.New("authz checks client certificates: it needs tls.client_ca"))
	}
	if c.Authz != nil && c.Authz.CRL != "" && c.Authz.CRLURL != "" {
		errs = append(errs, errors.New("authz.crl and authz.crl_url exclude each other"))
	}
	if c.Authz != nil && c.Authz.PolicyFile != "" && (c.Authz.Crunch != "" || len(c.Authz.CertHashes) > 0) {
		errs = append(errs, errors.New("authz.policy_file replaces authz.crunch and authz.cert_hashes: use one or the other"))
	}
	if c.Authz != nil && c.Authz.CRL == "" && c.Authz.CRLURL == "" {
		errs = append(errs, errors.New("authz needs a revocation list, authz.crl or authz.crl_url: without one a revoked coordinator stays admitted"))
	}
	if c.Authz != nil && c.Authz.CRLGrace != "" {
		if d, err := time.ParseDuration(c.Authz.CRLGrace); err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("authz.crl_grace = %q: want a positive duration", c.Authz.CRLGrace))
		}
	}
	if c.CallTimeout != "" {
		if _, err := time.ParseDuration(c.CallTimeout); err != nil {
			errs = append(errs, fmt.Errorf("call_timeout: %w", err))
		}
	}
	if c.MaxQueue < 0 {
		errs = append(errs, errors.New("max_queue must not be negative"))
	}
	if c.DiskMB < 0 {
		errs = append(errs, errors.New("disk_mb must not be negative"))
	}
	return errors.Join(errs...)
}
