// Command scheduler keeps one Nomad job per authorized model: it reads the
// desired state from Solana, CrunchDAO's feed and/or a YAML file, and
// reconciles Nomad with it while it holds the Consul leader lock.
//
//	scheduler --solana-rpc http://127.0.0.1:8899 --solana-ws ws://127.0.0.1:8900 \
//	    --solana-program <PROGRAM> --lock-key modelnodes/scheduler/leader
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	solana "github.com/gagliardetto/solana-go"
	"github.com/gagliardetto/solana-go/rpc"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/internal/envflag"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/scheduler"
	"github.com/modelnodes/modelnodes/scheduler/inspect"
	"github.com/modelnodes/modelnodes/scheduler/leader"
	"github.com/modelnodes/modelnodes/scheduler/observer"
	"github.com/modelnodes/modelnodes/scheduler/quarantine"
	"github.com/modelnodes/modelnodes/scheduler/source/feed"
	solanasrc "github.com/modelnodes/modelnodes/scheduler/source/solana"
	"github.com/modelnodes/modelnodes/scheduler/source/yamlfile"
)

const envPrefix = "MODELNODES_SCHEDULER"

const synopsis = `scheduler: run exactly the authorized models on Nomad, one job per model.

Usage:
  scheduler [flags]
  scheduler confirm-stops [--status-addr URL] [--crunch ID|NAME]
      confirm held stops (see --max-stop-share); the token is --admin-token's
      (MODELNODES_SCHEDULER_ADMIN_TOKEN)
  scheduler quarantine list|lift [--status-addr URL] [MODEL]
      list the models quarantined after their coordinator's failure reports,
      or lift one (its job, short or model id) with the admin token

Sources of desired state (at least one; several are merged, the first named wins on a
duplicate model):
  --solana-rpc/--solana-ws/--solana-program   the program's Crunch and ModelAuthorization
                                              accounts (docs/onchain.md)
  --feed-url/--feed-crunch                    CrunchDAO's GET {url}/models/states feed
  --models-file                               a YAML file (development), re-read on change

A source that cannot be read keeps its last good state: models are never stopped because
a source is down, nor because it lists nothing; a model stops on positive evidence about
its own authorization, and a pass that would stop more than --max-stop-share of a crunch's
models is held (GET /v1/status) until it persists for --stop-hold or an operator confirms. Several instances may run; with --lock-key only the holder of that Consul
lock reconciles. Status: GET /v1/status, GET /v1/models, GET /v1/quarantines, GET /metrics
on --listen. With --orchestrator-listen, coordinators' failure reports act by
--failure-policy (restart, quarantine); quarantines live in Consul KV.
See docs/scheduler.md.
`

type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	*s = append(*s, envflag.SplitList(v)...)
	return nil
}

type config struct {
	nomad                                                nomad.Config
	consulAddr, consulToken, lockKey, instance           string
	solanaRPC, solanaWS, solanaProgram, solanaCommitment string
	solanaCrunches                                       stringList
	solanaResync                                         time.Duration
	feedURL, feedArtifact, feedResources                 string
	feedModelIDNames, modelIDNames                       bool
	feedCrunches                                         stringList
	feedInterval                                         time.Duration
	modelsFile, listen, logLevel                         string
	logJSON, plaintext                                   bool
	crlURL, runnerVaultAddr                              string
	runnerConsulAddr, runnerConsulCA                     string
	allowHTTPArtifacts, allowHostModelDirs               bool
	pythonConstraints                                    bool
	codeMaxBytes                                         int64
	codeTimeout                                          time.Duration
	codeCache                                            string
	artifactHosts                                        stringList
	datacenters                                          stringList
	gpuClass                                             string
	disconnectLostAfter                                  time.Duration
	disconnectReplace                                    bool
	disconnectCrunches                                   stringList
	crunchDisconnect                                     map[string]jobs.Disconnect
	resync, purgeAfter, sessionTTL, rolloutRetry         time.Duration
	backoff                                              observer.Backoff
	maxStopShare                                         float64
	stopHold                                             time.Duration
	stopHoldMin, maxRollouts                             int
	adminToken                                           string
	failurePolicy, quarantinePrefix                      string
	orch                                                 orchestratorFlags
}

