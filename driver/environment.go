package driver

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins/drivers"

	"github.com/modelnodes/modelnodes/driver/buildbox"
	"github.com/modelnodes/modelnodes/driver/cgroup"
	"github.com/modelnodes/modelnodes/driver/indexauth"
	"github.com/modelnodes/modelnodes/driver/pyenv"
	"github.com/modelnodes/modelnodes/names"
)

// RequirementsFile is the file at the root of a Python submission that lists
// what its environment needs, as in CrunchDAO's layout.
const RequirementsFile = "requirements.txt"

// Annotations of the driver's task events about a task's environment (the
// naming contract with the scheduler's observer is package names'):
// EventEnvironment is set on each, to a stage of the build.
const (
	EventEnvironment       = names.EventEnvironment
	EventEnvironmentKey    = names.EventEnvironmentKey
	EnvironmentStageFailed = names.EnvironmentFailed
	EnvironmentStageReady  = names.EnvironmentReady
)

// maxFaultyLines bounds the resolver's lines kept in a model's
// BAD_IMPLEMENTATION answer and its task event.
const maxFaultyLines = 12

// taskEnv is what a task's environment gave prepare.
type taskEnv struct {
	// python is the interpreter the runner starts the worker with.
	python string
	// readOnly lists what the sandbox must show, at its host path, for
	// python to run (the interpreter's installation).
	readOnly []string
	// dir is the environment's directory, shown at /env; empty without
	// requirements.
	dir string
	// env is the environment held for the task; nil without requirements.
	// Its File goes to the runner, which keeps it in use for its life.
	env *pyenv.Env
	// faulty, when set, is why the model cannot run (its requirements are
	// refused or their build failed): the runner answers BAD_IMPLEMENTATION.
	faulty string
}

// release drops the driver's own hold; the runner's inherited lock stays.
func (t *taskEnv) release() {
	if t != nil && t.env != nil {
		t.env.Release()
	}
}

// environments is the driver's side of the environment cache: the cache
// for the current plugin config, the fingerprints of its interpreters, and
// who waits for which build (to tell each task's events how it goes).
type environments struct {
	log   hclog.Logger
	cfg   EnvironmentsConfig
	of    envsConfig // what they were made from
	cache *pyenv.Cache

	mu       sync.Mutex
	watchers map[string]map[*envWatcher]bool // by key
}

// envWatcher is one task waiting for an environment. The build's goroutine
// must not wait for Nomad to take an event: its stages go through a
// buffered channel (dropped when it is full) to the task's own sender.
type envWatcher struct {
	stages chan [2]string // stage, detail
	built  bool           // a build ran while the task waited
}

// envsConfig is the part of the plugin config the environments are made
// from: a new config that differs there makes new ones.
type envsConfig struct {
	Environments                EnvironmentsConfig
	Landlock                    string
	Interpreters, ReadonlyPaths []string
}

func envsOf(c *Config) envsConfig {
	return envsConfig{Environments: c.Environments.withDefaults(), Landlock: c.Landlock,
		Interpreters: c.interpreterPaths(), ReadonlyPaths: c.ReadonlyPaths}
}

