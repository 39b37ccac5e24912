//go:build e2e

package driver_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/hashicorp/nomad/plugins/drivers"

	"github.com/modelnodes/modelnodes/driver/nvidia"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/internal/testing/testtime"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
)

// nvidiaPlugin is nomad-device-nvidia's binary name: Nomad loads it from
// the repository's bin (scripts/gpu-check puts it there).
const nvidiaPlugin = "nomad-device-nvidia"

// The whole GPU path on a real NVIDIA host (scripts/gpu-check runs it):
// Nomad with nomad-device-nvidia reserves a GPU for a model job, the
// modelbox driver gives the sandboxed worker that GPU, and a torch model
// reports torch.cuda.is_available(), the device and a matrix multiply's
// time. On a host with two GPUs or more, two jobs each see their own GPU
// and only it. Lines starting "gpu-check:" are the report.
func TestGPUCheck(t *testing.T) {
	requireRoot(t)
	gpus, err := nvidia.Node.GPUs()
	if err != nil || len(gpus) == 0 {
		t.Skipf("no NVIDIA GPU on this host (%v): scripts/gpu-check runs this test on a GPU host", err)
	}
	repo, _ := filepath.Abs("..")
	if !fileExists(filepath.Join(repo, "bin", nvidiaPlugin)) {
		t.Skipf("bin/%s is missing: scripts/gpu-check builds it", nvidiaPlugin)
	}
	version, _ := nvidia.Node.DriverVersion()
	report := func(format string, a ...any) { fmt.Printf("gpu-check: "+format+"\n", a...) }
	report("host: %d GPU(s), driver %s, first %s", len(gpus), version, gpus[0].Model)

	// The model runs on the node's Python; without torch there, its
	// environment is built from requirements.txt (uv, and network).
	python := "/usr/bin/python3"
	model := filepath.Join(t.TempDir(), "gpumodel")
	copyDir(t, "testdata/gpumodel", model)
	if err := os.Chmod(filepath.Dir(model), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(python, "-c", "import torch; print(torch.__version__)").Output(); err == nil {
		report("torch %s from the node's %s", strings.TrimSpace(string(out)), python)
	} else {
		report("no torch for %s: the model's environment installs it (uv, network, minutes)", python)
		if err := os.WriteFile(filepath.Join(model, "requirements.txt"), []byte("torch\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	hcl := fmt.Sprintf("plugin %q {\n  config {\n    enabled            = true\n    fingerprint_period = \"5s\"\n  }\n}\n", nvidiaPlugin)
	c := testcluster.StartWith(t, testcluster.Nomad, testcluster.Options{NomadPluginHCL: hcl})
	nomad := c.Nomad.Client
	waitDriverHealthy(t, nomad)
	waitNvidiaGPUs(t, nomad, min(len(gpus), 2))

	jobs := min(len(gpus), 2)
	seen := map[string]string{}
	for i := range jobs {
		name := fmt.Sprintf("gpu-check-%d", i)
		t0 := time.Now()
		alloc, ds := runDeviceModel(t, nomad, name, model, "nvidia/gpu", func(task *nomadapi.Task) {
			task.Resources.CPU, task.Resources.MemoryMB = new(2000), new(8192)
			task.Config["disk_mb"] = 2048
		})
		rep, err := call(t, ds, "report", commonspb.Int(4096)).GetMethodResponse().AsJSON()
		if err != nil {
			t.Fatal(err)
		}
		r := rep.(map[string]any)
		report("job %s: healthy after %.1fs; NVIDIA_VISIBLE_DEVICES=%v; /dev: %v", name, time.Since(t0).Seconds(), r["visible"], r["dev"])
		report("job %s: torch %v, torch.cuda.is_available() = %v", name, r["torch"], r["cuda_available"])
		report("job %s: nvidia-smi -L in the sandbox: %v", name, r["nvidia_smi"])
		if r["cuda_available"] != true {
			t.Errorf("job %s: CUDA is not available in the sandbox (see the task's stderr: nomad alloc logs -stderr %s)", name, alloc.ID)
			continue
		}
		report("job %s: device %v (%v MiB), %v device(s) visible; 4096x4096 fp32 matmul %.2f ms (max error %.2g)",
			name, r["device_name"], r["memory_mib"], r["device_count"], r["matmul_ms"], r["matmul_max_error"])
		if n, _ := r["device_count"].(float64); n != 1 {
			t.Errorf("job %s sees %v GPUs, want exactly its one", name, r["device_count"])
		}
		if e, _ := r["matmul_max_error"].(float64); e > 0.1 {
			t.Errorf("job %s: the matmul is wrong (max error %v)", name, e)
		}
		uuid := strings.ToLower(strings.TrimPrefix(fmt.Sprint(r["device_uuid"]), "GPU-"))
		visible := strings.ToLower(strings.TrimPrefix(fmt.Sprint(r["visible"]), "GPU-"))
		if uuid != "" && uuid != visible {
			t.Errorf("job %s: torch's device %s is not the reserved %s", name, uuid, visible)
		}
		if other, ok := seen[visible]; ok {
			t.Errorf("jobs %s and %s both got GPU %s", other, name, visible)
		}
		seen[visible] = name
	}
	if jobs > 1 && len(seen) == jobs {
		report("isolation: %d jobs, each saw only its own GPU", jobs)
	}
}

// The driver alone on a GPU host, without Nomad (the harness plays Nomad
// and sets the reservation nomad-device-nvidia would): the sandboxed torch
// model gets the first GPU, and only it. It needs torch for the node's
// /usr/bin/python3 and bin/'s model-runner, nothing else: the quick device
// check where the agents cannot be carried.
func TestGPUInSandbox(t *testing.T) {
	requireRoot(t)
	gpus, err := nvidia.Node.GPUs()
	if err != nil || len(gpus) == 0 {
		t.Skipf("no NVIDIA GPU on this host (%v)", err)
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import torch").Run(); err != nil {
		t.Skipf("no torch for /usr/bin/python3 (%v): this check runs the node's torch", err)
	}
	e := newEnv(t, "testdata/gpumodel", &drivers.LinuxResources{MemoryLimitBytes: 8 << 30, CPUShares: 2000}, map[string]any{"disk_mb": 2048})
	e.task.DeviceEnv = map[string]string{nvidia.EnvVisibleDevices: gpus[0].UUID}
	e.start()
	c := e.client()
	setup(t, c, "base.Base")
	rep, err := call(t, c, "report", commonspb.Int(4096)).GetMethodResponse().AsJSON()
	if err != nil {
		t.Fatal(err)
	}
	r := rep.(map[string]any)
	fmt.Printf("gpu-check: sandbox: torch %v, cuda %v, /dev %v, device %v (%v MiB), %v visible, matmul %v ms (max error %v)\n",
		r["torch"], r["cuda_available"], r["dev"], r["device_name"], r["memory_mib"], r["device_count"], r["matmul_ms"], r["matmul_max_error"])
	fmt.Printf("gpu-check: sandbox: nvidia-smi -L: %v\n", r["nvidia_smi"])
	if r["cuda_available"] != true {
		t.Fatalf("CUDA is not available in the sandbox; the runner's stderr:\n%s", e.stderr())
	}
	if n, _ := r["device_count"].(float64); n != 1 {
		t.Errorf("the worker sees %v GPUs, want its one", r["device_count"])
	}
	for _, d := range r["dev"].([]any) {
		if name := d.(string); gpuNode.MatchString(name) && name != fmt.Sprintf("nvidia%d", gpus[0].Minor) {
			t.Errorf("the worker's /dev holds %s, another GPU's node", name)
		}
	}
	if e, _ := r["matmul_max_error"].(float64); e > 0.1 {
		t.Errorf("the matmul is wrong (max error %v)", e)
	}
}

// gpuNode matches a GPU's node name in /dev.
var gpuNode = regexp.MustCompile(`^nvidia[0-9]+$`)

// waitNvidiaGPUs waits until the node reports at least n healthy
// nvidia/gpu devices.
func waitNvidiaGPUs(t *testing.T, nomad *nomadapi.Client, n int) {
	t.Helper()
	deadline := time.Now().Add(testtime.Scaled(90 * time.Second))
	for time.Now().Before(deadline) {
		if nodes, _, err := nomad.Nodes().List(nil); err == nil && len(nodes) > 0 {
			if node, _, err := nomad.Nodes().Info(nodes[0].ID, nil); err == nil && node.NodeResources != nil {
				healthy := 0
				for _, d := range node.NodeResources.Devices {
					if d.Vendor == "nvidia" && d.Type == "gpu" {
						for _, inst := range d.Instances {
							if inst.Healthy {
								healthy++
							}
						}
					}
				}
				if healthy >= n {
					return
				}
			}
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("the node never reported %d healthy nvidia/gpu devices (is %s loaded? see the Nomad log above)", n, nvidiaPlugin)
}
