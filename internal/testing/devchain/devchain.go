// Package devchain runs the project's local Solana endpoint: the npm package
// litesvm 1.4.1 (the real SVM) behind a small JSON-RPC + websocket front,
// deploy/dev/solana/front.js, on 127.0.0.1. Callers plant program accounts
// (crunches, model authorizations, coordinator certificates) through the
// front's control endpoint, since the authorization program itself is not
// deployed there. The scheduler's tests and `make demo` use it.
//
//	if err := devchain.Install(ctx, dir); err != nil { … } // npm ci, once
//	f, err := devchain.Start(ctx, devchain.Options{Dir: dir})
//	defer f.Stop(5 * time.Second)
//	f.SetAccount(ctx, addr, program, crunch.Encode())
//	// solana-go's rpc.New(f.RPC) and ws.Connect(ctx, f.WS) now see it.
package devchain

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	solana "github.com/gagliardetto/solana-go"

	"github.com/modelnodes/modelnodes/internal/testing/logtail"
	"github.com/modelnodes/modelnodes/internal/testing/syncbuf"
)

// Dir returns the front's directory in the repository at repo.
func Dir(repo string) string { return filepath.Join(repo, "deploy", "dev", "solana") }

// Installed reports whether the front's npm dependencies are in place.
func Installed(dir string) bool {
	for _, p := range []string{"litesvm", "ws"} {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", p, "package.json")); err != nil {
			return false
		}
	}
	return true
}

// Install runs `npm ci` in dir (exactly the versions package-lock.json pins)
// unless the dependencies are already there. Processes installing at the
// same time (several test binaries) take turns through a lock file.
func Install(ctx context.Context, dir string) error {
	if Installed(dir) {
		return nil
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".npm-ci.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("solana front: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("solana front: lock %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing unlocks too
	if Installed(dir) {
		return nil // another process installed them while we waited
	}
	if _, err := exec.LookPath("npm"); err != nil {
		return errors.New("solana front: npm is not installed (Debian: apt-get install nodejs npm)")
	}
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("solana front: npm ci in %s: %v\n%s", dir, err, logtail.Lines(out, 30))
	}
	return nil
}

// Options say how to start a front.
type Options struct {
	// Dir is the front's directory (Dir(repo)); its dependencies must be
	// installed (Install).
	Dir string
	// Port to listen on (127.0.0.1); 0 picks a free one.
	Port int
	// Detached runs the front in its own session, writing to LogFile: it
	// outlives the caller until Stop or a signal to Pid. Otherwise it exits
	// when the caller does (its stdin closes) and Output returns what it
	// wrote.
	Detached bool
	LogFile  string
	// Node is the node binary (default: node on PATH).
	Node string
	// StateFile, when set, keeps the chain: the front loads the accounts
	// and slot written there by an earlier front, and writes them after
	// every change, so a restarted front serves the same chain at a later
	// slot. Empty: the chain lives in memory only.
	StateFile string
}

// Front is a running front.
type Front struct {
	// RPC and WS are the JSON-RPC and websocket URLs.
	RPC, WS string
	control string
	cmd     *exec.Cmd
	stdin   io.Closer
	done    chan struct{}
	out     *syncbuf.Buffer
	logFile string
}

// Start starts a front and waits (bounded by ctx) until it listens.
func Start(ctx context.Context, o Options) (*Front, error) {
	node := o.Node
	if node == "" {
		var err error
		if node, err = exec.LookPath("node"); err != nil {
			return nil, errors.New("solana front: node is not installed (Debian: apt-get install nodejs npm)")
		}
	}
	if !Installed(o.Dir) {
		return nil, fmt.Errorf("solana front: dependencies missing in %s (devchain.Install runs npm ci)", o.Dir)
	}
	cmd := exec.Command(node, "front.js")
	cmd.Dir = o.Dir
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", o.Port), "FRONT_STATE="+o.StateFile)
	f := &Front{cmd: cmd, done: make(chan struct{}), logFile: o.LogFile}
	listening := make(chan int, 1)
	if o.Detached {
		if o.LogFile == "" {
			return nil, errors.New("solana front: a detached front needs a LogFile")
		}
		log, err := os.OpenFile(o.LogFile, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("solana front: %w", err)
		}
		defer log.Close()
		cmd.Env = append(cmd.Env, "FRONT_DETACHED=1")
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		stdin, err := cmd.StdinPipe() // the front exits when this closes
		if err != nil {
			return nil, err
		}
		f.stdin = stdin
		f.out = &syncbuf.Buffer{}
		cmd.Stderr = f.out
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if port, ok := listeningPort(sc.Text()); ok {
					listening <- port
				}
				f.out.Write(append(sc.Bytes(), '\n'))
			}
		}()
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("solana front: %w", err)
	}
	go func() { _ = cmd.Wait(); close(f.done) }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case port := <-listening:
			f.setPort(port)
			return f, nil
		case <-f.done:
			return nil, fmt.Errorf("solana front exited before listening:\n%s", f.Output())
		case <-ctx.Done():
			_ = f.Stop(2 * time.Second)
			return nil, fmt.Errorf("solana front did not start: %w\n%s", ctx.Err(), f.Output())
		case <-tick.C:
			if o.Detached {
				if b, err := os.ReadFile(o.LogFile); err == nil {
					for _, l := range strings.Split(string(b), "\n") {
						if port, ok := listeningPort(l); ok {
							f.setPort(port)
							return f, nil
						}
					}
				}
			}
		}
	}
}

