package driver

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/hashicorp/nomad/plugins/drivers"

	"github.com/modelnodes/modelnodes/driver/indexauth"
	"github.com/modelnodes/modelnodes/driver/pyenv"
)

// vaultTokenFile is where Nomad writes the task's Vault token (the job's
// vault block; env = false keeps it out of the task's environment).
func vaultTokenFile(cfg *drivers.TaskConfig) string {
	return filepath.Join(cfg.TaskDir().SecretsDir, "vault_token")
}

// indexCredentials returns indexes with the credentials of
// environments.index_credentials in them, read from Vault with the task's
// own token, for this task's build only: they are in no key, file, event or
// log, and only a wheels-only build (no package code runs) gets them. Any
// failure (no token, denied, no secret, Vault unreachable) fails the
// task's start: the node's configuration is wrong, not the model, and a
// build without the credentials could take a private package's name from a
// public index instead.
func (d *Driver) indexCredentials(cfg *drivers.TaskConfig, envs *environments, indexes []string) ([]string, error) {
	path := envs.cfg.IndexCredentials
	if path == "" {
		return indexes, nil
	}
	if envs.cfg.Build != BuildWheels { // validate refuses it; never hand them to package code
		return nil, fmt.Errorf("modelbox: environments.index_credentials needs build = %q", BuildWheels)
	}
	src := indexauth.Source{Path: path, Address: vaultAddress(cfg), TokenFile: vaultTokenFile(cfg)}
	creds, err := src.Read(d.ctx)
	if err != nil {
		return nil, fmt.Errorf("modelbox: package index credentials: %w", err)
	}
	out, unused, err := creds.Apply(indexes)
	if err != nil {
		return nil, fmt.Errorf("modelbox: package index credentials: %w", err)
	}
	if len(unused) > 0 {
		d.log.Warn("the index credentials name hosts that are none of environments.index_urls'", "path", path, "hosts", unused)
	}
	return out, nil
}

// EnvironmentStageRefused is the stage of the task event that ends a build
// an index refused: it follows the build's "failed" event, so that the
// scheduler's observer, which reads the last environment event, does not
// report the model's environment as failed for the node's login.
const EnvironmentStageRefused = "refused"

// indexRefused is the start's error when a build failed because an index
// refused the node's login: the model's requirements are not at fault, so
// its callers must not hear BAD_IMPLEMENTATION; Nomad restarts the task
// (once the failure's backoff ends, the key is built again).
func (d *Driver) indexRefused(cfg *drivers.TaskConfig, key string, be *pyenv.BuildError) error {
	d.emit(cfg, "Environment not built: a package index refused the node's login",
		map[string]string{EventEnvironment: EnvironmentStageRefused, EventEnvironmentKey: key})
	when := ""
	if be.Remembered {
		when = fmt.Sprintf(" (at %s; not rebuilt until %s)", be.FailedAt.UTC().Format(time.RFC3339), be.RetryAt.UTC().Format(time.RFC3339))
	}
	return fmt.Errorf("modelbox: environment %s: a package index refused the node's login%s: check environments.index_urls and the credentials (environments.index_credentials): %s",
		key, when, lastLines(be.Output, 2))
}

// vaultAddress is the Vault the task's token belongs to, as the runner
// reaches it: the job's tls.vault.address, else VAULT_ADDR in the task's
// environment, else (empty) the plugin's own VAULT_ADDR.
func vaultAddress(cfg *drivers.TaskConfig) string {
	var tc TaskConfig
	// prepare decoded and validated the same config before.
	if err := cfg.DecodeDriverConfig(&tc); err == nil && tc.TLS != nil && tc.TLS.Vault != nil && tc.TLS.Vault.Address != "" {
		return tc.TLS.Vault.Address
	}
	return cfg.Env["VAULT_ADDR"]
}
