package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func TestParse(t *testing.T) {
	if _, err := parse(nil); err == nil || !strings.Contains(err.Error(), "no source") {
		t.Fatalf("no source: %v", err)
	}
	if _, err := parse([]string{"--solana-rpc", "http://x"}); err == nil || !strings.Contains(err.Error(), "--solana-program") {
		t.Fatalf("rpc without program: %v", err)
	}
	if _, err := parse([]string{"--models-file", "m.yaml", "--solana-commitment", "processed"}); err == nil {
		t.Fatal("processed commitment accepted: only confirmed or finalized data may count")
	}
	t.Setenv("MODELNODES_SCHEDULER_FEED_URL", "http://feed")
	t.Setenv("MODELNODES_SCHEDULER_FEED_CRUNCH", "a,b")
	c, err := parse([]string{"--resync", "5s"})
	if err != nil || c.feedURL != "http://feed" || len(c.feedCrunches) != 2 || c.resync != 5*time.Second {
		t.Fatalf("environment fallback: %v %+v", err, c)
	}
	if _, err := parse([]string{"--help"}); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
}

// The command serves its status API and reports a source it cannot reach
// (Nomad unreachable too) without exiting.
func TestRunServesStatus(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	models := filepath.Join(t.TempDir(), "models.yaml")
	if err := os.WriteFile(models, []byte("models:\n  - {crunch: demo, model_id: a, model_dir: /m/a, desired: running}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := parse([]string{"--models-file", models, "--listen", addr, "--nomad-addr", "http://127.0.0.1:1",
		"--feed-url", "http://127.0.0.1:1", "--feed-crunch", "demo"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, hclog.NewNullLogger()) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st struct {
			SourcesReady bool `json:"sources_ready"`
			Sources      []struct {
				Name      string `json:"name"`
				Ready     bool   `json:"ready"`
				LastError string `json:"last_error"`
			} `json:"sources"`
		}
		if resp, err := http.Get("http://" + addr + "/v1/status"); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if len(st.Sources) == 2 && st.Sources[0].LastError != "" && st.Sources[1].Ready {
				if st.SourcesReady || !strings.Contains(st.Sources[0].LastError, "crunchdao feed") {
					t.Fatalf("status: %+v", st)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("status API never showed the unreachable feed and the read file")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
