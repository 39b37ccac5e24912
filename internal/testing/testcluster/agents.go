package testcluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/modelnodes/modelnodes/pki/vaultpki"
)

// ConsulAgent is a Consul dev agent with ACLs enabled (default deny).
type ConsulAgent struct {
	Addr     string // HTTP address, host:port
	GRPCAddr string // host:port
	DNSAddr  string // host:port (UDP and TCP)
	// Token is the management token. The anonymous token may read services
	// and nodes, so DNS answers without one.
	Token  string
	Bin    string
	Client *consulapi.Client // authenticated with Token
}

// VaultAgent is a Vault dev server configured by deploy/vault/setup.
type VaultAgent struct {
	Addr   string // http://host:port
	Token  string // root token
	Bin    string
	Client *vaultapi.Client // authenticated with Token
}

// TokenWithPolicies creates a token, valid for an hour, that has only the
// given policies (and Vault's "default"): a workload's token as a test needs
// it, without a JWT login.
func (v *VaultAgent) TokenWithPolicies(t testing.TB, policies ...string) string {
	t.Helper()
	tok, err := v.Client.Auth().Token().CreateWithContext(context.Background(), &vaultapi.TokenCreateRequest{
		Policies: policies, TTL: "1h",
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Auth.ClientToken
}

// NomadAgent is a Nomad dev agent (server and client) with raw_exec enabled
// and Consul and Vault integrated through workload identities.
type NomadAgent struct {
	Addr   string // http://host:port
	Bin    string
	Client *nomadapi.Client
	// DataDir is the agent's data dir; allocations live in DataDir/alloc.
	DataDir string
	// Token is the bootstrap (management) token when the cluster runs with
	// Options.NomadACL; Client uses it. Empty otherwise.
	Token string
}

func randomToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// launch starts an agent in c.Dir/name and waits until ready answers true
// (see launchProcess).
func (c *Cluster) launch(ctx context.Context, name, bin string, args []string, ready func(context.Context) bool) error {
	p, err := launchProcess(ctx, name, filepath.Join(c.Dir, name), bin, args, ready)
	if p != nil {
		c.procs = append(c.procs, p)
	}
	return err
}

func writeConfig(path, text string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(text), 0o600)
}

func (c *Cluster) startConsul(ctx context.Context, bin string) error {
	ports, err := freePorts(6)
	if err != nil {
		return err
	}
	c.ports = append(c.ports, ports...)
	httpPort, dns, grpc, serfLAN, serfWAN, server := ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]
	token := randomToken()
	dir := filepath.Join(c.Dir, "consul")
	local := filepath.Join(dir, "local.hcl")
	if err := writeConfig(local, fmt.Sprintf(`data_dir    = %q
bind_addr   = "127.0.0.1"
client_addr = "127.0.0.1"
ports {
  http     = %d
  https    = -1
  dns      = %d
  grpc     = %d
  grpc_tls = -1
  serf_lan = %d
  serf_wan = %d
  server   = %d
}
acl {
  tokens {
    initial_management = %q
    agent              = %q
  }
}
%s`, filepath.Join(dir, "data"), httpPort, dns, grpc, serfLAN, serfWAN, server, token, token, c.opts.consulServerHCL())); err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", httpPort)
	client, err := consulapi.NewClient(&consulapi.Config{Address: addr, Token: token})
	if err != nil {
		return fmt.Errorf("consul client: %w", err)
	}
	c.Consul = &ConsulAgent{
		Addr: addr, GRPCAddr: fmt.Sprintf("127.0.0.1:%d", grpc), DNSAddr: fmt.Sprintf("127.0.0.1:%d", dns),
		Token: token, Bin: bin, Client: client,
	}
	args := []string{"agent", "-dev",
		"-config-file=" + filepath.Join(c.root, "deploy", "dev", "consul.hcl"), "-config-file=" + local}
	if c.opts.DiskRaft {
		args = slices.Delete(args, 1, 2)
	}
	return c.launch(ctx, "consul", bin, args, func(context.Context) bool {
		leader, err := client.Status().Leader()
		return err == nil && leader != ""
	})
}

func (c *Cluster) startVault(ctx context.Context, bin string) error {
	port, err := freePortPair()
	if err != nil {
		return err
	}
	c.ports = append(c.ports, port, port+1)
	token := randomToken()
	addr := fmt.Sprintf("http://127.0.0.1:%d", port)
	cfg := vaultapi.DefaultConfig()
	cfg.Address = addr
	client, err := vaultapi.NewClient(cfg)
	if err != nil {
		return fmt.Errorf("vault client: %w", err)
	}
	client.SetToken(token)
	c.Vault = &VaultAgent{Addr: addr, Token: token, Bin: bin, Client: client}
	args := []string{"server", "-dev", fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", port),
		"-dev-root-token-id=" + token, "-dev-no-store-token"}
	// The readiness probe must not sit in the client's retry backoff while
	// Vault is still binding its port.
	probeCfg := vaultapi.DefaultConfig()
	probeCfg.Address = addr
	probeCfg.MaxRetries = 0
	probeCfg.Timeout = 2 * time.Second
	probe, err := vaultapi.NewClient(probeCfg)
	if err != nil {
		return fmt.Errorf("vault client: %w", err)
	}
	return c.launch(ctx, "vault", bin, args, func(ctx context.Context) bool {
		h, err := probe.Sys().HealthWithContext(ctx)
		return err == nil && h.Initialized && !h.Sealed
	})
}

