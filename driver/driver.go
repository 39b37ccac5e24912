package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/drivers/shared/eventer"
	"github.com/hashicorp/nomad/helper/users/dynamic"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/hashicorp/nomad/plugins/shared/hclspec"
	"golang.org/x/sys/unix"

	"github.com/modelnodes/modelnodes/driver/cgroup"
	"github.com/modelnodes/modelnodes/driver/launcher"
	"github.com/modelnodes/modelnodes/driver/sandbox"
	"github.com/modelnodes/modelnodes/internal/envflag"
	"github.com/modelnodes/modelnodes/internal/procfs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/runner/runneropts"
)

// ErrExecRefused answers every exec into a model task.
var ErrExecRefused = errors.New("modelbox: exec into a model task is refused: nobody may read model code through `nomad alloc exec`")

// Driver is the modelbox task driver.
type Driver struct {
	log      hclog.Logger
	eventer  *eventer.Eventer
	ctx      context.Context
	cancel   context.CancelFunc
	isolator Isolator
	// nvidia is where GPU tasks' driver files are found (the host's).
	nvidia nvidiaSource

	mu     sync.RWMutex
	config *Config
	envs   *environments // the environment cache of config
	tasks  map[string]*taskHandle
	uids   map[int]string // worker uids in use from uid_range, by task id
	// runnerUIDs are the runner uids in use from runner_uid_range, by task id.
	runnerUIDs map[int]string

	sweepOnce sync.Once
}

// New returns the driver with the real isolation (cgroups and the sandbox).
func New(log hclog.Logger) *Driver {
	iso, err := newHostIsolator()
	if err != nil {
		log.Error("cannot locate the plugin binary for the sandbox", "error", err)
	}
	return NewWithIsolator(log, iso)
}

// NewWithIsolator returns the driver with the given isolation (tests).
func NewWithIsolator(log hclog.Logger, iso Isolator) *Driver {
	ctx, cancel := context.WithCancel(context.Background())
	log = log.Named(Name)
	return &Driver{
		log:      log,
		eventer:  eventer.NewEventer(ctx, log),
		ctx:      ctx,
		cancel:   cancel,
		isolator: iso,
		nvidia:   hostNvidia,
		tasks:    map[string]*taskHandle{},
		uids:     map[int]string{},

		runnerUIDs: map[int]string{},
	}
}

func (d *Driver) PluginInfo() (*base.PluginInfoResponse, error) { return pluginInfo, nil }
func (d *Driver) ConfigSchema() (*hclspec.Spec, error)          { return configSpec, nil }
func (d *Driver) TaskConfigSchema() (*hclspec.Spec, error)      { return taskConfigSpec, nil }
func (d *Driver) Capabilities() (*drivers.Capabilities, error)  { return capabilities, nil }

func (d *Driver) SetConfig(c *base.Config) error {
	// Nomad fills the schema's defaults; start from them anyway, so a
	// config that names only some keys (tests, other callers) is complete.
	cfg := *defaultConfig()
	if len(c.PluginConfig) != 0 {
		if err := base.MsgPackDecode(c.PluginConfig, &cfg); err != nil {
			return fmt.Errorf("modelbox: plugin config: %w", err)
		}
	}
	cfg.Environments = cfg.Environments.withDefaults()
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("modelbox: plugin config: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.envs == nil || !reflect.DeepEqual(d.envs.of, envsOf(&cfg)) {
		envs, err := newEnvironments(&cfg, d.log)
		if err != nil {
			return fmt.Errorf("modelbox: plugin config: %w", err)
		}
		d.envs = envs
	}
	d.config = &cfg
	d.sweepOnce.Do(func() { go d.sweepModels() })
	return nil
}

