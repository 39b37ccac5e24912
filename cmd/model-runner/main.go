// Command model-runner makes one model callable over gRPC, wire-compatible
// with CrunchDAO's model runner. It runs the participant's code in a separate
// worker process and never loads it itself.
//
//	model-runner serve --model-dir ./my-model --listen 127.0.0.1:50051 \
//	    --tls-cert server.crt --tls-key server.key --tls-client-ca ca.crt
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	vaultapi "github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/modelnodes/modelnodes/delegation"
	"github.com/modelnodes/modelnodes/internal/envflag"
	"github.com/modelnodes/modelnodes/internal/filewatch"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	"github.com/modelnodes/modelnodes/pki/vaultpki"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/runner/pyhost"
	"github.com/modelnodes/modelnodes/runner/vaultkey"
	"github.com/modelnodes/modelnodes/runner/worker"
)

const envPrefix = "MODEL_RUNNER"

const usage = `model-runner: serve one model over gRPC (CrunchDAO model runner protocol).

Usage:
  model-runner serve --model-dir DIR [--listen ADDR] (--tls-cert F --tls-key F [--tls-client-ca F] | --plaintext)
  model-runner serve ... --tls-vault-sign pki_int/sign/runner --tls-vault-key runner-keys/JOB --tls-common-name N
                                         certificate from Vault for a key kept in Vault (see docs/security.md)
  model-runner python-host > host.py     print the embedded Python worker host
  model-runner delegation key|sign ...  a runner's public key; a wallet delegation for it (crunchers)

The model runs in a worker process started by the runner: with --runtime python
the submission directory is loaded by the embedded host (main.py or its
modules); with --runtime executable, --entry names a program that speaks the
worker protocol on fd 3 (docs/worker-protocol.md).
`

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(map[bool]int{true: 0, false: 2}[len(os.Args) >= 2])
	}
	switch os.Args[1] {
	case "serve":
		if err := serve(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "model-runner:", err)
			os.Exit(1)
		}
	case "python-host":
		_, _ = os.Stdout.Write(pyhost.Script())
	case "delegation":
		if err := delegationCmd(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "model-runner delegation:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "model-runner: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}

type options struct {
	listen, metricsListen            string
	modelDir, runtime, entry, python string
	certFile, keyFile, caFile        string
	plaintext                        bool
	tlsReload                        time.Duration
	callTimeout, startTimeout, drain time.Duration
	maxRecv, maxQueue                int
	hostDir, workerWrapper           string
	crunch, certHashes, authzFile    string
	crlFile, crlURL, healthListen    string
	crlRefresh, crlGrace             time.Duration
	anyCoordinatorKey, withoutCRL    bool
	maxInflight                      int64
	maxStreams                       uint
	delegationFile                   string
	vaultAddr, vaultTokenFile        string
	vaultKey, vaultSign, commonName  string
	certTTL                          time.Duration
	logLevel                         string
	logJSON                          bool
}

