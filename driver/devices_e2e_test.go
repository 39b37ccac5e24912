//go:build e2e

package driver_test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/internal/testing/testdevice"
	"github.com/modelnodes/modelnodes/internal/testing/testpty"
	"github.com/modelnodes/modelnodes/internal/testing/testtime"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
)

// Devices through the whole of Nomad: a device plugin (ours, for tests)
// offers two character devices (ptys of a private devpts instance) with a
// directory each; two model jobs ask for one device each. Each worker sees
// exactly its reserved node and mount, writes through both (the test reads
// the line at the pty's master and the file on the host), cannot open the
// other task's device, and its device cgroup allows its own device and not
// the other's (read from the kernel on cgroup v1).
func TestE2EReservedDevices(t *testing.T) {
	requireRoot(t)
	repo, _ := filepath.Abs("..")
	if !fileExists(filepath.Join(repo, "bin", testdevice.PluginName)) {
		t.Skipf("bin/%s is missing: run `make build` first (make test does)", testdevice.PluginName)
	}
	base := t.TempDir()
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	// Mounted first, so it is unmounted after the cluster has stopped.
	pts := filepath.Join(base, "pts")
	testpty.Mount(t, pts)
	var masters []*os.File
	var slaves []string
	mounts := filepath.Join(base, "mounts")
	for i := range 2 {
		m, s := testpty.Open(t, pts)
		masters, slaves = append(masters, m), append(slaves, s)
		if err := os.MkdirAll(filepath.Join(mounts, fmt.Sprintf("testdev%d", i)), 0o777); err != nil {
			t.Fatal(err)
		}
		_ = os.Chmod(filepath.Join(mounts, fmt.Sprintf("testdev%d", i)), 0o777)
	}
	lines := make([]chan string, len(masters))
	for i, m := range masters {
		lines[i] = make(chan string, 4)
		go func() {
			sc := bufio.NewScanner(m)
			for sc.Scan() {
				lines[i] <- strings.TrimSpace(sc.Text())
			}
		}()
	}

	hcl := fmt.Sprintf("plugin %q {\n  config {\n    devices   = [%q, %q]\n    mount_dir = %q\n  }\n}\n",
		testdevice.PluginName, slaves[0], slaves[1], mounts)
	c := testcluster.StartWith(t, testcluster.Nomad, testcluster.Options{NomadPluginHCL: hcl})
	nomad := c.Nomad.Client
	waitDriverHealthy(t, nomad)
	waitTestDevices(t, nomad, 2)

	model := hostileModel(t)
	type task struct {
		alloc  *nomadapi.Allocation
		report map[string]any
		ds     dspb.DynamicSubclassServiceClient
	}
	var tasks []task
	for i := range 2 {
		name := fmt.Sprintf("model-node-testdev-%d", i)
		alloc, ds := runDeviceModel(t, nomad, name, model, testdevice.Vendor+"/"+testdevice.Type, nil)
		rep, err := call(t, ds, "devices").GetMethodResponse().AsJSON()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("task %d saw: %v", i, rep)
		tasks = append(tasks, task{alloc, rep.(map[string]any), ds})
	}

	var got []string
	for _, tk := range tasks {
		got = append(got, tk.report["env"].(string))
	}
	if slices.Sort(got); !slices.Equal(got, []string{"testdev0", "testdev1"}) {
		t.Fatalf("the tasks reserved %v, want one instance each", got)
	}
	// What the worker's /dev holds besides its own device: the sandbox's.
	defaults := []string{"/dev/fd", "/dev/full", "/dev/null", "/dev/random", "/dev/shm", "/dev/stderr", "/dev/stdin", "/dev/stdout", "/dev/urandom", "/dev/zero"}
	for _, tk := range tasks {
		me := tk.report["env"].(string)
		mine := int(me[len(me)-1] - '0')
		other := 1 - mine
		t.Run(me, func(t *testing.T) {
			var dev []string
			for _, p := range tk.report["dev"].([]any) {
				if !strings.HasPrefix(p.(string), "/dev/shm/") {
					dev = append(dev, p.(string))
				}
			}
			want := append(slices.Clone(defaults), "/dev/"+me)
			slices.Sort(want)
			if slices.Sort(dev); !slices.Equal(dev, want) {
				t.Errorf("the worker's /dev holds %v, want %v", dev, want)
			}
			if w := tk.report["wrote"].(map[string]any)["/dev/"+me]; w != "wrote" {
				t.Errorf("write through /dev/%s: %v", me, w)
			}
			select {
			case line := <-lines[mine]:
				if line != "written by "+me {
					t.Errorf("pty %d's master read %q", mine, line)
				}
			case <-time.After(testtime.Scaled(10 * time.Second)):
				t.Errorf("nothing came through pty %d", mine)
			}
			if m := tk.report["mounts"].(map[string]any); len(m) != 1 || m[me] != "wrote" {
				t.Errorf("the worker's /testdev: %v, want its own directory, written", m)
			}
			if b, err := os.ReadFile(filepath.Join(mounts, me, "out")); err != nil || string(b) != "written by "+me {
				t.Errorf("the host's side of %s's directory holds %q, %v", me, b, err)
			}
			for _, p := range []string{fmt.Sprintf("/dev/testdev%d", other), slaves[other], slaves[mine]} {
				if s := str(t, call(t, tk.ds, "opendev", commonspb.String(p))); !strings.Contains(s, "No such file") {
					t.Errorf("open %s: %q, want no such file", p, s)
				}
			}
			// The device cgroup: this worker's device is allowed, the
			// other task's (allowed in that task's) is not.
			list := filepath.Join("/sys/fs/cgroup/devices", "modelbox", tk.alloc.ID+".model", "worker", "devices.list")
			if _, err := os.Stat("/sys/fs/cgroup/devices"); err != nil {
				t.Log("cgroup v2: the device BPF program is not readable here; TestSandboxReservedDevices opens what it refuses")
				return
			}
			b, err := os.ReadFile(list)
			if err != nil {
				t.Fatal(err)
			}
			major, minor := testpty.Numbers(t, slaves[mine])
			wantList := "c 1:3 rw\nc 1:5 rw\nc 1:7 rw\nc 1:8 rw\nc 1:9 rw\n" + fmt.Sprintf("c %d:%d rw\n", major, minor)
			if string(b) != wantList {
				t.Errorf("%s:\n%s\nwant\n%s", list, b, wantList)
			}
		})
	}
}

