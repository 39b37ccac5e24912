package scheduler

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	solana "github.com/gagliardetto/solana-go"
)

// solanaFront is a real Solana runtime for tests: litesvm 1.4.1 (the npm
// package, a native build of the SVM) behind a small JSON-RPC + websocket
// front (testdata/solana-front/front.js) on a free loopback port.
type solanaFront struct {
	RPC, WS string
	control string
	cmd     *exec.Cmd
}

var npmOnce sync.Once

// startFront starts the front, installing its locked npm dependencies first
// when they are missing. It skips (saying why) only when node is absent.
func startFront(t testing.TB) *solanaFront {
	t.Helper()
	if testing.Short() {
		t.Skip("solana front: integration test skipped with -short")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("solana front: node is not installed (Debian: apt-get install nodejs npm; .ci/run does)")
	}
	dir, _ := filepath.Abs("testdata/solana-front")
	var npmErr error
	npmOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "litesvm", "package.json")); err == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			npmErr = fmt.Errorf("npm ci in %s: %v\n%s", dir, err, out)
		}
	})
	if npmErr != nil {
		t.Fatal(npmErr)
	}
	cmd := exec.Command(node, "front.js")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PORT=0")
	stdin, _ := cmd.StdinPipe() // the front exits when this closes
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f := &solanaFront{cmd: cmd}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("solana front stderr:\n%s", stderr.String())
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	select {
	case l := <-lines:
		var port int
		if _, err := fmt.Sscanf(l, "LISTENING %d", &port); err != nil {
			t.Fatalf("solana front said %q", l)
		}
		f.RPC = fmt.Sprintf("http://127.0.0.1:%d", port)
		f.WS = fmt.Sprintf("ws://127.0.0.1:%d", port)
		f.control = f.RPC + "/control"
	case <-time.After(30 * time.Second):
		t.Fatalf("solana front did not start: %s", stderr.String())
	}
	return f
}

func (f *solanaFront) do(t testing.TB, req map[string]any) map[string]any {
	t.Helper()
	b, _ := json.Marshal(req)
	resp, err := http.Post(f.control, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("solana front control %v: %v", req["op"], err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("solana front control %v: %s", req["op"], body)
	}
	var out map[string]any
	_ = json.Unmarshal(body, &out)
	return out
}

// setAccount plants (or overwrites) an account owned by owner.
func (f *solanaFront) setAccount(t testing.TB, addr, owner solana.PublicKey, data []byte) {
	f.do(t, map[string]any{"op": "setAccount", "address": addr.String(), "owner": owner.String(),
		"data": base64.StdEncoding.EncodeToString(data)})
}

func (f *solanaFront) closeAccount(t testing.TB, addr solana.PublicKey) {
	f.do(t, map[string]any{"op": "closeAccount", "address": addr.String()})
}

// outage makes the RPC answer 503 and drops websockets for d.
func (f *solanaFront) outage(t testing.TB, d time.Duration) {
	f.do(t, map[string]any{"op": "outage", "ms": d.Milliseconds()})
}

func (f *solanaFront) dropWebsockets(t testing.TB) { f.do(t, map[string]any{"op": "dropWebsockets"}) }

func (f *solanaFront) subscriptions(t testing.TB) int {
	n, _ := f.do(t, map[string]any{"op": "stats"})["subscriptions"].(float64)
	return int(n)
}
