package driver

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/modelnodes/modelnodes/driver/sandbox"
)

// Config is the plugin block.
type Config struct {
	RunnerPath            string   `codec:"runner_path"`
	Python                string   `codec:"python"`
	AllowedRuntimes       []string `codec:"allowed_runtimes"`
	ReadonlyPaths         []string `codec:"readonly_paths"`
	UIDRange              string   `codec:"uid_range"`
	WorkerPidsLimit       int64    `codec:"worker_pids_limit"`
	RunnerMemoryReserveMB int64    `codec:"runner_memory_reserve_mb"`
	Landlock              string   `codec:"landlock"`
	// AllowHostModelDirs lets a job's model_dir name a host directory
	// (development); otherwise the model must come into the task dir.
	AllowHostModelDirs bool `codec:"allow_host_model_dirs"`
	// ModelStore is where the driver keeps each task's model, moved out of
	// the alloc dir that `nomad alloc fs` serves.
	ModelStore string `codec:"model_store"`
}

func (c *Config) validate() error {
	var errs []error
	for _, r := range c.AllowedRuntimes {
		if r != "python" && r != "executable" {
			errs = append(errs, fmt.Errorf("allowed_runtimes: unknown runtime %q (want python or executable)", r))
		}
	}
	for _, p := range c.ReadonlyPaths {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("readonly_paths: %q is not absolute", p))
		}
	}
	if !filepath.IsAbs(c.ModelStore) {
		errs = append(errs, fmt.Errorf("model_store: %q is not absolute", c.ModelStore))
	}
	if _, _, err := parseRange(c.UIDRange); err != nil {
		errs = append(errs, err)
	}
	switch c.Landlock {
	case sandbox.LandlockOff, sandbox.LandlockBestEffort, sandbox.LandlockRequired:
	default:
		errs = append(errs, fmt.Errorf("landlock = %q: want off, best-effort or required", c.Landlock))
	}
	if c.WorkerPidsLimit < 0 || c.RunnerMemoryReserveMB < 0 {
		errs = append(errs, errors.New("worker_pids_limit and runner_memory_reserve_mb must not be negative"))
	}
	return errors.Join(errs...)
}

// parseRange reads "MIN-MAX" of unprivileged ids.
func parseRange(s string) (int, int, error) {
	lo, hi, ok := strings.Cut(s, "-")
	a, err1 := strconv.Atoi(strings.TrimSpace(lo))
	b, err2 := strconv.Atoi(strings.TrimSpace(hi))
	if !ok || err1 != nil || err2 != nil || a < 1000 || b < a {
		return 0, 0, fmt.Errorf("uid_range = %q: want MIN-MAX with 1000 <= MIN <= MAX", s)
	}
	return a, b, nil
}

// TaskConfig is a task's config block.
type TaskConfig struct {
	ModelDir    string       `codec:"model_dir"`
	Runtime     string       `codec:"runtime"`
	Entry       string       `codec:"entry"`
	Port        string       `codec:"port"`
	TLS         *TLSConfig   `codec:"tls"`
	Authz       *AuthzConfig `codec:"authz"`
	Delegation  string       `codec:"delegation"`
	HealthPort  string       `codec:"health_port"`
	Plaintext   bool         `codec:"plaintext"`
	CallTimeout string       `codec:"call_timeout"`
	MaxQueue    int          `codec:"max_queue"`
}

// TLSConfig names the runner's TLS files, relative to the task dir (where
// Nomad templates render them, e.g. secrets/) or absolute. With a vault
// block the runner gets its certificate from Vault itself instead of Cert
// and Key.
type TLSConfig struct {
	Cert     string          `codec:"cert"`
	Key      string          `codec:"key"`
	ClientCA string          `codec:"client_ca"`
	Vault    *TLSVaultConfig `codec:"vault"`
}