func (c *Cluster) startNomad(ctx context.Context, bin string) error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	c.ports = append(c.ports, ports...)
	dir := filepath.Join(c.Dir, "nomad")
	dataDir := filepath.Join(dir, "data")
	local := filepath.Join(dir, "local.hcl")
	pluginDir, plugin := c.modelboxPlugin()
	acl := ""
	if c.opts.NomadACL {
		acl = "acl {\n  enabled = true\n}\n"
	}
	if c.opts.ShortAllocDir {
		short, err := os.MkdirTemp("", "nm")
		if err != nil {
			return fmt.Errorf("short alloc dir: %w", err)
		}
		c.extraDirs = append(c.extraDirs, short)
		acl += fmt.Sprintf("client {\n  alloc_dir = %q\n}\n", filepath.Join(short, "alloc"))
	}
	if err := writeConfig(local, fmt.Sprintf(`data_dir   = %q
bind_addr  = "127.0.0.1"
plugin_dir = %q
ports {
  http = %d
  rpc  = %d
  serf = %d
}
consul {
  address      = %q
  grpc_address = %q
  token        = %q
}
vault {
  address = %q
}
%s%s%s`, dataDir, pluginDir, ports[0], ports[1], ports[2],
		c.Consul.Addr, c.Consul.GRPCAddr, c.Consul.Token, c.Vault.Addr, rawExecHCL+plugin+c.opts.NomadPluginHCL, c.opts.nomadServerHCL(), acl+c.opts.nomadDiskRaftHCL())); err != nil {
		return err
	}
	addr := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	client, err := nomadapi.NewClient(&nomadapi.Config{Address: addr})
	if err != nil {
		return fmt.Errorf("nomad client: %w", err)
	}
	c.Nomad = &NomadAgent{Addr: addr, Bin: bin, Client: client, DataDir: dataDir}
	args := []string{"agent", "-dev",
		"-config=" + filepath.Join(c.root, "deploy", "dev", "nomad.hcl"), "-config=" + local}
	if c.opts.DiskRaft {
		args = slices.Delete(args, 1, 2)
	}
	return c.launch(ctx, "nomad", bin, args, func(context.Context) bool {
		if c.opts.NomadACL && c.Nomad.Token == "" {
			// Once the server has a leader: the one bootstrap it allows.
			tok, _, err := client.ACLTokens().Bootstrap(nil)
			if err != nil {
				return false
			}
			c.Nomad.Token = tok.SecretID
			client.SetSecretID(tok.SecretID)
		}
		return nomadNodeReady(client)
	})
}

// nomadNodeReady is true once the dev agent's client node is ready with
// raw_exec healthy and Consul and Vault fingerprinted: before that, jobs that
// use them would be blocked or placed on a node that cannot run them yet.
func nomadNodeReady(client *nomadapi.Client) bool {
	stubs, _, err := client.Nodes().List(nil)
	if err != nil || len(stubs) == 0 {
		return false
	}
	return nodeReady(client, stubs[0].ID, "raw_exec")
}

// nodeReady is true once node id is ready with the given drivers healthy and
// Consul and Vault fingerprinted.
func nodeReady(client *nomadapi.Client, id string, drivers ...string) bool {
	node, _, err := client.Nodes().Info(id, nil)
	if err != nil || node.Status != "ready" {
		return false
	}
	for _, name := range drivers {
		if d := node.Drivers[name]; d == nil || !d.Healthy {
			return false
		}
	}
	return node.Attributes["consul.version"] != "" && node.Attributes["vault.accessible"] == "true"
}

// RunScript runs a script of this repository (path relative to its root, e.g.
// "deploy/vault/setup") with the cluster's environment and returns its
// stdout; on failure the error carries its stderr.
func (c *Cluster) RunScript(ctx context.Context, rel string, args ...string) (string, error) {
	return c.RunScriptEnv(ctx, nil, rel, args...)
}

