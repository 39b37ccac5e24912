package runner

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
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
	"github.com/modelnodes/modelnodes/internal/filewatch"
	"github.com/modelnodes/modelnodes/pki/tlsfiles"
	"github.com/modelnodes/modelnodes/pki/vaultpki"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/runner/launch"
	"github.com/modelnodes/modelnodes/runner/pyhost"
	"github.com/modelnodes/modelnodes/runner/runneropts"
	"github.com/modelnodes/modelnodes/runner/vaultkey"
	"github.com/modelnodes/modelnodes/runner/worker"
)

// Run serves one model as o says until ctx ends, then drains in-flight calls
// (o.DrainTimeout) and stops the worker. It assembles everything a runner
// process needs: the worker command, TLS from files or Vault, the caller
// checks, the delegation, metrics and the health-only port. Logs go to
// stderr.
//
// Run acts on the process, as a command's main would: SIGHUP re-reads the
// TLS, policy and delegation files while it runs, without GOMEMLIMIT in the
// environment it sets a soft memory limit derived from the request budget,
// and for the python runtime it sets GOMAXPROCS (see LimitProcs).
func Run(ctx context.Context, o runneropts.Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "model-runner", Level: hclog.LevelFromString(o.LogLevel), JSONFormat: o.LogJSON})

	modelDir, err := filepath.Abs(o.ModelDir)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(modelDir); hiddenFromRunner(&o, err) {
		log.Debug("the model is not visible to the runner; the driver checked it, and the worker reads it", "model_dir", modelDir)
	} else if err != nil || !fi.IsDir() {
		return fmt.Errorf("--model-dir %s is not a directory", o.ModelDir)
	}
	faulty, err := readModelError(o.ModelErrorFile)
	if err != nil {
		return err
	}
	var command []string
	if faulty == "" {
		cmd, cleanup, err := workerCommand(&o, modelDir)
		if err != nil {
			return err
		}
		defer cleanup()
		command = append(append([]string{}, o.WorkerWrapper...), cmd...)
	} else {
		log.Error("the model cannot run; every call answers BAD_IMPLEMENTATION", "reason", faulty)
	}

	var starter worker.Starter
	if o.WorkerLauncher {
		lc, err := launch.FromEnv()
		if err != nil {
			return fmt.Errorf("--worker-launcher: %w", err)
		}
		defer lc.Close()
		starter = lc
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg := Config{
		MaxRecvBytes:      o.MaxRecvBytes,
		MaxInflightBytes:  o.MaxInflightBytes,
		MaxStreamsPerConn: uint32(o.MaxStreamsPerConn),
		CallTimeout:       o.CallTimeout,
		Logger:            log,
		Registerer:        reg,
		Faulty:            faulty,
		Worker: worker.Config{
			Command:      command,
			Dir:          modelDir,
			StartTimeout: o.StartTimeout,
			MaxQueue:     o.MaxQueue,
			Starter:      starter,
		},
	}
	var srv *Server
	if !o.Plaintext {
		files := tlsfiles.Files{CertFile: o.TLSCert, KeyFile: o.TLSKey, CAFile: o.TLSClientCA}
		if o.VaultSign != "" {
			iss, err := vaultCertificate(ctx, &o, log.Named("vault"))
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
		if o.TLSClientCA == "" {
			log.Warn("serving TLS without client authentication: any caller may call the model (pass --tls-client-ca for mTLS)")
		} else if !o.ChecksCallers() {
			log.Warn("mTLS without caller checks: any certificate from the CA may call the model (pass --crunch and --coordinator-cert-hash, or --authz-file)")
		}
	} else {
		log.Warn("serving plaintext: no TLS, no caller authentication")
	}
	if o.ChecksCallers() {
		cfg.Authorizer, err = authz.New(authz.Config{
			Static:            authz.Policy{Crunch: o.Crunch, CoordinatorCertHashes: o.CoordinatorCertHashes},
			PolicyFile:        o.AuthzFile,
			AnyCoordinatorKey: o.AnyCoordinatorKey,
			CRLFile:           o.CRLFile, CRLURLs: o.CRLURLs, CRLRefresh: o.CRLRefresh, CRLGrace: o.CRLGrace,
			CAFile: o.TLSClientCA, Logger: log.Named("authz"), Registerer: reg,
		})
		if err != nil {
			return err
		}
		if cfg.Authorizer.Policy().Crunch == "" {
			log.Warn("no crunch to check: any coordinator with a certificate from the CA may call the model")
		}
		if o.AnyCoordinatorKey {
			log.Warn("DEVELOPMENT SWITCH --authz-any-coordinator-key: with no on-chain hash, any key naming the crunch is admitted")
		}
		if o.WithoutCRL {
			log.Warn("DEVELOPMENT SWITCH --authz-without-crl: no revocation list, a revoked coordinator stays admitted")
		}
	}
	var deleg *delegation.Reloader
	if o.DelegationFile != "" {
		if deleg, err = delegation.NewReloader(o.DelegationFile); err != nil {
			return fmt.Errorf("--delegation: %w", err)
		}
		cfg.Delegation = deleg.Proof
		checkDelegation(log, deleg.Proof(), cfg.TLS)
	}
	srv = New(cfg)
	if o.Runtime == "python" {
		// The Python host takes one call at a time.
		LimitProcs(1)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		// Without a limit the collector lets the heap reach twice what it
		// found live, and large requests (copied while received, decoded
		// and framed for the worker) ratchet that up: 8 queued 60 MiB
		// calls took the heap to ~900 MiB although one was held at a time.
		// A soft limit from the request budget keeps the runner near what
		// the budget means; GOMEMLIMIT overrides it.
		limit := MemoryLimit(cfg.MaxRecvBytes, cfg.MaxInflightBytes)
		debug.SetMemoryLimit(limit)
		log.Debug("Go memory limit", "bytes", limit)
	}
	// SIGHUP (a Nomad template's change_mode = "signal") re-reads the TLS
	// files; it never stops the runner.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
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
		go cfg.TLS.Watch(ctx, o.TLSReloadInterval)
	}
	if cfg.Authorizer != nil {
		go cfg.Authorizer.Watch(ctx, min(o.TLSReloadInterval, o.CRLRefresh))
	}
	if deleg != nil {
		go filewatch.Every(ctx, o.TLSReloadInterval, func() { reloadDelegation(log, deleg, cfg.TLS) })
	}
	if o.HealthListen != "" {
		hl, err := net.Listen("tcp", o.HealthListen)
		if err != nil {
			return fmt.Errorf("--health-listen: %w", err)
		}
		go func() { _ = srv.ServeHealth(ctx, hl) }()
	}
	if o.MetricsListen != "" {
		ml, err := net.Listen("tcp", o.MetricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		defer ml.Close()
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		// Reachable from the network when a job gives it a port: a slow
		// client must not hold connections open.
		ms := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
			WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10}
		defer ms.Close()
		go func() { _ = ms.Serve(ml) }()
		log.Info("metrics serving", "address", ml.Addr().String())
	}
	lis, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	serveCtx, superseded, err := watchSuperseded(ctx, &o, lis.Addr().String(), log.Named("supersede"))
	if err != nil {
		return err
	}
	if err := srv.Serve(serveCtx, lis, o.DrainTimeout); err != nil {
		return err
	}
	return superseded()
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
func vaultCertificate(ctx context.Context, o *runneropts.Options, log hclog.Logger) (*vaultpki.Issuer, error) {
	mount, role, ok := strings.Cut(strings.Trim(o.VaultSign, "/"), "/sign/")
	if !ok || mount == "" || role == "" || strings.Contains(role, "/") {
		return nil, fmt.Errorf("--tls-vault-sign %q: want MOUNT/sign/ROLE, e.g. pki_int/sign/runner", o.VaultSign)
	}
	ref, err := vaultkey.ParseRef(o.VaultKey)
	if err != nil {
		return nil, fmt.Errorf("--tls-vault-key: %w", err)
	}
	vcfg := vaultapi.DefaultConfig() // VAULT_ADDR, VAULT_CACERT, ...
	if vcfg.Error != nil {
		return nil, fmt.Errorf("vault: %w", vcfg.Error)
	}
	if o.VaultAddr != "" {
		vcfg.Address = o.VaultAddr
	}
	vc, err := vaultapi.NewClient(vcfg)
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	var login vaultpki.Login
	if o.VaultTokenFile != "" {
		login = vaultpki.TokenFile(o.VaultTokenFile)
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
		Client: vc, Login: login, Mount: mount, Role: role, CommonName: o.CommonName,
		TTL: o.CertTTL, Key: key, What: "runner", Logger: log,
	})
}