// sweepModels removes, now and every sweepEvery, the stored models of tasks
// Nomad has garbage-collected.
func (d *Driver) sweepModels() {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		sweepModelStore(d.cfg().ModelStore, d.log)
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// environments returns the environment cache of the current config.
func (d *Driver) environments() *environments {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.envs == nil {
		// Never configured: the defaults build wheels only, which needs
		// nothing that could fail here.
		d.envs, _ = newEnvironments(defaultConfig(), d.log)
	}
	return d.envs
}

func (d *Driver) cfg() *Config {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.config == nil {
		return defaultConfig()
	}
	return d.config
}

// defaultConfig is the plugin block's defaults, for a driver never configured.
func defaultConfig() *Config {
	return &Config{RunnerPath: "model-runner", Python: "/usr/bin/python3", AllowedRuntimes: []string{"python", "executable"},
		ReadonlyPaths: []string{"/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc/ssl", "/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime"},
		UIDRange:      "64000-64999", RunnerUIDRange: "62000-62999", WorkerPidsLimit: 256, RunnerMemoryReserveMB: 48, Landlock: "best-effort",
		DiskMB: DefaultDiskMB, CPUHardLimit: true,
		ModelStore: "/var/lib/modelbox/models", Environments: EnvironmentsConfig{}.withDefaults()}
}

func (d *Driver) TaskEvents(ctx context.Context) (<-chan *drivers.TaskEvent, error) {
	return d.eventer.TaskEvents(ctx)
}

func (d *Driver) emit(cfg *drivers.TaskConfig, msg string, annotations map[string]string) {
	_ = d.eventer.EmitEvent(&drivers.TaskEvent{TaskID: cfg.ID, AllocID: cfg.AllocID, TaskName: cfg.Name,
		Timestamp: time.Now(), Message: msg, Annotations: annotations})
}

func (d *Driver) task(id string) (*taskHandle, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	h, ok := d.tasks[id]
	if !ok {
		return nil, drivers.ErrTaskNotFound
	}
	return h, nil
}

// StartTask starts the runner, which starts the sandboxed worker: prepare
// builds everything the task needs, launch starts the runner, and a failure
// at any point takes back all that was made through the one undo.
func (d *Driver) StartTask(cfg *drivers.TaskConfig) (*drivers.TaskHandle, *drivers.DriverNetwork, error) {
	if _, err := d.task(cfg.ID); err == nil {
		return nil, nil, fmt.Errorf("modelbox: task %s is already started", cfg.ID)
	}
	p, err := d.prepare(cfg)
	if err != nil {
		return nil, nil, err
	}
	h, handle, err := d.launch(p)
	// The runner inherited the environment's in-use lock and opened the
	// task's log (or is gone): the driver's own holds end either way.
	p.env.release()
	p.closeLog()
	if err != nil {
		p.undo()
		return nil, nil, err
	}
	d.mu.Lock()
	d.tasks[cfg.ID] = h
	d.mu.Unlock()
	go h.watch()
	go d.watchOOM(h)
	d.emit(cfg, "Model runner started; the worker runs sandboxed", map[string]string{
		"listen": p.opts.Listen, "runtime": p.opts.Runtime, "worker_uid": strconv.Itoa(p.uid), "runner_uid": strconv.Itoa(p.runnerUID)})
	h.log.Info("model task started", "listen", p.opts.Listen, "worker_uid", p.uid, "runner_uid", p.runnerUID)
	return handle, nil, nil
}

// prepared is a task ready to launch: what prepare made, and the undo steps
// that take it back.
type prepared struct {
	cfg    *drivers.TaskConfig
	runner string // the model-runner binary
	uid    int
	iso    Isolation
	env    *taskEnv
	stderr *os.File // the task's stderr, for what the driver says before the runner starts
	opts   runneropts.Options
	undos  []func()

	// runnerUID is the runner's user (uid and gid); launcher, when set,
	// starts the runner as that user.
	runnerUID int
	launcher  []string
}

// closeLog closes the driver's own end of the task's stderr.
func (p *prepared) closeLog() {
	if p.stderr != nil {
		_ = p.stderr.Close()
		p.stderr = nil
	}
}

// onUndo adds a step to undo; steps run last first.
func (p *prepared) onUndo(f func()) { p.undos = append(p.undos, f) }

// undo takes back everything prepare (and launch) made, newest first.
func (p *prepared) undo() {
	for i := len(p.undos) - 1; i >= 0; i-- {
		p.undos[i]()
	}
	p.undos = nil
}

// prepare checks the task's config and builds what the runner needs: the
// model dir, a worker uid, the driver's private dir, the isolation and the
// runner's options. It starts no process. On error it has undone its work.
func (d *Driver) prepare(cfg *drivers.TaskConfig) (_ *prepared, err error) {
	if d.isolator == nil {
		return nil, errors.New("modelbox: isolation is unavailable (see the plugin's log)")
	}
	plugin := d.cfg()
	var tc TaskConfig
	if err := cfg.DecodeDriverConfig(&tc); err != nil {
		return nil, fmt.Errorf("modelbox: task config: %w", err)
	}
	if err := tc.Validate(plugin.AllowedRuntimes); err != nil {
		return nil, fmt.Errorf("modelbox: task config: %w", err)
	}
	p := &prepared{cfg: cfg}
	defer func() {
		if err != nil {
			p.undo()
		}
	}()
	if p.runner, err = exec.LookPath(plugin.RunnerPath); err != nil {
		return nil, fmt.Errorf("modelbox: runner_path %q: %w", plugin.RunnerPath, err)
	}
	taskDir := cfg.TaskDir().Dir
	listen, err := listenAddress(cfg, tc.Port)
	if err != nil {
		return nil, err
	}
	modelDir, err := resolveModelDir(plugin, taskDir, cfg.AllocID, cfg.Name, tc.ModelDir, d.log.With("task_id", cfg.ID))
	if err != nil {
		return nil, fmt.Errorf("modelbox: %w", err)
	}
	if fi, err := os.Stat(modelDir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("modelbox: model_dir %s is not a directory", modelDir)
	}
	uid, gid, err := d.workerUser(cfg)
	if err != nil {
		return nil, err
	}
	p.uid = uid
	p.onUndo(func() { d.releaseUID(uid) })
	if p.runnerUID, err = d.runnerUser(cfg, uid); err != nil {
		return nil, err
	}
	p.onUndo(func() { d.releaseRunnerUID(p.runnerUID) })

	private := filepath.Join(taskDir, "private", "modelbox")
	hostDir := filepath.Join(private, "host")
	if _, err := os.Lstat(private); errors.Is(err, fs.ErrNotExist) {
		// Made by this start: a failed start leaves none. (The sandbox's
		// mounts live in its own mount namespace: nothing is mounted here.)
		p.onUndo(func() { _ = os.RemoveAll(private) })
	}
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		return nil, fmt.Errorf("modelbox: %w", err)
	}
	_ = os.Chmod(private, 0o711) // the worker's bind mounts need no listing rights
	// The task's stderr is a fifo Nomad's log collector reads until its
	// last writer closes it: this one stays open until the runner has its
	// own (launch, or the undo of a failed start).
	if p.stderr, err = openLog(cfg.StderrPath); err != nil {
		return nil, fmt.Errorf("modelbox: task log: %w", err)
	}
	p.onUndo(p.closeLog)
	if p.env, err = d.environment(cfg, tc.Runtime, plugin, modelDir, p.stderr); err != nil {
		return nil, err
	}
	p.onUndo(p.env.release)
	// The task's own directories appear inside at neutral paths: the
	// worker learns nothing of the host's tree (state path, alloc id).
	binds := []sandbox.Bind{{Host: modelDir, Inside: InsideModelDir}, {Host: hostDir, Inside: InsideHostDir}}
	if p.env.dir != "" {
		binds = append(binds, sandbox.Bind{Host: p.env.dir, Inside: InsideEnvDir})
	}
	devices, err := taskDevices(cfg.Devices)
	if err != nil {
		return nil, err
	}
	mounts, err := taskMounts(cfg.Mounts)
	if err != nil {
		return nil, err
	}
	env := append([]string{"LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"}, deviceEnv(cfg)...)
	gpu, err := d.nvidia.gpu(d.ctx, cfg, plugin)
	if err != nil {
		return nil, err
	}
	if gpu != nil {
		for _, g := range gpu.devices {
			if !slices.ContainsFunc(devices, func(r ReservedDevice) bool { return r.Node.Inside == g.Node.Inside }) {
				devices = append(devices, g)
			}
		}
		binds, env = append(binds, gpu.binds...), append(env, gpu.env...)
	}
	iso, err := d.isolator.Prepare(&IsolationRequest{
		ID: cfg.AllocID + "." + cfg.Name, UID: uid, GID: gid, RunnerUID: p.runnerUID, RunnerGID: p.runnerUID, PrivateDir: private,
		ReadOnly: append(slices.Clone(plugin.ReadonlyPaths), p.env.readOnly...),
		Binds:    binds, Landlock: plugin.Landlock,
		DiskBytes: diskBytes(&tc, plugin), AllowWrittenExecutables: plugin.AllowWrittenExecutables,
		Env:     env,
		Limits:  limitsOf(cfg, plugin),
		Devices: devices, Mounts: mounts,
	})
	if err != nil {
		return nil, fmt.Errorf("modelbox: %w", err)
	}
	p.iso = iso
	p.onUndo(func() { _ = iso.Destroy() })

	if p.opts, err = runnerOptions(cfg, &tc, plugin, listen, modelDir, hostDir, iso.WorkerWrapper()); err != nil {
		return nil, err
	}
	p.opts.Python = p.env.python
	p.opts.WorkerPaths = iso.WorkerPaths()
	if p.env.faulty != "" {
		p.opts.ModelErrorFile = filepath.Join(private, "model-error")
		if err := os.WriteFile(p.opts.ModelErrorFile, []byte(p.env.faulty), 0o600); err != nil {
			return nil, fmt.Errorf("modelbox: %w", err)
		}
	}
	if p.launcher = iso.RunnerWrapper(); len(p.launcher) > 0 {
		// The launcher puts the sandbox in front of the worker itself.
		p.opts.WorkerLauncher, p.opts.WorkerWrapper = true, nil
		p.onUndo(func() { _ = lockSecrets(cfg, p.runnerUID) })
		if err := grantRunner(p, p.runnerUID); err != nil {
			return nil, err
		}
		relativeToTaskDir(&p.opts, taskDir)
	}
	return p, nil
}

