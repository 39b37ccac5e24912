//go:build e2e

package consul_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/client/discovery/consul"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/names"
)

// BenchmarkDiscovery10k: a crunch of 10,000 models in a real Consul (its
// own dev server; 100 nodes of 100 instances, each with the meta the
// scheduler's jobs give their service and a passing check), watched by
// this package's Source through blocking queries.
//   - first-s: from Watch to the first membership of all 10,000;
//   - change-p50-ms/change-max-ms: one more instance registered → the
//     membership that holds it (5 changes);
//   - baseline query-ms: one plain health query of the same service
//     (passing only) through consul/api, answer-MiB its size.
func BenchmarkDiscovery10k(b *testing.B) {
	const n, nodes = 10000, 100
	cl := testcluster.Start(b, testcluster.Consul)
	cat := cl.Consul.Client.Catalog()
	service := names.Service("scale")
	const crunch = "ScaleCrunchBase58Id11111111111111111111111111"
	reg := func(i int) error {
		node := fmt.Sprintf("sim-node-%03d", i%nodes)
		id := fmt.Sprintf("m%05d", i)
		_, err := cat.Register(&consulapi.CatalogRegistration{
			Node: node, Address: "127.0.0.1", SkipNodeUpdate: true,
			Service: &consulapi.AgentService{ID: "_nomad-task-" + id, Service: service, Address: "127.0.0.1", Port: 20000 + i%10000,
				Tags: []string{}, Meta: map[string]string{
					names.MetaModelID: id, names.MetaModel: "Model" + id + "FullBase58IdOnChain1111111111",
					names.MetaCrunch: crunch, names.MetaCruncher: "CruncherWallet" + id + "Base58111111111111111111",
					names.MetaHotkey: "Hotkey" + id + "Base5811111111111111111111111111", names.MetaSeccompProfile: "default",
				}},
			Check: &consulapi.AgentCheck{Node: node, CheckID: "_nomad-check-" + id, Name: "grpc-health", Status: consulapi.HealthPassing,
				ServiceID: "_nomad-task-" + id, Type: "grpc", Output: "gRPC check 127.0.0.1: success"},
		}, nil)
		return err
	}
	t0 := time.Now()
	work := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := reg(i); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	b.Logf("%d instances registered on %d nodes in %.1fs", n, nodes, time.Since(t0).Seconds())

	b.Run("models=10000/impl=health-query", func(b *testing.B) {
		var lat []time.Duration
		var size int
		for b.Loop() {
			t0 := time.Now()
			entries, _, err := cl.Consul.Client.Health().Service(service, "", true, nil)
			if err != nil || len(entries) != n {
				b.Fatalf("%d entries: %v", len(entries), err)
			}
			lat = append(lat, time.Since(t0))
			if size == 0 {
				size = answerBytes(b, cl, service)
			}
		}
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "query-ms")
		b.ReportMetric(float64(size)/(1<<20), "answer-MiB")
	})
	b.Run("models=10000/impl=source", func(b *testing.B) {
		next := n
		for b.Loop() {
			src := &consul.Source{Client: cl.Consul.Client, Service: service, Crunch: crunch, Wait: time.Minute}
			updates := make(chan []discovery.Model, 64)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			t0 := time.Now()
			go func() { _ = src.Watch(ctx, func(ms []discovery.Model) { updates <- ms }) }()
			want := func(count int) time.Duration {
				for {
					select {
					case ms := <-updates:
						if len(ms) == count {
							return time.Since(t0)
						}
					case <-ctx.Done():
						b.Fatalf("no membership of %d models", count)
					}
				}
			}
			first := want(next)
			var changes []time.Duration
			for range 5 {
				t0 = time.Now()
				if err := reg(next); err != nil {
					b.Fatal(err)
				}
				next++
				changes = append(changes, want(next))
			}
			cancel()
			slices.Sort(changes)
			b.ReportMetric(first.Seconds(), "first-s")
			b.ReportMetric(float64(changes[2].Microseconds())/1000, "change-p50-ms")
			b.ReportMetric(float64(changes[4].Microseconds())/1000, "change-max-ms")
		}
	})
}

// answerBytes is the size of one health answer for service (passing only),
// as a coordinator receives it.
func answerBytes(b *testing.B, cl *testcluster.Cluster, service string) int {
	req, err := http.NewRequest(http.MethodGet, "http://"+cl.Consul.Addr+"/v1/health/service/"+service+"?passing=1", nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("X-Consul-Token", cl.Consul.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	size, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	return int(size)
}
