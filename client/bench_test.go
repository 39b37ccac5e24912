package client_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	"github.com/modelnodes/modelnodes/runner"
)

// The benchmarks call in-process gRPC servers implementing the runner's
// DynamicSubclass service directly (a model answering in 10 ms, or never):
// 1,000 runners with 1,000 worker processes do not fit this machine, and
// the fan-out, not the worker seam, is what is measured here (the runner's
// own costs are in runner/bench_test.go).

// benchModel answers Call after delay; models listed in hang never answer
// (until the caller gives up).
type benchModel struct {
	dspb.UnimplementedDynamicSubclassServiceServer
	delay time.Duration
	hang  bool
}

func (m *benchModel) Setup(context.Context, *dspb.SetupRequest) (*dspb.SetupResponse, error) {
	return &dspb.SetupResponse{Status: &commonspb.Status{Code: "SUCCESS"}}, nil
}

func (m *benchModel) Call(ctx context.Context, req *dspb.CallRequest) (*dspb.CallResponse, error) {
	if m.hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	time.Sleep(m.delay)
	return &dspb.CallResponse{Status: &commonspb.Status{Code: "SUCCESS"}, MethodResponse: commonspb.Double(0.5)}, nil
}

func (m *benchModel) Rest(context.Context, *emptypb.Empty) (*dspb.RestResponse, error) {
	return &dspb.RestResponse{Status: &commonspb.Status{Code: "SUCCESS"}}, nil
}

// benchPKI is one CA, one wildcard server certificate for every runner
// (*.crunchdao.internal names model-node-<id>.crunchdao.internal) and a
// coordinator certificate.
type benchPKI struct {
	dir       string
	serverTLS *tls.Config
	client    *tlsfiles.Reloader
	caPool    *x509.CertPool
}

func newBenchPKI(b testing.TB) *benchPKI {
	dir, err := os.MkdirTemp("", "client-bench-")
	if err != nil {
		b.Fatal(err)
	}
	ca := testpki.NewCA(b, "bench CA")
	caFile := ca.WriteCA(b, dir, "ca.crt")
	srv := ca.Issue(b, dir, testpki.Leaf{CommonName: "runners", DNSNames: []string{"*.crunchdao.internal"}})
	cli := ca.Issue(b, dir, testpki.Leaf{CommonName: "coordinator", Client: true})
	srvRel, err := tlsfiles.New(tlsfiles.Files{CertFile: srv.CertFile, KeyFile: srv.KeyFile, CAFile: caFile}, nil)
	if err != nil {
		b.Fatal(err)
	}
	cliRel, err := tlsfiles.New(tlsfiles.Files{CertFile: cli.CertFile, KeyFile: cli.KeyFile, CAFile: caFile}, nil)
	if err != nil {
		b.Fatal(err)
	}
	return &benchPKI{dir: dir, serverTLS: srvRel.ServerConfig(), client: cliRel, caPool: cliRel.Pool()}
}

// benchFleet is n servers on loopback (mTLS), started once per process.
type benchFleet struct {
	pki    *benchPKI
	models []discovery.Model
}

var (
	fleetMu sync.Mutex
	fleets  = map[string]*benchFleet{}
)

// fleet returns n servers whose model answers in delay; the first
// hangPerMille/1000 of them never answer.
// staticWindows gives the servers static 1 MiB HTTP/2 windows (no BDP
// pings towards the client); false gives them the runner's own transport
// options (runner.TransportOptions).
func fleet(b testing.TB, n int, delay time.Duration, hangPerMille int, staticWindows bool) *benchFleet {
	key := fmt.Sprintf("%d/%v/%d/%v", n, delay, hangPerMille, staticWindows)
	fleetMu.Lock()
	defer fleetMu.Unlock()
	if f := fleets[key]; f != nil {
		return f
	}
	f := &benchFleet{pki: newBenchPKI(b)}
	hang := n * hangPerMille / 1000
	for i := range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		opts := []grpc.ServerOption{grpc.Creds(credentials.NewTLS(f.pki.serverTLS))}
		if staticWindows {
			opts = append(opts, grpc.InitialWindowSize(1<<20), grpc.InitialConnWindowSize(1<<20))
		} else {
			opts = append(opts, runner.TransportOptions()...)
		}
		s := grpc.NewServer(opts...)
		dspb.RegisterDynamicSubclassServiceServer(s, &benchModel{delay: delay, hang: i < hang})
		healthpb.RegisterHealthServer(s, health.NewServer())
		go func() { _ = s.Serve(lis) }()
		f.models = append(f.models, discovery.Model{ID: fmt.Sprintf("m%04d", i), Target: lis.Addr().String()})
	}
	fleets[key] = f
	return f
}

