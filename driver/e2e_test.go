//go:build e2e

package driver_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/internal/testing/testtime"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
)

// The driver in a real Nomad agent: jobs run a Python model and a Go model,
// their allocations turn healthy, `nomad alloc exec` is refused, and a client
// outside calls each model through its runner's port.
func TestE2ENomadRunsModels(t *testing.T) {
	c := startModelboxCluster(t, "example-model")
	nomad := c.Nomad.Client
	repo, _ := filepath.Abs("..")
	bin := filepath.Join(repo, "bin")

	models := t.TempDir()
	if err := os.Chmod(models, 0o755); err != nil {
		t.Fatal(err)
	}
	pyDir := filepath.Join(models, "python")
	copyDir(t, "../runner/testdata/pymodel", pyDir)
	// A model whose import takes seconds, as one importing a large library
	// does: its runner listens (and Nomad's TCP check passes) long before it
	// answers, and the first call must still find it serving.
	slowDir := filepath.Join(models, "python-slow")
	copyDir(t, "../runner/testdata/pymodel", slowDir)
	prependFile(t, filepath.Join(slowDir, "main.py"), "import time\ntime.sleep(4)\n")
	goDir := filepath.Join(models, "go")
	copyDir(t, bin, goDir) // brings example-model (and the other binaries: harmless)
	if err := os.Chmod(filepath.Join(goDir, "example-model"), 0o755); err != nil {
		t.Fatal(err)
	}

	for _, m := range []struct {
		job, runtime, dir, entry, class string
	}{
		{"model-node-python", "python", pyDir, "", "crunch_base.Tracker"},
		{"model-node-go", "executable", goDir, "example-model", "tracker.Base"},
		{"model-node-python-slow", "python", slowDir, "", "crunch_base.Tracker"},
	} {
		t.Run(filepath.Base(m.dir), func(t *testing.T) {
			job := modelJob(m.job, m.runtime, m.dir, m.entry)
			if _, _, err := nomad.Jobs().Register(job, nil); err != nil {
				t.Fatal(err)
			}
			alloc := waitHealthyAlloc(t, nomad, m.job)
			defer stopJob(t, nomad, m.job, alloc)

			// `nomad alloc exec` must not open a shell next to the model.
			cmd := exec.Command(c.Nomad.Bin, "alloc", "exec", "-task", "model", alloc.ID, "/bin/cat", m.dir+"/main.py")
			cmd.Env = append(os.Environ(), "NOMAD_ADDR="+c.Nomad.Addr)
			out, err := cmd.CombinedOutput()
			if err == nil || strings.Contains(string(out), "class ") || strings.Contains(string(out), "ELF") {
				t.Fatalf("nomad alloc exec was not refused (err %v): %s", err, out)
			}
			t.Logf("nomad alloc exec refused: %s", strings.TrimSpace(string(out)))

			// A client outside calls the model through the runner's port.
			addr := portAddr(alloc, "grpc")
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ds := dspb.NewDynamicSubclassServiceClient(conn)
			setup(t, ds, m.class)
			res := call(t, ds, "echo", commonspb.String("through nomad"))
			if s, _ := res.GetMethodResponse().AsString(); s != "through nomad" {
				t.Fatalf("echo through the runner: %v", res)
			}
		})
	}
}

func modelJob(name, runtime, modelDir, entry string) *nomadapi.Job {
	job := nomadapi.NewServiceJob(name, name, "global", 50)
	job.Datacenters = []string{"*"}
	tg := nomadapi.NewTaskGroup("model", 1)
	tg.Networks = []*nomadapi.NetworkResource{{DynamicPorts: []nomadapi.Port{{Label: "grpc"}}}}
	tg.Update = &nomadapi.UpdateStrategy{HealthCheck: ptr("checks"), MinHealthyTime: ptr(time.Second),
		HealthyDeadline: ptr(testtime.Scaled(time.Minute)), ProgressDeadline: ptr(testtime.Scaled(2 * time.Minute))}
	tg.RestartPolicy = &nomadapi.RestartPolicy{Attempts: ptr(0), Mode: ptr("fail")}
	tg.ReschedulePolicy = &nomadapi.ReschedulePolicy{Attempts: ptr(0), Unlimited: ptr(false)}
	cfg := map[string]any{"model_dir": modelDir, "runtime": runtime, "port": "grpc", "plaintext": true}
	if entry != "" {
		cfg["entry"] = entry
	}
	task := nomadapi.NewTask("model", "modelbox").SetConfig("model_dir", modelDir)
	task.Config = cfg
	task.Resources = &nomadapi.Resources{CPU: ptr(200), MemoryMB: ptr(256)}
	task.Services = []*nomadapi.Service{{
		Name: name, PortLabel: "grpc", Provider: "nomad",
		Checks: []nomadapi.ServiceCheck{{Type: "tcp", Interval: time.Second, Timeout: time.Second}},
	}}
	tg.AddTask(task)
	job.AddTaskGroup(tg)
	return job
}

