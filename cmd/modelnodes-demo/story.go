package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	solana "github.com/gagliardetto/solana-go"

	"github.com/modelnodes/modelnodes/internal/testing/devchain"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/scheduler"
	"github.com/modelnodes/modelnodes/scheduler/observer"
	"github.com/modelnodes/modelnodes/scheduler/source/solana/onchain"
)

// model is one of the demo's four submissions.
type model struct {
	ID      string // the on-chain model id
	Runtime string // python or executable
	Entry   string
	Broken  bool
	// MemoryMB is what its authorization grants (default 256).
	MemoryMB int `json:",omitempty"`
	// Requirements are the lines of its requirements.txt: the node builds
	// its environment from them before it can run.
	Requirements []string `json:",omitempty"`
	Auth         string   // the authorization account
	JobID        string   // model-node-<ShortID>
	ShortID      string   // the Consul member id
	Art          artifact
	// Resources is the submission's resources archive, if it has one: the
	// node unpacks it as <code>/resources, read-only, as CrunchDAO's
	// runner shows it.
	Resources *artifact
}

// record is what the state dir remembers about a run (state.json): `down`
// and a --keep user read it.
type record struct {
	Offset    int      `json:"port_offset"`
	Program   string   `json:"program"`
	Crunch    string   `json:"crunch"`
	SolanaRPC string   `json:"solana_rpc"`
	Scheduler string   `json:"scheduler"`
	Models    []*model `json:"models"`
}

// Binaries the demo needs from bin/.
var needBinaries = []string{"scheduler", "coordinator", "model-runner", "nomad-driver-modelbox", "example-model"}

func (d *demo) runStory(ctx context.Context) int {
	d.steps = 11
	if !d.o.keep {
		d.steps = 12
	}
	d.progress("Model Nodes demo: state in %s, dev cluster ports shifted by %d", d.o.state, d.o.offset)
	if err := d.prepare(ctx); err != nil {
		d.progress("cannot start the demo: %v", err)
		return exitFailed
	}
	rec := &record{Offset: d.o.offset}
	err := d.story(ctx, rec)
	switch {
	case err == nil && d.o.keep:
		os.Remove(d.path("demo.pid"))
		d.printKeep(rec)
		return 0
	case err == nil:
		d.begin("tearing everything down")
	default:
		d.failure(err)
		if d.o.keep && !d.interrupted.Load() {
			os.Remove(d.path("demo.pid"))
			d.progress("--keep: leaving everything running to inspect; `make demo-down` stops it")
			return exitFailed
		}
		d.progress("tearing everything down")
	}
	// The teardown runs to its end whatever signals arrive.
	tctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	derr := d.down(tctx, false)
	os.Remove(d.path("demo.pid"))
	if derr != nil {
		d.progress("teardown: %v", derr)
		return exitFailed
	}
	switch {
	case d.interrupted.Load():
		d.progress("interrupted; everything is stopped")
		return exitInterrupted
	case err != nil:
		return exitFailed
	}
	d.progress("done: the demo ran end to end and left nothing running (logs kept in %s)", d.o.state)
	return 0
}