// launch starts the prepared task's runner in the task's limits and returns
// its handle. The processes it started join p's undo, which the caller runs
// when launch fails.
func (d *Driver) launch(p *prepared) (*taskHandle, *drivers.TaskHandle, error) {
	cfg := p.cfg
	var inherit []*os.File
	if p.env.env != nil {
		inherit = append(inherit, p.env.env.File())
	}
	argv := append([]string{p.runner, "serve"}, p.opts.Args()...)
	env := cfg.EnvList()
	// The launcher starts the runner once the gate says it is in the
	// task's cgroup, and only then learns the runner's environment: the
	// launcher is root, and the task's environment is the job's to set
	// (LD_PRELOAD...).
	var gate *os.File
	gateEnv := env
	if len(p.launcher) > 0 {
		argv, env = append(append([]string{}, p.launcher...), argv...), []string{}
		r, w, err := os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("modelbox: %w", err)
		}
		defer r.Close()
		defer w.Close()
		inherit, gate = append([]*os.File{r}, inherit...), w // its fd 3 (launcher.GateFD)
	}
	proc, err := startRunner(argv[0], argv[1:], env, cfg, inherit...)
	if err != nil {
		return nil, nil, fmt.Errorf("modelbox: start the runner: %w", err)
	}
	p.onUndo(func() {
		_ = proc.Kill()
		_, _ = proc.Wait()
		// The worker, and anything it forked, dies with the task's limits.
		_ = p.iso.KillAll(5 * time.Second)
	})
	if err := p.iso.AddRunner(proc.Pid); err != nil {
		return nil, nil, fmt.Errorf("modelbox: %w", err)
	}
	if gate != nil {
		if err := launcher.Release(gate, gateEnv); err != nil {
			return nil, nil, fmt.Errorf("modelbox: release the runner's launcher: %w", err)
		}
	}
	st, _ := procfs.ReadStat(proc.Pid)
	h := &taskHandle{
		log: d.log.With("task_id", cfg.ID, "runner_pid", proc.Pid), cfg: cfg, pid: proc.Pid, startTick: st.StartTicks,
		uid: p.uid, runnerUID: p.runnerUID, iso: p.iso, proc: proc, state: drivers.TaskStateRunning, startedAt: time.Now(), done: make(chan struct{}),
	}
	handle := drivers.NewTaskHandle(taskHandleVersion)
	handle.Config = cfg
	if err := handle.SetDriverState(h.encodeState()); err != nil {
		return nil, nil, fmt.Errorf("modelbox: encode task state: %w", err)
	}
	return h, handle, nil
}

