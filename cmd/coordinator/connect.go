package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/credentials"
	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/client/discovery/consul"
	"github.com/modelnodes/modelnodes/client/discovery/dnssrv"
	"github.com/modelnodes/modelnodes/internal/envflag"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	"github.com/modelnodes/modelnodes/pki/vaultpki"
)

// common are the flags every command shares: where the models are and how
// to authenticate.
type common struct {
	crunch, crunchID, service  string
	models, dns, modelIDs      string
	maxReply, maxFanout        byteSize
	consulAddr, consulToken    string
	certFile, keyFile, caFile  string
	plaintext                  bool
	vaultAddr, vaultToken      string
	vaultRoleID, vaultSecretID string
	vaultMount, vaultRole      string
	vaultKey                   string
	verifyDelegation           bool
	connectTimeout             time.Duration
	logLevel                   string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.crunch, "crunch", "", "the crunch's name, as on chain: its models are its Consul service (modelnodes-names crunch NAME: crunch-LABEL); the Vault certificate names it")
	fs.StringVar(&c.crunchID, "crunch-id", "", "the crunch's on-chain id (base58), which the scheduler writes in each model's Consul service meta \"crunch\"; instances naming another crunch, or none, are ignored (default: --crunch, for a crunch without an on-chain id)")
	fs.StringVar(&c.service, "service", "", "Consul service to watch instead of the crunch's")
	fs.StringVar(&c.models, "models", "", "a fixed list of models, id=host:port,… (instead of Consul)")
	fs.StringVar(&c.dns, "dns", "", "Consul DNS address (host:port): resolve --model-ids through SRV records")
	fs.StringVar(&c.modelIDs, "model-ids", "", "with --dns: the model ids to resolve, comma separated")
	fs.StringVar(&c.consulAddr, "consul-addr", "", "Consul HTTP address (default: $CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	fs.StringVar(&c.consulToken, "consul-token", "", "Consul ACL token (default: $CONSUL_HTTP_TOKEN)")
	fs.StringVar(&c.certFile, "tls-cert", "", "client certificate (PEM), reloaded when it changes")
	fs.StringVar(&c.keyFile, "tls-key", "", "client key (PEM)")
	fs.StringVar(&c.caFile, "tls-ca", "", "CA that runner certificates must chain to (PEM)")
	fs.BoolVar(&c.plaintext, "plaintext", false, "call runners without TLS (laptops and tests only)")
	fs.StringVar(&c.vaultAddr, "vault-addr", "", "get the client certificate from Vault PKI at this address")
	fs.StringVar(&c.vaultToken, "vault-token", "", "Vault token (instead of AppRole)")
	fs.StringVar(&c.vaultRoleID, "vault-role-id", "", "AppRole role id (deploy/vault/setup coordinator CRUNCH prints it)")
	fs.StringVar(&c.vaultSecretID, "vault-secret-id", "", "AppRole secret id")
	fs.StringVar(&c.vaultKey, "vault-key", "", "with --vault-addr: the coordinator's private key (PEM), created when missing; keep it: its public key hash is what the chain records (without it every run makes a new key, which runners checking on-chain hashes refuse)")
	fs.StringVar(&c.vaultMount, "vault-pki-mount", "pki_int", "Vault PKI mount that signs coordinator certificates")
	fs.StringVar(&c.vaultRole, "vault-pki-role", "coordinator", "Vault PKI role")
	fs.BoolVar(&c.verifyDelegation, "verify-delegation", false, "accept a model's answers only with the cruncher's wallet delegation for the runner's TLS key, checked against the wallet, model id and hotkey in its Consul metadata (CrunchDAO's secure mode)")
	c.maxReply = byteSize(client.DefaultMaxReplyBytes)
	fs.Var(&c.maxReply, "max-reply-size", "largest reply accepted from one model (bytes, or with KiB/MiB/GiB); a larger one is refused unread and reported too_large")
	c.maxFanout = byteSize(client.DefaultMaxFanoutBytes)
	fs.Var(&c.maxFanout, "max-fanout-reply-size", "largest total of the replies of one call to all models: each of N models may send this / N when that is less than --max-reply-size")
	fs.DurationVar(&c.connectTimeout, "connect-timeout", 10*time.Second, "how long to wait for the first membership")
	fs.StringVar(&c.logLevel, "log-level", "warn", "log level (trace, debug, info, warn, error)")
}

