package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	vaultapi "github.com/hashicorp/vault/api"
)

// cluster is the dev cluster deploy/dev/up started, as its env file
// describes it.
type cluster struct {
	state string            // MODELNODES_STATE of deploy/dev/{up,down}
	env   map[string]string // NOMAD_ADDR, NOMAD_TOKEN, CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, VAULT_ADDR, VAULT_TOKEN, *_BIN
	nomad *nomadapi.Client
}

// devEnv is the environment of deploy/dev/{up,down} for the demo's cluster.
func (d *demo) devEnv() []string {
	return append(os.Environ(), "MODELNODES_STATE="+d.path("cluster"), "DEV_PORT_OFFSET="+strconv.Itoa(d.o.offset))
}

// startCluster runs deploy/dev/up, echoing its progress lines indented.
func (d *demo) startCluster(ctx context.Context) (*cluster, error) {
	up := filepath.Join(d.repo, "deploy", "dev", "up")
	d.command(fmt.Sprintf("MODELNODES_STATE=%s DEV_PORT_OFFSET=%d %s", d.path("cluster"), d.o.offset, d.rel(up)))
	cmd := command(ctx, up)
	cmd.Env = d.devEnv()
	cmd.Dir = d.repo
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	log, err := os.Create(d.path("dev-up.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Fprintln(log, sc.Text())
			d.detail("%s", sc.Text())
		}
	}()
	err = cmd.Run()
	pw.Close()
	<-done
	if err != nil {
		return nil, fmt.Errorf("deploy/dev/up: %w", err)
	}
	return d.openCluster()
}

// openCluster reads the env file of a running dev cluster.
func (d *demo) openCluster() (*cluster, error) {
	c := &cluster{state: d.path("cluster"), env: map[string]string{}}
	b, err := os.ReadFile(filepath.Join(c.state, "env"))
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimPrefix(strings.TrimSpace(line), "export ")
		for _, kv := range strings.Fields(line) {
			if k, v, ok := strings.Cut(kv, "="); ok && !strings.Contains(v, "$") {
				c.env[k] = v
			}
		}
	}
	for _, k := range []string{"NOMAD_ADDR", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "VAULT_ADDR", "VAULT_TOKEN", "NOMAD_BIN", "VAULT_BIN", "CONSUL_BIN"} {
		if c.env[k] == "" {
			return nil, fmt.Errorf("%s/env lacks %s", c.state, k)
		}
	}
	cfg := nomadapi.DefaultConfig()
	cfg.Address = c.env["NOMAD_ADDR"]
	// The dev cluster runs Nomad with ACLs (deploy/dev/up); never the
	// caller's own NOMAD_TOKEN, which DefaultConfig would take.
	cfg.SecretID = c.env["NOMAD_TOKEN"]
	if c.nomad, err = nomadapi.NewClient(cfg); err != nil {
		return nil, err
	}
	return c, nil
}

// environ is the process environment with the cluster's variables (the
// setup scripts read them), the agents' directories first on PATH.
func (c *cluster) environ(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if _, ours := c.env[k]; ours || k == "PATH" || strings.HasPrefix(k, "NOMAD_") || strings.HasPrefix(k, "CONSUL_") || strings.HasPrefix(k, "VAULT_") {
			continue
		}
		env = append(env, kv)
	}
	for k, v := range c.env {
		env = append(env, k+"="+v)
	}
	path := filepath.Dir(c.env["NOMAD_BIN"]) + ":" + filepath.Dir(c.env["CONSUL_BIN"]) + ":" + filepath.Dir(c.env["VAULT_BIN"]) + ":" + os.Getenv("PATH")
	return append(append(env, "PATH="+path), extra...)
}

func (c *cluster) consul() (*consulapi.Client, error) {
	cfg := consulapi.DefaultConfig()
	cfg.Address = c.env["CONSUL_HTTP_ADDR"]
	cfg.Token = c.env["CONSUL_HTTP_TOKEN"]
	return consulapi.NewClient(cfg)
}

func (c *cluster) vault() (*vaultapi.Client, error) {
	cfg := vaultapi.DefaultConfig()
	cfg.Address = c.env["VAULT_ADDR"]
	vc, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	vc.SetToken(c.env["VAULT_TOKEN"])
	return vc, nil
}

func (c *cluster) agentLog(name string) string { return filepath.Join(c.state, name, name+".log") }

// waitModelbox waits until the Nomad node reports the modelbox driver
// healthy.
func (c *cluster) waitModelbox(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := "no Nomad node yet"
	for {
		if nodes, _, err := c.nomad.Nodes().List(nil); err == nil && len(nodes) > 0 {
			if node, _, err := c.nomad.Nodes().Info(nodes[0].ID, nil); err == nil {
				d := node.Drivers["modelbox"]
				switch {
				case d == nil:
					last = "the node has no modelbox driver (is bin/nomad-driver-modelbox built?)"
				case d.Healthy:
					return nil
				default:
					last = fmt.Sprintf("modelbox driver detected=%v healthy=%v: %s", d.Detected, d.Healthy, d.HealthDescription)
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the modelbox driver is not healthy after %s: %s", timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}