func parse(args []string) (*config, error) {
	var c config
	fs := flag.NewFlagSet("scheduler", flag.ContinueOnError)
	fs.StringVar(&c.nomad.Address, "nomad-addr", "", "Nomad HTTP API (default $NOMAD_ADDR, else http://127.0.0.1:4646)")
	fs.StringVar(&c.nomad.Token, "nomad-token", "", "Nomad ACL token (default $NOMAD_TOKEN)")
	fs.StringVar(&c.nomad.Region, "nomad-region", "", "Nomad region of the jobs")
	fs.StringVar(&c.nomad.Namespace, "nomad-namespace", "", "Nomad namespace of the jobs (the Vault runner role is bound to one)")
	fs.StringVar(&c.nomad.CACert, "nomad-ca-cert", "", "CA of an HTTPS Nomad API")
	fs.StringVar(&c.nomad.ClientCert, "nomad-client-cert", "", "client certificate for the Nomad API")
	fs.StringVar(&c.nomad.ClientKey, "nomad-client-key", "", "client key for the Nomad API")
	fs.StringVar(&c.consulAddr, "consul-addr", "", "Consul HTTP API for the leader lock and the orchestrator WebSocket (default $CONSUL_HTTP_ADDR)")
	fs.StringVar(&c.consulToken, "consul-token", "", "Consul ACL token (default $CONSUL_HTTP_TOKEN); needs key and session write for the lock, service read of the crunches for the orchestrator WebSocket")
	fs.StringVar(&c.lockKey, "lock-key", "", "Consul KV key of the leader lock; empty: this is the only instance")
	fs.DurationVar(&c.sessionTTL, "lock-ttl", 15*time.Second, "TTL of the lock's Consul session (failover time after a crash is up to twice this)")
	host, _ := os.Hostname()
	fs.StringVar(&c.instance, "instance", host, "this instance's name (stored in the lock)")
	fs.StringVar(&c.solanaRPC, "solana-rpc", "", "Solana JSON-RPC URL")
	fs.StringVar(&c.solanaWS, "solana-ws", "", "Solana websocket URL (subscriptions; empty: resync only)")
	fs.StringVar(&c.solanaProgram, "solana-program", "", "program id (base58) owning the accounts")
	fs.StringVar(&c.solanaCommitment, "solana-commitment", "finalized", "commitment of what counts: confirmed or finalized")
	fs.Var(&c.solanaCrunches, "solana-crunch", "Crunch account(s) to serve, comma separated (default: every crunch of the program)")
	fs.DurationVar(&c.solanaResync, "solana-resync", time.Minute, "full re-listing interval")
	fs.StringVar(&c.feedURL, "feed-url", "", "CrunchDAO feed base URL (GET {url}/models/states)")
	fs.Var(&c.feedCrunches, "feed-crunch", "crunch name(s) to ask the feed for, comma separated")
	fs.StringVar(&c.feedArtifact, "feed-artifact-url", "", "artifact URL of a feed model; {submission_id}, {resource_id}, {model_id} are replaced")
	fs.StringVar(&c.feedResources, "feed-resources-url", "", "resources archive URL of a feed model that names a resource id (placeholders as --feed-artifact-url); its digest is the entry's model.resourcesSha256")
	fs.DurationVar(&c.feedInterval, "feed-interval", 10*time.Second, "feed polling interval")
	fs.BoolVar(&c.feedModelIDNames, "feed-model-id-names", false, "deprecated, no effect: every source's models are named by their model ids (--model-id-names)")
	fs.BoolVar(&c.modelIDNames, "model-id-names", true, "name a model's job and runner certificate model-node-<model id>(.crunchdao.internal, what CrunchDAO's secure client checks) when the id is a lowercase DNS label of at most 52 characters that no model of another crunch claims (docs/names.md); false: every job named by a hash of crunch and model id, as before (a deployment that wants to keep its jobs)")
	fs.StringVar(&c.modelsFile, "models-file", "", "YAML file of models (development)")
	fs.StringVar(&c.listen, "listen", "127.0.0.1:9464", "status API and /metrics address")
	fs.StringVar(&c.logLevel, "log-level", "info", "trace, debug, info, warn or error")
	fs.BoolVar(&c.logJSON, "log-json", false, "log JSON lines")
	fs.Var(&c.datacenters, "datacenters", "datacenters of the jobs, comma separated (default *)")
	fs.StringVar(&c.gpuClass, "gpu-node-class", "", "also constrain GPU models to this node class")
	fs.DurationVar(&c.disconnectLostAfter, "disconnect-lost-after", 0, "how long Nomad keeps the models of a node that stopped heartbeating (cut off, maybe alive) as unknown before it takes them for lost: the jobs' disconnect { lost_after }; a node back within it keeps its models, nothing restarts. 0: no disconnect block (lost at node down, replaced at once). Changing it rolls every model it applies to onto a new allocation, as a canary beside the running one (no gap, but room for both is needed): change it per crunch")
	fs.BoolVar(&c.disconnectReplace, "disconnect-replace", true, "with --disconnect-lost-after: place a replacement meanwhile, after the reschedule delay (30 s); the original stops when its node is back (reconcile keep_replacement). false: no replacement before lost_after has passed (a model whose machine is really gone is down that long)")
	fs.Var(&c.disconnectCrunches, "disconnect-crunch", "per-crunch disconnect settings, comma separated: CRUNCH=LOST_AFTER[:replace|:no-replace] (CRUNCH a name or on-chain id; LOST_AFTER 0 turns the block off for that crunch; without a suffix, --disconnect-replace), e.g. mid-one=10m:no-replace,big=0")
	fs.BoolVar(&c.plaintext, "plaintext-runners", false, "runners without TLS or Vault (tests only; CrunchDAO's secure client refuses them)")
	fs.StringVar(&c.runnerVaultAddr, "runner-vault-addr", "", "Vault address runners reach: each runner then keeps one key per model in Vault (runner-keys/<job>) and signs its own certificates, so crunchers' wallet delegations (the job variable's \"delegation\" item) hold across renewals; empty: a template issues a new key with each certificate")
	fs.StringVar(&c.runnerConsulAddr, "runner-consul-addr", "", "the node's Consul agent as runners reach it (e.g. https://127.0.0.1:8501): each runner then stops answering once Nomad has placed its model elsewhere (a newer passing instance in Consul), so a model never answers from an allocation Nomad replaced while its runner lived on; empty: runners do not watch")
	fs.StringVar(&c.runnerConsulCA, "runner-consul-ca-cert", "", "with --runner-consul-addr over https: the CA of the Consul agents' certificates, a path on the nodes")
	fs.StringVar(&c.crlURL, "crl-url", "", "runners fetch the model-call CA's revocation lists from this URL: Vault's issuer list, https://vault:8200/v1/pki_int/issuers, has them fetch every issuer's CRL, so certificates of an intermediate replaced by rotate-intermediate stay revocable (a single CRL URL such as .../pki_int/crl/pem covers the default issuer only); required for secure runners")
	fs.Var(&c.artifactHosts, "artifact-hosts", "hosts models' artifacts may be fetched from, comma separated: a name (any port), host:port, or *.domain; empty: every artifact URL is refused")
	fs.BoolVar(&c.allowHTTPArtifacts, "allow-http-artifacts", false, "DEVELOPMENT ONLY: accept plain http artifact URLs (still on --artifact-hosts, still checked against their sha256)")
	fs.BoolVar(&c.allowHostModelDirs, "allow-host-model-dirs", false, "DEVELOPMENT ONLY: accept models whose code is a directory on the node (model_dir in --models-file)")
	fs.BoolVar(&c.pythonConstraints, "python-constraints", true, "read each model's code archive (.python-version, requires-python in pyproject.toml) before its job is written, and constrain the job to nodes with a matching Python interpreter")
	fs.Int64Var(&c.codeMaxBytes, "code-max-bytes", inspect.DefaultMaxBytes, "largest code archive --python-constraints reads")
	fs.DurationVar(&c.codeTimeout, "code-fetch-timeout", inspect.DefaultTimeout, "time limit of fetching and reading one code archive")
	fs.StringVar(&c.codeCache, "code-cache-dir", defaultCodeCache(), "where --python-constraints keeps what each code archive's root held (by sha256), so a restart fetches nothing again; empty: in memory only")
	fs.DurationVar(&c.resync, "resync", 30*time.Second, "longest time between two reconcile passes")
	fs.DurationVar(&c.purgeAfter, "purge-after", 24*time.Hour, "how long a stopped job stays before it is purged")
	fs.IntVar(&c.maxRollouts, "max-rollouts", 50, "at most this many running models roll out a new version at once (each canary needs room for one more allocation until promoted); the other updates wait for later passes. 0: no bound")
	fs.DurationVar(&c.rolloutRetry, "rollout-retry", scheduler.DefaultRolloutRetry, "how long a new version whose rollout failed (its canary never turned healthy; Nomad reverted the job to the serving version) waits before it is written again; a newer version is written at once")
	fs.IntVar(&c.backoff.Failures, "crashloop-failures", 3, "failed allocations within --crashloop-window that hold a model stopped")
	fs.DurationVar(&c.backoff.Window, "crashloop-window", 10*time.Minute, "window counting failures")
	fs.DurationVar(&c.backoff.Initial, "crashloop-backoff", time.Minute, "first hold; doubles at each new hold")
	fs.DurationVar(&c.backoff.Max, "crashloop-backoff-max", time.Hour, "longest hold")
	fs.Float64Var(&c.maxStopShare, "max-stop-share", 0.5, "hold a pass that would stop more than this share of a crunch's running models (1: never hold)")
	fs.DurationVar(&c.stopHold, "stop-hold", 10*time.Minute, "make held stops once the passes have wanted them this long (0: only when an operator confirms)")
	fs.IntVar(&c.stopHoldMin, "stop-hold-min-models", 2, "hold only passes that stop at least this many of a crunch's models")
	fs.StringVar(&c.adminToken, "admin-token", "", "bearer token of the status API's write endpoint (POST /v1/stop-holds/confirm); empty: it is off. Prefer MODELNODES_SCHEDULER_ADMIN_TOKEN to the flag")
	fs.StringVar(&c.failurePolicy, "failure-policy", "", "HCL file of the crunches' failure-report policies: what a coordinator's report_failure of each code does (count, restart, quarantine), rate limits (docs/scheduler.md); empty: the defaults")
	fs.StringVar(&c.quarantinePrefix, "quarantine-kv-prefix", quarantine.DefaultPrefix, "Consul KV prefix of the quarantines (one key per job); every instance with --lock-key or --orchestrator-listen reads it, the token needs key write on it")
	c.orch.register(fs)
	fs.Usage = envflag.Usage(fs, envPrefix, synopsis)
	if err := envflag.Parse(fs, envPrefix, args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.solanaRPC == "" && c.feedURL == "" && c.modelsFile == "" {
		return nil, errors.New("no source of desired state: set --solana-rpc, --feed-url or --models-file (see --help)")
	}
	if c.solanaRPC != "" && c.solanaProgram == "" {
		return nil, errors.New("--solana-rpc needs --solana-program")
	}
	if c.feedURL != "" && len(c.feedCrunches) == 0 {
		return nil, errors.New("--feed-url needs --feed-crunch")
	}
	if c.plaintext && c.runnerVaultAddr != "" {
		return nil, errors.New("--plaintext-runners and --runner-vault-addr exclude each other")
	}
	if !c.plaintext && c.crlURL == "" {
		return nil, errors.New("secure runners need a revocation list: set --crl-url (e.g. Vault's issuer list, https://vault:8200/v1/pki_int/issuers); the modelbox driver refuses runners that check callers without one")
	}
	if c.maxStopShare < 0 || c.maxStopShare > 1 {
		return nil, fmt.Errorf("--max-stop-share %v: want a share between 0 and 1", c.maxStopShare)
	}
	if c.stopHold < 0 || c.stopHoldMin < 1 {
		return nil, errors.New("--stop-hold must not be negative and --stop-hold-min-models at least 1")
	}
	if c.maxRollouts < 0 {
		return nil, errors.New("--max-rollouts must not be negative")
	}
	if c.rolloutRetry <= 0 {
		return nil, errors.New("--rollout-retry must be positive")
	}
	if err := (jobs.Disconnect{LostAfter: c.disconnectLostAfter}).Check(); err != nil {
		return nil, fmt.Errorf("--disconnect-lost-after: %w", err)
	}
	var err error
	if c.crunchDisconnect, err = jobs.ParseCrunchDisconnect(c.disconnectCrunches, c.disconnectReplace); err != nil {
		return nil, fmt.Errorf("--disconnect-crunch %w", err)
	}
	if err := c.orch.check(); err != nil {
		return nil, err
	}
	if c.failurePolicy != "" {
		if _, err := quarantine.Load(c.failurePolicy); err != nil {
			return nil, err
		}
	}
	if c.quarantinePrefix == "" || !strings.HasSuffix(c.quarantinePrefix, "/") {
		return nil, fmt.Errorf("--quarantine-kv-prefix %q: want a prefix ending in /", c.quarantinePrefix)
	}
	switch c.solanaCommitment {
	case "confirmed", "finalized":
	default:
		return nil, fmt.Errorf("--solana-commitment %q: want confirmed or finalized", c.solanaCommitment)
	}
	return &c, nil
}

// subcommands talk to a running scheduler's status API.
var subcommands = map[string]func(ctx context.Context, args []string, out io.Writer) error{
	"confirm-stops": confirmStops,
	"quarantine":    quarantineCmd,
}

func main() {
	if len(os.Args) > 1 && subcommands[os.Args[1]] != nil {
		if err := subcommands[os.Args[1]](context.Background(), os.Args[2:], os.Stdout); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				os.Exit(0)
			}
			fmt.Fprintf(os.Stderr, "scheduler %s: %v\n", os.Args[1], err)
			os.Exit(1)
		}
		return
	}
	c, err := parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scheduler:", err)
		os.Exit(2)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "scheduler", Level: hclog.LevelFromString(c.logLevel), JSONFormat: c.logJSON})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c, log); err != nil {
		log.Error("exiting", "error", err)
		os.Exit(1)
	}
}