func parse(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("model-runner serve", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:50051", "address to serve gRPC on")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "address to serve Prometheus /metrics on (off when empty)")
	fs.StringVar(&o.modelDir, "model-dir", "", "the submission's directory (required)")
	fs.StringVar(&o.runtime, "runtime", "python", "how to run the model: python or executable")
	fs.StringVar(&o.entry, "entry", "", "python: module to import first (default main, else every module); executable: the program, relative to --model-dir")
	fs.StringVar(&o.python, "python", "python3", "python interpreter for --runtime python")
	fs.StringVar(&o.certFile, "tls-cert", "", "server certificate (PEM); reloaded when it changes on disk")
	fs.StringVar(&o.keyFile, "tls-key", "", "server private key (PEM)")
	fs.StringVar(&o.caFile, "tls-client-ca", "", "CA bundle (PEM) that client certificates must chain to: enables mTLS")
	fs.StringVar(&o.vaultSign, "tls-vault-sign", "", "get the server certificate from this Vault PKI sign endpoint (e.g. pki_int/sign/runner) instead of --tls-cert/--tls-key, and renew it before it expires; needs --tls-vault-key")
	fs.StringVar(&o.vaultKey, "tls-vault-key", "", "with --tls-vault-sign: the KV v2 entry MOUNT/NAME keeping this model's private key across renewals and restarts (created when missing)")
	fs.StringVar(&o.commonName, "tls-common-name", "", "with --tls-vault-sign: the certificate's name, model-node-<id>.crunchdao.internal")
	fs.DurationVar(&o.certTTL, "tls-ttl", 0, "with --tls-vault-sign: the certificate lifetime to ask for (0: the role's)")
	fs.StringVar(&o.vaultAddr, "vault-addr", "", "Vault address for --tls-vault-sign (default $VAULT_ADDR)")
	fs.StringVar(&o.vaultTokenFile, "vault-token-file", "", "file holding the Vault token, re-read at each renewal (a Nomad task's secrets/vault_token; default $VAULT_TOKEN)")
	fs.BoolVar(&o.plaintext, "plaintext", false, "serve without TLS (development only)")
	fs.DurationVar(&o.tlsReload, "tls-reload-interval", 5*time.Second, "how often to check the TLS files for changes (SIGHUP checks at once)")
	fs.DurationVar(&o.callTimeout, "call-timeout", 5*time.Minute, "longest a call may run, whatever the caller's deadline")
	fs.DurationVar(&o.startTimeout, "start-timeout", 2*time.Minute, "longest the model may take to load")
	fs.DurationVar(&o.drain, "drain-timeout", 10*time.Second, "on shutdown, how long in-flight calls may take to finish")
	fs.IntVar(&o.maxRecv, "max-recv-bytes", runner.DefaultMaxRecvBytes, "largest request accepted")
	fs.IntVar(&o.maxQueue, "max-queue", 128, "calls that may wait for a busy model; more are refused with RESOURCE_EXHAUSTED")
	fs.StringVar(&o.crunch, "crunch", "", "admit only coordinators whose certificate names this crunch (URI SAN spiffe://modelnodes/crunch/NAME); needs --tls-client-ca")
	fs.StringVar(&o.certHashes, "coordinator-cert-hash", "", "on-chain hashes (primary,secondary) of the coordinator's public key: SHA-256 of its SubjectPublicKeyInfo DER, hex")
	fs.StringVar(&o.authzFile, "authz-file", "", `JSON {"crunch": ..., "coordinator_cert_hashes": [...]}, re-read when it changes (instead of --crunch and --coordinator-cert-hash)`)
	fs.StringVar(&o.crlFile, "tls-crl", "", "the CA's revocation list (PEM or DER); revoked coordinators are refused; re-read when it changes")
	fs.StringVar(&o.crlURL, "tls-crl-url", "", "fetch revocation lists from these URLs instead, every --crl-refresh (comma-separated): a CRL (e.g. Vault's .../v1/pki_int/crl/pem), or a Vault PKI mount's issuer list, .../v1/pki_int/issuers, to fetch every issuer's CRL (what a rotated intermediate still revokes)")
	fs.DurationVar(&o.crlRefresh, "crl-refresh", time.Minute, "how often to fetch --tls-crl-url: a revoked coordinator is refused within this long")
	fs.DurationVar(&o.crlGrace, "crl-grace", authz.DefaultCRLGrace, "how long past its nextUpdate a revocation list is still used; after that, certificates of its issuer are refused until a fresh list is loaded")
	fs.BoolVar(&o.anyCoordinatorKey, "authz-any-coordinator-key", false, "DEVELOPMENT ONLY, command line only: with no on-chain key hash, admit any key instead of nobody")
	fs.BoolVar(&o.withoutCRL, "authz-without-crl", false, "DEVELOPMENT ONLY, command line only: check callers without a revocation list (a revoked coordinator stays admitted)")
	fs.Int64Var(&o.maxInflight, "max-inflight-bytes", 0, "request bytes the runner receives or holds at once for queued and running calls; more calls wait (default 2 × --max-recv-bytes)")
	fs.UintVar(&o.maxStreams, "max-streams-per-conn", runner.DefaultMaxStreamsPerConn, "concurrent calls per connection (clients queue the rest)")
	fs.StringVar(&o.healthListen, "health-listen", "", "also serve only the gRPC health service, without TLS, on this address (for Consul checks)")
	fs.StringVar(&o.delegationFile, "delegation", "", "the cruncher's wallet delegation (from `model-runner delegation sign`), sent with every model call; re-read when it changes")
	fs.StringVar(&o.hostDir, "host-dir", "", "where to write the Python host script (default: a private temp dir); a sandboxing wrapper must show it to the worker")
	fs.StringVar(&o.workerWrapper, "worker-wrapper", "", "command prefixed to the worker's argv, e.g. a sandbox (a JSON array, or words split on spaces); the Nomad driver sets it")
	fs.StringVar(&o.logLevel, "log-level", "info", "trace, debug, info, warn or error")
	fs.BoolVar(&o.logJSON, "log-json", false, "write logs as JSON")
	fs.Usage = envflag.Usage(fs, envPrefix, usage)
	if err := envflag.Parse(fs, envPrefix, args); err != nil {
		return nil, err
	}
	// Switches that open the door are taken only from an operator's command
	// line, never from the environment a job (or its template) can set.
	for _, name := range []string{"authz-any-coordinator-key", "authz-without-crl"} {
		if env := envflag.Name(envPrefix, name); os.Getenv(env) != "" {
			return nil, fmt.Errorf("%s: --%s is a development switch and is only read from the command line", env, name)
		}
	}
	authorizer := o.crunch != "" || o.certHashes != "" || o.authzFile != "" || o.crlFile != "" || o.crlURL != ""
	switch {
	case o.modelDir == "":
		return nil, errors.New("--model-dir is required")
	case o.runtime != "python" && o.runtime != "executable":
		return nil, fmt.Errorf("--runtime %q: want python or executable", o.runtime)
	case o.runtime == "executable" && o.entry == "":
		return nil, errors.New("--runtime executable needs --entry, the program to run")
	case o.plaintext && (o.certFile != "" || o.keyFile != "" || o.caFile != ""):
		return nil, errors.New("--plaintext conflicts with the --tls-* flags")
	case o.vaultSign != "" && (o.certFile != "" || o.keyFile != "" || o.plaintext):
		return nil, errors.New("--tls-vault-sign replaces --tls-cert, --tls-key and --plaintext")
	case o.vaultSign != "" && (o.vaultKey == "" || o.commonName == ""):
		return nil, errors.New("--tls-vault-sign needs --tls-vault-key (where the key lives) and --tls-common-name")
	case o.vaultSign == "" && (o.vaultKey != "" || o.commonName != "" || o.certTTL != 0):
		return nil, errors.New("--tls-vault-key, --tls-common-name and --tls-ttl only work with --tls-vault-sign")
	case !o.plaintext && o.vaultSign == "" && (o.certFile == "" || o.keyFile == ""):
		return nil, errors.New("refusing to serve without TLS: pass --tls-cert and --tls-key (or --tls-vault-sign), and --tls-client-ca for mTLS, or --plaintext")
	case o.crlFile != "" && o.crlURL != "":
		return nil, errors.New("--tls-crl and --tls-crl-url exclude each other")
	case (o.crunch != "" || o.certHashes != "" || o.authzFile != "" || o.crlFile != "" || o.crlURL != "") && o.caFile == "":
		return nil, errors.New("--crunch, --coordinator-cert-hash, --authz-file and --tls-crl check client certificates: they need --tls-client-ca")
	case o.authzFile != "" && (o.crunch != "" || o.certHashes != ""):
		return nil, errors.New("--authz-file replaces --crunch and --coordinator-cert-hash: use one or the other")
	case authorizer && o.crlFile == "" && o.crlURL == "" && !o.withoutCRL:
		return nil, errors.New("refusing to check callers without a revocation list (a revoked coordinator would stay admitted): pass --tls-crl or --tls-crl-url (--authz-without-crl for development only)")
	case (o.anyCoordinatorKey || o.withoutCRL) && !authorizer:
		return nil, errors.New("--authz-any-coordinator-key and --authz-without-crl only change the caller checks (--crunch, --coordinator-cert-hash, --authz-file)")
	case o.maxStreams == 0 || o.maxStreams > 1<<16:
		return nil, errors.New("--max-streams-per-conn: want 1 to 65536")
	case o.maxInflight != 0 && o.maxInflight < int64(o.maxRecv):
		return nil, errors.New("--max-inflight-bytes must be at least --max-recv-bytes")
	}
	return o, nil
}

func serve(args []string) error {
	o, err := parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "model-runner", Level: hclog.LevelFromString(o.logLevel), JSONFormat: o.logJSON})

	modelDir, err := filepath.Abs(o.modelDir)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(modelDir); err != nil || !fi.IsDir() {
		return fmt.Errorf("--model-dir %s is not a directory", o.modelDir)
	}
	command, cleanup, err := workerCommand(o, modelDir)
	if err != nil {
		return err
	}
	defer cleanup()
	wrapper, err := splitCommand(o.workerWrapper)
	if err != nil {
		return fmt.Errorf("--worker-wrapper: %w", err)
	}
	command = append(wrapper, command...)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg := runner.Config{
		MaxRecvBytes:      o.maxRecv,
		MaxInflightBytes:  o.maxInflight,
		MaxStreamsPerConn: uint32(o.maxStreams),
		CallTimeout:       o.callTimeout,
		Logger:            log,
		Registerer:        reg,
		Worker: worker.Config{
			Command:      command,
			Dir:          modelDir,
			StartTimeout: o.startTimeout,
			MaxQueue:     o.maxQueue,
		},
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var srv *runner.Server
	if !o.plaintext {
		files := tlsfiles.Files{CertFile: o.certFile, KeyFile: o.keyFile, CAFile: o.caFile}
		if o.vaultSign != "" {
			iss, err := vaultCertificate(ctx, o, log.Named("vault"))
			if err != nil {
				return err
			}
			go iss.Run(ctx)
			files.Certificate = iss.Certificate
		}
		cfg.TLS, err = tlsfiles.New(files, func(err error) { srv.TLSReloaded(err) })
		if err != nil {
			return err
		}
		if o.caFile == "" {
			log.Warn("serving TLS without client authentication: any caller may call the model (pass --tls-client-ca for mTLS)")
		} else if o.crunch == "" && o.certHashes == "" && o.authzFile == "" && o.crlFile == "" && o.crlURL == "" {
			log.Warn("mTLS without caller checks: any certificate from the CA may call the model (pass --crunch and --coordinator-cert-hash, or --authz-file)")
		}
	} else {
		log.Warn("serving plaintext: no TLS, no caller authentication")
	}
	if o.crunch != "" || o.certHashes != "" || o.authzFile != "" || o.crlFile != "" || o.crlURL != "" {
		var hashes []string
		for _, h := range strings.Split(o.certHashes, ",") {
			if h = strings.TrimSpace(h); h != "" {
				hashes = append(hashes, h)
			}
		}
		var urls []string
		for _, u := range strings.Split(o.crlURL, ",") {
			if u = strings.TrimSpace(u); u != "" {
				urls = append(urls, u)
			}
		}
		cfg.Authorizer, err = authz.New(authz.Config{
			Static:            authz.Policy{Crunch: o.crunch, CoordinatorCertHashes: hashes},
			PolicyFile:        o.authzFile,
			AnyCoordinatorKey: o.anyCoordinatorKey,
			CRLFile:           o.crlFile, CRLURLs: urls, CRLRefresh: o.crlRefresh, CRLGrace: o.crlGrace,
			CAFile: o.caFile, Logger: log.Named("authz"), Registerer: reg,
		})
		if err != nil {
			return err
		}
		if cfg.Authorizer.Policy().Crunch == "" {
			log.Warn("no crunch to check: any coordinator with a certificate from the CA may call the model")
		}
		if o.anyCoordinatorKey {
			log.Warn("DEVELOPMENT SWITCH --authz-any-coordinator-key: with no on-chain hash, any key naming the crunch is admitted")
		}
		if o.withoutCRL {
			log.Warn("DEVELOPMENT SWITCH --authz-without-crl: no revocation list, a revoked coordinator stays admitted")
		}
	}
	var deleg *delegation.Reloader
	if o.delegationFile != "" {
		if deleg, err = delegation.NewReloader(o.delegationFile); err != nil {
			return fmt.Errorf("--delegation: %w", err)
		}
		cfg.Delegation = deleg.Proof
		checkDelegation(log, deleg.Proof(), cfg.TLS)
	}
	srv = runner.New(cfg)
	if os.Getenv("GOMEMLIMIT") == "" {
		// Without a limit the collector lets the heap reach twice what it
		// found live, and large requests (copied while received, decoded
		// and framed for the worker) ratchet that up: 8 queued 60 MiB
		// calls took the heap to ~900 MiB although one was held at a time.
		// A soft limit from the request budget keeps the runner near what
		// the budget means; GOMEMLIMIT overrides it.
		limit := runner.MemoryLimit(cfg.MaxRecvBytes, cfg.MaxInflightBytes)
		debug.SetMemoryLimit(limit)
		log.Debug("Go memory limit", "bytes", limit)
	}
	// SIGHUP (a Nomad template's change_mode = "signal") re-reads the TLS
	// files; it never stops the runner.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			if cfg.TLS == nil {
				log.Info("SIGHUP: no TLS files to reload")
				continue
			}
			log.Info("SIGHUP: checking the TLS, authorization and delegation files")
			_, _ = cfg.TLS.Reload()
			if cfg.Authorizer != nil {
				_, _ = cfg.Authorizer.Reload()
			}
			if deleg != nil {
				reloadDelegation(log, deleg, cfg.TLS)
			}
		}
	}()
	if cfg.TLS != nil {
		go cfg.TLS.Watch(ctx, o.tlsReload)
	}
	if cfg.Authorizer != nil {
		go cfg.Authorizer.Watch(ctx, min(o.tlsReload, o.crlRefresh))
	}
	if deleg != nil {
		go filewatch.Every(ctx, o.tlsReload, func() { reloadDelegation(log, deleg, cfg.TLS) })
	}
	if o.healthListen != "" {
		hl, err := net.Listen("tcp", o.healthListen)
		if err != nil {
			return fmt.Errorf("--health-listen: %w", err)
		}
		go func() { _ = srv.ServeHealth(ctx, hl) }()
	}
	if o.metricsListen != "" {
		ml, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		go func() { _ = http.Serve(ml, mux) }()
		log.Info("metrics serving", "address", ml.Addr().String())
	}
	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	return srv.Serve(ctx, lis, o.drain)
}

