package testcluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	vaultapi "github.com/hashicorp/vault/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The test binary doubles as a tiny workload for Nomad jobs: a raw_exec task
// re-executes it (os.Executable) with helperEnv set, and Main (or
// RunHelperIfRequested in a custom TestMain) turns the process into a
// grpc-go health server instead of running tests. This keeps every `main`
// in cmd/ while letting integration tests run real gRPC services in Nomad.
const (
	helperEnv = "MODELNODES_TESTCLUSTER_HELPER"
	// HelperListenEnv is the address to listen on, e.g. "${NOMAD_ADDR_grpc}".
	HelperListenEnv = "MODELNODES_HELPER_LISTEN"
	// HelperTLSBundleEnv names a PEM file holding the certificate chain and
	// private key (as rendered by a pkiCert template); unset means plaintext.
	HelperTLSBundleEnv = "MODELNODES_HELPER_TLS_BUNDLE"
	// HelperPublishCertEnv names a file to which the helper copies the
	// certificates (not the key) of the bundle, so a test can read them
	// through the Nomad alloc fs API, which refuses to read secrets/.
	HelperPublishCertEnv = "MODELNODES_HELPER_PUBLISH_CERT"
	// HelperProbeEnv lists DNS names, comma separated, that the helper tries
	// to obtain from Vault's pki_int/issue/runner with the task's VAULT_TOKEN
	// (and VAULT_ADDR); the outcome per name goes to HelperProbeOutEnv as a
	// JSON object name -> "ok" or the error.
	HelperProbeEnv    = "MODELNODES_HELPER_PROBE"
	HelperProbeOutEnv = "MODELNODES_HELPER_PROBE_OUT"
)

// HelperTask returns a raw_exec task that runs this test binary as a gRPC
// health server (grpc.health.v1, service "" SERVING). Add env entries from
// the Helper*Env constants to configure it.
func HelperTask(name string) *nomadapi.Task {
	self, err := os.Executable() // absolute, unlike os.Args[0] after `go test -c`
	if err != nil {
		self = os.Args[0]
	}
	task := nomadapi.NewTask(name, "raw_exec")
	task.Config = map[string]any{
		"command": self,
		// No test may run in the workload even if the helper returns.
		"args": []string{"-test.run=^$"},
	}
	task.Env = map[string]string{helperEnv: "grpc-health"}
	return task
}

// RunHelperIfRequested turns this process into the helper workload (and
// exits) when it was started by HelperTask; otherwise it returns at once.
func RunHelperIfRequested() {
	switch mode := os.Getenv(helperEnv); mode {
	case "":
		return
	case "grpc-health":
		if err := runHealthServer(); err != nil {
			fmt.Fprintf(os.Stderr, "testcluster helper: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "testcluster helper: unknown mode %q\n", mode)
		os.Exit(2)
	}
}

func runHealthServer() error {
	addr := os.Getenv(HelperListenEnv)
	if addr == "" {
		return fmt.Errorf("%s is not set", HelperListenEnv)
	}
	if names := os.Getenv(HelperProbeEnv); names != "" {
		if err := probeIssue(strings.Split(names, ","), os.Getenv(HelperProbeOutEnv)); err != nil {
			return err
		}
	}
	var opts []grpc.ServerOption
	if bundle := os.Getenv(HelperTLSBundleEnv); bundle != "" {
		cert, err := loadBundle(bundle, os.Getenv(HelperPublishCertEnv))
		if err != nil {
			return err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
		})))
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := grpc.NewServer(opts...)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		hs.Shutdown()
		srv.GracefulStop()
	}()
	fmt.Printf("serving grpc health on %s (tls=%t)\n", lis.Addr(), len(opts) > 0)
	return srv.Serve(lis)
}

// loadBundle parses a PEM file with certificates and one private key and,
// when publish is set, writes the certificates alone to publish.
func loadBundle(path, publish string) (tls.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("read tls bundle: %w", err)
	}
	var certs, key []byte
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			certs = append(certs, pem.EncodeToMemory(block)...)
		} else if strings.HasSuffix(block.Type, "PRIVATE KEY") {
			key = pem.EncodeToMemory(block)
		}
	}
	cert, err := tls.X509KeyPair(certs, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tls bundle %s: %w", path, err)
	}
	if publish != "" {
		if err := os.WriteFile(publish, certs, 0o644); err != nil {
			return tls.Certificate{}, fmt.Errorf("publish certificate: %w", err)
		}
	}
	return cert, nil
}

// probeIssue asks Vault for a runner certificate for each name with the
// task's own token and records what Vault answered.
func probeIssue(names []string, out string) error {
	if out == "" {
		return fmt.Errorf("%s is not set", HelperProbeOutEnv)
	}
	client, err := vaultapi.NewClient(vaultapi.DefaultConfig()) // VAULT_ADDR, VAULT_TOKEN
	if err != nil {
		return fmt.Errorf("vault client: %w", err)
	}
	result := map[string]string{}
	for _, name := range names {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := client.Logical().WriteWithContext(ctx, "pki_int/issue/runner", map[string]any{
			"common_name": name, "ttl": "10m",
		})
		cancel()
		if err != nil {
			result[name] = err.Error()
		} else {
			result[name] = "ok"
		}
	}
	b, err := json.Marshal(result)
	if err != nil {
		return err
	}
	return os.WriteFile(out, b, 0o644)
}