// Attach returns a Front for the control of a front that another process
// started (its RPC URL); Stop and Pid do nothing on it.
func Attach(rpcURL string) *Front {
	f := &Front{}
	f.RPC = strings.TrimSuffix(rpcURL, "/")
	f.WS = "ws" + strings.TrimPrefix(f.RPC, "http")
	f.control = f.RPC + "/control"
	return f
}

func listeningPort(line string) (int, bool) {
	var port int
	_, err := fmt.Sscanf(line, "LISTENING %d", &port)
	return port, err == nil
}

func (f *Front) setPort(port int) {
	f.RPC = fmt.Sprintf("http://127.0.0.1:%d", port)
	f.WS = fmt.Sprintf("ws://127.0.0.1:%d", port)
	f.control = f.RPC + "/control"
}

// Pid is the front's process id (0 for an attached front).
func (f *Front) Pid() int {
	if f.cmd == nil || f.cmd.Process == nil {
		return 0
	}
	return f.cmd.Process.Pid
}

// Stop ends the front: its stdin closes (or SIGTERM when detached), then
// SIGKILL after timeout. It returns once the process is gone.
func (f *Front) Stop(timeout time.Duration) error {
	if f.cmd == nil || f.cmd.Process == nil {
		return nil
	}
	if f.stdin != nil {
		f.stdin.Close()
	} else {
		_ = f.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-f.done:
		return nil
	case <-time.After(timeout):
	}
	_ = f.cmd.Process.Kill()
	<-f.done
	return fmt.Errorf("solana front (pid %d) did not exit within %s; killed it", f.Pid(), timeout)
}

// Output is what the front wrote (the last lines of its log file when
// detached): for a failure message.
func (f *Front) Output() string {
	if f.out != nil {
		return f.out.String()
	}
	if f.logFile != "" {
		b, _ := os.ReadFile(f.logFile)
		return string(logtail.Lines(b, 30))
	}
	return ""
}

// SetAccount plants (or overwrites) an account owned by owner, as if the
// program had written it, and returns the slot of the change. Subscribers
// of the program and of the account are notified.
func (f *Front) SetAccount(ctx context.Context, addr, owner solana.PublicKey, data []byte) (uint64, error) {
	var out struct{ Slot uint64 }
	err := f.do(ctx, map[string]any{"op": "setAccount", "address": addr.String(), "owner": owner.String(),
		"data": base64.StdEncoding.EncodeToString(data)}, &out)
	return out.Slot, err
}

// CloseAccount closes an account (no lamports, no data, owned by the System
// program). As on a validator, program subscribers hear nothing: readers
// notice at their next listing.
func (f *Front) CloseAccount(ctx context.Context, addr solana.PublicKey) (uint64, error) {
	var out struct{ Slot uint64 }
	err := f.do(ctx, map[string]any{"op": "closeAccount", "address": addr.String()}, &out)
	return out.Slot, err
}

// Outage makes the RPC answer 503 and drops and refuses websockets for d.
func (f *Front) Outage(ctx context.Context, d time.Duration) error {
	return f.do(ctx, map[string]any{"op": "outage", "ms": d.Milliseconds()}, nil)
}

// Reset is the front restarted empty on the same port: a new VM without
// any account, the slot back to 1, every websocket dropped.
func (f *Front) Reset(ctx context.Context) error {
	return f.do(ctx, map[string]any{"op": "reset"}, nil)
}

// DropWebsockets closes every websocket (subscriptions are lost).
func (f *Front) DropWebsockets(ctx context.Context) error {
	return f.do(ctx, map[string]any{"op": "dropWebsockets"}, nil)
}

// Stats are the front's counters.
type Stats struct {
	RPC           int    `json:"rpc"`
	Subscribe     int    `json:"subscribe"`
	Notifications int    `json:"notifications"`
	Dropped       int    `json:"dropped"`
	Subscriptions int    `json:"subscriptions"` // live ones
	Slot          uint64 `json:"slot"`
}

// Stats returns the front's counters.
func (f *Front) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	err := f.do(ctx, map[string]any{"op": "stats"}, &s)
	return s, err
}

func (f *Front) do(ctx context.Context, req map[string]any, out any) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, f.control, bytes.NewReader(b))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		return fmt.Errorf("solana front %s: %w", req["op"], err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("solana front %s: %s: %s", req["op"], resp.Status, bytes.TrimSpace(body))
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("solana front %s: %w", req["op"], err)
		}
	}
	return nil
}