// newEnvironments makes the environment cache of a plugin config. In
// sandbox mode it also makes the build sandbox, and sweeps what builds of
// an earlier plugin process left.
func newEnvironments(plugin *Config, log hclog.Logger) (*environments, error) {
	cfg := plugin.Environments.withDefaults()
	e := &environments{log: log.Named("environments"), cfg: cfg, of: envsOf(plugin), watchers: map[string]map[*envWatcher]bool{}}
	timeout, _ := time.ParseDuration(cfg.BuildTimeout) // validated
	e.cache = &pyenv.Cache{
		Root: cfg.Root, UV: cfg.UV, BudgetBytes: cfg.BudgetMB << 20, BuildTimeout: timeout,
		Logger: e.log, Progress: e.progress,
	}
	if cfg.Build != BuildSandbox {
		return e, nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("environments: the build sandbox re-executes the plugin: %w", err)
	}
	uv, err := exec.LookPath(cfg.UV)
	if err != nil {
		return nil, fmt.Errorf("environments: uv: %w", err)
	}
	if uv, err = filepath.Abs(uv); err != nil {
		return nil, err
	}
	box, err := buildbox.New(buildbox.Config{
		Self: self, Dir: filepath.Clean(cfg.Root) + "-build", UID: cfg.BuildUID, GID: cfg.BuildUID,
		Limits:   cgroup.Limits{MemoryBytes: cfg.BuildMemoryMB << 20, WorkerPids: cfg.BuildPidsLimit, CPUShares: 1024},
		ReadOnly: plugin.ReadonlyPaths, Interpreters: plugin.interpreterPaths(), UV: uv,
		Indexes: cfg.IndexURLs, ExtraHosts: cfg.AllowedHosts, Landlock: plugin.Landlock, Logger: e.log.Named("build"),
	})
	if err != nil {
		return nil, fmt.Errorf("environments: %w", err)
	}
	if err := box.Sweep(); err != nil {
		e.log.Warn("could not remove what earlier builds left", "error", err)
	}
	e.cache.UV, e.cache.Sandbox = uv, box
	return e, nil
}

// progress fans a build's stage out to the tasks waiting for it.
func (e *environments) progress(key, stage, detail string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for w := range e.watchers[key] {
		w.built = true
		select {
		case w.stages <- [2]string{stage, detail}:
		default:
		}
	}
}

func (e *environments) watch(key string, w *envWatcher) func() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.watchers[key] == nil {
		e.watchers[key] = map[*envWatcher]bool{}
	}
	e.watchers[key][w] = true
	return func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		delete(e.watchers[key], w)
		if len(e.watchers[key]) == 0 {
			delete(e.watchers, key)
		}
	}
}

