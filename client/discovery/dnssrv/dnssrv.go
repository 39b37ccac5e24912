// Package dnssrv resolves gRPC targets through DNS SRV records, as Consul's
// DNS interface serves them: grpc-go's own DNS resolver reads only A/AAAA
// records (and SRV only for grpclb), so ports chosen by Nomad would be lost.
//
// Importing the package registers the scheme "consul-srv":
//
//	consul-srv://127.0.0.1:8600/<model_id>.crunch-<crunch>.service.consul
//
// The authority is the DNS server to ask (empty: the system's resolver);
// the path is the SRV name. Every SRV target is resolved to its addresses
// through the same server, and the set is re-resolved every RefreshInterval
// and whenever gRPC asks (a connection failed), at most once a second.
package dnssrv

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/resolver"

	"github.com/modelnodes/modelnodes/client/discovery"
)

// Scheme is the target scheme this package registers.
const Scheme = "consul-srv"

// RefreshInterval is how often a target is re-resolved without being asked.
// Consul answers with TTL 0 by default, so there is no TTL to follow.
var RefreshInterval = 10 * time.Second

// minResolveGap bounds re-resolution requested by gRPC.
const minResolveGap = time.Second

func init() { resolver.Register(builder{}) }

// Target returns the gRPC target that resolves name's SRV records through
// the DNS server at dnsAddr ("" for the system resolver).
func Target(dnsAddr, name string) string { return Scheme + "://" + dnsAddr + "/" + name }

// ModelName returns the SRV name of one model of a crunch service: the job
// tags its service instance with the model's short id, and Consul serves
// <tag>.<service>.service.consul with only that model's passing instance.
func ModelName(modelID, service string) string {
	return modelID + "." + service + ".service.consul"
}

// Models describes the given models of a crunch service as reached through
// Consul DNS at dnsAddr. DNS carries no service meta, so the ids come from
// the caller (e.g. the chain); a model whose instance is absent or failing
// has no SRV record and its calls fail as unavailable until it comes back.
//
// Nor can instances be checked against the crunch in their meta, as package
// consul does: an instance that another job registered under the service
// name with the model's tag is answered beside the model's own. The only
// check left is the runner certificate, which must name the model
// (discovery.ServerName): in plaintext nothing tells them apart.
func Models(dnsAddr, service string, ids ...string) discovery.Static {
	s := make(discovery.Static, 0, len(ids))
	for _, id := range ids {
		s = append(s, discovery.Model{ID: id, Target: Target(dnsAddr, ModelName(id, service))})
	}
	return s
}

// Lookup resolves name's SRV records through the DNS server at dnsAddr
// ("" for the system resolver) into "host:port" addresses, sorted by SRV
// priority then weight (as net.LookupSRV orders them) .
func Lookup(ctx context.Context, dnsAddr, name string) ([]string, error) {
	r := newResolver(dnsAddr)
	if !strings.HasSuffix(name, ".") {
		name += "." // fully qualified: no search domains
	}
	_, srvs, err := r.LookupSRV(ctx, "", "", name)
	if err != nil {
		return nil, fmt.Errorf("dnssrv: SRV %s: %w", name, err)
	}
	var addrs []string
	for _, srv := range srvs {
		hosts := []string{srv.Target}
		if net.ParseIP(srv.Target) == nil {
			if hosts, err = r.LookupHost(ctx, srv.Target); err != nil {
				return nil, fmt.Errorf("dnssrv: address of %s: %w", srv.Target, err)
			}
		}
		for _, h := range hosts {
			addrs = append(addrs, net.JoinHostPort(h, strconv.Itoa(int(srv.Port))))
		}
	}
	return addrs, nil
}

func newResolver(dnsAddr string) *net.Resolver {
	if dnsAddr == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, dnsAddr)
		},
	}
}

type builder struct{}

func (builder) Scheme() string { return Scheme }

func (builder) Build(t resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	name := t.Endpoint()
	if name == "" {
		return nil, fmt.Errorf("dnssrv: target %q names no SRV record", t.URL.String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &srvResolver{dns: t.URL.Host, name: name, cc: cc, cancel: cancel, now: make(chan struct{}, 1)}
	r.wg.Add(1)
	go r.run(ctx)
	return r, nil
}

type srvResolver struct {
	dns, name string
	cc        resolver.ClientConn
	cancel    context.CancelFunc
	now       chan struct{}
	wg        sync.WaitGroup
}

func (r *srvResolver) ResolveNow(resolver.ResolveNowOptions) {
	select {
	case r.now <- struct{}{}:
	default:
	}
}

func (r *srvResolver) Close() { r.cancel(); r.wg.Wait() }

func (r *srvResolver) run(ctx context.Context) {
	defer r.wg.Done()
	var last []string
	tick := time.NewTicker(RefreshInterval)
	defer tick.Stop()
	for {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		addrs, err := Lookup(lctx, r.dns, r.name)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			r.cc.ReportError(err)
			last = nil
		case len(addrs) == 0:
			r.cc.ReportError(fmt.Errorf("dnssrv: %s has no SRV record", r.name))
			last = nil
		case !slices.Equal(sorted(addrs), last):
			last = addrs
			st := resolver.State{}
			for _, a := range addrs {
				st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
			}
			_ = r.cc.UpdateState(st)
		}
		gap := time.NewTimer(minResolveGap)
		select {
		case <-ctx.Done():
			gap.Stop()
			return
		case <-gap.C:
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-r.now:
		}
	}
}

// sorted orders addresses so that a reshuffle of equal-weight records is
// not mistaken for a change.
func sorted(addrs []string) []string { slices.Sort(addrs); return addrs }
