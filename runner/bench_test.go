package runner_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/modelnodes/modelnodes/internal/testing/testpki"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/worker"
)

// echoServer is the baseline: a bare grpc-go server answering Call in-process
// with the same message types, over the same mTLS. What the runner adds is the
// difference between it and the runner's figures in the same run.
type echoServer struct {
	dspb.UnimplementedDynamicSubclassServiceServer
}

func (echoServer) Call(_ context.Context, in *dspb.CallRequest) (*dspb.CallResponse, error) {
	var v *commonspb.Variant
	if len(in.GetMethodArguments()) > 0 {
		v = in.GetMethodArguments()[0].GetData()
	}
	return &dspb.CallResponse{Status: &commonspb.Status{Code: "SUCCESS"}, MethodResponse: v}, nil
}

type benchPKI struct {
	server, client *testpki.Issued
	ca             *testpki.CA
	caFile         string
}

func newBenchPKI(b *testing.B) *benchPKI {
	dir := b.TempDir()
	ca := testpki.NewCA(b, "bench CA")
	return &benchPKI{
		ca:     ca,
		caFile: ca.WriteCA(b, dir, "ca.crt"),
		server: ca.Issue(b, dir, testpki.Leaf{CommonName: "runner", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, RSA: true}),
		client: ca.Issue(b, dir, testpki.Leaf{CommonName: "coordinator", Client: true}),
	}
}

func (p *benchPKI) reloader(b *testing.B) *tlsfiles.Reloader {
	r, err := tlsfiles.New(tlsfiles.Files{CertFile: p.server.CertFile, KeyFile: p.server.KeyFile, CAFile: p.caFile}, nil)
	if err != nil {
		b.Fatal(err)
	}
	return r
}

func (p *benchPKI) dial(b *testing.B) grpc.DialOption {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Cert)
	pair, err := tls.X509KeyPair(p.client.CertPEM, p.client.KeyPEM)
	if err != nil {
		b.Fatal(err)
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}))
}

func BenchmarkCall(b *testing.B) {
	pki := newBenchPKI(b)
	arg := args(commonspb.Double(1.5))

	targets := []struct {
		name  string
		start func(b *testing.B) dspb.DynamicSubclassServiceClient
	}{
		{"baseline=grpc-echo", func(b *testing.B) dspb.DynamicSubclassServiceClient {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(pki.reloader(b).ServerConfig())))
			dspb.RegisterDynamicSubclassServiceServer(srv, echoServer{})
			go func() { _ = srv.Serve(lis) }()
			b.Cleanup(srv.Stop)
			return dialHarness(b, nil, lis.Addr().String(), pki.dial(b)).ds
		}},
		{"runner=go-model", func(b *testing.B) dspb.DynamicSubclassServiceClient {
			return startBenchRunner(b, pki, exampleWorker(b))
		}},
		{"runner=python-model", func(b *testing.B) dspb.DynamicSubclassServiceClient {
			return startBenchRunner(b, pki, pythonWorker(b, "pymodel"))
		}},
	}
	for _, target := range targets {
		client := target.start(b)
		for _, conc := range []int{1, 64} {
			b.Run(target.name+"/conc="+strconv.Itoa(conc), func(b *testing.B) {
				runCalls(b, client, arg, conc)
			})
		}
	}
}

func startBenchRunner(b *testing.B, pki *benchPKI, command []string) dspb.DynamicSubclassServiceClient {
	cfg := runner.Config{
		TLS:    pki.reloader(b),
		Logger: hclog.NewNullLogger(),
		Worker: worker.Config{Command: command, MaxQueue: 256},
	}
	h := startConfig(b, cfg, pki.dial(b)).ready()
	if st := h.setup("crunch_base.Tracker", nil); st.GetCode() != "SUCCESS" {
		b.Fatalf("setup: %v", st)
	}
	return h.ds
}

// runCalls makes b.N echo calls from conc goroutines and reports throughput
// and the latency percentiles a caller sees.
func runCalls(b *testing.B, client dspb.DynamicSubclassServiceClient, arg []*commonspb.Argument, conc int) {
	ctx := context.Background()
	req := &dspb.CallRequest{MethodName: "echo", MethodArguments: arg}
	for i := 0; i < 50; i++ { // warm the connection
		if _, err := client.Call(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([][]time.Duration, conc)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for g := 0; g < conc; g++ {
		n := b.N / conc
		if g < b.N%conc {
			n++
		}
		wg.Add(1)
		go func(g, n int) {
			defer wg.Done()
			mine := make([]time.Duration, 0, n)
			for i := 0; i < n; i++ {
				t0 := time.Now()
				res, err := client.Call(ctx, req)
				if err != nil || res.GetStatus().GetCode() != "SUCCESS" {
					b.Errorf("call: %v %v", res.GetStatus(), err)
					return
				}
				mine = append(mine, time.Since(t0))
			}
			lat[g] = mine
		}(g, n)
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "calls/s")
}