// connect returns a client connected (READY) to every model of f, with
// every call of a fan-out in flight at once.
func connect(b testing.TB, f *benchFleet, opts ...grpc.DialOption) *client.Client {
	return connectWith(b, f, len(f.models), opts...)
}

// connectWith is connect with at most concurrency calls in flight (0: the
// client's default, 1,024).
func connectWith(b testing.TB, f *benchFleet, concurrency int, opts ...grpc.DialOption) *client.Client {
	c, err := client.New(client.Config{Source: discovery.Static(f.models), TLS: f.pki.client, DialOptions: opts, Concurrency: concurrency})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	if err := c.WaitMembership(ctx); err != nil {
		b.Fatal(err)
	}
	// 1,000 mTLS handshakes take about 1.4 s here; 10,000 about ten times that.
	deadline := time.Now().Add(2*time.Minute + time.Duration(len(f.models))*20*time.Millisecond)
	for {
		ready := 0
		for _, m := range c.Members() {
			if m.State.String() == "READY" {
				ready++
			}
		}
		if ready == len(f.models) {
			return c
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d connections ready", ready, len(f.models))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var callArgs = client.Positional(commonspb.Double(1.5), commonspb.String("features"))

// reportLatency reports the p50 and p90 of lat in milliseconds.
func reportLatency(b *testing.B, lat []time.Duration, prefix string) {
	slices.Sort(lat)
	q := func(p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))]) / 1e6
	}
	b.ReportMetric(q(0.5), prefix+"p50-ms")
	b.ReportMetric(q(0.9), prefix+"p90-ms")
}

// BenchmarkFanOut: one Call to every model, each answering in 10 ms.
//   - impl=client is this package; impl=grpc-defaults the same fan-out over
//     connections dialled with grpc-go's defaults (BDP probing, 32 KiB
//     buffers); impl=raw-grpc (models=1) one direct generated-client call,
//     the baseline.
//   - server=static-windows: the stand-in runners use static 1 MiB HTTP/2
//     windows; server=runner: the runner's own transport options
//     (runner.TransportOptions).
func BenchmarkFanOut(b *testing.B) {
	for _, tc := range []struct {
		n      int
		server string
		impl   string
	}{
		{1, "static-windows", "raw-grpc"},
		{1, "static-windows", "client"},
		{1000, "static-windows", "client"},
		{1000, "static-windows", "grpc-defaults"},
		{1000, "runner", "client"},
	} {
		b.Run(fmt.Sprintf("models=%d/server=%s/impl=%s", tc.n, tc.server, tc.impl), func(b *testing.B) {
			f := fleet(b, tc.n, 10*time.Millisecond, 0, tc.server == "static-windows")
			ctx := context.Background()
			var call func() error
			switch tc.impl {
			case "raw-grpc":
				call = rawCall(b, f)
			default:
				var opts []grpc.DialOption
				if tc.impl == "grpc-defaults" {
					opts = grpcDefaults()
				}
				c := connect(b, f, opts...)
				call = func() error {
					for _, r := range c.Call(ctx, "predict", client.Request{Args: callArgs, Timeout: 5 * time.Second}) {
						if !r.OK() {
							return fmt.Errorf("%s: %s %s", r.Model.ID, r.Status, r.Message)
						}
					}
					return nil
				}
			}
			for range 3 { // warm up
				_ = call()
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if err := call(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			reportLatency(b, lat, "")
		})
	}
}

// rawCall returns one direct Call to f's first model with the generated
// client: the fan-out benchmarks' baseline.
func rawCall(b testing.TB, f *benchFleet) func() error {
	cc, err := grpc.NewClient(f.models[0].Target, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: f.pki.caPool, ServerName: f.models[0].TLSName(), Certificates: []tls.Certificate{*f.pki.client.Certificate()},
	})))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	ds := dspb.NewDynamicSubclassServiceClient(cc)
	req := &dspb.CallRequest{MethodName: "predict", MethodArguments: []*commonspb.Argument{
		{Position: 0, Data: commonspb.Double(1.5)}, {Position: 1, Data: commonspb.String("features")}}}
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := ds.Call(ctx, req)
		return err
	}
}

// grpcDefaults undoes the client's tuning: dynamic windows with BDP
// probing, grpc-go's default 32 KiB buffers.
func grpcDefaults() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(0), grpc.WithInitialConnWindowSize(0),
		grpc.WithReadBufferSize(32 << 10), grpc.WithWriteBufferSize(32 << 10),
	}
}

