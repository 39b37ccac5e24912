package runneropts

import (
	"encoding/json"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/modelnodes/modelnodes/internal/envflag"
	"github.com/modelnodes/modelnodes/names"
)

// option ties one flag to the field it sets. The table below is the only
// place a flag is named: Flags defines it and Args writes it from it.
type option struct {
	name, usage string
	// commandLineOnly flags open the door to callers: the command must
	// not take them from the environment a job (or its template) can set.
	commandLineOnly bool
	// field returns the flag's field of o, as a flag.Value.
	field func(o *Options) flag.Value
}

var options = []option{
	{name: "listen", usage: "address to serve gRPC on", field: func(o *Options) flag.Value { return str(&o.Listen) }},
	{name: "metrics-listen", usage: "address to serve Prometheus /metrics on (off when empty)", field: func(o *Options) flag.Value { return str(&o.MetricsListen) }},
	{name: "model-dir", usage: "the submission's directory (required)", field: func(o *Options) flag.Value { return str(&o.ModelDir) }},
	{name: "runtime", usage: "how to run the model: python or executable", field: func(o *Options) flag.Value { return str(&o.Runtime) }},
	{name: "entry", usage: "python: module to import first (default main, else every module); executable: the program, relative to --model-dir", field: func(o *Options) flag.Value { return str(&o.Entry) }},
	{name: "python", usage: "python interpreter for --runtime python", field: func(o *Options) flag.Value { return str(&o.Python) }},
	{name: "model-error-file", usage: "a file saying why the model cannot run (its environment failed to build): no worker starts and every model call answers BAD_IMPLEMENTATION with its text", field: func(o *Options) flag.Value { return str(&o.ModelErrorFile) }},
	{name: "tls-cert", usage: "server certificate (PEM); reloaded when it changes on disk", field: func(o *Options) flag.Value { return str(&o.TLSCert) }},
	{name: "tls-key", usage: "server private key (PEM)", field: func(o *Options) flag.Value { return str(&o.TLSKey) }},
	{name: "tls-client-ca", usage: "CA bundle (PEM) that client certificates must chain to: enables mTLS", field: func(o *Options) flag.Value { return str(&o.TLSClientCA) }},
	{name: "tls-vault-sign", usage: "get the server certificate from this Vault PKI sign endpoint (e.g. pki_int/sign/runner) instead of --tls-cert/--tls-key, and renew it before it expires; needs --tls-vault-key", field: func(o *Options) flag.Value { return str(&o.VaultSign) }},
	{name: "tls-vault-key", usage: "with --tls-vault-sign: the KV v2 entry MOUNT/NAME keeping this model's private key across renewals and restarts (created when missing)", field: func(o *Options) flag.Value { return str(&o.VaultKey) }},
	{name: "tls-common-name", usage: "with --tls-vault-sign: the certificate's name, model-node-<id>.crunchdao.internal", field: func(o *Options) flag.Value { return str(&o.CommonName) }},
	{name: "tls-ttl", usage: "with --tls-vault-sign: the certificate lifetime to ask for (0: the role's)", field: func(o *Options) flag.Value { return duration(&o.CertTTL) }},
	{name: "vault-addr", usage: "Vault address for --tls-vault-sign (default $VAULT_ADDR)", field: func(o *Options) flag.Value { return str(&o.VaultAddr) }},
	{name: "vault-token-file", usage: "file holding the Vault token, re-read at each renewal (a Nomad task's secrets/vault_token; default $VAULT_TOKEN)", field: func(o *Options) flag.Value { return str(&o.VaultTokenFile) }},
	{name: "plaintext", usage: "serve without TLS (development only)", field: func(o *Options) flag.Value { return boolean(&o.Plaintext) }},
	{name: "tls-reload-interval", usage: "how often to check the TLS files for changes (SIGHUP checks at once)", field: func(o *Options) flag.Value { return duration(&o.TLSReloadInterval) }},
	{name: "call-timeout", usage: "longest a call may run, whatever the caller's deadline", field: func(o *Options) flag.Value { return duration(&o.CallTimeout) }},
	{name: "start-timeout", usage: "longest the model may take to load", field: func(o *Options) flag.Value { return duration(&o.StartTimeout) }},
	{name: "drain-timeout", usage: "on shutdown, how long in-flight calls may take to finish", field: func(o *Options) flag.Value { return duration(&o.DrainTimeout) }},
	{name: "max-recv-bytes", usage: "largest request accepted", field: func(o *Options) flag.Value { return integer(&o.MaxRecvBytes) }},
	{name: "max-queue", usage: "calls that may wait for a busy model; more are refused with RESOURCE_EXHAUSTED", field: func(o *Options) flag.Value { return integer(&o.MaxQueue) }},
	{name: "crunch", usage: "admit only coordinators whose certificate names this crunch (its name as on chain; the URI SAN " + names.CoordinatorURIPrefix + "<label>, see modelnodes-names crunch NAME); needs --tls-client-ca", field: func(o *Options) flag.Value { return str(&o.Crunch) }},
	{name: "coordinator-cert-hash", usage: "on-chain hashes (primary,secondary) of the coordinator's public key: SHA-256 of its SubjectPublicKeyInfo DER, hex", field: func(o *Options) flag.Value { return list(&o.CoordinatorCertHashes) }},
	{name: "authz-file", usage: `JSON {"crunch": ..., "coordinator_cert_hashes": [...]}, re-read when it changes (instead of --crunch and --coordinator-cert-hash)`, field: func(o *Options) flag.Value { return str(&o.AuthzFile) }},
	{name: "tls-crl", usage: "the CA's revocation list (PEM or DER); revoked coordinators are refused; re-read when it changes", field: func(o *Options) flag.Value { return str(&o.CRLFile) }},
	{name: "tls-crl-url", usage: "fetch revocation lists from these URLs instead, every --crl-refresh (comma-separated): a CRL (e.g. Vault's .../v1/pki_int/crl/pem), or a Vault PKI mount's issuer list, .../v1/pki_int/issuers, to fetch every issuer's CRL (what a rotated intermediate still revokes)", field: func(o *Options) flag.Value { return list(&o.CRLURLs) }},
	{name: "crl-refresh", usage: "how often to fetch --tls-crl-url: a revoked coordinator is refused within this long", field: func(o *Options) flag.Value { return duration(&o.CRLRefresh) }},
	{name: "crl-grace", usage: "how long past its nextUpdate a revocation list is still used; after that, certificates of its issuer are refused until a fresh list is loaded", field: func(o *Options) flag.Value { return duration(&o.CRLGrace) }},
	{name: "authz-any-coordinator-key", commandLineOnly: true, usage: "DEVELOPMENT ONLY, command line only: with no on-chain key hash, admit any key instead of nobody", field: func(o *Options) flag.Value { return boolean(&o.AnyCoordinatorKey) }},
	{name: "authz-without-crl", commandLineOnly: true, usage: "DEVELOPMENT ONLY, command line only: check callers without a revocation list (a revoked coordinator stays admitted)", field: func(o *Options) flag.Value { return boolean(&o.WithoutCRL) }},
	{name: "max-inflight-bytes", usage: "request bytes the runner receives or holds at once for queued and running calls; more calls wait (default 2 × --max-recv-bytes)", field: func(o *Options) flag.Value { return integer(&o.MaxInflightBytes) }},
	{name: "max-streams-per-conn", usage: "concurrent calls per connection (clients queue the rest)", field: func(o *Options) flag.Value { return integer(&o.MaxStreamsPerConn) }},
	{name: "health-listen", usage: "also serve only the gRPC health service, without TLS, on this address (for Consul checks)", field: func(o *Options) flag.Value { return str(&o.HealthListen) }},
	{name: "delegation", usage: "the cruncher's wallet delegation (from `model-runner delegation sign`), sent with every model call; re-read when it changes", field: func(o *Options) flag.Value { return str(&o.DelegationFile) }},
	{name: "consul-service", usage: "the crunch's Consul service: stop answering once another passing instance of this model (--consul-model-id) is registered after this runner's own (Nomad replaced it); Consul from $CONSUL_HTTP_ADDR, $CONSUL_HTTP_TOKEN, $CONSUL_CACERT", field: func(o *Options) flag.Value { return str(&o.ConsulService) }},
	{name: "consul-model-id", usage: "with --consul-service: the model's id in its instances' meta (" + names.MetaModelID + ")", field: func(o *Options) flag.Value { return str(&o.ConsulModelID) }},
	{name: "host-dir", usage: "where to write the Python host script (default: a private temp dir); a sandboxing wrapper must show it to the worker", field: func(o *Options) flag.Value { return str(&o.HostDir) }},
	{name: "worker-wrapper", usage: "command prefixed to the worker's argv, e.g. a sandbox (a JSON array, or words split on spaces); the Nomad driver sets it", field: func(o *Options) flag.Value { return command(&o.WorkerWrapper) }},
	{name: "worker-paths", usage: `where the worker sees the runner's directories, as a JSON object {"/host/dir": "/inside"}: the worker's argv is written with the inside paths (a sandbox that shows the model at /model); the Nomad driver sets it`, field: func(o *Options) flag.Value { return pathMap(&o.WorkerPaths) }},
	{name: "worker-launcher", usage: "start each worker through the privileged launcher that started this runner (its socket in $MODELNODES_LAUNCHER_FD); the Nomad driver sets it", field: func(o *Options) flag.Value { return boolean(&o.WorkerLauncher) }},
	{name: "log-level", usage: "trace, debug, info, warn or error", field: func(o *Options) flag.Value { return str(&o.LogLevel) }},
	{name: "log-json", usage: "write logs as JSON", field: func(o *Options) flag.Value { return boolean(&o.LogJSON) }},
}

