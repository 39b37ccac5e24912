//go:build e2e

package driver_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/nomad/helper/uuid"
	"github.com/hashicorp/nomad/nomad/structs"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/modelnodes/modelnodes/driver"
	"github.com/modelnodes/modelnodes/driver/pyenv/pyenvtest"
	"github.com/modelnodes/modelnodes/internal/procfs"
)

// benchTask builds a task config with its own alloc dir holding the Python
// echo model, listening on a free loopback port.
func benchTask(b *testing.B, root string) (*drivers.TaskConfig, string) {
	return benchTaskOf(b, root, "../runner/testdata/pymodel", "")
}

// benchTaskOf is benchTask with the model in src and, when requirements is
// not empty, a requirements.txt holding it.
func benchTaskOf(b *testing.B, root, src, requirements string) (*drivers.TaskConfig, string) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	allocDir := filepath.Join(root, uuid.Generate())
	task := &drivers.TaskConfig{
		ID: uuid.Generate(), AllocID: uuid.Generate(), Name: "model", AllocDir: allocDir,
		Resources: &drivers.Resources{
			NomadResources: &structs.AllocatedTaskResources{Memory: structs.AllocatedMemoryResources{MemoryMB: 256}},
			LinuxResources: &drivers.LinuxResources{MemoryLimitBytes: 256 << 20, CPUShares: 100},
			Ports:          &structs.AllocatedPorts{{Label: "grpc", Value: port, HostIP: "127.0.0.1"}},
		},
	}
	for _, d := range []string{"local", "secrets", "private"} {
		if err := os.MkdirAll(filepath.Join(allocDir, "model", d), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	modelDir := filepath.Join(allocDir, "model", "local", "model")
	copyDirB(b, src, modelDir)
	if requirements != "" {
		if err := os.WriteFile(filepath.Join(modelDir, driver.RequirementsFile), []byte(requirements), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if err := task.EncodeConcreteDriverConfig(&driver.TaskConfig{ModelDir: "local/model", Runtime: "python", Port: "grpc", Plaintext: true}); err != nil {
		b.Fatal(err)
	}
	return task, addr
}

func copyDirB(b *testing.B, src, dst string) {
	if out, err := exec.Command("cp", "-r", src, dst).CombinedOutput(); err != nil {
		b.Fatalf("cp: %v %s", err, out)
	}
}

// waitServing polls until the model's DynamicSubclass service is SERVING.
func waitServing(b *testing.B, addr string) {
	// Retry the connection every few ms: grpc-go's default backoff (1 s)
	// would measure itself, not the start.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1, MaxDelay: 5 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	h := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		res, err := h.Check(ctx, &healthpb.HealthCheckRequest{Service: "dynamic_subclass.DynamicSubclassService"})
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
		if ctx.Err() != nil {
			b.Fatalf("never SERVING: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func reportPercentiles(b *testing.B, d []time.Duration) {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(d[len(d)*9/10].Microseconds())/1000, "p90-ms")
}

// BenchmarkTaskStart times StartTask until the runner reports the Python echo
// model SERVING, beside the same runner started bare (no driver, no sandbox,
// no cgroups) in the same run.
func BenchmarkTaskStart(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	runner := modelRunnerB(b)
	b.Run("baseline=bare-runner", func(b *testing.B) {
		root := b.TempDir()
		var took []time.Duration
		for i := 0; i < b.N; i++ {
			task, addr := benchTask(b, root)
			t0 := time.Now()
			cmd := exec.Command(runner, "serve", "--plaintext", "--listen", addr, "--python", "/usr/bin/python3",
				"--model-dir", filepath.Join(task.AllocDir, "model", "local", "model"))
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			waitServing(b, addr)
			took = append(took, time.Since(t0))
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		reportPercentiles(b, took)
	})
	b.Run("driver=modelbox", func(b *testing.B) {
		benchStarts(b, runner, "", nil)
	})
	// A submission with requirements, its environment already on the node
	// (built before the timer starts): the start finds it by key and
	// bind-mounts it. With 1 GiB more in the environment (random data, as
	// torch's wheels are), a start that copied it would show.
	uv := pyenvtest.UV(b)
	b.Run("driver=modelbox/env=shared", func(b *testing.B) {
		benchStarts(b, runner, "six==1.16.0\n", map[string]any{"root": filepath.Join(b.TempDir(), "envs"), "uv": uv})
	})
	b.Run("driver=modelbox/env=shared-1GiB", func(b *testing.B) {
		root := filepath.Join(b.TempDir(), "envs")
		benchStarts(b, runner, "six==1.16.0\n", map[string]any{"root": root, "uv": uv}, func() { addBallast(b, root, 1<<30) })
	})
}

// benchStarts times StartTask until SERVING, b.N times, for a Python model
// with the given requirements (none: ""), and the environments block envs.
// With requirements, one start before the timer builds the environment,
// then warm runs.
func benchStarts(b *testing.B, runner, requirements string, envs map[string]any, warmed ...func()) {
	root := b.TempDir()
	d := driver.New(hclog.NewNullLogger())
	// The models go to a store of the benchmark's own, not the production
	// default under /var/lib.
	plugin := map[string]any{"runner_path": runner, "python": "/usr/bin/python3", "model_store": b.TempDir()}
	if envs != nil {
		plugin["environments"] = envs
	}
	var cfg []byte
	_ = base.MsgPackEncode(&cfg, plugin)
	if err := d.SetConfig(&base.Config{PluginConfig: cfg}); err != nil {
		b.Fatal(err)
	}
	start := func() time.Duration {
		task, addr := benchTaskOf(b, root, "../runner/testdata/pymodel", requirements)
		t0 := time.Now()
		if _, _, err := d.StartTask(task); err != nil {
			b.Fatal(err)
		}
		waitServing(b, addr)
		took := time.Since(t0)
		_ = d.StopTask(task.ID, 5*time.Second, "SIGTERM")
		_ = d.DestroyTask(task.ID, true)
		return took
	}
	if requirements != "" {
		start()
		for _, f := range warmed {
			f()
		}
	}
	b.ResetTimer()
	var took []time.Duration
	for i := 0; i < b.N; i++ {
		took = append(took, start())
	}
	reportPercentiles(b, took)
}

// addBallast adds size bytes of random data, in 4 MiB files, to the one
// environment under root, keeping it read-only.
func addBallast(b *testing.B, root string, size int) {
	envs, err := filepath.Glob(filepath.Join(root, "envs", "*"))
	if err != nil || len(envs) != 1 {
		b.Fatalf("environments under %s: %v %v", root, envs, err)
	}
	dir := filepath.Join(envs[0], "ballast")
	if err := os.Chmod(envs[0], 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 4<<20)
	for i := 0; i < size/len(buf); i++ {
		_, _ = rng.Read(buf)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("part-%04d.bin", i)), buf, 0o444); err != nil {
			b.Fatal(err)
		}
	}
	for _, p := range []string{dir, envs[0]} {
		if err := os.Chmod(p, 0o555); err != nil {
			b.Fatal(err)
		}
	}
	// Written back now, not while the starts are timed.
	syscall.Sync()
}

// BenchmarkPluginRSS loads bin/nomad-driver-modelbox the way Nomad does (a
// go-plugin subprocess), starts 20 model tasks through it and reports the
// plugin process's resident memory, beside the same plugin with no task.
func BenchmarkPluginRSS(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	repo, _ := filepath.Abs("..")
	pluginBin := filepath.Join(repo, "bin", "nomad-driver-modelbox")
	if !fileExists(pluginBin) {
		b.Skip("bin/nomad-driver-modelbox is missing: run `make build`")
	}
	runner := modelRunnerB(b)
	for _, tasks := range []int{0, 20} {
		b.Run(fmt.Sprintf("tasks=%d", tasks), func(b *testing.B) {
			var rss float64
			for i := 0; i < b.N; i++ {
				rss = pluginRSS(b, pluginBin, runner, tasks)
			}
			b.ReportMetric(rss, "RSS-MiB")
		})
	}
}

func pluginRSS(b *testing.B, pluginBin, runner string, tasks int) float64 {
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  base.Handshake,
		Plugins:          map[string]plugin.Plugin{base.PluginTypeDriver: drivers.NewDriverPlugin(nil, hclog.NewNullLogger())},
		Cmd:              exec.Command(pluginBin),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.NewNullLogger(),
	})
	defer client.Kill()
	rpc, err := client.Client()
	if err != nil {
		b.Fatal(err)
	}
	raw, err := rpc.Dispense(base.PluginTypeDriver)
	if err != nil {
		b.Fatal(err)
	}
	d := raw.(drivers.DriverPlugin)
	var cfg []byte
	_ = base.MsgPackEncode(&cfg, map[string]any{"runner_path": runner, "python": "/usr/bin/python3", "model_store": b.TempDir()})
	if err := d.SetConfig(&base.Config{PluginConfig: cfg, AgentConfig: &base.AgentConfig{Driver: &base.ClientDriverConfig{}}}); err != nil {
		b.Fatal(err)
	}
	root := b.TempDir()
	var ids []string
	defer func() {
		for _, id := range ids {
			_ = d.StopTask(id, 5*time.Second, "SIGTERM")
			_ = d.DestroyTask(id, true)
		}
	}()
	for i := 0; i < tasks; i++ {
		task, addr := benchTask(b, root)
		if _, _, err := d.StartTask(task); err != nil {
			b.Fatal(err)
		}
		ids = append(ids, task.ID)
		waitServing(b, addr)
	}
	time.Sleep(time.Second) // let start-up garbage settle
	rss, err := procfs.RSSMiB(client.ReattachConfig().Pid)
	if err != nil {
		b.Fatal(err)
	}
	return rss
}

func modelRunnerB(b *testing.B) string {
	repo, _ := filepath.Abs("..")
	p := filepath.Join(repo, "bin", "model-runner")
	if dir := os.Getenv("MODELNODES_BIN"); dir != "" {
		p = filepath.Join(dir, "model-runner")
	}
	if !fileExists(p) {
		b.Skip("bin/model-runner is missing: run `make build`")
	}
	return p
}