// reloadDelegation picks up a changed delegation file.
func reloadDelegation(log hclog.Logger, d *delegation.Reloader, tlsr *tlsfiles.Reloader) {
	changed, err := d.Reload()
	switch {
	case err != nil:
		log.Error("the delegation file changed but cannot be used; keeping the previous one", "error", err)
	case changed:
		log.Info("delegation reloaded")
		checkDelegation(log, d.Proof(), tlsr)
	}
}

// checkDelegation warns when the delegation cannot satisfy a coordinator: it
// covers another key than the runner's, or it has expired.
func checkDelegation(log hclog.Logger, p *delegation.Proof, tlsr *tlsfiles.Reloader) {
	if p == nil {
		log.Warn("no delegation yet: calls carry no wallet proof until the file holds one")
		return
	}
	m, err := p.Decode()
	if err != nil {
		log.Error("the delegation message is unreadable", "error", err)
		return
	}
	if time.Now().Unix() >= m.ExpiresAt {
		log.Error("the delegation has expired: coordinators will refuse this runner", "expires_at", time.Unix(m.ExpiresAt, 0).UTC())
	}
	if tlsr != nil && m.CertPub != delegation.CertPub(tlsr.Certificate().Leaf.RawSubjectPublicKeyInfo) {
		log.Error("the delegation covers another TLS key than this runner's: coordinators will refuse it")
	}
}