// prepare checks what the demo needs, cleans up what a previous run left,
// and claims the state dir.
func (d *demo) prepare(ctx context.Context) error {
	var missing []string
	for _, b := range needBinaries {
		if _, err := os.Stat(filepath.Join(d.bin, b)); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s lacks %s: run `make build` (make demo does)", d.bin, strings.Join(missing, ", "))
	}
	for _, t := range []string{"python3", "node", "curl", "ss", "setsid"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s is not installed (Debian: apt-get install python3 nodejs npm curl iproute2 util-linux)", t)
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("the modelbox driver isolates models with namespaces and cgroups: run the demo as root")
	}
	if entries, err := os.ReadDir(d.o.state); err == nil && len(entries) > 0 {
		if _, err := os.Stat(d.path(".modelnodes-demo")); err != nil {
			return fmt.Errorf("%s is not a demo state dir and not empty; refusing to use it (pass --state)", d.o.state)
		}
		if pid := livePid(d.path("demo.pid")); pid != 0 {
			return fmt.Errorf("a demo is already running (pid %d, state %s); `make demo-down` stops it", pid, d.o.state)
		}
		d.progress("cleaning up what a previous demo left in %s", d.o.state)
		if err := d.down(ctx, false); err != nil {
			return fmt.Errorf("cleaning up the previous demo: %w", err)
		}
		if err := os.RemoveAll(d.o.state); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(d.o.state, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(d.path(".modelnodes-demo"), nil, 0o644); err != nil {
		return err
	}
	return writePidFile(d.path("demo.pid"), os.Getpid())
}

func (d *demo) saveRecord(rec *record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(d.path("state.json"), b, 0o644)
}

func (d *demo) story(ctx context.Context, rec *record) error {
	// 1. The dev cluster.
	d.begin("starting the dev cluster (Consul, Vault, Nomad with the modelbox driver)", d.path("dev-up.log"))
	if err := d.saveRecord(rec); err != nil {
		return err
	}
	c, err := d.startCluster(ctx)
	if err != nil {
		return err
	}
	d.cluster = c
	d.logs = []string{c.agentLog("nomad")}
	if err := c.waitModelbox(ctx, time.Minute); err != nil {
		return err
	}
	d.detail("Nomad %s, Consul http://%s, Vault %s; modelbox driver healthy", c.env["NOMAD_ADDR"], c.env["CONSUL_HTTP_ADDR"], c.env["VAULT_ADDR"])

	// 2. The coordinator's credentials.
	d.begin("onboarding the crunch's coordinator (Vault AppRole and client certificate, Consul read-only token)", c.agentLog("vault"), c.agentLog("consul"))
	coord, err := d.onboardCoordinator(ctx, c)
	if err != nil {
		return err
	}

	// 3. The chain.
	front := filepath.Join(d.repo, "deploy", "dev", "solana")
	d.begin("starting the local Solana endpoint (litesvm 1.4.1 behind "+d.rel(filepath.Join(front, "front.js"))+")", d.path("solana", "front.log"))
	if !devchain.Installed(front) {
		d.detail("installing its locked npm dependencies: npm ci in %s", d.rel(front))
		if err := devchain.Install(ctx, front); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(d.path("solana"), 0o755); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	// The chain is kept in the state dir: `modelnodes-demo restart front`
	// brings the same accounts back.
	chain, err := devchain.Start(sctx, devchain.Options{Dir: front, Port: d.port(baseSolanaPort), Detached: true,
		LogFile: d.path("solana", "front.log"), StateFile: d.path("solana", "accounts.json")})
	cancel()
	if err != nil {
		return err
	}
	if err := writePidFile(d.path("solana", "front.pid"), chain.Pid()); err != nil {
		return err
	}
	rec.SolanaRPC = chain.RPC
	d.detail("JSON-RPC %s, websocket %s (pid %d)", chain.RPC, chain.WS, chain.Pid())

	// 4. The submissions.
	d.begin("publishing the four submissions (an artifact server, as a cruncher's storage)", d.path("artifacts", "artifacts.log"))
	models, err := d.publish(ctx)
	if err != nil {
		return err
	}
	rec.Models = models

	// 5. The accounts.
	d.begin("writing the crunch, the coordinator's certificate and four model authorizations on chain", d.path("solana", "front.log"))
	if err := d.plant(ctx, chain, coord, rec); err != nil {
		return err
	}
	if err := d.saveRecord(rec); err != nil {
		return err
	}

	// 6. The scheduler.
	d.begin("starting the scheduler (it reads the chain and keeps one Nomad job per authorized model)", d.path("scheduler", "scheduler.log"))
	if err := d.startScheduler(ctx, c, chain, rec); err != nil {
		return err
	}

	// 7. Callable.
	d.begin("waiting for the models to be callable (running, checked healthy in Consul)", d.path("scheduler", "scheduler.log"))
	d.explain(func() string { return d.allocReport(models) })
	if err := d.waitCallable(ctx, c, rec); err != nil {
		return err
	}

	// 8. Fan-out.
	d.begin("fanning a call out from the coordinator CLI (Consul discovery, Vault-issued mTLS)", d.path("scheduler", "scheduler.log"))
	results, err := d.fanOut(ctx, coord, true)
	if err != nil {
		return err
	}
	if err := d.checkFirstFanOut(models, results); err != nil {
		return err
	}
	if err := d.predict(ctx, coord, modelNamed(models, "py-sklearn")); err != nil {
		return err
	}
	if err := d.impostor(ctx, coord, models); err != nil {
		return err
	}

	// 9. The cruncher's wallet delegation (CrunchDAO's secure mode).
	vouched := modelNamed(models, "py-tracker")
	d.begin("the cruncher vouches for "+vouched.ID+"'s runner (a wallet delegation over its TLS key; the coordinator checks it)", d.path("scheduler", "scheduler.log"))
	results, err = d.vouch(ctx, c, coord, vouched, d.crunchers[vouched.ID])
	if err != nil {
		return err
	}
	if err := d.checkVouched(models, vouched, results); err != nil {
		return err
	}

	// 10. Revocation.
	revoked := modelNamed(models, "go-echo")
	d.begin("revoking "+revoked.ID+"'s authorization (closing its account on chain)", d.path("scheduler", "scheduler.log"))
	if err := d.revoke(ctx, c, chain, revoked); err != nil {
		return err
	}

	// 11. Fan-out again.
	d.begin("fanning out again: the revoked model is gone", d.path("scheduler", "scheduler.log"))
	results, err = d.fanOut(ctx, coord, false)
	if err != nil {
		return err
	}
	return d.checkSecondFanOut(models, revoked, results)
}

// publish packs the submissions and starts the artifact server.
func (d *demo) publish(ctx context.Context) ([]*model, error) {
	www := d.path("artifacts", "www")
	if err := os.MkdirAll(www, 0o755); err != nil {
		return nil, err
	}
	goBin, err := os.ReadFile(filepath.Join(d.bin, "example-model"))
	if err != nil {
		return nil, err
	}
	models := []*model{
		{ID: "py-tracker", Runtime: "python"},
		// pandas, pyarrow and scikit-learn need more than the others.
		{ID: "py-sklearn", Runtime: "python", MemoryMB: 768},
		{ID: "go-echo", Runtime: "executable", Entry: "example-model"},
		{ID: "py-broken", Runtime: "python", Broken: true},
	}
	for _, m := range models {
		var files []file
		if m.Runtime == "executable" {
			files = []file{{"example-model", 0o755, goBin}}
		} else if files, err = pythonSubmission(m.ID); err != nil {
			return nil, err
		}
		m.Requirements = requirements(files)
		if m.Art, err = writeArtifact(www, m.ID, files); err != nil {
			return nil, err
		}
		if res, ok := demoResources[m.ID]; ok {
			a, err := writeArtifact(www, m.ID+"-resources", res)
			if err != nil {
				return nil, err
			}
			m.Resources = &a
		}
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	argv := []string{self, "artifacts", "--dir", www, "--listen", fmt.Sprintf("127.0.0.1:%d", d.port(baseArtifactPort))}
	p, err := startChild(argv, os.Environ(), d.path("artifacts", "artifacts.log"), d.path("artifacts", "artifacts.pid"))
	if err != nil {
		return nil, err
	}
	alive := func() bool { return livePid(d.path("artifacts", "artifacts.pid")) == p.Pid }
	if err := waitHTTP(ctx, d.artifactURL(models[0].Art), 10*time.Second, alive); err != nil {
		return nil, fmt.Errorf("artifact server: %w", err)
	}
	tw := tabwriter.NewWriter(d.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(d.stdout)
	fmt.Fprintln(tw, "    SUBMISSION\tRUNTIME\tARTIFACT\tSHA-256")
	for _, m := range models {
		what := m.Runtime
		if m.Runtime == "executable" {
			what = "Go (bin/example-model)"
		}
		if len(m.Requirements) > 0 {
			what += ", requirements.txt: " + strings.Join(m.Requirements, " ")
		}
		if m.Broken {
			what += " (no such release)"
		}
		if m.Resources != nil {
			what += ", reads resources/ (" + d.artifactURL(*m.Resources) + ")"
		}
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s…\n", m.ID, what, d.artifactURL(m.Art), hex.EncodeToString(m.Art.sha256[:8]))
	}
	return models, tw.Flush()
}

// plant writes the accounts the authorization program would hold.
func (d *demo) plant(ctx context.Context, chain *devchain.Front, coord *coordinator, rec *record) error {
	program, crunch := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	wallet, certAcct := solana.NewWallet().PublicKey(), solana.NewWallet().PublicKey()
	rec.Program, rec.Crunch = program.String(), crunch.String()
	// The models' Consul meta names the crunch by its on-chain id: the
	// coordinator lists only instances that carry it.
	if err := coord.setEnv("COORDINATOR_CRUNCH_ID", crunch.String()); err != nil {
		return err
	}
	type row struct{ addr, kind, what string }
	var rows []row

	cr := &onchain.Crunch{Name: crunchName, Bump: 255}
	copy(cr.Coordinator[:], wallet[:])
	if _, err := chain.SetAccount(ctx, crunch, program, cr.Encode()); err != nil {
		return err
	}
	rows = append(rows, row{crunch.String(), "Crunch", fmt.Sprintf("name %q, coordinator %s…", crunchName, wallet.String()[:8])})

	cc := &onchain.CoordinatorCertificate{CertHash: coord.keyHash, PrimaryUpdatedAt: time.Now().Unix(), Bump: 254}
	copy(cc.Coordinator[:], wallet[:])
	if _, err := chain.SetAccount(ctx, certAcct, program, cc.Encode()); err != nil {
		return err
	}
	rows = append(rows, row{certAcct.String(), "CoordinatorCertificate", "cert_hash " + hex.EncodeToString(coord.keyHash[:8]) + "… (the coordinator's key)"})

	for _, m := range rec.Models {
		auth := solana.NewWallet().PublicKey()
		m.Auth = auth.String()
		jm := jobs.Model{Crunch: crunchName, CrunchID: crunch.String(), ModelID: m.ID}
		m.ShortID, m.JobID = jobs.ShortID(jobs.Named(&jm)), jobs.JobID(jobs.Named(&jm))
		a := &onchain.ModelAuthorization{ModelID: m.ID, SubmissionID: "sub-" + m.ID, ArtifactSHA256: m.Art.sha256,
			ArtifactURI: d.artifactURL(m.Art), Entry: m.Entry, CPUMHz: 200, MemoryMB: uint32(cmp.Or(m.MemoryMB, 256)),
			DesiredState: onchain.DesiredRunning, Bump: 253}
		if m.Runtime == "executable" {
			a.Runtime = onchain.RuntimeExecutable
		}
		if m.Resources != nil {
			a.ResourcesURI, a.ResourcesSHA256 = d.artifactURL(*m.Resources), m.Resources.sha256
		}
		copy(a.Crunch[:], crunch[:])
		cruncher, hotkey := solana.NewWallet(), solana.NewWallet().PublicKey()
		copy(a.Cruncher[:], cruncher.PublicKey().Bytes())
		copy(a.Hotkey[:], hotkey[:])
		if d.crunchers == nil {
			d.crunchers = map[string]cruncherKeys{}
		}
		d.crunchers[m.ID] = cruncherKeys{wallet: cruncher.PrivateKey, hotkey: hotkey.String()}
		if _, err := chain.SetAccount(ctx, auth, program, a.Encode()); err != nil {
			return err
		}
		rows = append(rows, row{auth.String(), "ModelAuthorization", fmt.Sprintf("model %q, %s, RUNNING", m.ID, m.Runtime)})
	}
	fmt.Fprintf(d.stdout, "\n    program %s (accounts planted through %s/control)\n", program, chain.RPC)
	tw := tabwriter.NewWriter(d.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "    ACCOUNT\tTYPE\tHOLDS")
	for _, r := range rows {
		fmt.Fprintf(tw, "    %s\t%s\t%s\n", r.addr, r.kind, r.what)
	}
	return tw.Flush()
}

// startScheduler starts bin/scheduler on the chain and waits until it has
// registered a job per authorization.
func (d *demo) startScheduler(ctx context.Context, c *cluster, chain *devchain.Front, rec *record) error {
	status := fmt.Sprintf("127.0.0.1:%d", d.port(baseSchedulerPort))
	rec.Scheduler = "http://" + status
	argv := []string{filepath.Join(d.bin, "scheduler"),
		"--nomad-addr", c.env["NOMAD_ADDR"],
		"--solana-rpc", chain.RPC, "--solana-ws", chain.WS,
		"--solana-program", rec.Program, "--solana-crunch", rec.Crunch,
		"--solana-resync", "5s",
		// Runners keep one key per model in Vault and fetch every
		// issuer's CRL (a rotated intermediate's too).
		"--runner-vault-addr", c.env["VAULT_ADDR"],
		"--crl-url", c.env["VAULT_ADDR"] + "/v1/pki_int/issuers",
		// Each runner stops answering once Nomad has placed its model
		// elsewhere (a newer passing instance in Consul).
		"--runner-consul-addr", c.env["CONSUL_HTTP_ADDR"],
		// The demo's artifact server is plain http on loopback.
		"--artifact-hosts", "127.0.0.1", "--allow-http-artifacts",
		"--listen", status}
	d.command(d.rel(argv[0]) + " \\\n      " + strings.Join(pairs(argv[1:]), " \\\n      "))
	p, err := startChild(argv, c.environ(), d.path("scheduler", "scheduler.log"), d.path("scheduler", "scheduler.pid"))
	if err != nil {
		return err
	}
	alive := func() bool { return livePid(d.path("scheduler", "scheduler.pid")) == p.Pid }
	if err := waitHTTP(ctx, rec.Scheduler+"/healthz", 15*time.Second, alive); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	d.detail("status API %s/v1/models (pid %d)", rec.Scheduler, p.Pid)
	deadline := time.Now().Add(60 * time.Second)
	seen := map[string]bool{}
	for {
		states, err := d.schedulerModels(ctx, rec)
		if err == nil {
			for _, m := range rec.Models {
				if st := states[m.JobID]; st != nil && st.Desired == "running" && !seen[m.ID] {
					seen[m.ID] = true
					d.detail("job %s for %s: %s", m.JobID, m.ID, st.State)
				}
			}
			if len(seen) == len(rec.Models) {
				return nil
			}
		}
		if !alive() {
			return errors.New("the scheduler exited")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the scheduler registered %d of %d jobs within 60 s", len(seen), len(rec.Models))
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return err
		}
	}
}

// pairs groups "--flag value" for display.
func pairs(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if strings.HasPrefix(args[i], "--") && i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			out = append(out, args[i]+" "+args[i+1])
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// schedulerModels reads the scheduler's status API, by job id.
func (d *demo) schedulerModels(ctx context.Context, rec *record) (map[string]*scheduler.ModelStatus, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rec.Scheduler+"/v1/models", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var list []scheduler.ModelStatus
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, err
	}
	out := map[string]*scheduler.ModelStatus{}
	for i := range list {
		out[list[i].JobID] = &list[i]
	}
	return out, nil
}

// waitCallable waits until the healthy models pass their Consul checks,
// showing how their environments' builds go; the broken one is reported as
// it settles.
func (d *demo) waitCallable(ctx context.Context, c *cluster, rec *record) error {
	cc, err := c.consul()
	if err != nil {
		return err
	}
	envs := newEnvWatch(d, c.nomad)
	service := names.Service(crunchName)
	deadline := time.Now().Add(d.o.readyTimeout)
	var brokenSince time.Time
	last := map[string]string{}
	t0, lastNews := time.Now(), time.Now()
	for {
		states, _ := d.schedulerModels(ctx, rec)
		entries, _, err := cc.Health().Service(service, "", true, nil)
		passing := map[string]string{}
		if err == nil {
			for _, e := range entries {
				passing[e.Service.Meta[names.MetaModelID]] = fmt.Sprintf("%s:%d", e.Service.Address, e.Service.Port)
			}
		}
		envs.poll(rec.Models)
		ready := 0
		for _, m := range rec.Models {
			now := "pending"
			faulty := false
			if st := states[m.JobID]; st != nil {
				now = st.State
				faulty = st.State == observer.StateFaulty
				switch {
				case faulty:
					// The whole reason follows once the wait is over.
					now += " (" + shorten(oneLine(st.Reason), 60) + ")"
				case st.Reason != "" && (st.State == observer.StateFailed || st.State == observer.StateBackoff):
					now += " (" + st.Reason + ")"
				}
				if !m.Broken && (st.State == observer.StateFailed || st.State == observer.StateBackoff || faulty) {
					return fmt.Errorf("%s did not start: %s", m.ID, now)
				}
			}
			// A faulty model's runner is up (it answers why it cannot
			// run), so Consul may list it: the status API says more.
			if addr, ok := passing[m.ShortID]; ok && !faulty {
				now = "callable: passing in Consul as " + m.ShortID + " at " + addr
			}
			if now != last[m.ID] {
				d.detail("%-10s %s", m.ID, now)
				last[m.ID], lastNews = now, time.Now()
			}
			if _, ok := passing[m.ShortID]; ok && !m.Broken {
				ready++
			}
		}
		if ready == len(rec.Models)-1 {
			// The broken model's runner starts like the others; give it a
			// moment to show how it ends up.
			if brokenSince.IsZero() {
				brokenSince = time.Now()
			}
			b := modelBroken(rec.Models)
			_, inConsul := passing[b.ShortID]
			st := states[b.JobID]
			settled := st != nil && (st.State == observer.StateFaulty || st.State == observer.StateFailed || st.State == observer.StateBackoff)
			if settled || time.Since(brokenSince) > 30*time.Second {
				envs.poll(rec.Models)
				envs.summary(rec.Models)
				if st != nil && st.State == observer.StateFaulty {
					d.detail("the status API (GET %s/v1/models) says %s is %s: %s", rec.Scheduler, b.ID, st.State, oneLine(st.Reason))
				} else if inConsul {
					d.detail("%s is listed in Consul: its runner is up, to answer why it cannot run", b.ID)
				}
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d healthy models callable after %s", ready, len(rec.Models)-1, d.o.readyTimeout)
		}
		if time.Since(lastNews) > 15*time.Second {
			d.detail("still waiting after %.0f s: %d of %d healthy models callable (gives up after %s)", time.Since(t0).Seconds(), ready, len(rec.Models)-1, d.o.readyTimeout)
			lastNews = time.Now()
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
}

func modelNamed(models []*model, id string) *model {
	for _, m := range models {
		if m.ID == id {
			return m
		}
	}
	return nil
}

func modelBroken(models []*model) *model {
	for _, m := range models {
		if m.Broken {
			return m
		}
	}
	return nil
}

// revoke closes a model's authorization and waits until its job is
// stopped and Consul no longer lists it.
func (d *demo) revoke(ctx context.Context, c *cluster, chain *devchain.Front, m *model) error {
	t0 := time.Now()
	if _, err := chain.CloseAccount(ctx, solana.MustPublicKeyFromBase58(m.Auth)); err != nil {
		return err
	}
	d.detail("closed account %s (by hand: curl -s -X POST %s/control -d '{\"op\":\"closeAccount\",\"address\":\"%s\"}')", m.Auth, chain.RPC, m.Auth)
	d.detail("the scheduler notices at its next listing of the chain (--solana-resync 5s): closed accounts send no notification")
	cc, err := c.consul()
	if err != nil {
		return err
	}
	var stopped, gone time.Duration
	deadline := time.Now().Add(60 * time.Second)
	for stopped == 0 || gone == 0 {
		if stopped == 0 {
			if job, _, err := c.nomad.Jobs().Info(m.JobID, nil); err == nil && job.Stop != nil && *job.Stop {
				stopped = time.Since(t0)
				d.detail("the scheduler stopped job %s %.1f s after the account closed", m.JobID, stopped.Seconds())
			}
		}
		if gone == 0 {
			entries, _, err := cc.Health().Service(names.Service(crunchName), "", false, nil)
			if err == nil {
				found := false
				for _, e := range entries {
					found = found || e.Service.Meta[names.MetaModelID] == m.ShortID
				}
				if !found {
					gone = time.Since(t0)
					d.detail("Consul no longer lists %s (%.1f s)", m.ShortID, gone.Seconds())
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("job %s not stopped and deregistered within 60 s (stopped: %v, gone from Consul: %v)", m.JobID, stopped > 0, gone > 0)
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	// What Nomad says, as an operator would ask, once the allocation has
	// stopped: the runner drains its calls first (up to its task's
	// kill_timeout, 10 s), longer on a loaded machine.
	deadline = time.Now().Add(60 * time.Second)
	for waited := false; ; waited = true {
		job, _, err := c.nomad.Jobs().Info(m.JobID, nil)
		if err == nil && job.Status != nil && *job.Status == "dead" {
			if waited {
				d.detail("its allocation stopped %.1f s after the account closed", time.Since(t0).Seconds())
			}
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("job %s: its allocation still runs 60 s after the job was stopped", m.JobID)
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	out, err := runCommand(ctx, c.environ(), c.env["NOMAD_BIN"], "job", "status", m.JobID)
	if err != nil {
		return err
	}
	d.command("nomad job status " + m.JobID)
	d.output(out)
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// printKeep tells a --keep user how to explore and how to stop.
func (d *demo) printKeep(rec *record) {
	var ids []string
	for _, m := range rec.Models {
		ids = append(ids, m.ID+"="+m.ShortID)
	}
	sort.Strings(ids)
	py := modelNamed(rec.Models, "py-tracker")
	fmt.Fprintf(d.stdout, `
Everything is still running (--keep). To explore:

    . %s          # NOMAD_ADDR, CONSUL_HTTP_ADDR, VAULT_ADDR, tokens; the agents on PATH
    . %s   # the coordinator's COORDINATOR_* settings
    %s call add --args '[2, 40]' --setup %s --crunch %s
    %s call predict --args '%s' --setup %s --crunch %s --model %s
    nomad job status; consul catalog services; curl -s %s/v1/models
    tail -f %s

Models (Consul member ids): %s
Revoke py-tracker: curl -s -X POST %s/control -d '{"op":"closeAccount","address":"%s"}'
(every account in %s)
Restart with their state (the models keep running): %s restart front|consul|vault|nomad --state %s

Stop everything: make demo-down   (or: %s down --state %s)
`, filepath.Join(d.cluster.state, "env"), d.path("coordinator", "env"), filepath.Join(d.bin, "coordinator"), setupClass, crunchName,
		filepath.Join(d.bin, "coordinator"), predictArgs, setupClass, crunchName, modelNamed(rec.Models, "py-sklearn").ShortID,
		rec.Scheduler, d.path("scheduler", "scheduler.log"), strings.Join(ids, ", "), rec.SolanaRPC, py.Auth, d.path("state.json"),
		filepath.Join(d.bin, "modelnodes-demo"), d.o.state, filepath.Join(d.bin, "modelnodes-demo"), d.o.state)
	d.progress("done; everything left running (--keep): `make demo-down` stops it")
}

// keyHash is the SHA-256 of a DER SubjectPublicKeyInfo, as the chain
// records it.
func keyHash(spki []byte) [32]byte { return sha256.Sum256(spki) }