// maxModelError bounds what --model-error-file contributes to each answer:
// the last lines of a resolver's message, not its whole log.
const maxModelError = 8 << 10

// readModelError returns the text of --model-error-file ("" when unset),
// its tail when it is long: the resolver's conclusion comes last.
func readModelError(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--model-error-file: %w", err)
	}
	msg := strings.TrimSpace(strings.ToValidUTF8(string(b), "\uFFFD"))
	if len(msg) > maxModelError {
		msg = "…" + strings.ToValidUTF8(msg[len(msg)-maxModelError:], "")
	}
	if msg == "" {
		return "", fmt.Errorf("--model-error-file %s is empty", path)
	}
	return msg, nil
}

// workerCommand returns the worker's argv for the chosen runtime, with its
// paths as the worker sees them (--worker-paths), and what removes the files
// it wrote.
func workerCommand(o *runneropts.Options, modelDir string) ([]string, func(), error) {
	if o.Runtime == "executable" {
		prog := o.Entry
		if !filepath.IsAbs(prog) {
			prog = filepath.Join(modelDir, prog)
		}
		if fi, err := os.Stat(prog); !hiddenFromRunner(o, err) && (err != nil || fi.IsDir() || fi.Mode()&0o111 == 0) {
			return nil, nil, fmt.Errorf("--entry %s is not an executable file", prog)
		}
		return []string{o.WorkerPath(prog)}, func() {}, nil
	}
	dir, cleanup := o.HostDir, func() {}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "model-runner-host-")
		if err != nil {
			return nil, nil, err
		}
		dir, cleanup = tmp, func() { _ = os.RemoveAll(tmp) }
	}
	host, err := pyhost.Install(dir)
	if err == nil {
		// The worker starts elsewhere (the sandbox): it needs the host
		// script's whole path, also when --host-dir is relative.
		host, err = filepath.Abs(host)
	}
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	// -u: the model's prints reach the runner's log as they happen, and none
	// is left in a buffer when the worker is stopped (the driver's sandbox
	// sets PYTHONUNBUFFERED too; a laptop's environment may not).
	cmd := []string{o.WorkerPath(o.Python), "-B", "-u", o.WorkerPath(host), "--model-dir", o.WorkerPath(modelDir)}
	if o.Entry != "" {
		cmd = append(cmd, "--entry", o.Entry)
	}
	return cmd, cleanup, nil
}

// hiddenFromRunner reports whether err, from looking at the model, only
// says that a runner behind the launcher may not see it: the driver keeps
// the model where only root and the sandbox reach it (a compromised runner
// must not read model code), checks it before it starts the runner, and
// the worker reads it inside its sandbox.
func hiddenFromRunner(o *runneropts.Options, err error) bool {
	return o.WorkerLauncher && errors.Is(err, fs.ErrPermission)
}
