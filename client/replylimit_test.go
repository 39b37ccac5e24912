package client_test

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
)

// hugeCodec makes a runner's every CallResponse carry a STRING of size
// bytes, as a hostile model would. The bytes are one shared chunk sent
// over and over, so the server side of a test costs no memory: what the
// test measures is the coordinator's.
type hugeCodec struct{ size int }

var hugeChunk = []byte(strings.Repeat("x", 1<<20))

func (hugeCodec) Name() string { return "proto" }

func (c hugeCodec) Marshal(v any) (mem.BufferSlice, error) {
	res, ok := v.(*dspb.CallResponse)
	if !ok {
		b, err := proto.Marshal(v.(proto.Message))
		return mem.BufferSlice{mem.SliceBuffer(b)}, err
	}
	// CallResponse{status: 1, methodResponse: 2 = Variant{type: 2, value: 3}}
	head, err := proto.Marshal(&dspb.CallResponse{Status: res.GetStatus()})
	if err != nil {
		return nil, err
	}
	variant := protowire.AppendTag(nil, 2, protowire.VarintType)
	variant = protowire.AppendVarint(variant, uint64(commonspb.VariantType_STRING))
	variant = protowire.AppendTag(variant, 3, protowire.BytesType)
	variant = protowire.AppendVarint(variant, uint64(c.size))
	head = protowire.AppendTag(head, 2, protowire.BytesType)
	head = protowire.AppendVarint(head, uint64(len(variant)+c.size))
	out := mem.BufferSlice{mem.SliceBuffer(append(head, variant...))}
	for left := c.size; left > 0; left -= len(hugeChunk) {
		out = append(out, mem.SliceBuffer(hugeChunk[:min(left, len(hugeChunk))]))
	}
	return out, nil
}

func (hugeCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

var _ encoding.CodecV2 = hugeCodec{}

// startFakeRunners serves n in-process DynamicSubclass services on
// loopback (plaintext); replySize > 0 makes each answer Call with a STRING
// of that many bytes, else they answer DOUBLE 0.5 at once.
func startFakeRunners(t testing.TB, prefix string, n, replySize int) []discovery.Model {
	t.Helper()
	var models []discovery.Model
	for i := range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		// The runner's windows (1 MiB): it pushes a reply as fast as
		// the coordinator lets it.
		opts := []grpc.ServerOption{grpc.InitialWindowSize(1 << 20), grpc.InitialConnWindowSize(1 << 20)}
		if replySize > 0 {
			opts = append(opts, grpc.ForceServerCodecV2(hugeCodec{size: replySize}))
		}
		s := grpc.NewServer(opts...)
		dspb.RegisterDynamicSubclassServiceServer(s, &benchModel{})
		go func() { _ = s.Serve(lis) }()
		t.Cleanup(s.Stop)
		models = append(models, discovery.Model{ID: fmt.Sprintf("%s%02d", prefix, i), Target: lis.Addr().String()})
	}
	return models
}

// fanoutMemory is what one Call fan-out cost this process: bytes
// allocated during it (an upper bound on how much the heap can have grown,
// whatever the GC did meanwhile) and the peak growth of HeapInuse, sampled
// every millisecond.
type fanoutMemory struct{ allocated, peakGrowth uint64 }

func (m fanoutMemory) String() string {
	return fmt.Sprintf("allocated %.1f MiB, heap in use peaked %.1f MiB above its start", mib(m.allocated), mib(m.peakGrowth))
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func measureCall(t *testing.T, c *client.Client) ([]client.Result, fanoutMemory) {
	t.Helper()
	allocs := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapInuse, ms.HeapInuse
	metrics.Read(allocs)
	before := allocs[0].Value.Uint64()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				var s runtime.MemStats
				runtime.ReadMemStats(&s)
				peak = max(peak, s.HeapInuse)
			}
		}
	})
	rs := c.Call(ctxTimeout(t, time.Minute), "predict", client.Request{})
	metrics.Read(allocs)
	close(stop)
	wg.Wait()
	return rs, fanoutMemory{allocated: allocs[0].Value.Uint64() - before, peakGrowth: peak - base}
}

// newConnectedClient returns a running plaintext client of models whose
// connections are all READY (Health answers, or fails fast on these fake
// runners: both need the connection up).
func newConnectedClient(t *testing.T, cfg client.Config, models []discovery.Model) *client.Client {
	t.Helper()
	cfg.Source, cfg.Plaintext = discovery.Static(models), true
	c := runClient(t, ctxTimeout(t, time.Minute), cfg)
	c.Rest(ctxTimeout(t, 30*time.Second), client.Request{}) // dials; small replies even from hostile runners
	return c
}