// Flags defines every flag on fs, bound to o's fields; o's current values
// are the defaults shown, so call it on Defaults().
func (o *Options) Flags(fs *flag.FlagSet) {
	for _, opt := range options {
		fs.Var(opt.field(o), opt.name, opt.usage)
	}
}

// Args returns the flags that make `model-runner serve` parse into o: one
// --name=value for each field that differs from Defaults (a true boolean is
// a bare --name). Lists are written comma-separated, so their items must
// not contain commas; the driver's and the command's never do.
func (o Options) Args() []string {
	def := Defaults()
	var args []string
	for _, opt := range options {
		v := opt.field(&o).String()
		if v == opt.field(&def).String() {
			continue
		}
		if b, ok := opt.field(&o).(boolFlag); ok && b.IsBoolFlag() && v == "true" {
			args = append(args, "--"+opt.name)
			continue
		}
		args = append(args, "--"+opt.name+"="+v)
	}
	return args
}

// CommandLineOnly names the flags that open the door to callers
// (development switches): a command must read them from its own command
// line only, never from the environment a job can set.
func CommandLineOnly() []string {
	var names []string
	for _, opt := range options {
		if opt.commandLineOnly {
			names = append(names, opt.name)
		}
	}
	return names
}

// value is a flag.Value over a field of type T.
type value[T any] struct {
	p      *T
	parse  func(string) (T, error)
	format func(T) string
}

