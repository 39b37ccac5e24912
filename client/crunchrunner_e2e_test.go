//go:build e2e

package client_test

import (
	"context"
	"fmt"
	"math"
	"net"
	"os/exec"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/internal/testing/crunchdao"
	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	"github.com/modelnodes/modelnodes/runner/frame"
)

// Our Go client against CrunchDAO's own runner (crunch-model-runner from
// PyPI, unchanged, plaintext as it serves) with an echo model: health,
// Setup with a keyword argument, every scalar and JSON variant (NaN
// included) through echo, keyword arguments, and each status their runner
// answers, classified as our client classifies ours. The fixed messages
// are the ones our runner answers (runner/frame's Msg*): this is where
// those texts are checked against their runner itself.
func TestGoClientAgainstCrunchDAOsRunner(t *testing.T) {
	modelRunner := crunchdao.RunnerCommand(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.CommandContext(ctx, modelRunner, "--code-directory", "testdata/crunchecho", "--resource-directory", t.TempDir(),
		"--address", addr)
	var out syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("their runner's output:\n%s", out.String())
		}
	})

	c := runClient(t, ctx, client.Config{Plaintext: true, Source: discovery.Static{{ID: "echo", Target: addr}}, Timeout: 10 * time.Second})
	defer c.Close()
	waitAllServing(t, c, 1)
	one := func(what string, res []client.Result) client.Result {
		t.Helper()
		if len(res) != 1 {
			t.Fatalf("%s: %d results", what, len(res))
		}
		return res[0]
	}
	want := func(what string, r client.Result, st client.Status, code, msg string) {
		t.Helper()
		if r.Status != st || r.Code != code || r.Message != msg {
			t.Errorf("%s: %v %s %q, want %v %s %q", what, r.Status, r.Code, r.Message, st, code, msg)
		}
	}

	want("Call before Setup", one("call", c.Call(ctx, "echo", client.Request{})), client.ModelError, "FAILED_PRECONDITION", frame.MsgNotSetUp)
	want("empty className", one("setup", c.Setup(ctx, "", client.Request{})), client.ModelError, "INVALID_ARGUMENT", frame.MsgEmptyClassName)
	setup := client.Request{Args: client.Same(client.Args{Keyword: map[string]*commonspb.Variant{"prefix": commonspb.String("hello ")}})}
	want("Setup", one("setup", c.Setup(ctx, "echo_base.EchoBase", setup)), client.Success, "SUCCESS", frame.MsgInstanceCreated)
	want("Setup again", one("setup", c.Setup(ctx, "echo_base.EchoBase", setup)), client.Success, "SUCCESS", frame.MsgInstanceExists)

	nan, _ := commonspb.JSON(map[string]any{"x": []any{1, "two"}})
	for _, v := range []*commonspb.Variant{
		commonspb.Int(math.MinInt64), commonspb.Double(-1.25), commonspb.String("héllo ✓"), nan,
		commonspb.RawJSON([]byte(`{"x": [1, NaN, -Infinity]}`)),
	} {
		r := one("echo", c.Call(ctx, "echo", client.Request{Args: client.Positional(v)}))
		if !r.OK() || r.Value.GetType() != v.GetType() {
			t.Errorf("echo(%s): %v %s %q %v", v.GetType(), r.Status, r.Code, r.Message, r.Value)
			continue
		}
		if v.GetType() != commonspb.VariantType_JSON && !proto.Equal(r.Value, v) {
			t.Errorf("echo(%s) = %v", v.GetType(), r.Value)
		}
		if v.GetType() == commonspb.VariantType_JSON {
			// Their runner re-encodes JSON with json.dumps: compare values
			// (fmt prints maps sorted, and NaN as NaN).
			got, err1 := r.Value.AsJSON()
			sent, err2 := v.AsJSON()
			if err1 != nil || err2 != nil || fmt.Sprint(got) != fmt.Sprint(sent) {
				t.Errorf("echo(JSON %s) = %s (%v, %v)", v.GetValue(), r.Value.GetValue(), err1, err2)
			}
		}
	}
	greet := client.Request{Args: client.Same(client.Args{Positional: []*commonspb.Variant{commonspb.String("world")},
		Keyword: map[string]*commonspb.Variant{"punctuation": commonspb.String("?"), "unknown": commonspb.Int(1)}})}
	if r := one("greet", c.Call(ctx, "greet", greet)); !r.OK() || string(r.Value.GetValue()) != "hello world?" {
		t.Errorf("greet: %v %s %q %v", r.Status, r.Code, r.Message, r.Value)
	}
	want("empty methodName", one("call", c.Call(ctx, "", client.Request{})), client.ModelError, "INVALID_ARGUMENT", frame.MsgEmptyMethodName)
	want("unknown method", one("call", c.Call(ctx, "nope", client.Request{})), client.ModelError, "BAD_IMPLEMENTATION", frame.MsgMethodNotFound("nope", "Echo"))
	want("the model raised", one("call", c.Call(ctx, "fail", client.Request{})), client.ModelError, "MODEL_FAILED",
		frame.MsgModelRaised+"the model is unhappy")
	want("Rest", one("rest", c.Rest(ctx, client.Request{})), client.Success, "SUCCESS", frame.MsgInstanceRest)
	want("Rest again", one("rest", c.Rest(ctx, client.Request{})), client.Success, "SUCCESS", frame.MsgNoInstanceToRest)
}
