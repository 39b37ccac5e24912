//go:build e2e

package driver_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/internal/testing/testtime"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	"github.com/modelnodes/modelnodes/runner/authz"
)

// The secure path on the real agents: the runner's certificate comes from
// Vault through the job's workload identity, the runner admits only crunch
// alpha's coordinator whose key is "on chain" (a policy Nomad renders into
// the secrets dir from the job's variable), Consul-style health stays
// reachable on its own port, and the sandboxed model cannot read the key
// sitting in the task's secrets dir. The runner is not root: /proc shows it
// as a runner_uid_range user with no capability and no_new_privs while it
// serves, it alone (and root) may enter the secrets dir, and it still reads
// what Nomad renders there again (root's, 0600) after a change.
func TestE2ESecureModel(t *testing.T) {
	c := startModelboxCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(3*time.Minute))
	defer cancel()

	alpha := mustCoordinator(t, ctx, c, "alpha")
	beta := mustCoordinator(t, ctx, c, "beta")

	modelDir := hostileModel(t)

	const jobID = "model-node-secure"
	policy := func(hashes ...string) {
		t.Helper()
		b, _ := json.Marshal(map[string]any{"crunch": "alpha", "coordinator_cert_hashes": hashes})
		if _, _, err := c.Nomad.Client.Variables().Create(&nomadapi.Variable{Path: "nomad/jobs/" + jobID, Items: nomadapi.VariableItems{"policy": string(b)}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	policy(authz.SPKIHash(alpha.Leaf))
	job := modelJob(jobID, "python", modelDir, "")
	tg := job.TaskGroups[0]
	tg.Networks[0].DynamicPorts = append(tg.Networks[0].DynamicPorts, nomadapi.Port{Label: "health"})
	task := tg.Tasks[0]
	task.Config["plaintext"] = false
	task.Config["tls"] = []map[string]any{{"cert": "secrets/tls.pem", "key": "secrets/tls.pem", "client_ca": "local/ca.pem"}}
	task.Config["authz"] = []map[string]any{{"policy_file": "secrets/authz.json", "crl_url": c.Vault.Addr + "/v1/pki_int/issuers"}}
	task.Config["health_port"] = "health"
	task.Env = map[string]string{"VAULT_ADDR": c.Vault.Addr}
	task.Vault = &nomadapi.Vault{Role: "runner"}
	task.Templates = []*nomadapi.Template{{
		EmbeddedTmpl: ptr(`{{ with pkiCert "pki_int/issue/runner" (printf "common_name=%s.crunchdao.internal" (env "NOMAD_JOB_ID")) "ttl=1h" }}{{ .Cert }}
{{ .CA }}
{{ .Key }}{{ end }}`),
		DestPath: ptr("secrets/tls.pem"), Perms: ptr("0600"),
		ChangeMode: ptr("signal"), ChangeSignal: ptr("SIGHUP"),
	}, {
		// The root, and the intermediate that signs the revocation lists.
		EmbeddedTmpl: ptr(`{{ with secret "pki/cert/ca" }}{{ .Data.certificate }}{{ end }}
{{ with secret "pki_int/cert/ca_chain" }}{{ .Data.ca_chain }}{{ end }}`),
		DestPath:   ptr("local/ca.pem"),
		ChangeMode: ptr("signal"), ChangeSignal: ptr("SIGHUP"),
	}, {
		EmbeddedTmpl: ptr(`{{ with nomadVar "nomad/jobs/` + jobID + `" }}{{ .policy }}{{ end }}`),
		DestPath:     ptr("secrets/authz.json"), Perms: ptr("0600"),
		ChangeMode: ptr("signal"), ChangeSignal: ptr("SIGHUP"),
		Wait: &nomadapi.WaitConfig{Min: ptr(time.Second), Max: ptr(2 * time.Second)},
	}}
	// The health-only port answers plaintext, so the check needs no TLS.
	task.Services[0].PortLabel = "health"
	if _, _, err := c.Nomad.Client.Jobs().Register(job, nil); err != nil {
		t.Fatal(err)
	}
	alloc := waitHealthyAlloc(t, c.Nomad.Client, jobID)
	defer stopJob(t, c.Nomad.Client, jobID, alloc)
	addr := portAddr(alloc, "grpc")

	roots := vaultRoots(t, ctx, c)
	dial := func(cert *tls.Certificate, serverName string) dspb.DynamicSubclassServiceClient {
		cfg := &tls.Config{RootCAs: roots, ServerName: serverName}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return dspb.NewDynamicSubclassServiceClient(conn)
	}
	code := func(ds dspb.DynamicSubclassServiceClient) codes.Code {
		cctx, ccancel := context.WithTimeout(ctx, testtime.Scaled(20*time.Second))
		defer ccancel()
		_, err := ds.Setup(cctx, &dspb.SetupRequest{ClassName: "base.Base"})
		return status.Code(err)
	}
	const name = jobID + ".crunchdao.internal"
	if got := code(dial(alpha, name)); got != codes.OK {
		t.Fatalf("crunch alpha's coordinator, with the Vault certificate naming %s: %s", name, got)
	}
	if got := code(dial(beta, name)); got != codes.Unavailable {
		t.Errorf("crunch beta's coordinator: %s, want its handshake refused (Unavailable)", got)
	}
	if got := code(dial(nil, name)); got != codes.Unavailable {
		t.Errorf("no client certificate: %s, want the handshake refused", got)
	}
	if got := code(dial(alpha, "model-node-other.crunchdao.internal")); got != codes.Unavailable {
		t.Errorf("expecting another model's name: %s, want the runner's certificate refused", got)
	}

	// Health answers on its own port without TLS, and nothing else does.
	hconn, err := grpc.NewClient(portAddr(alloc, "health"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer hconn.Close()
	if res, err := healthpb.NewHealthClient(hconn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health-only port: %v %v", res, err)
	}
	if _, err := dspb.NewDynamicSubclassServiceClient(hconn).Setup(ctx, &dspb.SetupRequest{ClassName: "base.Base"}); status.Code(err) != codes.Unimplemented {
		t.Errorf("a model call on the health port: %v, want Unimplemented", err)
	}

	// The model, with the real key rendered next to it, cannot read it.
	keyPath := filepath.Join(c.Nomad.DataDir, "alloc", alloc.ID, "model", "secrets", "tls.pem")
	if b, err := os.ReadFile(keyPath); err != nil || !strings.Contains(string(b), "PRIVATE KEY") {
		t.Fatalf("the rendered bundle is not where expected (%s): %v", keyPath, err)
	}
	res, err := dial(alpha, name).Call(ctx, callReq2("read", commonspb.String(keyPath)))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := res.GetMethodResponse().AsString(); !strings.HasPrefix(got, "refused") {
		t.Fatalf("the model read the runner's key: %q", got)
	}

	// The runner, while it serves: not root, no capability, no_new_privs.
	runner := servingRunner(t, alloc.ID)
	st := procStatus(t, runner)
	t.Logf("runner (pid %d): Uid %q Gid %q Groups %q CapPrm %s CapEff %s CapBnd %s NoNewPrivs %s",
		runner, st["Uid"], st["Gid"], st["Groups"], st["CapPrm"], st["CapEff"], st["CapBnd"], st["NoNewPrivs"])
	uid, _ := strconv.Atoi(strings.Fields(st["Uid"])[0])
	if uid < 62000 || uid > 62999 || strings.Fields(st["Uid"])[1] != strconv.Itoa(uid) || strings.Fields(st["Gid"])[0] != strconv.Itoa(uid) || st["Groups"] != "" {
		t.Errorf("the runner runs as Uid %q Gid %q Groups %q, want a user of runner_uid_range, no supplementary group", st["Uid"], st["Gid"], st["Groups"])
	}
	for _, set := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		if st[set] != "0000000000000000" {
			t.Errorf("the runner's %s is %s, want no capability", set, st[set])
		}
	}
	if st["NoNewPrivs"] != "1" {
		t.Errorf("the runner's NoNewPrivs is %q, want 1", st["NoNewPrivs"])
	}
	// Only root and the runner's group enter the secrets dir (Nomad makes
	// it 0777), and the key Nomad rendered (root's, 0600) is the runner's.
	secrets := filepath.Dir(keyPath)
	for path, want := range map[string]string{secrets: fmt.Sprintf("0:%d %o", uid, 0o750|fs.ModeDir), keyPath: fmt.Sprintf("%d:%d %o", uid, uid, 0o600)} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		sys := fi.Sys().(*syscall.Stat_t)
		if got := fmt.Sprintf("%d:%d %o", sys.Uid, sys.Gid, fi.Mode()); got != want {
			t.Errorf("%s is %s, want %s", path, got, want)
		}
	}

	// Nomad renders the policy again (as root, 0600, keeping the file's
	// owner): the runner reads the change and refuses alpha's key.
	policy(strings.Repeat("ab", 32))
	deadline := time.Now().Add(30 * time.Second)
	for code(dial(alpha, name)) == codes.OK {
		if time.Now().After(deadline) {
			t.Fatalf("alpha is still admitted 30s after the policy Nomad renders dropped its key\nrunner stderr:\n%s", taskStderr(c.Nomad.Client, alloc))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// servingRunner finds the runner of the allocation among the host's
// processes: the one that serves from that allocation's task dir.
func servingRunner(t *testing.T, allocID string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var found []int
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		args := strings.Split(string(b), "\x00")
		cwd, _ := os.Readlink(filepath.Join(filepath.Dir(p), "cwd"))
		if len(args) > 1 && args[1] == "serve" && strings.Contains(cwd, allocID) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		t.Fatalf("runners of allocation %s: %v, want one", allocID, found)
	}
	return found[0]
}

func callReq2(method string, args ...*commonspb.Variant) *dspb.CallRequest {
	req := &dspb.CallRequest{MethodName: method}
	for i, a := range args {
		req.MethodArguments = append(req.MethodArguments, &commonspb.Argument{Position: uint32(i), Data: a})
	}
	return req
}

// hostileModel copies testdata/hostile into a directory the sandbox's
// unprivileged worker can read, and returns it.
func hostileModel(t *testing.T) string {
	t.Helper()
	models := t.TempDir()
	if err := os.Chmod(models, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(models, "hostile")
	copyDir(t, "testdata/hostile", dir)
	return dir
}

// vaultRoots is the pool of the test Vault's root CA, which runner
// certificates chain to.
func vaultRoots(t *testing.T, ctx context.Context, c *testcluster.Cluster) *x509.CertPool {
	t.Helper()
	root, err := c.Vault.CACertPEM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(root)
	return roots
}

func portAddr(a *nomadapi.Allocation, label string) string {
	for _, p := range a.AllocatedResources.Shared.Ports {
		if p.Label == label {
			return fmt.Sprintf("%s:%d", p.HostIP, p.Value)
		}
	}
	return ""
}

func mustCoordinator(t *testing.T, ctx context.Context, c *testcluster.Cluster, crunch string) *tls.Certificate {
	cert, err := c.CoordinatorCert(ctx, crunch)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
