//go:build e2e

package driver_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/helper/uuid"
	"github.com/hashicorp/nomad/nomad/structs"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/hashicorp/nomad/plugins/drivers/testutils"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/modelnodes/modelnodes/driver"
	"github.com/modelnodes/modelnodes/driver/launcher"
	"github.com/modelnodes/modelnodes/driver/sandbox"
	"github.com/modelnodes/modelnodes/driver/sandbox/seccomp"
	"github.com/modelnodes/modelnodes/internal/procfs"
	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	"github.com/modelnodes/modelnodes/internal/testing/testtime"
	"github.com/modelnodes/modelnodes/names"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
)

// The test binary is the plugin binary too: it must run the sandbox and the
// runner's launcher.
func TestMain(m *testing.M) {
	if sandbox.Main(os.Args[1:]) || launcher.Main(os.Args[1:]) {
		return
	}
	os.Exit(m.Run())
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the modelbox driver isolates workers with namespaces, cgroups and setuid, which need root; run the tests as root (CI does)")
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("/usr/bin/python3 is missing: the sandboxed Python model cannot run")
	}
}

type env struct {
	t       *testing.T
	d       *driver.Driver
	h       *testutils.DriverHarness
	task    *drivers.TaskConfig
	addr    string
	cleanup func()
	store   string          // the plugin's model_store
	logs    *syncbuf.Buffer // the driver's log, every level
}

// newEnv configures a driver in Nomad's in-process harness and prepares a
// task running model (a directory under driver/testdata or runner/testdata).
func newEnv(t *testing.T, model string, res *drivers.LinuxResources, pluginExtra map[string]any) *env {
	requireRoot(t)
	// The test's log shows Info and up; logs keeps everything, for tests
	// that check what the driver logged (uv's lines are Debug).
	logs := &syncbuf.Buffer{}
	log := hclog.NewInterceptLogger(&hclog.LoggerOptions{Level: hclog.Info, Output: testWriter{t}})
	log.RegisterSink(hclog.NewSinkAdapter(&hclog.LoggerOptions{Level: hclog.Trace, Output: logs}))
	d := driver.New(log)
	h := testutils.NewDriverHarness(t, d)
	store := filepath.Join(t.TempDir(), "models")
	cfg := map[string]any{"runner_path": modelRunner(t), "python": "/usr/bin/python3", "model_store": store}
	for k, v := range pluginExtra {
		cfg[k] = v
	}
	setConfig(t, h, cfg)

	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	portNum := 0
	for _, c := range port {
		portNum = portNum*10 + int(c-'0')
	}
	if res == nil {
		res = &drivers.LinuxResources{MemoryLimitBytes: 512 << 20, CPUShares: 500}
	}
	task := &drivers.TaskConfig{
		ID:      uuid.Generate(),
		AllocID: uuid.Generate(),
		Name:    "model",
		Resources: &drivers.Resources{
			NomadResources: &structs.AllocatedTaskResources{Memory: structs.AllocatedMemoryResources{MemoryMB: res.MemoryLimitBytes >> 20}},
			LinuxResources: res,
			Ports:          &structs.AllocatedPorts{{Label: "grpc", Value: portNum, HostIP: "127.0.0.1"}},
		},
	}
	cleanup := h.MkAllocDir(task, true)
	modelDir := filepath.Join(task.TaskDir().LocalDir, "model")
	copyDir(t, model, modelDir)
	if err := task.EncodeConcreteDriverConfig(&driver.TaskConfig{ModelDir: "local/model", Runtime: "python", Port: "grpc", Plaintext: true}); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, d: d, h: h, task: task, addr: addr, cleanup: cleanup, store: store, logs: logs}
	t.Cleanup(func() {
		_ = d.DestroyTask(task.ID, true)
		cleanup()
	})
	return e
}