// environment chooses the interpreter of a python task's submission (its
// .python-version or requires-python among the node's) and finds or builds
// its environment from its requirements.txt, telling the task's events how
// the build goes. A submission without one runs on the interpreter as it
// is. A failure that is the submission's (refused requirements, a build uv
// rejects, remembered or not) is no error: it comes back as faulty, for the
// runner to answer with. An error is the node's (no interpreter matching
// what the scheduler placed here, no uv, a full disk) and fails the task's
// start.
func (d *Driver) environment(cfg *drivers.TaskConfig, runtime string, plugin *Config, modelDir string, stderr io.Writer) (*taskEnv, error) {
	if runtime != "python" {
		return &taskEnv{python: plugin.Python}, nil
	}
	in, _, err := d.pythonFor(d.ctx, modelDir)
	if err != nil {
		return nil, err
	}
	te := &taskEnv{python: in.Path}
	// The interpreter's whole installation: its standard library is beside
	// its bin/ (a pyenv-built one lives outside readonly_paths).
	if dir := buildbox.InstallDir(in.Path); dir != "" {
		te.readOnly = append(te.readOnly, dir)
	}
	envs := d.environments()
	dir, err := os.Open(modelDir)
	if err != nil {
		return nil, fmt.Errorf("modelbox: %w", err)
	}
	req, err := readSubmissionFile(dir, RequirementsFile, pyenv.MaxRequirementsBytes)
	_ = dir.Close()
	if err != nil {
		te.faulty = err.Error()
		d.envFailed(cfg, "", te.faulty, te.faulty, stderr)
		return te, nil
	}
	if len(req) == 0 && len(envs.cfg.DefaultRequirements) == 0 {
		return te, nil
	}
	req = pyenv.WithDefaults(req, envs.cfg.DefaultRequirements)
	spec := in.Spec(req, envs.cfg.IndexURLs...)
	// Sandboxed builds may run an sdist's code; trusted-side ones must not.
	spec.OnlyBinary = envs.cfg.Build == BuildWheels
	if err := spec.Validate(); err != nil {
		te.faulty = fmt.Sprintf("%s is refused: %v", RequirementsFile, err)
		d.envFailed(cfg, "", te.faulty, te.faulty, stderr)
		return te, nil
	}
	// The node's own credentials, not the model's concern: an error fails
	// the start (indexcreds.go). Key leaves them out.
	if spec.Indexes, err = d.indexCredentials(cfg, envs, spec.Indexes); err != nil {
		return nil, err
	}
	key := pyenv.Key(spec)
	log := d.log.With("task_id", cfg.ID, "environment", key)
	start := time.Now()
	w := &envWatcher{stages: make(chan [2]string, 256)}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		var stage string
		var lastEvent time.Time
		for sd := range w.stages {
			msg := "Environment: " + sd[0]
			if sd[1] != "" {
				msg += ": " + sd[1]
			}
			log.Info("environment build", "stage", sd[0], "detail", sd[1])
			fmt.Fprintf(stderr, "modelbox: %s\n", msg)
			// Nomad keeps a task's last 10 events: stage changes, and a
			// download count at most every 5 seconds, leave room for the
			// rest. The task's log has every line.
			if sd[0] != stage || time.Since(lastEvent) >= 5*time.Second {
				stage, lastEvent = sd[0], time.Now()
				d.emit(cfg, msg, map[string]string{EventEnvironment: sd[0], EventEnvironmentKey: key})
			}
		}
	}()
	unwatch := envs.watch(key, w)
	env, err := envs.cache.Acquire(d.ctx, spec)
	unwatch()
	close(w.stages)
	<-sent
	var be *pyenv.BuildError
	switch {
	case errors.As(err, &be) && indexauth.Refused(be.Output, spec.Indexes):
		// Not the model's fault (indexcreds.go): fail the start.
		return nil, d.indexRefused(cfg, key, be)
	case errors.As(err, &be):
		te.faulty = faultyMessage(be)
		d.envFailed(cfg, key, te.faulty, be.Output, stderr)
		return te, nil
	case err != nil:
		return nil, fmt.Errorf("modelbox: environment %s: %w", key, err)
	}
	if w.built {
		msg := fmt.Sprintf("Environment %s built in %s", key, time.Since(start).Round(100*time.Millisecond))
		fmt.Fprintf(stderr, "modelbox: %s\n", msg)
		d.emit(cfg, msg, map[string]string{EventEnvironment: EnvironmentStageReady, EventEnvironmentKey: key})
	}
	te.env, te.python, te.dir = env, env.Python(), env.Path
	return te, nil
}

// envFailed reports a model whose environment cannot be had: the task's
// log and the driver's get faulty (what the model answers), a task event
// the last lines of reason (the scheduler's status API shows it).
func (d *Driver) envFailed(cfg *drivers.TaskConfig, key, faulty, reason string, stderr io.Writer) {
	d.log.Warn("the model's environment failed; its runner answers BAD_IMPLEMENTATION", "task_id", cfg.ID, "environment", key, "error", faulty)
	fmt.Fprintf(stderr, "modelbox: the model's environment failed; every call answers BAD_IMPLEMENTATION:\n%s\n", faulty)
	d.emit(cfg, "Environment failed: "+lastLines(reason, 3), map[string]string{EventEnvironment: EnvironmentStageFailed, EventEnvironmentKey: key})
}

// faultyMessage is what the model's callers read: the resolver's own last
// lines, and when the node tries again.
func faultyMessage(be *pyenv.BuildError) string {
	when := "failed"
	if be.Remembered {
		when = fmt.Sprintf("failed at %s (not rebuilt until %s)", be.FailedAt.UTC().Format(time.RFC3339), be.RetryAt.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("the model's environment %s: %s", when, lastLines(be.Output, maxFaultyLines))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