// BenchmarkFanOutDeadline: 1 % of 1,000 models never answer; the fan-out
// must return at its 100 ms deadline plus a little (servers with static
// windows, as in BenchmarkFanOut). late-ms is how long
// after the deadline it returned. hang=0 is the baseline where every model
// answers (in 10 ms) well before the deadline.
func BenchmarkFanOutDeadline(b *testing.B) {
	const deadline = 100 * time.Millisecond
	for _, hang := range []int{0, 10} {
		b.Run(fmt.Sprintf("models=1000/hang=%d", hang), func(b *testing.B) {
			f := fleet(b, 1000, 10*time.Millisecond, hang, true)
			c := connect(b, f)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				t0 := time.Now()
				res := c.Call(ctx, "predict", client.Request{Args: callArgs})
				took := time.Since(t0)
				cancel()
				timeouts := 0
				for _, r := range res {
					if r.Status == client.Timeout {
						timeouts++
					}
				}
				if want := 1000 * hang / 1000; timeouts < want {
					b.Fatalf("%d timeouts, want at least %d", timeouts, want)
				}
				if hang > 0 {
					took -= deadline
				}
				lat = append(lat, took)
			}
			b.StopTimer()
			if hang > 0 {
				reportLatency(b, lat, "late-")
			} else {
				reportLatency(b, lat, "")
			}
		})
	}
}

// BenchmarkClientMemory measures the coordinator's memory per connected
// model (mTLS, READY), the servers running in a child process so that
// only the client's memory counts. baseline=grpc-defaults dials the same
// way with grpc-go's default buffers.
func BenchmarkClientMemory(b *testing.B) {
	const n = 1000
	addrs, pki := childFleet(b, n)
	for _, impl := range []string{"client", "grpc-defaults"} {
		b.Run(fmt.Sprintf("models=%d/impl=%s", n, impl), func(b *testing.B) {
			for range b.N {
				heap0, rss0 := memNow()
				f := &benchFleet{pki: pki}
				for i, a := range addrs {
					f.models = append(f.models, discovery.Model{ID: fmt.Sprintf("m%04d", i), Target: a})
				}
				var opts []grpc.DialOption
				if impl == "grpc-defaults" {
					opts = grpcDefaults()
				}
				sub := &cleanups{TB: b}
				c := connect(sub, f, opts...)
				// One call each so every connection has been used.
				res := c.Call(context.Background(), "predict", client.Request{Args: callArgs, Timeout: 10 * time.Second})
				for _, r := range res {
					if !r.OK() {
						b.Fatalf("%s: %s %s", r.Model.ID, r.Status, r.Message)
					}
				}
				heap1, rss1 := memNow()
				b.ReportMetric(float64(heap1-heap0)/n/1024, "heap+stack-KiB/model")
				b.ReportMetric(float64(rss1-rss0)/n/1024, "rss-KiB/model")
				sub.run()
			}
		})
	}
}