func (v value[T]) String() string {
	if v.p == nil || v.format == nil { // flag.isZeroValue calls String on a zero Value
		return ""
	}
	return v.format(*v.p)
}

func (v value[T]) Set(s string) error {
	x, err := v.parse(s)
	if err != nil {
		return err
	}
	*v.p = x
	return nil
}

// boolFlag is how the flag package knows a flag needs no value.
type boolFlag interface{ IsBoolFlag() bool }

type boolValue struct{ value[bool] }

func (boolValue) IsBoolFlag() bool { return true }

func str(p *string) flag.Value {
	return value[string]{p, func(s string) (string, error) { return s, nil }, func(s string) string { return s }}
}

func boolean(p *bool) flag.Value {
	return boolValue{value[bool]{p, strconv.ParseBool, strconv.FormatBool}}
}

func duration(p *time.Duration) flag.Value {
	return value[time.Duration]{p, time.ParseDuration, time.Duration.String}
}

func integer[T int | int64 | uint](p *T) flag.Value {
	return value[T]{p, func(s string) (T, error) {
		var zero T
		bits := strconv.IntSize
		if _, ok := any(zero).(int64); ok {
			bits = 64
		}
		if _, ok := any(zero).(uint); ok {
			n, err := strconv.ParseUint(s, 0, bits)
			return T(n), numErr(err)
		}
		n, err := strconv.ParseInt(s, 0, bits)
		return T(n), numErr(err)
	}, func(n T) string { return fmt.Sprint(n) }}
}

// numErr drops strconv's repetition of the input, as the flag package does.
func numErr(err error) error {
	if ne, ok := err.(*strconv.NumError); ok {
		return ne.Err
	}
	return err
}

// list is a comma-separated list; blanks around items and empty items are
// dropped.
func list(p *[]string) flag.Value {
	return value[[]string]{p, func(s string) ([]string, error) { return envflag.SplitList(s), nil },
		func(l []string) string { return strings.Join(l, ",") }}
}

// pathMap is a JSON object of strings; written as one, with sorted keys.
func pathMap(p *map[string]string) flag.Value {
	return value[map[string]string]{p, func(s string) (map[string]string, error) {
		m := map[string]string{}
		if strings.TrimSpace(s) == "" {
			return m, nil
		}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			return nil, fmt.Errorf(`want a JSON object {"/host/dir": "/inside"}: %w`, err)
		}
		return m, nil
	}, func(m map[string]string) string {
		if len(m) == 0 {
			return ""
		}
		b, _ := json.Marshal(m) // sorts the keys
		return string(b)
	}}
}

// command is an argv: a JSON array of strings, or words separated by
// spaces; written as a JSON array.
func command(p *[]string) flag.Value {
	return value[[]string]{p, splitCommand, func(argv []string) string {
		if len(argv) == 0 {
			return ""
		}
		b, _ := json.Marshal(argv)
		return string(b)
	}}
}

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