// defaultCodeCache is the user's cache dir's modelnodes/scheduler-code, ""
// where there is none (a service without HOME).
func defaultCodeCache() string {
	d, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "modelnodes", "scheduler-code")
}

// warnPolicy says loudly, at every start, which development allowances
// weaken this deployment.
func warnPolicy(c *config, log hclog.Logger) {
	if c.allowHTTPArtifacts {
		log.Warn("DEVELOPMENT: --allow-http-artifacts: models may be fetched over plain http (only their sha256 protects them)")
	}
	if c.allowHostModelDirs {
		log.Warn("DEVELOPMENT: --allow-host-model-dirs: models may run code from directories on the nodes")
	}
	if c.feedModelIDNames {
		log.Warn("--feed-model-id-names is deprecated and has no effect: every source's models are named by their model ids (--model-id-names, on by default)")
	}
	if len(c.artifactHosts) == 0 {
		log.Warn("no --artifact-hosts: every model with an artifact URL is refused; list the hosts submissions are fetched from")
	} else {
		log.Info("artifact hosts", "hosts", strings.Join(c.artifactHosts, ","))
	}
}

func run(ctx context.Context, c *config, log hclog.Logger) error {
	nc, err := nomad.New(c.nomad)
	if err != nil {
		return err
	}
	opts := &jobs.Options{
		Region: c.nomad.Region, Namespace: c.nomad.Namespace, Datacenters: c.datacenters,
		Plaintext: c.plaintext, CRLURL: c.crlURL, RunnerVaultAddr: c.runnerVaultAddr, GPUNodeClass: c.gpuClass,
		RunnerConsulAddr: c.runnerConsulAddr, RunnerConsulCACert: c.runnerConsulCA,
		ArtifactHosts: c.artifactHosts, AllowHTTPArtifacts: c.allowHTTPArtifacts,
		AllowHostModelDirs: c.allowHostModelDirs,
		Disconnect:         c.disconnect(), CrunchDisconnect: c.crunchDisconnect,
	}
	warnPolicy(c, log)
	if d := c.disconnect(); d.LostAfter > 0 || len(c.crunchDisconnect) > 0 {
		var per []string
		for crunch, d := range c.crunchDisconnect {
			per = append(per, crunch+"="+d.String())
		}
		slices.Sort(per)
		log.Info("disconnect blocks", "default", d.String(), "crunches", strings.Join(per, ","))
	}
	metrics := scheduler.NewMetrics()
	s := &scheduler.Scheduler{
		Reconciler: &scheduler.Reconciler{Nomad: nc, Options: opts, PurgeAfter: c.purgeAfter, RolloutRetry: c.rolloutRetry, MaxRollouts: c.maxRollouts,
			Logger: log.Named("reconcile"), Metrics: metrics},
		Observer: &observer.Observer{Nomad: nc, Backoff: c.backoff, Logger: log.Named("observer"), Metrics: metrics},
		Resync:   c.resync, Logger: log, Metrics: metrics, Placements: nc, AdminToken: c.adminToken, HashedNames: !c.modelIDNames,
	}
	if c.maxStopShare < 1 {
		s.Reconciler.Guard = &scheduler.StopGuard{MaxShare: c.maxStopShare, Hold: c.stopHold, MinModels: c.stopHoldMin,
			Logger: log.Named("reconcile"), Metrics: metrics}
	}
	if c.pythonConstraints {
		s.Inspector = &inspect.Inspector{Options: opts, MaxBytes: c.codeMaxBytes, Timeout: c.codeTimeout,
			CacheDir: c.codeCache, Logger: log.Named("inspect")}
	}
	if c.solanaRPC != "" {
		prog, err := solana.PublicKeyFromBase58(c.solanaProgram)
		if err != nil {
			return fmt.Errorf("--solana-program: %w", err)
		}
		src := &solanasrc.Source{RPCURL: c.solanaRPC, WSURL: c.solanaWS, Program: prog,
			Commitment: rpc.CommitmentType(c.solanaCommitment), Resync: c.solanaResync, Logger: log.Named("solana")}
		for _, k := range c.solanaCrunches {
			pk, err := solana.PublicKeyFromBase58(k)
			if err != nil {
				return fmt.Errorf("--solana-crunch %s: %w", k, err)
			}
			src.Crunches = append(src.Crunches, pk)
		}
		s.Sources = append(s.Sources, src)
	}
	if c.feedURL != "" {
		s.Sources = append(s.Sources, &feed.Source{URL: c.feedURL, Crunches: c.feedCrunches,
			ArtifactURL: c.feedArtifact, ResourcesURL: c.feedResources, Interval: c.feedInterval})
	}
	if c.modelsFile != "" {
		s.Sources = append(s.Sources, &yamlfile.Source{Path: c.modelsFile})
	}
	if c.lockKey != "" || c.orch.listen != "" {
		// Quarantines live in Consul KV, where every instance reads them.
		client, err := c.consulClient()
		if err != nil {
			return err
		}
		s.Quarantine = &quarantine.Store{KV: client.KV(), Prefix: c.quarantinePrefix, Logger: log.Named("quarantine")}
	}
	if c.lockKey != "" {
		client, err := c.consulClient()
		if err != nil {
			return err
		}
		s.Elector = &leader.ConsulLock{Client: client, Key: c.lockKey, Instance: c.instance,
			SessionTTL: c.sessionTTL, Logger: log.Named("leader")}
	}
	if c.orch.listen != "" {
		stopOrch, err := serveOrchestrator(ctx, c, log.Named("orchestrator"), metrics, s, nc)
		if err != nil {
			return err
		}
		defer stopOrch()
	}
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("status API: %w", err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Info("started", "status_api", "http://"+ln.Addr().String(), "sources", len(s.Sources), "lock_key", c.lockKey)
	err = s.Run(ctx)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return err
}

// disconnect is the disconnect setting of crunches without their own.
func (c *config) disconnect() jobs.Disconnect {
	if c.disconnectLostAfter <= 0 {
		return jobs.Disconnect{}
	}
	return jobs.Disconnect{LostAfter: c.disconnectLostAfter, Replace: c.disconnectReplace}
}

// consulClient is the Consul API client of --consul-addr and --consul-token.
func (c *config) consulClient() (*consulapi.Client, error) {
	cc := consulapi.DefaultConfig()
	if c.consulAddr != "" {
		cc.Address = c.consulAddr
	}
	if c.consulToken != "" {
		cc.Token = c.consulToken
	}
	client, err := consulapi.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	return client, nil
}