// runnerOptions are the runner's options for the task: its addresses and
// model, TLS from the task dir's files or from Vault, the caller checks and
// limits the job asked for, and the sandbox as the worker's wrapper.
func runnerOptions(cfg *drivers.TaskConfig, tc *TaskConfig, plugin *Config, listen, modelDir, hostDir string, wrapper []string) (runneropts.Options, error) {
	taskDir := cfg.TaskDir().Dir
	o := runneropts.Defaults()
	o.Listen, o.ModelDir, o.Runtime, o.Entry = listen, modelDir, tc.Runtime, tc.Entry
	o.Python, o.HostDir, o.WorkerWrapper, o.LogJSON = plugin.Python, hostDir, wrapper, true
	if tc.Plaintext {
		o.Plaintext = true
	} else {
		if v := tc.TLS.Vault; v != nil {
			vaultOptions(&o, v, cfg)
		} else {
			o.TLSCert, o.TLSKey = inTaskDir(taskDir, tc.TLS.Cert), inTaskDir(taskDir, tc.TLS.Key)
		}
		if tc.TLS.ClientCA != "" {
			o.TLSClientCA = inTaskDir(taskDir, tc.TLS.ClientCA)
		}
	}
	if a := tc.Authz; a != nil {
		if a.PolicyFile != "" {
			o.AuthzFile = inTaskDir(taskDir, a.PolicyFile)
		}
		o.Crunch, o.CoordinatorCertHashes = a.Crunch, a.CertHashes
		if a.CRL != "" {
			o.CRLFile = inTaskDir(taskDir, a.CRL)
		}
		o.CRLURLs = envflag.SplitList(a.CRLURL)
		if a.CRLGrace != "" {
			o.CRLGrace, _ = time.ParseDuration(a.CRLGrace) // TaskConfig.Validate checked it
		}
	}
	if tc.Delegation != "" {
		o.DelegationFile = inTaskDir(taskDir, tc.Delegation)
	}
	if tc.HealthPort != "" {
		health, err := listenAddress(cfg, tc.HealthPort)
		if err != nil {
			return o, err
		}
		o.HealthListen = health
	}
	if tc.MetricsPort != "" {
		metrics, err := listenAddress(cfg, tc.MetricsPort)
		if err != nil {
			return o, err
		}
		o.MetricsListen = metrics
	}
	if tc.CallTimeout != "" {
		o.CallTimeout, _ = time.ParseDuration(tc.CallTimeout) // validated
	}
	if tc.MaxQueue > 0 {
		o.MaxQueue = tc.MaxQueue
	}
	// The runner would refuse the same; refusing here says so in the
	// task's events instead of in a runner that exits at once.
	if err := o.Validate(); err != nil {
		return o, fmt.Errorf("modelbox: runner options: %w", err)
	}
	return o, nil
}

