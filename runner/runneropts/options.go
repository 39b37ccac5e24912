// Package runneropts holds the model runner's options: the one Options type
// that runner.Run takes, the command's flags (Flags) and the arguments that
// reproduce a value (Args). One table drives both, so a flag cannot exist
// on one side only: cmd/model-runner parses the flags, the modelbox driver
// builds a typed Options and passes its Args.
//
// The package imports nothing of the runner, so the Nomad plugin can use it
// without linking the runner's gRPC services, metrics and Vault client.
package runneropts

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// Defaults the runner shares with the libraries it configures: runner's
// DefaultMaxRecvBytes and DefaultMaxStreamsPerConn and authz's
// DefaultCRLGrace are these.
const (
	// DefaultMaxRecvBytes is the largest request accepted: CrunchDAO's
	// runner takes 64 MiB (grpc-go's own default is 4 MiB).
	DefaultMaxRecvBytes = 64 << 20
	// DefaultMaxStreamsPerConn is a connection's concurrent calls: with the
	// 4 MiB stream window, a connection can make the runner buffer at most
	// 32 × 4 MiB of requests that wait for admission.
	DefaultMaxStreamsPerConn = 32
	// DefaultCRLGrace is how long past its nextUpdate a revocation list is
	// still used.
	DefaultCRLGrace = time.Hour
)