// runDeviceModel runs the Python model at dir as job name, its task asking
// for one device named device (and, with edit, changed further), waits
// until it serves and returns its allocation and a client of its runner,
// set up with base.Base. The job is stopped when t ends.
func runDeviceModel(t *testing.T, nomad *nomadapi.Client, name, dir, device string, edit func(*nomadapi.Task)) (*nomadapi.Allocation, dspb.DynamicSubclassServiceClient) {
	t.Helper()
	job := modelJob(name, "python", dir, "")
	task := job.TaskGroups[0].Tasks[0]
	task.Resources.Devices = []*nomadapi.RequestedDevice{{Name: device, Count: new(uint64(1))}}
	if edit != nil {
		edit(task)
	}
	if _, _, err := nomad.Jobs().Register(job, nil); err != nil {
		t.Fatal(err)
	}
	alloc := waitHealthyAlloc(t, nomad, name)
	t.Cleanup(func() { stopJob(t, nomad, name, alloc) })
	conn, err := grpc.NewClient(portAddr(alloc, "grpc"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ds := dspb.NewDynamicSubclassServiceClient(conn)
	setup(t, ds, "base.Base")
	return alloc, ds
}

// waitTestDevices waits until the node reports n healthy instances of the
// test device plugin's device.
func waitTestDevices(t *testing.T, nomad *nomadapi.Client, n int) {
	t.Helper()
	deadline := time.Now().Add(testtime.Scaled(60 * time.Second))
	seen, said := "no such device on the node", time.Now()
	for time.Now().Before(deadline) {
		if time.Since(said) > 10*time.Second {
			t.Logf("waiting for %d healthy %s/%s devices: %s", n, testdevice.Vendor, testdevice.Type, seen)
			said = time.Now()
		}
		if nodes, _, err := nomad.Nodes().List(nil); err == nil && len(nodes) > 0 {
			if node, _, err := nomad.Nodes().Info(nodes[0].ID, nil); err == nil && node.NodeResources != nil {
				for _, d := range node.NodeResources.Devices {
					if d.Vendor != testdevice.Vendor || d.Type != testdevice.Type {
						continue
					}
					healthy := 0
					for _, inst := range d.Instances {
						if inst.Healthy {
							healthy++
						}
					}
					if seen = fmt.Sprintf("%d of %d healthy", healthy, len(d.Instances)); healthy == n {
						return
					}
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("the node never reported %d healthy %s/%s devices (%s)", n, testdevice.Vendor, testdevice.Type, seen)
}