// RunScriptEnv is RunScript with extra environment entries, which win over
// the cluster's (e.g. VAULT_TOKEN=<an operator's token>).
func (c *Cluster) RunScriptEnv(ctx context.Context, env []string, rel string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.root, rel), args...)
	// 2048-bit CA keys keep setup fast; production uses the default 4096.
	cmd.Env = append(c.scriptEnv("PKI_KEY_BITS=2048"), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s", rel, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// CACertPEM returns the root CA of the model-call PKI (pki), the trust
// anchor coordinators and runners verify each other against.
func (v *VaultAgent) CACertPEM(ctx context.Context) ([]byte, error) {
	return v.getPEM(ctx, "pki/ca/pem", "root CA")
}

// CAChainPEM returns the model-call intermediate and the root (Vault's
// unauthenticated /v1/pki_int/ca_chain): what coordinators' certificates
// chain to, and the intermediate that signs the revocation list.
func (v *VaultAgent) CAChainPEM(ctx context.Context) ([]byte, error) {
	return v.getPEM(ctx, "pki_int/ca_chain", "CA chain")
}

// WriteCAChain writes CAChainPEM to dir/vault-ca-chain.pem and returns the
// file and the PEM it holds: the CA file runners, the orchestrator
// WebSocket and a test's own servers verify coordinators' Vault
// certificates (and Vault's revocation lists) against. It fails t when
// Vault cannot be read.
func (v *VaultAgent) WriteCAChain(t testing.TB, ctx context.Context, dir string) (file string, chain []byte) {
	t.Helper()
	chain, err := v.CAChainPEM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	file = filepath.Join(dir, "vault-ca-chain.pem")
	if err := os.WriteFile(file, chain, 0o600); err != nil {
		t.Fatal(err)
	}
	return file, chain
}

func (v *VaultAgent) getPEM(ctx context.Context, path, what string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.Addr+"/v1/"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("read %s: status %d: %s", what, resp.StatusCode, b)
	}
	return b, nil
}

// AppRole is a coordinator's Vault login, as deploy/vault/setup prints it.
type AppRole struct{ RoleID, SecretID string }

// CoordinatorAppRole onboards crunch the way the security team does
// (deploy/vault/setup coordinator CRUNCH) and returns its AppRole login.
func (c *Cluster) CoordinatorAppRole(ctx context.Context, crunch string) (AppRole, error) {
	out, err := c.RunScript(ctx, "deploy/vault/setup", "coordinator", crunch)
	if err != nil {
		return AppRole{}, fmt.Errorf("onboarding crunch %s: %w\n%s", crunch, err, out)
	}
	var r AppRole
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "role_id="); ok {
			r.RoleID = v
		}
		if v, ok := strings.CutPrefix(line, "secret_id="); ok {
			r.SecretID = v
		}
	}
	if r.RoleID == "" || r.SecretID == "" {
		return r, fmt.Errorf("onboarding crunch %s printed no role_id/secret_id:\n%s", crunch, out)
	}
	return r, nil
}

// CoordinatorConsul onboards crunch's coordinator in Consul the way the
// operator does (deploy/consul/setup coordinator CRUNCH) and returns a Consul
// client with its token: it reads the crunch's models and nothing else.
func (c *Cluster) CoordinatorConsul(ctx context.Context, crunch string) (*consulapi.Client, error) {
	out, err := c.RunScript(ctx, "deploy/consul/setup", "coordinator", crunch)
	if err != nil {
		return nil, fmt.Errorf("onboarding crunch %s in Consul: %w\n%s", crunch, err, out)
	}
	var secret string
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "secret_id="); ok {
			secret = v
		}
	}
	if secret == "" {
		return nil, fmt.Errorf("onboarding crunch %s in Consul printed no secret_id:\n%s", crunch, out)
	}
	cfg := consulapi.DefaultConfig()
	cfg.Address, cfg.Token = c.Consul.Addr, secret
	return consulapi.NewClient(cfg)
}

// CoordinatorCert onboards crunch and returns a client certificate Vault
// signed for its coordinator (AppRole login, pki_int/sign/coordinator).
func (c *Cluster) CoordinatorCert(ctx context.Context, crunch string) (*tls.Certificate, error) {
	iss, err := c.CoordinatorIssuer(ctx, crunch)
	if err != nil {
		return nil, err
	}
	return iss.Certificate(), nil
}

// CoordinatorIssuer onboards crunch and returns its coordinator's Vault
// issuer (AppRole login, pki_int/sign/coordinator): the TLS material a
// client.Config takes, trusting Vault's root for runners.
func (c *Cluster) CoordinatorIssuer(ctx context.Context, crunch string) (*vaultpki.Issuer, error) {
	role, err := c.CoordinatorAppRole(ctx, crunch)
	if err != nil {
		return nil, err
	}
	vc, err := c.Vault.Client.Clone()
	if err != nil {
		return nil, err
	}
	vc.ClearToken()
	cn, uris := vaultpki.CoordinatorNames(crunch)
	iss, err := vaultpki.New(ctx, vaultpki.Config{Client: vc, Login: vaultpki.AppRole{RoleID: role.RoleID, SecretID: role.SecretID},
		CommonName: cn, URISANs: uris})
	if err != nil {
		return nil, fmt.Errorf("certificate for crunch %s: %w", crunch, err)
	}
	return iss, nil
}
