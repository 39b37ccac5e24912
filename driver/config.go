package driver

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/modelnodes/modelnodes/driver/indexauth"
	"github.com/modelnodes/modelnodes/driver/pyenv"
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
	// DiskMB bounds what a model writes (/tmp and /scratch together, a
	// tmpfs counted in the task's memory) when its task config names no
	// disk_mb.
	DiskMB int64 `codec:"disk_mb"`
	// AllowWrittenExecutables lets models execute (and map executable)
	// code they wrote, for runtimes that compile code at run time. Off (the
	// default), their writable places are noexec and the seccomp filter
	// refuses memfd_create.
	AllowWrittenExecutables bool `codec:"allow_written_executables"`
	// CPUHardLimit caps a task at its CPU reservation (a CFS quota from
	// its cpu MHz share), as Docker's cpu_hard_limit; off, the task may use
	// idle CPU beyond its share.
	CPUHardLimit bool `codec:"cpu_hard_limit"`
	// AllowHostModelDirs lets a job's model_dir name a host directory
	// (development); otherwise the model must come into the task dir.
	AllowHostModelDirs bool `codec:"allow_host_model_dirs"`
	// ModelStore is where the driver keeps each task's model, moved out of
	// the alloc dir that `nomad alloc fs` serves.
	ModelStore string `codec:"model_store"`
	// PythonInterpreters are the node's other Python interpreters; with
	// Python (the default, always included) they are fingerprinted as node
	// attributes, and a submission chooses among them (docs/driver.md).
	PythonInterpreters []string `codec:"python_interpreters"`
	// Environments says how a Python submission's requirements.txt becomes
	// its environment.
	Environments EnvironmentsConfig `codec:"environments"`
	// RunnerUIDRange holds the runners' users: each task's runner runs as
	// one of its own (uid and gid), never root and never a model's.
	RunnerUIDRange string `codec:"runner_uid_range"`
	// GPU says where the host's NVIDIA driver files are (driver/gpu.go).
	GPU GPUConfig `codec:"gpu"`
}

// GPUConfig is the plugin's gpu block.
type GPUConfig struct {
	// Libraries are the driver's user-space libraries shown to a GPU
	// task's worker; empty: those `ldconfig -p` lists (package nvidia).
	Libraries []string `codec:"libraries"`
	// NvidiaSMI is nvidia-smi's path; empty: looked up in PATH.
	NvidiaSMI string `codec:"nvidia_smi"`
}

// DefaultDiskMB is a model's writable space (/tmp and /scratch) when neither
// the plugin's nor the task's disk_mb names one.
const DefaultDiskMB = 256

// Build modes of the environments block.
const (
	// BuildWheels builds on the trusted side from wheels only: resolving
	// reads wheel metadata and installing unpacks archives, so no package
	// code runs; a requirement with only a source distribution fails.
	BuildWheels = "wheels"
	// BuildSandbox builds in a sandbox like the model's (driver/buildbox),
	// with network only to the index hosts: source distributions build,
	// their setup.py contained; indexes may not carry credentials.
	BuildSandbox = "sandbox"
)

// EnvironmentsConfig is the plugin's environments block. Zero fields take
// the defaults of withDefaults.
type EnvironmentsConfig struct {
	// Root is the environment cache's directory (one file system).
	Root string `codec:"root"`
	// UV is the uv binary (a path, or a name looked up in PATH).
	UV string `codec:"uv"`
	// IndexURLs: the first is the default index, the others are extra
	// indexes, which uv consults first. Credentials may be written
	// https://user:token@host/simple; they stay on the trusted side.
	IndexURLs []string `codec:"index_urls"`
	// IndexCredentials, when set, is the KV v2 secret in Vault
	// ("secret/data/modelnodes/indexes") holding the indexes' credentials
	// by host, read at each start with the task's own Vault token and put
	// into that build's index URLs only (driver/indexauth). Wheels mode
	// only.
	IndexCredentials string `codec:"index_credentials"`
	// BudgetMB bounds the cache's disk use; environments in use are kept
	// whatever it says.
	BudgetMB int64 `codec:"budget_mb"`
	// BuildTimeout bounds one build (a Go duration).
	BuildTimeout string `codec:"build_timeout"`
	// Build is the build mode: "wheels" or "sandbox".
	Build string `codec:"build"`
	// BuildUID is the user a sandboxed build runs as (its group too):
	// not root, and none of uid_range's.
	BuildUID int `codec:"build_uid"`
	// BuildMemoryMB and BuildPidsLimit bound each command of a sandboxed
	// build.
	BuildMemoryMB  int64 `codec:"build_memory_mb"`
	BuildPidsLimit int64 `codec:"build_pids_limit"`
	// AllowedHosts are hosts ("host" or "host:port") a sandboxed build may
	// reach besides the indexes' own (PyPI brings files.pythonhosted.org).
	AllowedHosts []string `codec:"allowed_hosts"`
	// DefaultRequirements are added to every python submission's
	// requirements unless it names the same project (CrunchDAO's images
	// carry pandas and pyarrow whatever a submission lists); with them, a
	// submission without requirements.txt gets an environment too.
	DefaultRequirements []string `codec:"default_requirements"`
}