// vaultCertificate signs the runner's certificate with Vault PKI for the
// model's long-lived key (runner/vaultkey), and renews it from then on.
func vaultCertificate(ctx context.Context, o *options, log hclog.Logger) (*vaultpki.Issuer, error) {
	mount, role, ok := strings.Cut(strings.Trim(o.vaultSign, "/"), "/sign/")
	if !ok || mount == "" || role == "" || strings.Contains(role, "/") {
		return nil, fmt.Errorf("--tls-vault-sign %q: want MOUNT/sign/ROLE, e.g. pki_int/sign/runner", o.vaultSign)
	}
	ref, err := vaultkey.ParseRef(o.vaultKey)
	if err != nil {
		return nil, fmt.Errorf("--tls-vault-key: %w", err)
	}
	vcfg := vaultapi.DefaultConfig() // VAULT_ADDR, VAULT_CACERT, ...
	if vcfg.Error != nil {
		return nil, fmt.Errorf("vault: %w", vcfg.Error)
	}
	if o.vaultAddr != "" {
		vcfg.Address = o.vaultAddr
	}
	vc, err := vaultapi.NewClient(vcfg)
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	var login vaultpki.Login
	if o.vaultTokenFile != "" {
		login = vaultpki.TokenFile(o.vaultTokenFile)
		tok, err := login.Login(ctx, vc)
		if err != nil {
			return nil, err
		}
		vc.SetToken(tok)
	}
	if vc.Token() == "" {
		return nil, errors.New("--tls-vault-sign: no Vault token (--vault-token-file or $VAULT_TOKEN)")
	}
	key, created, err := vaultkey.LoadOrCreate(ctx, vc, ref)
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	// cert_pub is what a cruncher signs (model-runner delegation sign).
	log.Info("runner key", "entry", ref.String(), "created", created, "cert_pub", delegation.CertPub(spki))
	return vaultpki.New(ctx, vaultpki.Config{
		Client: vc, Login: login, Mount: mount, Role: role, CommonName: o.commonName,
		TTL: o.certTTL, Key: key, What: "runner", Logger: log,
	})
}