// Options configure one model runner: what it serves, how it proves who it
// is, whom it admits and its limits. Start from Defaults: a zero field means
// zero, not the default. Each field is one flag of `model-runner serve`,
// named in its comment.
type Options struct {
	// Listen is the address to serve gRPC on (--listen).
	Listen string
	// MetricsListen is the address to serve Prometheus /metrics on; empty:
	// none (--metrics-listen).
	MetricsListen string
	// HealthListen, when set, also serves only the gRPC health service,
	// without TLS, on this address, for Consul checks (--health-listen).
	HealthListen string

	// ModelDir is the submission's directory; required (--model-dir).
	ModelDir string
	// Runtime is how the model runs: "python" (the embedded host loads
	// ModelDir) or "executable" (Entry speaks the worker protocol on fd 3)
	// (--runtime).
	Runtime string
	// Entry is, for python, the module to import first (default main, else
	// every module); for executable, the program, relative to ModelDir
	// (--entry).
	Entry string
	// Python is the interpreter of the python runtime (--python).
	Python string
	// ModelErrorFile, when set, holds why the model cannot run (the driver
	// writes its environment's build error there): the runner starts no
	// worker and answers every model call BAD_IMPLEMENTATION with the
	// file's text (--model-error-file).
	ModelErrorFile string
	// HostDir is where the Python host script is written; empty: a private
	// temporary directory. A sandboxing wrapper must show it to the worker
	// (--host-dir).
	HostDir string
	// WorkerWrapper is the command put in front of the worker's argv, e.g.
	// a sandbox; the Nomad driver sets it. On the command line a JSON array
	// of strings, or words separated by spaces (--worker-wrapper).
	WorkerWrapper []string
	// WorkerPaths maps directories as the runner sees them to where the
	// worker, behind WorkerWrapper, sees them (the driver's sandbox shows
	// the model at /model): the worker's argv is written with the latter.
	// Both sides absolute (--worker-paths).
	WorkerPaths map[string]string
	// WorkerLauncher has the privileged launcher that started the runner
	// start each worker (package runner/launch; its socket is named in
	// $MODELNODES_LAUNCHER_FD): the runner is not root and cannot build
	// the sandbox itself. Without that socket the runner refuses to start,
	// rather than run the worker unsandboxed. The Nomad driver sets it
	// (--worker-launcher).
	WorkerLauncher bool

	// Plaintext serves without TLS, for development only (--plaintext).
	Plaintext bool
	// TLSCert and TLSKey are the server's certificate and key (PEM),
	// reloaded when they change on disk (--tls-cert, --tls-key).
	TLSCert, TLSKey string
	// TLSClientCA is the CA bundle (PEM) client certificates must chain
	// to: it enables mTLS (--tls-client-ca).
	TLSClientCA string
	// TLSReloadInterval is how often the TLS, policy and delegation files
	// are checked for changes; SIGHUP checks at once
	// (--tls-reload-interval).
	TLSReloadInterval time.Duration

	// VaultSign, when set, is the Vault PKI sign endpoint (MOUNT/sign/ROLE)
	// the server certificate comes from instead of TLSCert and TLSKey; it
	// is renewed before it expires (--tls-vault-sign).
	VaultSign string
	// VaultKey is the KV v2 entry MOUNT/NAME keeping the model's private
	// key across renewals and restarts, created when missing
	// (--tls-vault-key).
	VaultKey string
	// CommonName is the Vault-signed certificate's name (--tls-common-name).
	CommonName string
	// CertTTL is the lifetime to ask Vault for; 0: the role's (--tls-ttl).
	CertTTL time.Duration
	// VaultAddr is Vault's address; empty: $VAULT_ADDR (--vault-addr).
	VaultAddr string
	// VaultTokenFile holds the Vault token, re-read at each renewal (a
	// Nomad task's secrets/vault_token); empty: $VAULT_TOKEN
	// (--vault-token-file).
	VaultTokenFile string

	// Crunch admits only coordinators whose certificate names this crunch
	// (URI SAN names.CoordinatorURI(NAME)); needs TLSClientCA
	// (--crunch).
	Crunch string
	// CoordinatorCertHashes are the on-chain hashes (primary, secondary)
	// of the coordinator's public key: SHA-256 of its SubjectPublicKeyInfo
	// DER, hex. On the command line, comma-separated
	// (--coordinator-cert-hash).
	CoordinatorCertHashes []string
	// AuthzFile is a JSON policy {"crunch": ..., "coordinator_cert_hashes":
	// [...]}, re-read when it changes, instead of Crunch and
	// CoordinatorCertHashes (--authz-file).
	AuthzFile string
	// CRLFile is the CA's revocation list (PEM or DER), re-read when it
	// changes; revoked coordinators are refused (--tls-crl).
	CRLFile string
	// CRLURLs are fetched every CRLRefresh instead of CRLFile: a CRL, or a
	// Vault PKI mount's issuer list (.../v1/pki_int/issuers) for every
	// issuer's CRL. On the command line, comma-separated (--tls-crl-url).
	CRLURLs []string
	// CRLRefresh is how often CRLURLs are fetched: a revoked coordinator is
	// refused within this long (--crl-refresh).
	CRLRefresh time.Duration
	// CRLGrace is how long past its nextUpdate a revocation list is still
	// used; after that its issuer's certificates are refused until a fresh
	// list is loaded (--crl-grace).
	CRLGrace time.Duration
	// AnyCoordinatorKey admits, with no on-chain key hash, any key instead
	// of nobody. DEVELOPMENT ONLY; the command reads it only from its
	// command line (--authz-any-coordinator-key).
	AnyCoordinatorKey bool
	// WithoutCRL checks callers without a revocation list, so a revoked
	// coordinator stays admitted. DEVELOPMENT ONLY; command line only
	// (--authz-without-crl).
	WithoutCRL bool

	// DelegationFile is the cruncher's wallet delegation (from
	// `model-runner delegation sign`), sent with every model call and
	// re-read when it changes (--delegation).
	DelegationFile string

	// ConsulService and ConsulModelID name the runner's instance in
	// Consul: the runner stops answering once another passing instance of
	// the model is registered after its own (runner/supersede). Consul's
	// address, token and CA come from CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN
	// (a Nomad task's Consul token) and CONSUL_CACERT (--consul-service,
	// --consul-model-id).
	ConsulService, ConsulModelID string

	// CallTimeout is the longest a call may run, whatever the caller's
	// deadline (--call-timeout).
	CallTimeout time.Duration
	// StartTimeout is the longest the model may take to load
	// (--start-timeout).
	StartTimeout time.Duration
	// DrainTimeout is how long in-flight calls may take to finish on
	// shutdown (--drain-timeout).
	DrainTimeout time.Duration
	// MaxRecvBytes is the largest request accepted (--max-recv-bytes).
	MaxRecvBytes int
	// MaxQueue is how many calls may wait for a busy model; more are
	// refused with RESOURCE_EXHAUSTED (--max-queue).
	MaxQueue int
	// MaxInflightBytes is the request bytes the runner receives or holds at
	// once for queued and running calls; more calls wait. 0: twice
	// MaxRecvBytes (--max-inflight-bytes).
	MaxInflightBytes int64
	// MaxStreamsPerConn is a connection's concurrent calls; clients queue
	// the rest (--max-streams-per-conn).
	MaxStreamsPerConn uint

	// LogLevel is trace, debug, info, warn or error (--log-level).
	LogLevel string
	// LogJSON writes logs as JSON (--log-json).
	LogJSON bool
}

// Defaults returns the options `model-runner serve` starts from.
func Defaults() Options {
	return Options{
		Listen:            "127.0.0.1:50051",
		Runtime:           "python",
		Python:            "python3",
		TLSReloadInterval: 5 * time.Second,
		CRLRefresh:        time.Minute,
		CRLGrace:          DefaultCRLGrace,
		CallTimeout:       5 * time.Minute,
		StartTimeout:      2 * time.Minute,
		DrainTimeout:      10 * time.Second,
		MaxRecvBytes:      DefaultMaxRecvBytes,
		MaxQueue:          128,
		MaxStreamsPerConn: DefaultMaxStreamsPerConn,
		LogLevel:          "info",
	}
}