// Defaults of the environments block.
const (
	defaultEnvRoot     = "/var/lib/modelbox/envs"
	defaultEnvBudgetMB = 20 << 10
	defaultBuildTime   = 30 * time.Minute
	defaultBuildUID    = 63999
	defaultBuildMemMB  = 4096
	defaultBuildPids   = 1024
)

func (e EnvironmentsConfig) withDefaults() EnvironmentsConfig {
	if e.Root == "" {
		e.Root = defaultEnvRoot
	}
	if e.UV == "" {
		e.UV = "uv"
	}
	if e.BudgetMB == 0 {
		e.BudgetMB = defaultEnvBudgetMB
	}
	if e.BuildTimeout == "" {
		e.BuildTimeout = defaultBuildTime.String()
	}
	if e.Build == "" {
		e.Build = BuildWheels
	}
	if e.BuildUID == 0 {
		e.BuildUID = defaultBuildUID
	}
	if e.BuildMemoryMB == 0 {
		e.BuildMemoryMB = defaultBuildMemMB
	}
	if e.BuildPidsLimit == 0 {
		e.BuildPidsLimit = defaultBuildPids
	}
	return e
}

func (e EnvironmentsConfig) validate() error {
	var errs []error
	if !filepath.IsAbs(e.Root) {
		errs = append(errs, fmt.Errorf("environments.root: %q is not absolute", e.Root))
	}
	if d, err := time.ParseDuration(e.BuildTimeout); err != nil || d <= 0 {
		errs = append(errs, fmt.Errorf("environments.build_timeout = %q: want a positive duration such as \"30m\"", e.BuildTimeout))
	}
	if e.BudgetMB < 0 {
		errs = append(errs, errors.New("environments.budget_mb must not be negative"))
	}
	if e.Build != BuildWheels && e.Build != BuildSandbox {
		errs = append(errs, fmt.Errorf("environments.build = %q: want %q or %q", e.Build, BuildWheels, BuildSandbox))
	}
	if e.BuildUID < 1 || e.BuildMemoryMB < 0 || e.BuildPidsLimit < 0 {
		errs = append(errs, errors.New("environments: build_uid must be a user other than root; build_memory_mb and build_pids_limit must not be negative"))
	}
	for i, r := range e.DefaultRequirements {
		if spec := (pyenv.Spec{Requirements: []byte(r), Python: "/", PythonVersion: "-", Platform: "-"}); strings.ContainsAny(r, "\n\r#") || spec.Validate() != nil {
			errs = append(errs, fmt.Errorf("environments.default_requirements[%d] = %q: want one requirement such as \"pandas>=2.2.3,<3\"", i, r))
		}
	}
	if e.IndexCredentials != "" {
		if err := indexauth.CheckPath(e.IndexCredentials); err != nil {
			errs = append(errs, fmt.Errorf("environments.index_credentials: %w", err))
		}
		if e.Build != BuildWheels {
			errs = append(errs, fmt.Errorf("environments.index_credentials: a %q build runs package code, which must not hold the indexes' credentials; build %q (wheels only, on the trusted side) to use them", e.Build, BuildWheels))
		}
	}
	for i, u := range e.IndexURLs {
		if err := pyenv.CheckIndexURL(u); err != nil {
			errs = append(errs, fmt.Errorf("environments.index_urls[%d]: %w", i, err))
		}
	}
	return errors.Join(errs...)
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
	for _, p := range append([]string{c.Python}, c.PythonInterpreters...) {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("python, python_interpreters: %q is not an absolute path", p))
		}
	}
	for _, p := range c.GPU.Libraries {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			errs = append(errs, fmt.Errorf("gpu.libraries: %q is not an absolute, clean path", p))
		}
	}
	if p := c.GPU.NvidiaSMI; p != "" && !filepath.IsAbs(p) {
		errs = append(errs, fmt.Errorf("gpu.nvidia_smi: %q is not absolute", p))
	}
	if !filepath.IsAbs(c.ModelStore) {
		errs = append(errs, fmt.Errorf("model_store: %q is not absolute", c.ModelStore))
	}
	wlo, whi, err := parseRange(c.UIDRange)
	if err != nil {
		errs = append(errs, err)
	}
	if rlo, rhi, err := parseRange(c.RunnerUIDRange); err != nil {
		errs = append(errs, fmt.Errorf("runner_%w", err))
	} else if b := c.Environments.BuildUID; (wlo <= rhi && rlo <= whi) || (rlo <= b && b <= rhi) {
		// A runner sharing a uid with model code could be reached by it
		// (signals, ptrace, its files).
		errs = append(errs, fmt.Errorf("runner_uid_range = %q must not overlap uid_range (%q) nor hold environments.build_uid (%d)", c.RunnerUIDRange, c.UIDRange, b))
	}
	switch c.Landlock {
	case sandbox.LandlockOff, sandbox.LandlockBestEffort, sandbox.LandlockRequired:
	default:
		errs = append(errs, fmt.Errorf("landlock = %q: want off, best-effort or required", c.Landlock))
	}
	errs = append(errs, c.Environments.validate())
	if c.DiskMB < 0 {
		errs = append(errs, fmt.Errorf("disk_mb: %d: want a size in MiB (0: %d)", c.DiskMB, DefaultDiskMB))
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
