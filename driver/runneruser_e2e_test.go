//go:build e2e

package driver_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/nomad/helper/uuid"
	"github.com/hashicorp/nomad/nomad/structs"
	"github.com/hashicorp/nomad/plugins/drivers"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/modelnodes/modelnodes/driver"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
)

// tlsTask is a task of e's driver serving pymodel with TLS from its secrets
// dir: the certificate and key in secrets/tls.pem (root's, 0600, as Nomad's
// template renders it) and Nomad's secrets/vault_token (0666, as Nomad
// writes it).
type tlsTask struct {
	cfg  *drivers.TaskConfig
	addr string
	key  string // secrets/tls.pem
}

func newTLSTask(t *testing.T, e *env, ca *testpki.CA) *tlsTask {
	t.Helper()
	addr := freeAddr(t)
	_, p, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(p)
	cfg := &drivers.TaskConfig{
		ID: uuid.Generate(), AllocID: uuid.Generate(), Name: "model",
		Resources: &drivers.Resources{
			NomadResources: &structs.AllocatedTaskResources{Memory: structs.AllocatedMemoryResources{MemoryMB: 512}},
			LinuxResources: &drivers.LinuxResources{MemoryLimitBytes: 512 << 20, CPUShares: 500},
			Ports:          &structs.AllocatedPorts{{Label: "grpc", Value: port, HostIP: "127.0.0.1"}},
		},
	}
	cleanup := e.h.MkAllocDir(cfg, true)
	// Every user passes through the allocations' dir, as through a node's
	// data_dir/alloc (Nomad makes it 0711): only the task's own dirs may
	// stop another runner. (The runner itself needs no way in from above.)
	if err := os.Chmod(filepath.Dir(cfg.AllocDir), 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.d.DestroyTask(cfg.ID, true)
		cleanup()
	})
	copyDir(t, "../runner/testdata/pymodel", filepath.Join(cfg.TaskDir().LocalDir, "model"))
	leaf := ca.Issue(t, "", testpki.Leaf{CommonName: "runner", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	key := filepath.Join(cfg.TaskDir().SecretsDir, "tls.pem")
	if err := os.WriteFile(key, append(leaf.CertPEM, leaf.KeyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.TaskDir().SecretsDir, "vault_token"), []byte("s.token-of-"+cfg.AllocID), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := cfg.EncodeConcreteDriverConfig(&driver.TaskConfig{ModelDir: "local/model", Runtime: "python", Port: "grpc",
		TLS: &driver.TLSConfig{Cert: "secrets/tls.pem", Key: "secrets/tls.pem"}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.h.StartTask(cfg); err != nil {
		t.Fatalf("StartTask: %v", err)
	}
	return &tlsTask{cfg: cfg, addr: addr, key: key}
}

// client waits until the task's model serves over TLS and returns its client.
func (tt *tlsTask) client(t *testing.T, e *env, ca *testpki.CA) dspb.DynamicSubclassServiceClient {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	conn, err := grpc.NewClient(tt.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "dynamic_subclass.DynamicSubclassService"})
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return dspb.NewDynamicSubclassServiceClient(conn)
		}
		if ctx.Err() != nil {
			b, _ := os.ReadFile(filepath.Join(tt.cfg.TaskDir().LogDir, "model.stderr.0"))
			t.Fatalf("the model never became SERVING over TLS: %v %v\nrunner stderr:\n%s", res, err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// procStatus reads the fields of /proc/<pid>/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// runnerOf is the runner of the task whose driver-visible pid is pid: that
// process if it serves, else (a launcher) its child that serves (the other
// one starts the worker).
func runnerOf(t *testing.T, pid int) int {
	t.Helper()
	serves := func(pid int) bool {
		argv, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(argv), "\x00")
		return len(args) > 1 && args[1] == "serve"
	}
	if serves(pid) {
		return pid
	}
	threads, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var kids, runners []int
	for _, th := range threads {
		b, _ := os.ReadFile(th)
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			kids = append(kids, n)
			if serves(n) {
				runners = append(runners, n)
			}
		}
	}
	if len(runners) != 1 {
		t.Fatalf("the launcher (pid %d) has children %v, of which %v serve: want one runner", pid, kids, runners)
	}
	return runners[0]
}

// credsOf are the credentials of a process, from its status: what a
// compromised runner could use.
func credsOf(t *testing.T, st map[string]string) *syscall.Credential {
	t.Helper()
	uid, _ := strconv.Atoi(strings.Fields(st["Uid"])[0])
	gid, _ := strconv.Atoi(strings.Fields(st["Gid"])[0])
	c := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	for _, g := range strings.Fields(st["Groups"]) {
		n, _ := strconv.Atoi(g)
		c.Groups = append(c.Groups, uint32(n))
	}
	return c
}

// readAs reads path as creds (with cat, so the kernel checks them).
func readAs(creds *syscall.Credential, path string) (string, error) {
	cmd := exec.Command("/bin/cat", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: creds}
	out, err := cmd.CombinedOutput()
	if bytes.Contains(out, []byte("PRIVATE KEY")) {
		return "a private key", err // not in the test's log
	}
	return string(out), err
}

// The runner is not root: while it serves, /proc shows it running as a uid
// and gid of runner_uid_range of its own (not the worker's, not another
// task's), without supplementary groups, with no capability in any set
// (the bounding set included) and no_new_privs. With those credentials,
// a compromised runner reads its own key but neither another task's key nor
// another task's Vault token (which Nomad writes 0666), and once its task
// is destroyed it cannot read its old key either: its id goes to the next
// runner. The worker, which only root can start in its sandbox, still
// restarts after a crash.
func TestRunnerIsNotRoot(t *testing.T) {
	e := newEnv(t, "../runner/testdata/pymodel", nil, nil)
	ca := testpki.NewCA(t, "runner-ca")
	a, b := newTLSTask(t, e, ca), newTLSTask(t, e, ca)
	ca1 := a.client(t, e, ca)
	b.client(t, e, ca)

	var runners []int
	creds := map[*tlsTask]*syscall.Credential{}
	for _, tt := range []*tlsTask{a, b} {
		st, err := e.h.InspectTask(tt.cfg.ID)
		if err != nil {
			t.Fatal(err)
		}
		launcherPid, _ := strconv.Atoi(st.DriverAttributes["pid"])
		runner := runnerOf(t, launcherPid)
		s := procStatus(t, runner)
		ls := procStatus(t, launcherPid)
		t.Logf("launcher (pid %d) RssAnon %s RssFile %s; runner RssAnon %s RssFile %s", launcherPid, ls["RssAnon"], ls["RssFile"], s["RssAnon"], s["RssFile"])
		for _, w := range workerPIDs(t, tt.cfg) {
			ws := procStatus(t, w)
			t.Logf("worker-cgroup pid %d (%s) uid %s RssAnon %s RssFile %s", w, ws["Name"], ws["Uid"], ws["RssAnon"], ws["RssFile"])
		}
		t.Logf("runner of task %s (pid %d): Uid %q Gid %q Groups %q CapInh %s CapPrm %s CapEff %s CapBnd %s CapAmb %s NoNewPrivs %s",
			tt.cfg.ID[:8], runner, s["Uid"], s["Gid"], s["Groups"], s["CapInh"], s["CapPrm"], s["CapEff"], s["CapBnd"], s["CapAmb"], s["NoNewPrivs"])
		uid, _ := strconv.Atoi(strings.Fields(s["Uid"])[0])
		if uid < 62000 || uid > 62999 || s["Uid"] != strings.Repeat(strconv.Itoa(uid)+"\t", 3)+strconv.Itoa(uid) || s["Gid"] != s["Uid"] {
			t.Errorf("the runner runs as Uid %q Gid %q, want one id of runner_uid_range (62000-62999) in every field", s["Uid"], s["Gid"])
		}
		if s["Groups"] != "" {
			t.Errorf("the runner has supplementary groups %q, want none", s["Groups"])
		}
		for _, set := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
			if s[set] != "0000000000000000" {
				t.Errorf("the runner's %s is %s, want no capability", set, s[set])
			}
		}
		if s["NoNewPrivs"] != "1" {
			t.Errorf("the runner's NoNewPrivs is %q, want 1", s["NoNewPrivs"])
		}
		for _, w := range workerPIDs(t, tt.cfg) {
			if ws := procStatus(t, w); ws["Uid"] == s["Uid"] {
				t.Errorf("the worker (pid %d) runs as the runner's uid %q", w, ws["Uid"])
			}
		}
		runners = append(runners, uid)
		creds[tt] = credsOf(t, s)
	}
	if runners[0] == runners[1] {
		t.Errorf("both tasks' runners run as uid %d, want one each", runners[0])
	}

	// A compromised runner A: its own key yes, B's secrets no.
	if out, err := readAs(creds[a], a.key); err != nil || out != "a private key" {
		t.Errorf("runner A cannot read its own key: %v %s", err, out)
	}
	for _, f := range []string{b.key, filepath.Join(b.cfg.TaskDir().SecretsDir, "vault_token")} {
		if out, err := readAs(creds[a], f); err == nil || !strings.Contains(out, "Permission denied") {
			t.Errorf("runner A read task B's %s: %v %q", filepath.Base(f), err, out)
		}
	}

	// The worker crashes; the runner has the launcher start another, and
	// the model's setup is replayed into it.
	setup(t, ca1, "crunch_base.Tracker")
	before := workerPIDs(t, a.cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if res, err := ca1.Call(ctx, callReq("crash")); err == nil && res.GetStatus().GetCode() == "SUCCESS" {
		t.Fatalf("crash() answered %v", res)
	}
	for {
		res, err := ca1.Call(ctx, callReq("truth"))
		if err == nil && res.GetStatus().GetCode() == "SUCCESS" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no worker answered after the crash: %v %v", res, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if after := workerPIDs(t, a.cfg); len(after) == 0 || slices.Contains(before, after[0]) {
		t.Errorf("worker processes %v before the crash, %v after: want new ones", before, after)
	}
	if v, _ := call(t, ca1, "predict", commonspb.Int(3)).GetMethodResponse().AsDouble(); v != 3 {
		t.Errorf("predict(3) on the restarted worker = %v", v)
	}

	// Task A ends; its runner's id is free for the next task's runner,
	// which must not reach A's secrets.
	if err := e.h.StopTask(a.cfg.ID, 10*time.Second, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	if err := e.h.DestroyTask(a.cfg.ID, false); err != nil {
		t.Fatal(err)
	}
	if out, err := readAs(creds[a], a.key); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("after its task was destroyed, runner A's uid still reads its key: %v %q", err, out)
	}
}

// workerPIDs lists the task's worker cgroup's processes (v1 pids, or v2).
func workerPIDs(t *testing.T, cfg *drivers.TaskConfig) []int {
	t.Helper()
	var pids []int
	for _, p := range []string{"/sys/fs/cgroup/pids/modelbox", "/sys/fs/cgroup/modelbox"} {
		b, err := os.ReadFile(filepath.Join(p, cfg.AllocID+"."+cfg.Name, "worker", "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			pids = append(pids, n)
		}
		return pids
	}
	t.Fatal("no worker cgroup found")
	return nil
}