// workerCommand returns the worker's argv for the chosen runtime.
func workerCommand(o *options, modelDir string) ([]string, func(), error) {
	if o.runtime == "executable" {
		prog := o.entry
		if !filepath.IsAbs(prog) {
			prog = filepath.Join(modelDir, prog)
		}
		if fi, err := os.Stat(prog); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return nil, nil, fmt.Errorf("--entry %s is not an executable file", prog)
		}
		return []string{prog}, func() {}, nil
	}
	dir, cleanup := o.hostDir, func() {}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "model-runner-host-")
		if err != nil {
			return nil, nil, err
		}
		dir, cleanup = tmp, func() { _ = os.RemoveAll(tmp) }
	}
	host, err := pyhost.Install(dir)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	cmd := []string{o.python, "-B", host, "--model-dir", modelDir}
	if o.entry != "" {
		cmd = append(cmd, "--entry", o.entry)
	}
	return cmd, cleanup, nil
}

// splitCommand reads a command prefix: a JSON array of strings, or words
// separated by spaces.
func splitCommand(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "[") {
		var argv []string
		if err := json.Unmarshal([]byte(s), &argv); err != nil {
			return nil, fmt.Errorf("not a JSON array of strings: %w", err)
		}
		return argv, nil
	}
	return strings.Fields(s), nil
}
