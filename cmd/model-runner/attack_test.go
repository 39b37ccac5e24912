package main_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/modelnodes/modelnodes/internal/procfs"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/names"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	"github.com/modelnodes/modelnodes/runner/authz"
)

// secureRunner is a model-runner process serving crunch alpha with mTLS,
// an on-chain hash and a CRL, as the driver starts it.
type secureRunner struct {
	cmd          *exec.Cmd
	addr, health string
	ca           *testpki.CA
	alpha, beta  *testpki.Issued
	caFile, name string
	logs         *bytes.Buffer
}

func startSecureRunner(t *testing.T, extra ...string) *secureRunner {
	t.Helper()
	dir := t.TempDir()
	r := &secureRunner{ca: testpki.NewCA(t, "model-calls CA"), addr: freePort(t), health: freePort(t), logs: &bytes.Buffer{},
		name: "model-node-7.crunchdao.internal"}
	r.caFile = r.ca.WriteCA(t, dir, "ca.pem")
	server := r.ca.Issue(t, dir, testpki.Leaf{CommonName: r.name, DNSNames: []string{r.name}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, RSA: true})
	r.alpha = r.ca.Issue(t, dir, testpki.Leaf{CommonName: "alpha", Client: true, URIs: []string{names.CoordinatorURIPrefix + "alpha"}})
	r.beta = r.ca.Issue(t, dir, testpki.Leaf{CommonName: "beta", Client: true, URIs: []string{names.CoordinatorURIPrefix + "beta"}})
	args := append([]string{"serve", "--listen", r.addr, "--health-listen", r.health,
		"--runtime", "executable", "--model-dir", dir, "--entry", exampleModelBinary(t),
		"--tls-cert", server.CertFile, "--tls-key", server.KeyFile, "--tls-client-ca", r.caFile,
		"--crunch", "alpha", "--coordinator-cert-hash", authz.SPKIHash(r.alpha.Cert),
		"--tls-crl", r.ca.WriteCRL(t, dir, "crl.pem")}, extra...)
	r.cmd = exec.Command(binary(t), args...)
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.cmd.Process.Kill(); _ = r.cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	health := healthpb.NewHealthClient(r.dial(t, r.alpha))
	for {
		res, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("never SERVING: %v\n%s", err, r.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

func (r *secureRunner) dial(t *testing.T, client *testpki.Issued) *grpc.ClientConn {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(r.ca.Cert)
	pair, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, ServerName: r.name, Certificates: []tls.Certificate{pair}})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// rssSampler records the highest resident memory of pid until stopped.
func rssSampler(t *testing.T, pid int) (stop func() float64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			if rss, err := procfs.RSSMiB(pid); err == nil && uint64(rss*1024) > peak.Load() {
				peak.Store(uint64(rss * 1024))
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() float64 {
		close(done)
		<-finished
		return float64(peak.Load()) / 1024
	}
}

func settledRSS(t *testing.T, pid int) float64 {
	time.Sleep(500 * time.Millisecond) // let start-up garbage settle
	rss, err := procfs.RSSMiB(pid)
	if err != nil {
		t.Fatal(err)
	}
	return rss
}

// bigSetup is a Setup whose request is n bytes of valid STRING argument.
func bigSetup(n int) *dspb.SetupRequest {
	return &dspb.SetupRequest{ClassName: "x.Base", InstanceArguments: []*commonspb.Argument{{
		Data: &commonspb.Variant{Type: commonspb.VariantType_STRING, Value: bytes.Repeat([]byte("a"), n)}}}}
}

// The attack of issue 13: another crunch's coordinator (a valid certificate
// from the same CA) sends 8 concurrent 60 MiB Setup calls, in rounds. The
// runner must refuse it before reading any of it: its resident memory stays
// within a few MiB of idle, and the crunch's own coordinator is answered
// all along. (Before the handshake check, each request was received and
// decoded before the interceptor refused it: 20 → 1,412 MiB.)
func TestForeignCoordinatorCannotExhaustRunnerMemory(t *testing.T) {
	r := startSecureRunner(t, "--max-inflight-bytes", "67108864")
	good := dspb.NewDynamicSubclassServiceClient(r.dial(t, r.alpha))
	if _, err := good.Setup(context.Background(), &dspb.SetupRequest{ClassName: "x.Base"}); err != nil {
		t.Fatalf("the crunch's coordinator before the attack: %v", err)
	}
	idle := settledRSS(t, r.cmd.Process.Pid)
	stop := rssSampler(t, r.cmd.Process.Pid)

	attackDone := make(chan struct{})
	var goodCalls, goodFailures atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the crunch's coordinator keeps calling during the attack
		defer wg.Done()
		for {
			select {
			case <-attackDone:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := good.Setup(ctx, &dspb.SetupRequest{ClassName: "x.Base"})
			cancel()
			goodCalls.Add(1)
			if err != nil {
				goodFailures.Add(1)
				t.Errorf("the crunch's coordinator during the attack: %v", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	req := bigSetup(60 << 20)
	var admitted atomic.Int64
	for round := 0; round < 3; round++ {
		var attackers sync.WaitGroup
		for i := 0; i < 8; i++ {
			attackers.Add(1)
			go func() {
				defer attackers.Done()
				conn := r.dial(t, r.beta)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				_, err := dspb.NewDynamicSubclassServiceClient(conn).Setup(ctx, req,
					grpc.MaxCallSendMsgSize(128<<20))
				if status.Code(err) != codes.Unavailable {
					admitted.Add(1)
				}
				_ = conn.Close()
			}()
		}
		attackers.Wait()
	}
	close(attackDone)
	wg.Wait()
	peak := stop()
	t.Logf("runner RSS: idle %.1f MiB, peak during the attack %.1f MiB (+%.1f); %d authorized calls answered meanwhile",
		idle, peak, peak-idle, goodCalls.Load())
	if admitted.Load() > 0 {
		t.Errorf("%d of 24 calls from another crunch's coordinator got past the handshake", admitted.Load())
	}
	if peak-idle > 8 {
		t.Errorf("the attack raised the runner's RSS by %.1f MiB (idle %.1f, peak %.1f): want within a few MiB", peak-idle, idle, peak)
	}
	if goodCalls.Load() == 0 || goodFailures.Load() > 0 {
		t.Errorf("authorized calls during the attack: %d, %d failed", goodCalls.Load(), goodFailures.Load())
	}
	if !strings.Contains(r.logs.String(), "caller refused") || !strings.Contains(r.logs.String(), "stage=handshake") {
		t.Errorf("the refusals are not logged with their stage:\n%s", r.logs)
	}

	// `model-runner delegation key` still reads the runner's key: it only
	// needs the server's certificate, from a handshake that the runner
	// refuses for lack of a client certificate.
	out, err := exec.Command(binary(t), "delegation", "key", "--runner-addr", r.addr, "--runner-ca", r.caFile,
		"--runner-name", r.name).Output()
	if err != nil || len(strings.TrimSpace(string(out))) < 100 {
		t.Errorf("delegation key against a runner with caller checks: %v %q", err, out)
	}
}

// The crunch's own coordinator flooding the runner with large requests is
// bounded by the request-byte budget: the calls queue (or get
// RESOURCE_EXHAUSTED) instead of the runner holding them all at once, and
// every one is answered.
func TestAuthorizedFloodIsBoundedByTheRequestBudget(t *testing.T) {
	r := startSecureRunner(t, "--max-inflight-bytes", "67108864")
	conn := r.dial(t, r.alpha)
	ds := dspb.NewDynamicSubclassServiceClient(conn)
	if _, err := ds.Setup(context.Background(), &dspb.SetupRequest{ClassName: "x.Base"}); err != nil {
		t.Fatal(err)
	}
	idle := settledRSS(t, r.cmd.Process.Pid)
	stop := rssSampler(t, r.cmd.Process.Pid)
	req := bigSetup(60 << 20)
	var wg sync.WaitGroup
	const n = 8
	codesSeen := make(chan codes.Code, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			_, err := dspb.NewDynamicSubclassServiceClient(r.dial(t, r.alpha)).Setup(ctx, req, grpc.MaxCallSendMsgSize(128<<20))
			codesSeen <- status.Code(err)
		}()
	}
	wg.Wait()
	close(codesSeen)
	peak := stop()
	var got []string
	for c := range codesSeen {
		got = append(got, c.String())
		if c != codes.OK && c != codes.ResourceExhausted {
			t.Errorf("a flooded call ended %s, want answered or RESOURCE_EXHAUSTED", c)
		}
	}
	t.Logf("runner RSS: idle %.1f MiB, peak during 8 × 60 MiB authorized Setup calls %.1f MiB (+%.1f); codes %v",
		idle, peak, peak-idle, got)
	// One 60 MiB request admitted at a time (a 64 MiB budget) under the Go
	// memory limit the runner derives from it; without the budget the
	// same flood took the runner from 20 to ~1,740 MiB.
	if peak-idle > 640 {
		t.Errorf("8 concurrent 60 MiB calls raised the RSS by %.1f MiB: the request budget does not bound them", peak-idle)
	}
}

// Caller checks without a revocation list would keep a revoked coordinator
// admitted: the runner refuses to start that way unless an operator's
// command line says so, and the switches that open the door cannot come
// from the environment a job controls.
func TestCallerChecksNeedARevocationList(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "ca")
	server := ca.Issue(t, dir, testpki.Leaf{CommonName: "runner", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, RSA: true})
	base := []string{"serve", "--model-dir", dir, "--runtime", "executable", "--entry", exampleModelBinary(t),
		"--listen", freePort(t), "--tls-cert", server.CertFile, "--tls-key", server.KeyFile, "--tls-client-ca", ca.WriteCA(t, dir, "ca.pem"),
		"--crunch", "alpha", "--coordinator-cert-hash", strings.Repeat("ab", 32)}
	run := func(env []string, extra ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, binary(t), append(append([]string{}, base...), extra...)...)
		cmd.Env = append(cmd.Environ(), env...)
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	if out := run(nil); !strings.Contains(out, "refusing to check callers without a revocation list") {
		t.Errorf("caller checks without a CRL source started:\n%s", out)
	}
	for _, env := range []string{"MODEL_RUNNER_AUTHZ_WITHOUT_CRL=true", "MODEL_RUNNER_AUTHZ_ANY_COORDINATOR_KEY=true"} {
		if out := run([]string{env}, "--tls-crl", ca.WriteCRL(t, dir, "crl.pem")); !strings.Contains(out, "only read from the command line") {
			t.Errorf("%s from the environment was not refused:\n%s", env, out)
		}
	}
	// On the command line it works, and says so loudly.
	if out := run(nil, "--authz-without-crl"); !strings.Contains(out, "DEVELOPMENT SWITCH --authz-without-crl") || !strings.Contains(out, "model runner serving") {
		t.Errorf("--authz-without-crl on the command line:\n%s", out)
	}
}