func ptr[T any](v T) *T { return &v }

func prependFile(t *testing.T, path, text string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append([]byte(text), b...), 0o644); err != nil {
		t.Fatal(err)
	}
}

// startModelboxCluster starts Consul, Vault and Nomad with the project's
// modelbox driver (from bin/, which make test builds) and waits until Nomad
// reports the driver healthy. It skips, saying why, when a binary is
// missing.
func startModelboxCluster(t *testing.T, moreBinaries ...string) *testcluster.Cluster {
	t.Helper()
	requireRoot(t)
	repo, _ := filepath.Abs("..")
	for _, b := range append([]string{"nomad-driver-modelbox", "model-runner"}, moreBinaries...) {
		if !fileExists(filepath.Join(repo, "bin", b)) {
			t.Skipf("bin/%s is missing: run `make build` first (make test does)", b)
		}
	}
	c := testcluster.Start(t, testcluster.Nomad)
	waitDriverHealthy(t, c.Nomad.Client)
	return c
}

func waitDriverHealthy(t *testing.T, nomad *nomadapi.Client) {
	t.Helper()
	deadline := time.Now().Add(testtime.Scaled(60 * time.Second))
	for time.Now().Before(deadline) {
		if nodes, _, err := nomad.Nodes().List(nil); err == nil && len(nodes) > 0 {
			if node, _, err := nomad.Nodes().Info(nodes[0].ID, nil); err == nil {
				if d := node.Drivers["modelbox"]; d != nil && d.Healthy {
					expectCgroup(t, node.Attributes["os.cgroups.version"], d.Attributes["driver.modelbox.cgroup"])
					return
				} else if d != nil {
					t.Logf("modelbox driver: detected=%v healthy=%v %s", d.Detected, d.Healthy, d.HealthDescription)
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatal("the modelbox driver never became healthy on the Nomad node")
}

// expectCgroup fails t when the host was booted with another cgroup layout
// (MODELNODES_EXPECT_CGROUP, set by scripts/v2vm's guests) than the one Nomad
// and the driver fingerprinted on the node.
func expectCgroup(t *testing.T, nomad, driver string) {
	t.Helper()
	want := os.Getenv("MODELNODES_EXPECT_CGROUP")
	if want != "" && ("v"+nomad != want || driver != want) {
		t.Fatalf("host booted with cgroup %s, but Nomad fingerprinted os.cgroups.version %q and the driver driver.modelbox.cgroup %q",
			want, nomad, driver)
	}
}

// waitHealthyAlloc waits until job's allocation is healthy in Nomad's eyes
// and its runner's gRPC health says SERVING, and returns the allocation.
// The second wait matters: modelJob's TCP check passes as soon as the runner
// listens, before its worker is up, and a call made then fails (slow
// machines showed it: the cgroup v2 guest of scripts/v2vm).
func waitHealthyAlloc(t *testing.T, nomad *nomadapi.Client, job string) *nomadapi.Allocation {
	t.Helper()
	a := waitNomadHealthyAlloc(t, nomad, job)
	// The health-only port when the job has one (its gRPC port wants TLS),
	// else the plaintext gRPC port; "" is SERVING once a worker takes calls.
	addr := portAddr(a, "health")
	if addr == "" {
		addr = portAddr(a, "grpc")
	}
	if err := awaitServing(addr, "", testtime.Scaled(30*time.Second)); err != nil {
		t.Fatalf("job %s: its allocation is healthy in Nomad but the runner is not serving: %v", job, err)
	}
	return a
}

// waitNomadHealthyAlloc waits until Nomad reports job's allocation running
// and healthy (its service checks pass).
func waitNomadHealthyAlloc(t *testing.T, nomad *nomadapi.Client, job string) *nomadapi.Allocation {
	t.Helper()
	timeout := testtime.Scaled(90 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		stubs, _, err := nomad.Jobs().Allocations(job, false, nil)
		if err == nil {
			for _, s := range stubs {
				if s.ClientStatus == "failed" {
					a, _, _ := nomad.Allocations().Info(s.ID, nil)
					t.Fatalf("allocation %s failed: %s", s.ID, allocEvents(a))
				}
				if s.ClientStatus == "running" && s.DeploymentStatus != nil && s.DeploymentStatus.Healthy != nil && *s.DeploymentStatus.Healthy {
					a, _, err := nomad.Allocations().Info(s.ID, nil)
					if err != nil {
						t.Fatal(err)
					}
					return a
				}
			}
		}
		select {
		case <-ctx.Done():
			var detail string
			for _, s := range stubs {
				a, _, _ := nomad.Allocations().Info(s.ID, nil)
				detail += allocEvents(a)
			}
			t.Fatalf("job %s has no healthy allocation after %s: %s", job, timeout, detail)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func allocEvents(a *nomadapi.Allocation) string {
	if a == nil {
		return ""
	}
	var b strings.Builder
	for task, st := range a.TaskStates {
		for _, e := range st.Events {
			fmt.Fprintf(&b, "\n  %s: %s %s %s", task, e.Type, e.DisplayMessage, e.Details["driver_message"])
		}
	}
	return b.String()
}

// stopJob stops a model job the way an operator does and checks that the
// task leaves nothing behind: no process, no cgroup.
func stopJob(t *testing.T, nomad *nomadapi.Client, job string, alloc *nomadapi.Allocation) {
	t.Helper()
	if _, _, err := nomad.Jobs().Deregister(job, false, nil); err != nil {
		t.Errorf("stop %s: %v", job, err)
		return
	}
	group := filepath.Join("/sys/fs/cgroup/pids/modelbox", alloc.ID+".model")
	if _, err := os.Stat("/sys/fs/cgroup/pids"); err != nil {
		group = filepath.Join("/sys/fs/cgroup/modelbox", alloc.ID+".model")
	}
	deadline := time.Now().Add(testtime.Scaled(60 * time.Second))
	for {
		a, _, err := nomad.Allocations().Info(alloc.ID, nil)
		_, statErr := os.Stat(group)
		if err == nil && (a.ClientStatus == "complete" || a.ClientStatus == "failed") && os.IsNotExist(statErr) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("after stopping %s: alloc %s, task cgroup %s still there: %v", job, a.ClientStatus, group, statErr)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	_, _, _ = nomad.Jobs().Deregister(job, true, nil)
}

// `nomad alloc fs` serves the whole alloc dir, local/ included, to anyone
// with read-fs on the namespace; an artifact lands in local/. Once the model
// runs, neither the CLI nor the API finds its code there, and the model
// still answers.
func TestE2EAllocFSCannotReadTheModel(t *testing.T) {
	c := startModelboxCluster(t)
	nomad := c.Nomad.Client
	const name = "model-node-allocfs"
	job := modelJob(name, "python", "local/model", "")
	task := job.TaskGroups[0].Tasks[0]
	// Templates stand in for the artifact: both put the code in local/model.
	for _, f := range []string{"main.py", "crunch_base.py"} {
		b, err := os.ReadFile(filepath.Join("../runner/testdata/pymodel", f))
		if err != nil {
			t.Fatal(err)
		}
		task.Templates = append(task.Templates, &nomadapi.Template{
			EmbeddedTmpl: ptr(string(b)), DestPath: ptr("local/model/" + f),
			LeftDelim: ptr("[[%%"), RightDelim: ptr("%%]]"), ChangeMode: ptr("noop"),
		})
	}
	if _, _, err := nomad.Jobs().Register(job, nil); err != nil {
		t.Fatal(err)
	}
	alloc := waitHealthyAlloc(t, nomad, name)
	defer stopJob(t, nomad, name, alloc)

	// The API: nothing of the model is listed or read in local/.
	files, _, err := nomad.AllocFS().List(alloc, "model/local", nil)
	if err != nil {
		t.Fatalf("alloc fs ls model/local: %v", err)
	}
	for _, f := range files {
		if f.Name == "model" {
			t.Errorf("alloc fs lists model/local/model (%+v): the model is still in the alloc dir", f)
		}
	}
	// Cat reports a missing file in the body it streams, not as an error:
	// what counts is that no byte of the code comes back.
	for _, f := range []string{"main.py", "crunch_base.py"} {
		code, _ := os.ReadFile(filepath.Join("../runner/testdata/pymodel", f))
		rc, err := nomad.AllocFS().Cat(alloc, "model/local/model/"+f, nil)
		if err != nil {
			continue
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if bytes.Contains(got, code[:64]) {
			t.Errorf("alloc fs cat model/local/model/%s read the model's code", f)
		}
		t.Logf("alloc fs cat model/local/model/%s: %s", f, bytes.TrimSpace(got))
	}
	// The CLI an operator would use.
	cmd := exec.Command(c.Nomad.Bin, "alloc", "fs", alloc.ID, "model/local/model/main.py")
	cmd.Env = append(os.Environ(), "NOMAD_ADDR="+c.Nomad.Addr)
	out, err := cmd.CombinedOutput()
	mainCode, _ := os.ReadFile("../runner/testdata/pymodel/main.py")
	if err == nil || bytes.Contains(out, mainCode[:64]) {
		t.Errorf("nomad alloc fs read the model (err %v): %s", err, out)
	}
	t.Logf("nomad alloc fs: %s", strings.TrimSpace(string(out)))

	addr := portAddr(alloc, "grpc")
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ds := dspb.NewDynamicSubclassServiceClient(conn)
	setup(t, ds, "crunch_base.Tracker")
	if v, _ := call(t, ds, "predict", commonspb.Int(6)).GetMethodResponse().AsDouble(); v != 6 {
		t.Fatalf("the model stopped answering: predict(6) = %v", v)
	}
}