func setConfig(t *testing.T, h *testutils.DriverHarness, cfg map[string]any) {
	t.Helper()
	var data []byte
	if err := base.MsgPackEncode(&data, cfg); err != nil {
		t.Fatal(err)
	}
	if err := h.SetConfig(&base.Config{PluginConfig: data}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) start() *drivers.TaskHandle {
	e.t.Helper()
	handle, _, err := e.h.StartTask(e.task)
	if err != nil {
		e.t.Fatalf("StartTask: %v", err)
	}
	if err := e.h.WaitUntilStarted(e.task.ID, testtime.Scaled(10*time.Second)); err != nil {
		e.t.Fatal(err)
	}
	return handle
}

// client dials the runner and waits until the model is loaded and set up.
func (e *env) client() dspb.DynamicSubclassServiceClient {
	e.t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	if err := awaitServing(e.addr, serviceDynamicSubclass, testtime.Scaled(30*time.Second)); err != nil {
		e.t.Fatalf("the model never became SERVING: %v\nrunner stderr:\n%s", err, e.stderr())
	}
	return dspb.NewDynamicSubclassServiceClient(conn)
}

func (e *env) stderr() string {
	b, _ := os.ReadFile(filepath.Join(e.task.TaskDir().LogDir, "model.stderr.0"))
	return string(b)
}

func call(t *testing.T, c dspb.DynamicSubclassServiceClient, method string, args ...*commonspb.Variant) *dspb.CallResponse {
	t.Helper()
	var a []*commonspb.Argument
	for i, v := range args {
		a = append(a, &commonspb.Argument{Position: uint32(i), Data: v})
	}
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(60*time.Second))
	defer cancel()
	res, err := c.Call(ctx, &dspb.CallRequest{MethodName: method, MethodArguments: a})
	if err != nil {
		t.Fatalf("Call(%s): %v", method, err)
	}
	return res
}

func callReq(method string) *dspb.CallRequest { return &dspb.CallRequest{MethodName: method} }

func setup(t *testing.T, c dspb.DynamicSubclassServiceClient, className string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(30*time.Second))
	defer cancel()
	res, err := c.Setup(ctx, &dspb.SetupRequest{ClassName: className})
	if err != nil || res.GetStatus().GetCode() != "SUCCESS" {
		t.Fatalf("Setup(%s): %v %v", className, res, err)
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			copyDir(t, filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()))
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func alive(pid int) bool { return procfs.Running(pid) }

// The harness's lifecycle: start → wait → recover (a new driver instance, as
// after a plugin restart, reattaches without restarting) → stop → destroy.
func TestLifecycleWithRecovery(t *testing.T) {
	e := newEnv(t, "../runner/testdata/pymodel", nil, nil)
	handle := e.start()
	c := e.client()
	setup(t, c, "crunch_base.Tracker")
	if v, _ := call(t, c, "predict", commonspb.Int(3)).GetMethodResponse().AsDouble(); v != 3 {
		t.Fatalf("predict(3) = %v", v)
	}
	status, err := e.h.InspectTask(e.task.ID)
	if err != nil || status.State != drivers.TaskStateRunning {
		t.Fatalf("InspectTask: %v %v", status, err)
	}
	runnerPid := status.DriverAttributes["pid"]

	// Stats come from the task's cgroups.
	statsCtx, cancelStats := context.WithCancel(context.Background())
	stats, err := e.h.TaskStats(statsCtx, e.task.ID, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case u := <-stats:
		if u == nil || u.ResourceUsage.MemoryStats.Usage == 0 {
			t.Errorf("TaskStats sent %+v, want the task's memory usage", u)
		}
	case <-time.After(testtime.Scaled(10 * time.Second)):
		t.Error("no TaskStats within 10s (times MODELNODES_TEST_TIMEOUT_SCALE)")
	}
	cancelStats()

	// SIGHUP (a template's change_mode = "signal") does not stop the runner.
	if err := e.h.SignalTask(e.task.ID, "SIGHUP"); err != nil {
		t.Fatal(err)
	}
	if err := e.h.SignalTask(e.task.ID, "SIGNOPE"); err == nil {
		t.Error("an unknown signal was accepted")
	}

	// Nobody may exec into a model.
	if _, err := e.h.ExecTask(e.task.ID, []string{"cat", "local/model/main.py"}, time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("ExecTask: %v, want refused", err)
	}
	if _, err := e.d.ExecTaskStreaming(context.Background(), e.task.ID, &drivers.ExecOptions{Command: []string{"sh"}}); !errors.Is(err, driver.ErrExecRefused) {
		t.Errorf("ExecTaskStreaming: %v, want ErrExecRefused", err)
	}

	// The plugin restarts: a new driver instance recovers the task from its
	// handle alone, without restarting anything.
	d2 := driver.New(hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: testWriter{t}}))
	h2 := testutils.NewDriverHarness(t, d2)
	setConfig(t, h2, map[string]any{"runner_path": modelRunner(t), "python": "/usr/bin/python3", "model_store": e.store})
	if _, err := h2.InspectTask(e.task.ID); !errors.Is(err, drivers.ErrTaskNotFound) && (err == nil || !strings.Contains(err.Error(), drivers.ErrTaskNotFound.Error())) {
		t.Fatalf("a fresh driver knows the task already: %v", err)
	}
	if err := h2.RecoverTask(handle); err != nil {
		t.Fatalf("RecoverTask: %v", err)
	}
	status, err = h2.InspectTask(e.task.ID)
	if err != nil || status.State != drivers.TaskStateRunning || status.DriverAttributes["pid"] != runnerPid {
		t.Fatalf("after recovery: %+v %v; want the same runner (pid %s) running", status, err, runnerPid)
	}
	// Same runner, same worker: the instance from Setup is still there.
	if res := call(t, c, "predict", commonspb.Int(4)); res.GetStatus().GetCode() != "SUCCESS" {
		t.Fatalf("call after recovery: %v", res.GetStatus())
	}

	wait, err := h2.WaitTask(context.Background(), e.task.ID)
	if err != nil {
		t.Fatal(err)
	}
	pids := taskPIDs(t, e)
	if len(pids) < 3 {
		t.Fatalf("task processes %v: want the runner, the sandbox and the worker", pids)
	}
	if err := h2.StopTask(e.task.ID, 10*time.Second, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-wait:
		if res == nil {
			t.Fatal("WaitTask closed without a result")
		}
	case <-time.After(testtime.Scaled(20 * time.Second)):
		t.Fatal("WaitTask did not return after StopTask")
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d of the stopped task is still alive", pid)
		}
	}
	if err := h2.DestroyTask(e.task.ID, false); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.InspectTask(e.task.ID); err == nil {
		t.Fatal("the task is still known after DestroyTask")
	}
	// v1 keeps a group per controller hierarchy, v2 one in the unified tree.
	for _, root := range []string{"/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(root, "modelbox", e.task.AllocID+".model")); !os.IsNotExist(err) {
			t.Errorf("the task's cgroup is left behind under %s: %v", root, err)
		}
	}
}