// TLSVaultConfig has the runner sign its certificate with Vault PKI for a
// key kept in Vault's KV store (runner/vaultkey), so the key survives
// renewals, restarts and rescheduling: a cruncher's wallet delegation names
// it. The runner uses the task's Vault token (secrets/vault_token; the task
// needs a vault block).
type TLSVaultConfig struct {
	Address  string `codec:"address"`
	SignPath string `codec:"sign_path"` // default pki_int/sign/runner
	// KeyPath is the KV v2 entry MOUNT/NAME (default runner-keys/<job id>);
	// CommonName the certificate's name (default <job id>.crunchdao.internal).
	// Vault's runner policy and role admit only these defaults.
	KeyPath    string `codec:"key_path"`
	CommonName string `codec:"common_name"`
	TTL        string `codec:"ttl"`
}

// DefaultKeyMount is TLSVaultConfig's default KV mount; the default name is
// names.RunnerCommonName of the job.
const DefaultKeyMount = "runner-keys"

// AuthzConfig says who may call the model (runner/authz): the coordinator
// of Crunch whose key hashes to one of CertHashes, minus the CRL. PolicyFile
// (a JSON policy re-read when it changes) replaces Crunch and CertHashes. No
// hash admits nobody. A revocation list source (CRL or CRLURL) is required;
// the runner's development switches that open the door
// (--authz-any-coordinator-key, --authz-without-crl) cannot be set from a job.
type AuthzConfig struct {
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

func (tc *TaskConfig) validate(plugin *Config) error {
	var errs []error
	if tc.ModelDir == "" {
		errs = append(errs, errors.New("model_dir is required"))
	}
	if !slices.Contains(plugin.AllowedRuntimes, tc.Runtime) {
		errs = append(errs, fmt.Errorf("runtime %q is not allowed on this node (allowed: %s)", tc.Runtime, strings.Join(plugin.AllowedRuntimes, ", ")))
	}
	if tc.Runtime == "executable" && tc.Entry == "" {
		errs = append(errs, errors.New(`runtime "executable" needs entry, the program in model_dir`))
	}
	if tc.Runtime == "executable" && (filepath.IsAbs(tc.Entry) || strings.Contains(tc.Entry, "..")) {
		errs = append(errs, fmt.Errorf("entry %q must name a program inside model_dir", tc.Entry))
	}
	if tc.TLS == nil && !tc.Plaintext {
		errs = append(errs, errors.New("a tls block is required (or plaintext = true, for development only)"))
	}
	if tc.TLS != nil && tc.Plaintext {
		errs = append(errs, errors.New("tls and plaintext = true exclude each other"))
	}
	if t := tc.TLS; t != nil && t.Vault == nil && (t.Cert == "" || t.Key == "") {
		errs = append(errs, errors.New("tls needs cert and key, or a vault block"))
	}
	if t := tc.TLS; t != nil && t.Vault != nil {
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
	if tc.Authz != nil && (tc.TLS == nil || tc.TLS.ClientCA == "") {
		errs = append(errs, errors.New("authz checks client certificates: it needs tls.client_ca"))
	}
	if tc.Authz != nil && tc.Authz.CRL != "" && tc.Authz.CRLURL != "" {
		errs = append(errs, errors.New("authz.crl and authz.crl_url exclude each other"))
	}
	if tc.Authz != nil && tc.Authz.PolicyFile != "" && (tc.Authz.Crunch != "" || len(tc.Authz.CertHashes) > 0) {
		errs = append(errs, errors.New("authz.policy_file replaces authz.crunch and authz.cert_hashes: use one or the other"))
	}
	if tc.Authz != nil && tc.Authz.CRL == "" && tc.Authz.CRLURL == "" {
		errs = append(errs, errors.New("authz needs a revocation list, authz.crl or authz.crl_url: without one a revoked coordinator stays admitted"))
	}
	if tc.Authz != nil && tc.Authz.CRLGrace != "" {
		if d, err := time.ParseDuration(tc.Authz.CRLGrace); err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("authz.crl_grace = %q: want a positive duration", tc.Authz.CRLGrace))
		}
	}
	if tc.CallTimeout != "" {
		if _, err := time.ParseDuration(tc.CallTimeout); err != nil {
			errs = append(errs, fmt.Errorf("call_timeout: %w", err))
		}
	}
	if tc.MaxQueue < 0 {
		errs = append(errs, errors.New("max_queue must not be negative"))
	}
	return errors.Join(errs...)
}