// A hostile model answering 128 MiB among honest ones: the coordinator's
// heap stays where the same fan-out of honest models alone leaves it, the
// hostile models get their own TooLarge result, the honest ones their
// answers. (Before the reply limit, the client took up to 256 MiB per
// reply: this fan-out allocated over 1 GiB.)
func TestHostileRepliesDoNotExhaustMemory(t *testing.T) {
	const honestN, hostileN, hugeSize = 20, 4, 128 << 20
	honest := startFakeRunners(t, "ok", honestN, 0)
	hostile := startFakeRunners(t, "huge", hostileN, hugeSize)

	baseline := newConnectedClient(t, client.Config{}, honest)
	_, want := measureCall(t, baseline)
	t.Logf("baseline, %d honest models: %v", honestN, want)

	c := newConnectedClient(t, client.Config{}, append(append([]discovery.Model{}, honest...), hostile...))
	rs, got := measureCall(t, c)
	t.Logf("with %d models answering %d MiB: %v", hostileN, hugeSize>>20, got)

	if len(rs) != honestN+hostileN {
		t.Fatalf("%d results for %d models", len(rs), honestN+hostileN)
	}
	for _, r := range rs {
		if strings.HasPrefix(r.Model.ID, "huge") {
			want := fmt.Sprintf("reply larger than %d bytes", client.DefaultMaxReplyBytes)
			if r.Status != client.TooLarge || r.Code != "RESOURCE_EXHAUSTED" || !strings.Contains(r.Message, want) {
				t.Errorf("hostile %s: %s %s %q, want too_large RESOURCE_EXHAUSTED %q", r.Model.ID, r.Status, r.Code, r.Message, want)
			}
			continue
		}
		if v, err := r.Value.AsDouble(); r.Status != client.Success || err != nil || v != 0.5 {
			t.Errorf("honest %s: %s %s %q value %v, want success 0.5", r.Model.ID, r.Status, r.Code, r.Message, r.Value)
		}
	}
	// Generous margins: the refused replies may each have filled one
	// HTTP/2 window (256 KiB here) before their length was read.
	const margin = 32 << 20
	if got.allocated > want.allocated+margin {
		t.Errorf("the fan-out with hostile models allocated %.1f MiB, honest models alone %.1f MiB: more than %d MiB apart",
			mib(got.allocated), mib(want.allocated), margin>>20)
	}
	if got.peakGrowth > want.peakGrowth+2*margin {
		t.Errorf("heap in use grew by up to %.1f MiB during the fan-out with hostile models, %.1f MiB with honest models alone",
			mib(got.peakGrowth), mib(want.peakGrowth))
	}
	if s := c.Stats(hostile[0].ID); s.Failures != 1 || len(s.LastError) > 1100 {
		t.Errorf("hostile model's accounting: %+v", s)
	}
}

// The fan-out's budget is shared: with MaxFanoutBytes = 1 MiB, eight models
// may send 128 KiB each, two may send 512 KiB each (MaxReplyBytes), so a
// 200 KiB reply is refused in the first call and answered in the second.
func TestFanoutBudgetIsShared(t *testing.T) {
	models := startFakeRunners(t, "m", 8, 200<<10)
	c := newConnectedClient(t, client.Config{MaxReplyBytes: 512 << 10, MaxFanoutBytes: 1 << 20}, models)

	for _, r := range c.Call(ctxTimeout(t, 30*time.Second), "predict", client.Request{}) {
		if want := "reply larger than 131072 bytes, the limit for each of the 8 models of this call (it had 204"; r.Status != client.TooLarge || !strings.HasPrefix(r.Message, want) {
			t.Errorf("%s among 8: %s %q, want too_large %q…", r.Model.ID, r.Status, r.Message, want)
		}
	}
	for _, r := range c.Call(ctxTimeout(t, 30*time.Second), "predict", client.Request{Models: []string{"m00", "m01"}}) {
		if r.Status != client.Success || len(r.Value.GetValue()) != 200<<10 {
			t.Errorf("%s among 2: %s %q (%d bytes), want success with 200 KiB", r.Model.ID, r.Status, r.Message, len(r.Value.GetValue()))
		}
	}
	if _, err := client.New(client.Config{Plaintext: true, Source: discovery.Static(models), MaxReplyBytes: 2 << 20, MaxFanoutBytes: 1 << 20}); err == nil {
		t.Error("a fan-out budget smaller than one reply was accepted")
	}
}

// slowSetup answers Setup after a pause, counting the Setups in flight
// across all its servers.
type slowSetup struct {
	benchModel
	inFlight, most *atomic.Int32
}

func (m *slowSetup) Setup(ctx context.Context, req *dspb.SetupRequest) (*dspb.SetupResponse, error) {
	n := m.inFlight.Add(1)
	defer m.inFlight.Add(-1)
	for {
		most := m.most.Load()
		if n <= most || m.most.CompareAndSwap(most, n) {
			break
		}
	}
	time.Sleep(50 * time.Millisecond)
	return m.benchModel.Setup(ctx, req)
}

// Models that join at once are set up a few at a time, so that their
// replies (each up to MaxReplyBytes) stay within one fan-out's budget:
// with room for two whole replies, never more than two Setups are in
// flight, and every model is set up.
func TestSetupsOnJoinShareTheBudget(t *testing.T) {
	var inFlight, most atomic.Int32
	var models []discovery.Model
	for i := range 6 {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer()
		dspb.RegisterDynamicSubclassServiceServer(s, &slowSetup{inFlight: &inFlight, most: &most})
		go func() { _ = s.Serve(lis) }()
		t.Cleanup(s.Stop)
		models = append(models, discovery.Model{ID: fmt.Sprintf("j%d", i), Target: lis.Addr().String()})
	}
	c := runClient(t, ctxTimeout(t, time.Minute), client.Config{
		Source: discovery.Static(models), Plaintext: true,
		MaxReplyBytes: 1 << 20, MaxFanoutBytes: 2 << 20,
		SetupOnJoin: &client.SetupOnJoin{ClassName: "m.Base"},
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ready := 0
		for _, m := range c.Members() {
			if m.Ready {
				ready++
			}
		}
		if ready == len(models) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d models set up after 20s", ready, len(models))
		}
	}
	if n := most.Load(); n > 2 {
		t.Errorf("%d Setups on join were in flight at once, want at most 2 (2 MiB budget / 1 MiB per reply)", n)
	}
}