// taskPIDs lists the processes in the task's cgroup (v1 pids hierarchy).
func taskPIDs(t *testing.T, e *env) []int {
	var pids []int
	for _, leaf := range []string{"runner", "worker"} {
		b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/pids/modelbox", e.task.AllocID+".model", leaf, "cgroup.procs"))
		if err != nil {
			b, err = os.ReadFile(filepath.Join("/sys/fs/cgroup/modelbox", e.task.AllocID+".model", leaf, "cgroup.procs"))
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range strings.Fields(string(b)) {
			n := 0
			for _, c := range f {
				n = n*10 + int(c-'0')
			}
			pids = append(pids, n)
		}
	}
	return pids
}

func TestFingerprint(t *testing.T) {
	requireRoot(t)
	d := driver.New(hclog.NewNullLogger())
	h := testutils.NewDriverHarness(t, d)
	setConfig(t, h, map[string]any{"runner_path": modelRunner(t), "model_store": t.TempDir()})
	ch, err := h.Fingerprint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fp := <-ch
	if fp.Health != drivers.HealthStateHealthy {
		t.Fatalf("health %s: %s", fp.Health, fp.HealthDescription)
	}
	for _, a := range []string{"driver.modelbox.cgroup", "driver.modelbox.landlock_abi", "driver.modelbox.user_namespaces", "driver.modelbox.python", "driver.modelbox.gpu"} {
		if _, ok := fp.Attributes[a]; !ok {
			t.Errorf("fingerprint lacks %s", a)
		}
	}
	// The node's hardening settings, as the kernel has them now.
	// (kernel.io_uring_disabled came with Linux 6.6: an older kernel has
	// none, and the attribute is absent.)
	want, err := os.ReadFile("/proc/sys/kernel/io_uring_disabled")
	got, ok := fp.Attributes["driver.modelbox.sysctl.kernel.io_uring_disabled"]
	switch {
	case err != nil && ok:
		t.Errorf("driver.modelbox.sysctl.kernel.io_uring_disabled = %v on a kernel without the setting", got)
	case err == nil && (!ok || got.GoString() != strings.TrimSpace(string(want))):
		t.Errorf("driver.modelbox.sysctl.kernel.io_uring_disabled = %v, want %q (the kernel's)", got, strings.TrimSpace(string(want)))
	}
	if got := fp.Attributes["driver.modelbox.cpu_hard_limit"]; got == nil || got.GoString() != "true" {
		t.Errorf("driver.modelbox.cpu_hard_limit = %v, want true (the default)", got)
	}
	// scripts/v2vm's guests say which hierarchy they booted: the driver
	// must have seen the same, or the v2 run tested the v1 code path.
	if want := os.Getenv("MODELNODES_EXPECT_CGROUP"); want != "" {
		got := ""
		if a := fp.Attributes["driver.modelbox.cgroup"]; a != nil {
			got, _ = a.GetString()
		}
		if got != want {
			t.Errorf("driver.modelbox.cgroup = %q on a host booted with cgroup %s (MODELNODES_EXPECT_CGROUP)", got, want)
		}
	}
	// The node says which seccomp profile its workers run under, and the
	// plugin option that changes the profile changes it.
	if got, want := fp.Attributes[names.AttrSeccompProfile], seccomp.Hash(seccomp.Options{}); got == nil || *got.String != want {
		t.Errorf("%s = %v, want %s", names.AttrSeccompProfile, got, want)
	}
	written := testutils.NewDriverHarness(t, driver.New(hclog.NewNullLogger()))
	setConfig(t, written, map[string]any{"runner_path": modelRunner(t), "model_store": t.TempDir(), "allow_written_executables": true})
	if ch, err = written.Fingerprint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := (<-ch).Attributes[names.AttrSeccompProfile], seccomp.Hash(seccomp.Options{AllowWrittenExecutables: true}); got == nil || *got.String != want || want == seccomp.Hash(seccomp.Options{}) {
		t.Errorf("with allow_written_executables: %s = %v, want %s (another profile)", names.AttrSeccompProfile, got, want)
	}
	// A node whose runner binary is missing reports the driver unhealthy.
	bad := testutils.NewDriverHarness(t, driver.New(hclog.NewNullLogger()))
	setConfig(t, bad, map[string]any{"runner_path": "/nonexistent/model-runner"})
	ch, err = bad.Fingerprint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if fp := <-ch; fp.Health != drivers.HealthStateUnhealthy || !strings.Contains(fp.HealthDescription, "runner_path") {
		t.Errorf("without a runner binary: %s %q, want unhealthy naming runner_path", fp.Health, fp.HealthDescription)
	}
}

// A job's authz block must name a revocation list: without one a revoked
// coordinator would stay admitted, and the runner's development switch to
// go without cannot be reached from a job.
func TestAuthzWithoutRevocationListIsRefused(t *testing.T) {
	e := newEnv(t, "../runner/testdata/pymodel", nil, nil)
	tlsCfg := &driver.TLSConfig{Cert: "secrets/tls.pem", Key: "secrets/tls.pem", ClientCA: "secrets/ca.pem"}
	for name, tc := range map[string]struct {
		authz *driver.AuthzConfig
		want  string
	}{
		"no crl source":   {&driver.AuthzConfig{Crunch: "alpha", CertHashes: []string{strings.Repeat("ab", 32)}}, "needs a revocation list"},
		"bad crl_grace":   {&driver.AuthzConfig{Crunch: "alpha", CRLURL: "https://vault:8200/v1/pki_int/issuers", CRLGrace: "soon"}, "crl_grace"},
		"zero crl_grace":  {&driver.AuthzConfig{Crunch: "alpha", CRLURL: "https://vault:8200/v1/pki_int/issuers", CRLGrace: "0s"}, "crl_grace"},
		"crl and crl_url": {&driver.AuthzConfig{Crunch: "alpha", CRL: "secrets/crl.pem", CRLURL: "https://vault:8200/v1/pki_int/issuers"}, "exclude each other"},
	} {
		if err := e.task.EncodeConcreteDriverConfig(&driver.TaskConfig{ModelDir: "local/model", Runtime: "python", Port: "grpc",
			TLS: tlsCfg, Authz: tc.authz}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := e.h.StartTask(e.task); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: StartTask = %v, want an error naming %q", name, err, tc.want)
		}
	}
}
