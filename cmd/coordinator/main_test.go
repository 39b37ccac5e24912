package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	commonspb "github.com/modelnodes/modelnodes/proto/commons"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/gomodel"
	"github.com/modelnodes/modelnodes/runner/worker"
)

// The test binary doubles as the model worker of the test runners.
const modelEnv = "MODELNODES_COORDINATOR_TEST_MODEL"

func TestMain(m *testing.M) {
	if os.Getenv(modelEnv) != "" {
		gomodel.Main(gomodel.Model{
			Concurrency: 4,
			New:         func(string, gomodel.Args) (gomodel.Instance, error) { return model{}, nil },
		})
		return
	}
	os.Exit(testcluster.Main(m))
}

type model struct{}

func (model) Call(method string, args gomodel.Args) (*commonspb.Variant, error) {
	switch method {
	case "echo":
		if len(args.Positional) == 0 {
			return nil, nil
		}
		return args.Positional[0], nil
	case "kw":
		if v, ok := args.Keyword["k"]; ok {
			return v, nil
		}
		return nil, errors.New("KeyError: k")
	}
	return nil, gomodel.ErrNoMethod
}

// startRunner serves the test model in plaintext and returns its address.
func startRunner(t *testing.T) string { return startRunnerWith(t, runner.Config{}) }

// startRunnerWith serves the test model with cfg (TLS, authorization,
// delegation...) and returns its address.
func startRunnerWith(t *testing.T, cfg runner.Config) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = hclog.NewNullLogger()
	cfg.Worker = worker.Config{Command: []string{exe}, Env: []string{modelEnv + "=1"}}
	srv := runner.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, lis, time.Second) }()
	t.Cleanup(func() { cancel(); <-done })
	return lis.Addr().String()
}

