package client_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	dspb "github.com/modelnodes/modelnodes/proto/dynamic_subclass"
)

// pyFanOut is CrunchDAO's design in miniature: Python asyncio with grpcio's
// aio channels, one channel per model, asyncio.gather of one call each with
// a timeout. Requests are pre-serialized and responses left as bytes, which
// spares Python the protobuf work its real client does.
const pyFanOut = `
import asyncio, json, sys, time
import grpc

addrs = sys.argv[1].split(",")
certdir, reqhex, n = sys.argv[2], sys.argv[3], int(sys.argv[4])

def read(name):
    with open(certdir + "/" + name, "rb") as f:
        return f.read()

async def main():
    creds = grpc.ssl_channel_credentials(root_certificates=read("ca.crt"),
        private_key=read("coordinator.key"), certificate_chain=read("coordinator.crt"))
    chans = [grpc.aio.secure_channel(a, creds, options=[
        ("grpc.ssl_target_name_override", "model-node-m%04d.crunchdao.internal" % i)])
        for i, a in enumerate(addrs)]
    await asyncio.gather(*(c.channel_ready() for c in chans))
    calls = [c.unary_unary("/dynamic_subclass.DynamicSubclassService/Call") for c in chans]
    req = bytes.fromhex(reqhex)
    lat, errors = [], 0
    for i in range(n + 3):
        t0 = time.perf_counter()
        res = await asyncio.gather(*(call(req, timeout=5) for call in calls), return_exceptions=True)
        dt = time.perf_counter() - t0
        if i >= 3:
            lat.append(dt * 1000)
            errors += sum(1 for r in res if isinstance(r, Exception))
    lat.sort()
    print(json.dumps({"p50": lat[len(lat) // 2], "p90": lat[int(0.9 * (len(lat) - 1))], "errors": errors}))
    for c in chans:
        await c.close()

asyncio.run(main())
`

// BenchmarkFanOutVsPython: one Call to 1,000 models whose servers run in a
// child process, from this package (impl=go-client) and from Python
// asyncio + grpcio (impl=python-asyncio, CrunchDAO's client design), in the
// same run. Skipped (with the reason) without Debian's python3-grpcio.
func BenchmarkFanOutVsPython(b *testing.B) {
	const n = 1000
	py := "/usr/bin/python3"
	if out, err := exec.Command(py, "-c", "import grpc").CombinedOutput(); err != nil {
		b.Skipf("no Python with grpcio (Debian python3-grpcio) at %s: %v %s", py, err, out)
	}
	addrs, pki := childFleet(b, n)
	models := make([]discovery.Model, n)
	for i, a := range addrs {
		models[i] = discovery.Model{ID: fmt.Sprintf("m%04d", i), Target: a}
	}
	b.Run(fmt.Sprintf("models=%d/impl=go-client", n), func(b *testing.B) {
		c := connect(b, &benchFleet{pki: pki, models: models})
		ctx := context.Background()
		for range 3 {
			c.Call(ctx, "predict", client.Request{Args: callArgs, Timeout: 5 * time.Second})
		}
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for range b.N {
			t0 := time.Now()
			for _, r := range c.Call(ctx, "predict", client.Request{Args: callArgs, Timeout: 5 * time.Second}) {
				if !r.OK() {
					b.Fatalf("%s: %s %s", r.Model.ID, r.Status, r.Message)
				}
			}
			lat = append(lat, time.Since(t0))
		}
		b.StopTimer()
		reportLatency(b, lat, "")
	})
	b.Run(fmt.Sprintf("models=%d/impl=python-asyncio", n), func(b *testing.B) {
		req, err := proto.Marshal(&dspb.CallRequest{MethodName: "predict", MethodArguments: []*commonspb.Argument{
			{Position: 0, Data: commonspb.Double(1.5)}, {Position: 1, Data: commonspb.String("features")}}})
		if err != nil {
			b.Fatal(err)
		}
		script := filepath.Join(b.TempDir(), "fanout.py")
		if err := os.WriteFile(script, []byte(pyFanOut), 0o600); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		out, err := exec.Command(py, script, strings.Join(addrs, ","), pki.dir, hex.EncodeToString(req), strconv.Itoa(b.N)).Output()
		b.StopTimer()
		if err != nil {
			b.Fatalf("python fan-out: %v\n%s", err, out)
		}
		var res struct {
			P50, P90 float64
			Errors   int
		}
		if err := json.Unmarshal(out, &res); err != nil {
			b.Fatalf("python output %q: %v", out, err)
		}
		if res.Errors > 0 {
			b.Fatalf("python fan-out: %d failed calls", res.Errors)
		}
		b.ReportMetric(res.P50, "p50-ms")
		b.ReportMetric(res.P90, "p90-ms")
	})
}