// BenchmarkFanOut10k: one Call to 10,000 models (10 ms each), the servers
// in a child process as in BenchmarkClientMemory, so that the client's
// memory per connected model is measured at the same time. The baseline,
// models=1/impl=raw-grpc, is one direct generated-client call to one of
// the same servers, in the same run. conc=10000 has every call in flight
// at once (as BenchmarkFanOut; the client's default bound is 1,024).
// p50-ms/p99-ms are one round's latency (until the last result).
// The client holds one descriptor per model (the servers are spread over
// child processes, childFleet).
func BenchmarkFanOut10k(b *testing.B) {
	const n = 10000
	raiseFileLimit(b, n+1000)
	addrs, pki := childFleet(b, n)
	f := &benchFleet{pki: pki}
	for i, a := range addrs {
		f.models = append(f.models, discovery.Model{ID: fmt.Sprintf("m%05d", i), Target: a})
	}
	b.Run("models=1/impl=raw-grpc", func(b *testing.B) {
		call := rawCall(b, f)
		lat := make([]time.Duration, 0, b.N)
		for b.Loop() {
			t0 := time.Now()
			if err := call(); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		reportLatency99(b, lat)
	})
	// One client only: a second one's 10,000 connections would not find
	// loopback ports while the first one's sit in TIME_WAIT (with the
	// servers' 10,000 listeners, 30,000 of the 28,232 ephemeral ports).
	for _, conc := range []int{n} {
		b.Run(fmt.Sprintf("models=%d/impl=client/conc=%d", n, conc), func(b *testing.B) {
			heap0, rss0 := memNow()
			sub := &cleanups{TB: b}
			defer sub.run()
			t0 := time.Now()
			c := connectWith(sub, f, conc)
			connected := time.Since(t0)
			round := func() time.Duration {
				t0 := time.Now()
				res := c.Call(context.Background(), "predict", client.Request{Args: callArgs, Timeout: 30 * time.Second})
				took := time.Since(t0)
				for _, r := range res {
					if !r.OK() {
						b.Fatalf("%s: %s %s", r.Model.ID, r.Status, r.Message)
					}
				}
				if len(res) != n {
					b.Fatalf("%d results, want %d", len(res), n)
				}
				return took
			}
			round() // every connection used once before memory is read
			heap1, rss1 := memNow()
			lat := make([]time.Duration, 0, b.N)
			for b.Loop() {
				lat = append(lat, round())
			}
			reportLatency99(b, lat)
			b.ReportMetric(connected.Seconds(), "connect-s")
			b.ReportMetric(float64(heap1-heap0)/n/1024, "heap+stack-KiB/model")
			b.ReportMetric(float64(rss1-rss0)/n/1024, "rss-KiB/model")
		})
	}
}

// reportLatency99 reports the p50 and p99 of lat in milliseconds.
func reportLatency99(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e6 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}

// raiseFileLimit raises this process's open-file limit to at least n,
// skipping the benchmark, with the reason, where that is not allowed.
func raiseFileLimit(b *testing.B, n uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	want := syscall.Rlimit{Cur: max(n, lim.Max), Max: max(n, lim.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		b.Skipf("%d connections need %d open files; the limit is %d and cannot be raised here: %v", n-1000, n, lim.Max, err)
	}
}

type cleanups struct {
	testing.TB
	fns []func()
}

func (c *cleanups) Cleanup(f func()) { c.fns = append(c.fns, f) }
func (c *cleanups) run() {
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
	time.Sleep(200 * time.Millisecond) // let closed connections' goroutines exit
}

// memNow returns live heap + goroutine stacks (after a GC) and RSS, in bytes.
func memNow() (uint64, uint64) {
	runtime.GC()
	debug.FreeOSMemory() // so RSS drops what the previous run freed
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	statm, _ := os.ReadFile("/proc/self/statm")
	f := strings.Fields(string(statm))
	rss := uint64(0)
	if len(f) > 1 {
		pages, _ := strconv.ParseUint(f[1], 10, 64)
		rss = pages * uint64(os.Getpagesize())
	}
	return ms.HeapAlloc + ms.StackInuse, rss
}

// The test binary doubles as a process serving a fleet of bench servers.
const fleetEnv = "MODELNODES_CLIENT_BENCH_FLEET"

// childFleet starts n servers (10 ms model) in child processes and returns
// their addresses; the children exit when the benchmark ends. Each child
// serves at most fleetPerChild: a server holds two descriptors (its
// listener and its connection), and a process here may open 20,000.
func childFleet(b testing.TB, n int) ([]string, *benchPKI) {
	pki := newBenchPKI(b)
	var addrs []string
	for len(addrs) < n {
		addrs = append(addrs, childFleetPart(b, pki, min(fleetPerChild, n-len(addrs)))...)
	}
	return addrs, pki
}

const fleetPerChild = 4000

func childFleetPart(b testing.TB, pki *benchPKI, n int) []string {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), fleetEnv+"="+strconv.Itoa(n), fleetEnv+"_DIR="+pki.dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	var addrs []string
	for sc.Scan() && sc.Text() != "READY" {
		addrs = append(addrs, sc.Text())
	}
	if len(addrs) != n {
		b.Fatalf("the fleet process reported %d addresses, want %d", len(addrs), n)
	}
	return addrs
}

// fleetMain serves the fleet until stdin closes.
func fleetMain() {
	n, _ := strconv.Atoi(os.Getenv(fleetEnv))
	dir := os.Getenv(fleetEnv + "_DIR")
	rel, err := tlsfiles.New(tlsfiles.Files{
		CertFile: filepath.Join(dir, "runners.crt"), KeyFile: filepath.Join(dir, "runners.key"), CAFile: filepath.Join(dir, "ca.crt"),
	}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out := bufio.NewWriter(os.Stdout)
	for range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		s := grpc.NewServer(grpc.Creds(credentials.NewTLS(rel.ServerConfig())))
		dspb.RegisterDynamicSubclassServiceServer(s, &benchModel{delay: 10 * time.Millisecond})
		go func() { _ = s.Serve(lis) }()
		fmt.Fprintln(out, lis.Addr().String())
	}
	fmt.Fprintln(out, "READY")
	out.Flush()
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}
