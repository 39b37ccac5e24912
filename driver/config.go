package driver

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/modelnodes/modelnodes/driver/sandbox"
	"github.com/modelnodes/modelnodes/driver/taskconfig"
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

// The task's config block is package taskconfig's, shared with the job
// builder (package jobs); these are the names the driver has always used.
type (
	TaskConfig     = taskconfig.Config
	TLSConfig      = taskconfig.TLS
	TLSVaultConfig = taskconfig.TLSVault
	AuthzConfig    = taskconfig.Authz
)

// DefaultKeyMount is TLSVaultConfig's default KV mount; the default name is
// names.RunnerCommonName of the job.
const DefaultKeyMount = "runner-keys"