// vaultOptions has the runner sign its own certificate with Vault for the
// model's long-lived key, with the task's Vault token.
func vaultOptions(o *runneropts.Options, v *TLSVaultConfig, cfg *drivers.TaskConfig) {
	o.VaultKey, o.CommonName = v.KeyPath, v.CommonName
	if o.VaultKey == "" {
		o.VaultKey = DefaultKeyMount + "/" + cfg.JobID
	}
	if o.CommonName == "" {
		o.CommonName = names.RunnerCommonName(cfg.JobID)
	}
	o.VaultSign, o.VaultAddr = v.SignPath, v.Address
	o.VaultTokenFile = vaultTokenFile(cfg)
	if v.TTL != "" {
		o.CertTTL, _ = time.ParseDuration(v.TTL) // validated
	}
}

// startRunner starts the runner (or its launcher) in its own session (so it
// survives a plugin restart), in the task dir with env, writing to the
// task's log fifos. It inherits the files in inherit as fds 3 and up (the
// environment's in-use lock: held for as long as the runner lives).
func startRunner(path string, args, env []string, cfg *drivers.TaskConfig, inherit ...*os.File) (*os.Process, error) {
	stdout, err := openLog(cfg.StdoutPath)
	if err != nil {
		return nil, err
	}
	defer stdout.Close()
	stderr, err := openLog(cfg.StderrPath)
	if err != nil {
		return nil, err
	}
	defer stderr.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	return os.StartProcess(path, append([]string{path}, args...), &os.ProcAttr{
		Dir:   cfg.TaskDir().Dir,
		Env:   env,
		Files: append([]*os.File{devnull, stdout, stderr}, inherit...),
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
}

func openLog(path string) (*os.File, error) {
	if path == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
}

// listenAddress is the host address of the task's port label.
func listenAddress(cfg *drivers.TaskConfig, label string) (string, error) {
	if cfg.Resources != nil && cfg.Resources.Ports != nil {
		if p, ok := cfg.Resources.Ports.Get(label); ok {
			ip := p.HostIP
			if ip == "" {
				ip = "127.0.0.1"
			}
			return fmt.Sprintf("%s:%d", ip, p.Value), nil
		}
	}
	return "", fmt.Errorf("modelbox: the task has no network port labelled %q (add `network { port %q {} }` to its group)", label, label)
}

func inTaskDir(taskDir, p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(taskDir, p)
}

// diskBytes is the model's writable space: the task's disk_mb, else the
// plugin's, else DefaultDiskMB.
func diskBytes(tc *TaskConfig, plugin *Config) int64 {
	for _, mb := range []int64{int64(tc.DiskMB), plugin.DiskMB} {
		if mb > 0 {
			return mb << 20
		}
	}
	return DefaultDiskMB << 20
}

// cfsPeriodMicros is the CFS period of the hard CPU cap (the kernel's
// default, Docker's and Nomad's).
const cfsPeriodMicros = 100_000

// limitsOf maps the task's resources onto cgroup limits. Without a quota
// from Nomad (cores, or the job's cpu_hard_limit), cpu_hard_limit caps the
// task at its share of the node: the cpu MHz it reserved over the node's
// total, times the node's cores, as Nomad's Docker driver computes it.
func limitsOf(cfg *drivers.TaskConfig, plugin *Config) cgroup.Limits {
	l := cgroup.Limits{WorkerPids: plugin.WorkerPidsLimit, RunnerReserveBytes: plugin.RunnerMemoryReserveMB << 20}
	if cfg.Resources == nil {
		return l
	}
	if lr := cfg.Resources.LinuxResources; lr != nil {
		l.MemoryBytes = lr.MemoryLimitBytes
		l.CPUShares = uint64(max(lr.CPUShares, 0))
		switch {
		case lr.CPUQuota > 0 && lr.CPUPeriod > 0:
			l.CPUQuotaMicros, l.CPUPeriodMicros = lr.CPUQuota, uint64(lr.CPUPeriod)
		case plugin.CPUHardLimit && lr.PercentTicks > 0:
			quota := int64(lr.PercentTicks * float64(runtime.NumCPU()) * cfsPeriodMicros)
			l.CPUQuotaMicros, l.CPUPeriodMicros = max(quota, 1000), cfsPeriodMicros // the kernel's minimum is 1 ms
		}
	}
	if nr := cfg.Resources.NomadResources; nr != nil {
		if nr.Memory.MemoryMaxMB > 0 {
			l.MemoryBytes = nr.Memory.MemoryMaxMB << 20
		} else if l.MemoryBytes == 0 && nr.Memory.MemoryMB > 0 {
			l.MemoryBytes = nr.Memory.MemoryMB << 20
		}
		if l.CPUShares == 0 && nr.Cpu.CpuShares > 0 {
			l.CPUShares = uint64(nr.Cpu.CpuShares)
		}
	}
	return l
}

// workerUser picks the worker's uid and gid: Nomad's dynamic workload user
// when it gave one, else a free id from uid_range. Root is refused.
func (d *Driver) workerUser(cfg *drivers.TaskConfig) (int, int, error) {
	if cfg.User != "" {
		if ugid, err := dynamic.Parse(cfg.User); err == nil {
			return int(ugid), int(ugid), nil
		}
		uid, gid, _, err := dynamic.LookupUser(cfg.User)
		if err != nil {
			return 0, 0, fmt.Errorf("modelbox: user %q: %w", cfg.User, err)
		}
		if uid == 0 || gid == 0 {
			return 0, 0, fmt.Errorf("modelbox: refusing to run a model as %q (uid %d): model workers never run as root", cfg.User, uid)
		}
		return uid, gid, nil
	}
	uidRange := d.cfg().UIDRange
	lo, hi, err := parseRange(uidRange)
	if err != nil {
		return 0, 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for id := lo; id <= hi; id++ {
		if _, used := d.uids[id]; !used {
			d.uids[id] = cfg.ID
			return id, id, nil
		}
	}
	return 0, 0, fmt.Errorf("modelbox: uid_range %s is exhausted", uidRange)
}

func (d *Driver) releaseUID(uid int) {
	d.mu.Lock()
	delete(d.uids, uid)
	d.mu.Unlock()
}

// RecoverTask reattaches a running task after the plugin restarted; it never
// starts anything.
func (d *Driver) RecoverTask(handle *drivers.TaskHandle) error {
	if handle == nil {
		return errors.New("modelbox: no task handle to recover")
	}
	if _, err := d.task(handle.Config.ID); err == nil {
		return nil // still known: nothing to do
	}
	var st taskState
	if err := handle.GetDriverState(&st); err != nil {
		return fmt.Errorf("modelbox: decode task state: %w", err)
	}
	if ps, err := procfs.ReadStat(st.Pid); err != nil || ps.StartTicks != st.StartTicks || ps.State == 'Z' {
		// Its runner uid is free from now on: its secrets must not be.
		_ = lockSecrets(handle.Config, st.RunnerUID)
		return fmt.Errorf("modelbox: the task's runner (pid %d) is gone", st.Pid)
	}
	if st.Isolation == nil || d.isolator == nil {
		return errors.New("modelbox: the task state has no isolation to restore")
	}
	iso, err := d.isolator.Restore(st.Isolation)
	if err != nil {
		return fmt.Errorf("modelbox: %w", err)
	}
	cfg := handle.Config
	if st.TaskConfig != nil {
		cfg = st.TaskConfig
	}
	h := &taskHandle{
		log: d.log.With("task_id", cfg.ID, "runner_pid", st.Pid), cfg: cfg, pid: st.Pid, startTick: st.StartTicks,
		uid: st.UID, runnerUID: st.RunnerUID, iso: iso, state: drivers.TaskStateRunning, startedAt: st.StartedAt, done: make(chan struct{}),
	}
	lo, hi, rangeErr := parseRange(d.cfg().UIDRange)
	d.mu.Lock()
	d.tasks[cfg.ID] = h
	if rangeErr == nil && st.UID >= lo && st.UID <= hi {
		d.uids[st.UID] = cfg.ID
	}
	d.mu.Unlock()
	d.markRunnerUID(st.RunnerUID, cfg.ID)
	go h.watch()
	go d.watchOOM(h)
	h.log.Info("model task recovered")
	return nil
}

func (d *Driver) WaitTask(ctx context.Context, id string) (<-chan *drivers.ExitResult, error) {
	h, err := d.task(id)
	if err != nil {
		return nil, err
	}
	ch := make(chan *drivers.ExitResult, 1)
	go func() {
		defer close(ch)
		select {
		case <-h.done:
			ch <- h.exitResult()
		case <-ctx.Done():
		case <-d.ctx.Done():
		}
	}()
	return ch, nil
}

// StopTask asks the runner to stop (signal, default SIGTERM), waits up to
// timeout, then kills every process of the task.
func (d *Driver) StopTask(id string, timeout time.Duration, signal string) error {
	h, err := d.task(id)
	if err != nil {
		return err
	}
	if signal == "" {
		signal = "SIGTERM"
	}
	sig := unix.SignalNum(signal)
	if sig == 0 {
		return fmt.Errorf("modelbox: unknown signal %q", signal)
	}
	if h.running() {
		_ = syscall.Kill(h.pid, sig)
	}
	select {
	case <-h.done:
		return nil
	case <-time.After(timeout):
	}
	h.log.Warn("model runner did not stop in time; killing the task", "timeout", timeout)
	if err := h.iso.KillAll(10 * time.Second); err != nil {
		return fmt.Errorf("modelbox: %w", err)
	}
	select {
	case <-h.done:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("modelbox: the task did not exit after SIGKILL")
	}
}

func (d *Driver) DestroyTask(id string, force bool) error {
	h, err := d.task(id)
	if err != nil {
		return err
	}
	if h.running() {
		if !force {
			return errors.New("modelbox: cannot destroy a running task (stop it first, or force)")
		}
		if err := d.StopTask(id, 0, "SIGKILL"); err != nil {
			return err
		}
	}
	if err := h.iso.Destroy(); err != nil {
		h.log.Warn("could not remove the task's cgroups", "error", err)
	}
	d.releaseUID(h.uid)
	if err := lockSecrets(h.cfg, h.runnerUID); err != nil {
		h.log.Warn("could not take the secrets dir back from the runner's user", "error", err)
	}
	d.releaseRunnerUID(h.runnerUID)
	d.mu.Lock()
	delete(d.tasks, id)
	d.mu.Unlock()
	return nil
}

func (d *Driver) InspectTask(id string) (*drivers.TaskStatus, error) {
	h, err := d.task(id)
	if err != nil {
		return nil, err
	}
	return h.status(), nil
}

// SignalTask signals the runner: SIGHUP makes it re-read its TLS files
// (a template's change_mode = "signal").
func (d *Driver) SignalTask(id string, signal string) error {
	h, err := d.task(id)
	if err != nil {
		return err
	}
	sig := unix.SignalNum(signal)
	if sig == 0 {
		return fmt.Errorf("modelbox: unknown signal %q", signal)
	}
	if !h.running() {
		return fmt.Errorf("modelbox: task %s is not running", id)
	}
	return syscall.Kill(h.pid, sig)
}

func (d *Driver) ExecTask(string, []string, time.Duration) (*drivers.ExecTaskResult, error) {
	return nil, ErrExecRefused
}

// ExecTaskStreaming refuses too: `nomad alloc exec` reaches this.
func (d *Driver) ExecTaskStreaming(context.Context, string, *drivers.ExecOptions) (*drivers.ExitResult, error) {
	return nil, ErrExecRefused
}

// Shutdown stops the driver's background work (not the tasks).
func (d *Driver) Shutdown() { d.cancel() }