// parse parses args with environment fallbacks; synopsis heads --help.
func parse(fs *flag.FlagSet, args []string, synopsis string, stderr io.Writer) ([]string, error) {
	fs.SetOutput(stderr)
	fs.Usage = envflag.Usage(fs, envPrefix, synopsis)
	// Flags may follow positional arguments (call METHOD --args …).
	var pos []string
	for {
		if err := envflag.Parse(fs, envPrefix, args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err}
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// open starts a client following the configured source; stop it with the
// returned function.
func (c *common) open(ctx context.Context, stderr io.Writer) (*client.Client, func(), error) {
	log := hclog.New(&hclog.LoggerOptions{Name: "coordinator", Level: hclog.LevelFromString(c.logLevel), Output: stderr})
	src, err := c.source(log)
	if err != nil {
		return nil, nil, err
	}
	mat, err := c.material(ctx, log)
	if err != nil {
		return nil, nil, err
	}
	cfg := client.Config{Source: src, Plaintext: c.plaintext, Logger: log,
		MaxReplyBytes: int(c.maxReply), MaxFanoutBytes: int64(c.maxFanout)}
	if mat != nil {
		cfg.TLS = mat
	}
	if c.verifyDelegation {
		if c.plaintext {
			return nil, nil, usageError{errors.New("--verify-delegation checks the runner's TLS key: it cannot work with --plaintext")}
		}
		cfg.Delegation = client.DelegationFromMeta
	}
	cl, err := client.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cl.Run(runCtx) }()
	stop := func() { cancel(); <-done }
	wctx, wcancel := context.WithTimeout(ctx, c.connectTimeout)
	defer wcancel()
	if err := cl.WaitMembership(wctx); err != nil {
		stop()
		select {
		case e := <-done:
			if e != nil {
				return nil, nil, e
			}
		default:
		}
		return nil, nil, err
	}
	return cl, stop, nil
}

func (c *common) serviceName() string {
	if c.service != "" {
		return c.service
	}
	if c.crunch != "" {
		return names.Service(c.crunch)
	}
	return ""
}

func (c *common) source(log hclog.Logger) (discovery.Source, error) {
	switch {
	case c.models != "":
		return discovery.ParseStatic(c.models)
	case c.dns != "":
		if c.serviceName() == "" || c.modelIDs == "" {
			return nil, usageError{errors.New("--dns needs --crunch (or --service) and --model-ids")}
		}
		// Consul DNS answers carry no service meta: an instance that
		// another job registered under this name with the model's tag is
		// answered beside the model's own. Only the runner's certificate
		// (it must name the model) tells them apart.
		if c.plaintext {
			log.Warn("--dns with --plaintext: Consul DNS carries no service meta, so any job that registers this service name with a model's tag may answer for that model; use Consul discovery (--crunch without --dns) or TLS", "service", c.serviceName())
		} else {
			log.Info("--dns: Consul DNS carries no service meta; instances are told apart only by the runner certificate, which must name the model", "service", c.serviceName())
		}
		return dnssrv.Models(c.dns, c.serviceName(), envflag.SplitList(c.modelIDs)...), nil
	case c.serviceName() != "":
		cfg := consulapi.DefaultConfig()
		if c.consulAddr != "" {
			cfg.Address = c.consulAddr
		}
		if c.consulToken != "" {
			cfg.Token = c.consulToken
		}
		cl, err := consulapi.NewClient(cfg)
		if err != nil {
			return nil, fmt.Errorf("consul: %w", err)
		}
		crunchID := c.crunchID
		if crunchID == "" {
			crunchID = c.crunch
		}
		if crunchID == "" {
			return nil, usageError{errors.New("--service needs --crunch-id (or --crunch): only instances whose meta names the crunch are models")}
		}
		return &consul.Source{Client: cl, Service: c.serviceName(), Crunch: crunchID, Logger: log}, nil
	}
	return nil, usageError{errors.New("say where the models are: --crunch, --models or --dns")}
}

// material returns the TLS material, or nil with --plaintext.
func (c *common) material(ctx context.Context, log hclog.Logger) (credentials.Material, error) {
	if c.plaintext {
		if c.certFile != "" || c.vaultAddr != "" {
			return nil, usageError{errors.New("--plaintext and TLS flags exclude each other")}
		}
		return nil, nil
	}
	if c.vaultAddr != "" {
		return c.vault(ctx, log)
	}
	if c.certFile == "" || c.keyFile == "" || c.caFile == "" {
		return nil, usageError{errors.New("mTLS needs --tls-cert, --tls-key and --tls-ca (or --vault-addr, or --plaintext)")}
	}
	r, err := tlsfiles.New(tlsfiles.Files{CertFile: c.certFile, KeyFile: c.keyFile, CAFile: c.caFile}, func(err error) {
		if err != nil {
			log.Error("TLS files changed but cannot be used; keeping the previous ones", "error", err)
		}
	})
	if err != nil {
		return nil, err
	}
	go r.Watch(ctx, 5*time.Second)
	return r, nil
}

func (c *common) vault(ctx context.Context, log hclog.Logger) (credentials.Material, error) {
	if c.crunch == "" {
		return nil, usageError{errors.New("--vault-addr needs --crunch (the certificate names it)")}
	}
	cfg := vaultapi.DefaultConfig()
	cfg.Address = c.vaultAddr
	vc, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	vc.SetToken(c.vaultToken)
	cn, uris := vaultpki.CoordinatorNames(c.crunch)
	vcfg := vaultpki.Config{Client: vc, Mount: c.vaultMount, Role: c.vaultRole, CommonName: cn, URISANs: uris, Logger: log}
	if c.vaultRoleID != "" {
		vcfg.Login = vaultpki.AppRole{RoleID: c.vaultRoleID, SecretID: c.vaultSecretID}
	}
	if c.caFile != "" {
		if vcfg.CAPEM, err = os.ReadFile(c.caFile); err != nil {
			return nil, err
		}
	}
	if c.vaultKey != "" {
		key, created, err := vaultpki.KeyFile(c.vaultKey)
		if err != nil {
			return nil, err
		}
		spki, err := x509.MarshalPKIXPublicKey(key.Public())
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(spki)
		if created {
			log.Warn("created the coordinator key; record its hash on chain (CoordinatorCertificate cert_hash)", "file", c.vaultKey, "cert_hash", hex.EncodeToString(sum[:]))
		} else {
			log.Info("coordinator key", "file", c.vaultKey, "cert_hash", hex.EncodeToString(sum[:]))
		}
		vcfg.Key = key
	} else {
		log.Warn("no --vault-key: a new key for this run only; runners that check the crunch's on-chain key hash will refuse it")
	}
	iss, err := vaultpki.New(ctx, vcfg)
	if err != nil {
		return nil, err
	}
	go iss.Run(ctx)
	return iss, nil
}

// byteSize is a flag.Value for a size in bytes: "4194304", "4MiB", "512KiB",
// "1GiB" (binary units; "MB" and the like are refused rather than guessed).
type byteSize int64

func (b *byteSize) String() string {
	n := int64(*b)
	for _, u := range []struct {
		name  string
		shift uint
	}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

func (b *byteSize) Set(s string) error {
	num, shift := s, uint(0)
	for suffix, sh := range map[string]uint{"KiB": 10, "MiB": 20, "GiB": 30} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			num, shift = n, sh
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n <= 0 || n > (1<<31-1)>>shift {
		return fmt.Errorf("%q: want a positive size under 2GiB, in bytes or with KiB, MiB or GiB", s)
	}
	*b = byteSize(n << shift)
	return nil
}