func deadAddr(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

// waitServing runs `models` until the given number of models are SERVING.
func waitServing(t *testing.T, list string, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, out, _ := runCLI(t, "models", "--plaintext", "--models", list)
		if strings.Count(out, " SERVING ") == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("never %d models serving:\n%s", n, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestHelpAndUsageErrors(t *testing.T) {
	code, _, stderr := runCLI(t, "call", "--help")
	if code != 0 || !strings.Contains(stderr, "$COORDINATOR_ARGS") || !strings.Contains(stderr, `{"$parquet"`) {
		t.Errorf("call --help: exit %d, help:\n%s", code, stderr)
	}
	if code, _, stderr := runCLI(t); code != 2 || !strings.Contains(stderr, "coordinator models") {
		t.Errorf("no command: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := runCLI(t, "models", "--models", "a=127.0.0.1:1"); code != 2 || !strings.Contains(stderr, "--plaintext") {
		t.Errorf("no TLS and no --plaintext: exit %d, %q (want a refusal naming --plaintext)", code, stderr)
	}
	if code, _, stderr := runCLI(t, "models", "--plaintext"); code != 2 || !strings.Contains(stderr, "--crunch") {
		t.Errorf("no source: exit %d, %q", code, stderr)
	}
	if code, _, stderr := runCLI(t, "call", "echo", "--plaintext", "--models", "a=127.0.0.1:1", "--args", "{"); code != 2 || !strings.Contains(stderr, "--args") {
		t.Errorf("bad JSON: exit %d, %q", code, stderr)
	}
}

// Models list, a call to all with typed JSON arguments, a call to one, JSON
// output and the environment fallback, against real runners and one address
// where nothing listens.
func TestModelsAndCall(t *testing.T) {
	a, b, dead := startRunner(t), startRunner(t), deadAddr(t)
	list := "a=" + a + ",b=" + b + ",dead=" + dead
	waitServing(t, "a="+a+",b="+b, 2)

	code, out, stderr := runCLI(t, "models", "--plaintext", "--models", list)
	if code != 0 {
		t.Fatalf("models: exit %d\n%s", code, stderr)
	}
	t.Logf("models:\n%s", out)
	for _, want := range []string{"MODEL", "a  ", a, "SERVING", "READY", "dead", "unavailable"} {
		if !strings.Contains(out, want) {
			t.Errorf("models output lacks %q:\n%s", want, out)
		}
	}

	code, out, stderr = runCLI(t, "call", "echo", "--plaintext", "--models", list, "--setup", "m.Base",
		"--args", `[{"$parquet": {"x": [1.5, 2], "s": ["p", "q"]}}]`, "--timeout", "5s")
	t.Logf("call:\n%s%s", out, stderr)
	if code != 3 {
		t.Errorf("call with a dead model: exit %d, want 3", code)
	}
	lines := strings.Split(out, "\n")
	if len(lines) < 4 || !strings.HasPrefix(lines[1], "a ") || !strings.Contains(lines[1], "success") ||
		!strings.Contains(lines[1], `PARQUET 2 rows [{"s": "p", "x": 1.5}, {"s": "q", "x": 2`) {
		t.Errorf("row of model a wrong:\n%s", out)
	}
	if !strings.Contains(out, "dead") || !strings.Contains(out, "unavailable") || !strings.Contains(out, "2/3 succeeded") {
		t.Errorf("dead model or summary missing:\n%s", out)
	}

	// One model, keyword argument, JSON lines; the model list from the
	// environment.
	t.Setenv("COORDINATOR_MODELS", list)
	t.Setenv("COORDINATOR_PLAINTEXT", "true")
	code, out, stderr = runCLI(t, "call", "kw", "--model", "b", "--setup", "m.Base", "--kwargs", `{"k": 7}`, "--json")
	if code != 0 {
		t.Fatalf("call kw: exit %d\n%s%s", code, out, stderr)
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &res); err != nil {
		t.Fatalf("JSON output %q: %v", out, err)
	}
	if res["model"] != "b" || res["status"] != "success" || res["type"] != "INT" || res["value"] != 7.0 {
		t.Errorf("JSON result %v", res)
	}
	code, out, _ = runCLI(t, "call", "kw", "--model", "b")
	if code != 3 || !strings.Contains(out, "MODEL_FAILED") || !strings.Contains(out, "KeyError") {
		t.Errorf("a raising method: exit %d\n%s", code, out)
	}
}

func TestWatchPrintsMembership(t *testing.T) {
	code, out, stderr := runCLI(t, "watch", "--plaintext", "--models", "x=127.0.0.1:1,y=127.0.0.1:2", "--duration", "200ms")
	if code != 0 {
		t.Fatalf("watch: exit %d\n%s", code, stderr)
	}
	for _, want := range []string{"+ x 127.0.0.1:1", "+ y 127.0.0.1:2", "= 2 models"} {
		if !strings.Contains(out, want) {
			t.Errorf("watch output lacks %q:\n%s", want, out)
		}
	}
}

// A model answering more than --max-reply-size (here from the environment,
// as every flag) gets its own too_large line; the others answer.
func TestMaxReplySize(t *testing.T) {
	big, small := startRunner(t), startRunner(t)
	models := "big=" + big + ",small=" + small
	waitServing(t, models, 2)
	t.Setenv("COORDINATOR_MAX_REPLY_SIZE", "1MiB")
	// Each model echoes its argument: 2 MiB for big, 1 KiB for small
	// (one --args for all, so two calls with --model).
	for _, tc := range []struct {
		model string
		size  int
		code  int
		want  string
	}{
		{"big", 2 << 20, 3, "too_large"},
		{"small", 1 << 10, 0, "success"},
	} {
		arg := `["` + strings.Repeat("x", tc.size) + `"]`
		code, out, stderr := runCLI(t, "call", "echo", "--models", models, "--model", tc.model, "--plaintext", "--setup", "m.Base", "--args", arg, "--json")
		if code != tc.code || !strings.Contains(out, `"status": "`+tc.want+`"`) {
			t.Errorf("%s echoing %d bytes with a 1 MiB limit: exit %d, want %d and %s\n%.300s\n%s", tc.model, tc.size, code, tc.code, tc.want, out, stderr)
		}
		if tc.want == "too_large" && !strings.Contains(out, "reply larger than 1048576 bytes") {
			t.Errorf("too_large without its reason:\n%.300s", out)
		}
	}
	if code, _, stderr := runCLI(t, "models", "--models", models, "--plaintext", "--max-reply-size", "4MB"); code != 2 || !strings.Contains(stderr, "KiB, MiB or GiB") {
		t.Errorf("--max-reply-size 4MB: exit %d, want 2 (usage)\n%s", code, stderr)
	}
}

// Discovery that finds no model is not a success: `call` prints 0/0 and
// exits 1 (a monitor reads the exit status). Consul here is a stand-in that
// knows the service but has no instance of it.
func TestCallWithNoModelFails(t *testing.T) {
	consul := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/v1/health/service/") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("X-Consul-Index", "7")
		_, _ = w.Write([]byte("[]"))
	}))
	defer consul.Close()
	code, out, stderr := runCLI(t, "call", "echo", "--plaintext", "--crunch", "empty",
		"--consul-addr", strings.TrimPrefix(consul.URL, "http://"), "--args", `["x"]`)
	if code != 1 || !strings.Contains(out, "0/0 succeeded") || !strings.Contains(stderr, "no model") {
		t.Errorf("call with no model discovered: exit %d, want 1\n%s%s", code, out, stderr)
	}
}