// ChecksCallers reports whether o has the runner check callers beyond the
// TLS handshake (runner/authz).
func (o *Options) ChecksCallers() bool {
	return o.Crunch != "" || len(o.CoordinatorCertHashes) > 0 || o.AuthzFile != "" || o.CRLFile != "" || len(o.CRLURLs) > 0
}

// Validate checks the rules that tie fields together; the errors name the
// flags. It reads no file: runner.Run checks those.
func (o *Options) Validate() error {
	authorizer := o.ChecksCallers()
	switch {
	case o.ModelDir == "":
		return errors.New("--model-dir is required")
	case o.Runtime != "python" && o.Runtime != "executable":
		return fmt.Errorf("--runtime %q: want python or executable", o.Runtime)
	case o.Runtime == "executable" && o.Entry == "":
		return errors.New("--runtime executable needs --entry, the program to run")
	case o.Plaintext && (o.TLSCert != "" || o.TLSKey != "" || o.TLSClientCA != ""):
		return errors.New("--plaintext conflicts with the --tls-* flags")
	case o.VaultSign != "" && (o.TLSCert != "" || o.TLSKey != "" || o.Plaintext):
		return errors.New("--tls-vault-sign replaces --tls-cert, --tls-key and --plaintext")
	case o.VaultSign != "" && (o.VaultKey == "" || o.CommonName == ""):
		return errors.New("--tls-vault-sign needs --tls-vault-key (where the key lives) and --tls-common-name")
	case o.VaultSign == "" && (o.VaultKey != "" || o.CommonName != "" || o.CertTTL != 0):
		return errors.New("--tls-vault-key, --tls-common-name and --tls-ttl only work with --tls-vault-sign")
	case !o.Plaintext && o.VaultSign == "" && (o.TLSCert == "" || o.TLSKey == ""):
		return errors.New("refusing to serve without TLS: pass --tls-cert and --tls-key (or --tls-vault-sign), and --tls-client-ca for mTLS, or --plaintext")
	case o.CRLFile != "" && len(o.CRLURLs) > 0:
		return errors.New("--tls-crl and --tls-crl-url exclude each other")
	case authorizer && o.TLSClientCA == "":
		return errors.New("--crunch, --coordinator-cert-hash, --authz-file and --tls-crl check client certificates: they need --tls-client-ca")
	case o.AuthzFile != "" && (o.Crunch != "" || len(o.CoordinatorCertHashes) > 0):
		return errors.New("--authz-file replaces --crunch and --coordinator-cert-hash: use one or the other")
	case authorizer && o.CRLFile == "" && len(o.CRLURLs) == 0 && !o.WithoutCRL:
		return errors.New("refusing to check callers without a revocation list (a revoked coordinator would stay admitted): pass --tls-crl or --tls-crl-url (--authz-without-crl for development only)")
	case (o.AnyCoordinatorKey || o.WithoutCRL) && !authorizer:
		return errors.New("--authz-any-coordinator-key and --authz-without-crl only change the caller checks (--crunch, --coordinator-cert-hash, --authz-file)")
	case o.WorkerLauncher && len(o.WorkerWrapper) > 0:
		return errors.New("--worker-launcher and --worker-wrapper exclude each other: the launcher puts the sandbox in front of the worker itself")
	case o.MaxStreamsPerConn == 0 || o.MaxStreamsPerConn > 1<<16:
		return errors.New("--max-streams-per-conn: want 1 to 65536")
	case o.MaxInflightBytes != 0 && o.MaxInflightBytes < int64(o.MaxRecvBytes):
		return errors.New("--max-inflight-bytes must be at least --max-recv-bytes")
	case (o.ConsulService == "") != (o.ConsulModelID == ""):
		return errors.New("--consul-service and --consul-model-id go together")
	}
	for host, inside := range o.WorkerPaths {
		if !filepath.IsAbs(host) || !filepath.IsAbs(inside) {
			return fmt.Errorf("--worker-paths: %q → %q: want absolute paths on both sides", host, inside)
		}
	}
	return nil
}

// WorkerPath is p as the worker sees it: the longest --worker-paths entry
// that holds p replaced by its inside path; p itself when none holds it.
func (o *Options) WorkerPath(p string) string {
	best, to := "", ""
	for host, inside := range o.WorkerPaths {
		h := filepath.Clean(host)
		if (p == h || strings.HasPrefix(p, h+"/") || h == "/") && len(h) > len(best) {
			best, to = h, inside
		}
	}
	if best == "" {
		return p
	}
	return filepath.Join(to, strings.TrimPrefix(p, best))
}
