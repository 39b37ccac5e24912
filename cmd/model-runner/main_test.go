package main_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/modelnodes/modelnodes/internal/testing/testbin"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
)

// binary returns the model-runner binary: `make build`'s, or a fresh one.
func binary(t testing.TB) string { return testbin.Path(t, "model-runner") }

func freePort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestRefusesToServeWithoutTLSUnlessAsked(t *testing.T) {
	out, err := exec.Command(binary(t), "serve", "--model-dir", "../../runner/testdata/pymodel").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "refusing to serve without TLS") {
		t.Fatalf("serve without TLS flags: err=%v output=%s", err, out)
	}
	for args, want := range map[string]string{
		"--tls-vault-sign pki_int/sign/runner":                                         "--tls-vault-sign needs --tls-vault-key",
		"--tls-vault-sign pki_int/sign/runner --tls-cert a --tls-key b":                "--tls-vault-sign replaces --tls-cert",
		"--tls-vault-key runner-keys/x --plaintext":                                    "only work with --tls-vault-sign",
		"--tls-vault-sign pki_int/runner --tls-vault-key k/x --tls-common-name n":      "want MOUNT/sign/ROLE",
		"--tls-vault-sign pki_int/sign/runner --tls-vault-key k --tls-common-name n":   "want MOUNT/NAME",
		"--tls-vault-sign pki_int/sign/runner --tls-vault-key k/x --tls-common-name n": "no Vault token",
	} {
		cmd := exec.Command(binary(t), append([]string{"serve", "--model-dir", "../../runner/testdata/pymodel"}, strings.Fields(args)...)...)
		cmd.Env = append(os.Environ(), "VAULT_TOKEN=", "MODEL_RUNNER_VAULT_TOKEN_FILE=")
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), want) {
			t.Errorf("serve %s: %v, want %q in:\n%s", args, err, want, out)
		}
	}
	out, _ = exec.Command(binary(t), "serve", "--help").CombinedOutput()
	for _, want := range []string{"--model-dir  [$MODEL_RUNNER_MODEL_DIR]", "--tls-client-ca", "--plaintext"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--help lacks %q:\n%s", want, out)
		}
	}
	cmd := exec.Command(binary(t), "serve", "--plaintext")
	cmd.Env = append(os.Environ(), "MODEL_RUNNER_MODEL_DIR=/does/not/exist")
	out, _ = cmd.CombinedOutput()
	if !strings.Contains(string(out), "/does/not/exist is not a directory") {
		t.Errorf("a model dir from the environment is not used or not checked: %s", out)
	}
}

// The laptop path: model-runner starts its own worker, serves calls and
// metrics, and on SIGTERM stops with its worker.
func TestServeOnALaptop(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed")
	}
	addr, metricsAddr, healthAddr := freePort(t), freePort(t), freePort(t)
	var logs bytes.Buffer
	cmd := exec.Command(binary(t), "serve", "--model-dir", "../../runner/testdata/pymodel",
		"--listen", addr, "--plaintext", "--metrics-listen", metricsAddr, "--health-listen", healthAddr, "--log-json")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	// A laptop's environment, not this machine's: the model's last prints
	// must reach the log at stop without PYTHONUNBUFFERED.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PYTHONUNBUFFERED=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	health := healthpb.NewHealthClient(conn)
	for {
		res, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("never SERVING: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	ds := dspb.NewDynamicSubclassServiceClient(conn)
	if r, err := ds.Setup(ctx, &dspb.SetupRequest{ClassName: "crunch_base.Tracker"}); err != nil || r.GetStatus().GetCode() != "SUCCESS" {
		t.Fatalf("Setup: %v %v", r, err)
	}
	r, err := ds.Call(ctx, &dspb.CallRequest{MethodName: "pid"})
	if err != nil {
		t.Fatal(err)
	}
	workerPid, _ := r.GetMethodResponse().AsInt()
	if _, err := ds.Call(ctx, &dspb.CallRequest{MethodName: "noisy", MethodArguments: []*commonspb.Argument{}}); err != nil {
		t.Fatal(err)
	}

	// The health-only port (for Consul checks) answers health and nothing of the model.
	hconn, err := grpc.NewClient(healthAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer hconn.Close()
	if res, err := healthpb.NewHealthClient(hconn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health-only port: %v %v", res, err)
	}
	if _, err := dspb.NewDynamicSubclassServiceClient(hconn).Call(ctx, &dspb.CallRequest{MethodName: "pid"}); status.Code(err) != codes.Unimplemented {
		t.Errorf("a model call on the health-only port: %v, want Unimplemented", err)
	}

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`modelnodes_runner_calls_total{rpc="Call",status="SUCCESS"} 2`, "modelnodes_runner_worker_up 1", "modelnodes_runner_call_duration_seconds_bucket"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("model-runner did not stop within 15s of SIGTERM")
	}
	if syscall.Kill(int(workerPid), 0) == nil {
		t.Errorf("the model worker (pid %d) outlived the runner", workerPid)
	}
	if !strings.Contains(logs.String(), `"line":"hello from the model"`) {
		t.Errorf("the model's output is not in the runner's structured log:\n%s", logs.String())
	}
}
