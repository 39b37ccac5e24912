package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/testing/logtail"
	"github.com/modelnodes/modelnodes/pki/vaultpki"
)

// coordinator is the crunch's coordinator as the demo onboards it.
type coordinator struct {
	dir     string   // tls.crt, tls.key, ca.crt (CrunchDAO's credentials-dir layout), env
	keyHash [32]byte // SHA-256 of the key's SubjectPublicKeyInfo: what the chain records
	env     []string // the CLI's environment (COORDINATOR_*)
	bin     string
	// vaultAddr lets the CLI get its own certificate (a fresh key).
	vaultAddr string
}

// onboardCoordinator runs the onboarding scripts and gets the
// coordinator's client certificate from Vault PKI for a key that the demo
// keeps (its hash goes on chain; runners admit only that key).
func (d *demo) onboardCoordinator(ctx context.Context, c *cluster) (*coordinator, error) {
	co := &coordinator{dir: d.path("coordinator"), bin: filepath.Join(d.bin, "coordinator")}
	if err := os.MkdirAll(co.dir, 0o700); err != nil {
		return nil, err
	}
	setup := func(script string) (map[string]string, error) {
		path := filepath.Join(d.repo, "deploy", script, "setup")
		d.command(d.rel(path) + " coordinator " + crunchName)
		out, err := runCommand(ctx, c.environ(), path, "coordinator", crunchName)
		if err != nil {
			return nil, err
		}
		kv := map[string]string{}
		for _, line := range strings.Split(out, "\n") {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
				kv[k] = v
				if strings.Contains(k, "secret") {
					v = v[:min(len(v), 8)] + "…"
				}
				d.output(k + "=" + v)
			}
		}
		return kv, nil
	}
	approle, err := setup("vault")
	if err != nil {
		return nil, err
	}
	if approle["role_id"] == "" || approle["secret_id"] == "" {
		return nil, errors.New("deploy/vault/setup coordinator printed no role_id/secret_id")
	}
	consulTok, err := setup("consul")
	if err != nil {
		return nil, err
	}
	if consulTok["secret_id"] == "" {
		return nil, errors.New("deploy/consul/setup coordinator printed no secret_id")
	}

	// The coordinator's long-lived key; Vault signs a certificate for it
	// through the AppRole (what `coordinator --vault-addr --vault-key FILE`
	// does: the chain must record this key's hash).
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	vc, err := c.vault()
	if err != nil {
		return nil, err
	}
	cn, uris := vaultpki.CoordinatorNames(crunchName)
	iss, err := vaultpki.New(ctx, vaultpki.Config{Client: vc, Login: vaultpki.AppRole{RoleID: approle["role_id"], SecretID: approle["secret_id"]},
		CommonName: cn, URISANs: uris, Key: key})
	if err != nil {
		return nil, fmt.Errorf("coordinator certificate from Vault: %w", err)
	}
	cert := iss.Certificate()
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	root, err := vc.Logical().ReadRawWithContext(ctx, "pki/ca/pem")
	if err != nil {
		return nil, fmt.Errorf("reading the Vault root CA: %w", err)
	}
	rootPEM, err := io.ReadAll(root.Body)
	root.Body.Close()
	if err != nil {
		return nil, err
	}
	for name, data := range map[string][]byte{
		"tls.crt": chain,
		"tls.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		"ca.crt":  rootPEM,
	} {
		if err := os.WriteFile(filepath.Join(co.dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	co.keyHash = keyHash(cert.Leaf.RawSubjectPublicKeyInfo)
	vars := [][2]string{
		{"COORDINATOR_CONSUL_ADDR", c.env["CONSUL_HTTP_ADDR"]},
		{"COORDINATOR_CONSUL_TOKEN", consulTok["secret_id"]},
		{"COORDINATOR_TLS_CERT", filepath.Join(co.dir, "tls.crt")},
		{"COORDINATOR_TLS_KEY", filepath.Join(co.dir, "tls.key")},
		{"COORDINATOR_TLS_CA", filepath.Join(co.dir, "ca.crt")},
		// Used only with --vault-addr (the impostor call of step 8).
		{"COORDINATOR_VAULT_ROLE_ID", approle["role_id"]},
		{"COORDINATOR_VAULT_SECRET_ID", approle["secret_id"]},
	}
	co.vaultAddr = c.env["VAULT_ADDR"]
	var envFile strings.Builder
	envFile.WriteString("# The demo coordinator's settings for bin/coordinator (flags override them).\n")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "COORDINATOR_") {
			co.env = append(co.env, kv)
		}
	}
	for _, v := range vars {
		fmt.Fprintf(&envFile, "export %s=%s\n", v[0], v[1])
		co.env = append(co.env, v[0]+"="+v[1])
	}
	if err := os.WriteFile(filepath.Join(co.dir, "env"), []byte(envFile.String()), 0o600); err != nil {
		return nil, err
	}
	d.detail("client certificate from Vault pki_int for %s (URI %s), valid until %s", cn, uris[0], cert.Leaf.NotAfter.UTC().Format("2006-01-02 15:04 MST"))
	d.detail("its key's hash, SHA-256 of the SubjectPublicKeyInfo: %s (goes on chain)", hex.EncodeToString(co.keyHash[:]))
	d.detail("credentials in %s (tls.crt, tls.key, ca.crt; settings in env)", co.dir)
	return co, nil
}

// callRow is one line of `coordinator call`'s table.
type callRow struct {
	status, code, result string
}

// setEnv adds a setting to the CLI's environment and to its env file.
func (co *coordinator) setEnv(name, value string) error {
	co.env = append(co.env, name+"="+value)
	f, err := os.OpenFile(filepath.Join(co.dir, "env"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "export %s=%s\n", name, value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// The call every fan-out makes: both healthy models add.
var callArgs = []string{"call", "add", "--args", "[2, 40]", "--setup", setupClass, "--crunch", crunchName}

// fanOut runs the coordinator CLI as a reader would (showing the commands
// and their output) and returns the call table's rows by model id.
func (d *demo) fanOut(ctx context.Context, co *coordinator, first bool) (map[string]callRow, error) {
	if first {
		d.command(". " + filepath.Join(co.dir, "env") + "   # COORDINATOR_CONSUL_ADDR, _CONSUL_TOKEN (read-only, crunch-" + crunchName + "), _TLS_CERT, _TLS_KEY, _TLS_CA, _VAULT_ROLE_ID, _VAULT_SECRET_ID, _CRUNCH_ID")
		d.command(d.rel(co.bin) + " models --crunch " + crunchName)
		out, err := runCommand(ctx, co.env, co.bin, "models", "--crunch", crunchName)
		d.output(out)
		if err != nil {
			return nil, err
		}
	}
	return d.call(ctx, co, callArgs)
}

// call runs `coordinator call` and returns its table's rows by model id.
func (d *demo) call(ctx context.Context, co *coordinator, args []string) (map[string]callRow, error) {
	d.command(d.rel(co.bin) + " " + shellJoin(args))
	cmd := command(ctx, co.bin, args...)
	cmd.Env = co.env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	d.output(string(out))
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit) && exit.ExitCode() == 3:
		d.detail("(exit status 3: some model did not answer SUCCESS)")
	case err != nil:
		return nil, fmt.Errorf("coordinator call: %w\n%s", err, indent(stderr.String()))
	}
	return parseCallTable(string(out)), nil
}

// parseCallTable reads `coordinator call`'s table: MODEL STATUS CODE
// LATENCY RESULT.
func parseCallTable(out string) map[string]callRow {
	rows := map[string]callRow{}
	sc := bufio.NewScanner(strings.NewReader(out))
	header := true
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if header {
			header = len(f) == 0 || f[0] != "MODEL"
			continue
		}
		if len(f) < 4 {
			continue
		}
		rows[f[0]] = callRow{status: f[1], code: f[2], result: strings.Join(f[4:], " ")}
	}
	return rows
}

func shellJoin(args []string) string {
	var out []string
	for _, a := range args {
		if strings.ContainsAny(a, " []\"'$") {
			a = "'" + a + "'"
		}
		out = append(out, a)
	}
	return strings.Join(out, " ")
}

// checkFirstFanOut checks what the reader should see, and says it.
func (d *demo) checkFirstFanOut(models []*model, rows map[string]callRow) error {
	fmt.Fprintln(d.stdout, "\n    What the table says (Consul member id → on-chain model):")
	tw := tabwriter.NewWriter(d.stdout, 0, 4, 2, ' ', 0)
	var problems []string
	for _, m := range models {
		r, ok := rows[m.ShortID]
		var says string
		switch {
		case !m.Broken && ok && r.status == "success" && strings.Contains(r.result, "42"):
			says = "callable: computed " + r.result + " in its sandbox"
		case !m.Broken:
			problems = append(problems, fmt.Sprintf("%s (%s) should have answered 42, got %+v (listed: %v)", m.ID, m.ShortID, r, ok))
			says = "NOT callable"
		case !ok:
			says = "not callable: absent from the fan-out (never healthy)"
		case r.status != "success":
			says = "not callable: " + r.code + " at Setup (its environment failed to build); a CrunchDAO coordinator reports it faulty"
		default:
			problems = append(problems, fmt.Sprintf("the broken model %s answered %+v", m.ID, r))
			says = "answered, although broken"
		}
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\n", m.ShortID, m.ID, runtimeName(m), says)
	}
	tw.Flush()
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// The DataFrame py-sklearn predicts on, and what its weights give:
// y = 2a - b + 0.5.
var (
	predictArgs = `[{"$parquet": {"a": [1, 3], "b": [2, 0]}}]`
	predictWant = []float64{0.5, 6.5}
)

// predict calls the scikit-learn model alone with a DataFrame (a PARQUET
// argument, a pandas DataFrame in the model) and checks its predictions.
func (d *demo) predict(ctx context.Context, co *coordinator, m *model) error {
	fmt.Fprintf(d.stdout, "\n    %s alone (--model), its predict on a DataFrame: a PARQUET argument, a pandas DataFrame in its sandbox.\n", m.ID)
	rows, err := d.call(ctx, co, []string{"call", "predict", "--args", predictArgs, "--setup", setupClass, "--crunch", crunchName, "--model", m.ShortID})
	if err != nil {
		return err
	}
	r, ok := rows[m.ShortID]
	got, perr := predictions(r.result)
	if !ok || r.status != "success" || perr != nil || !slices.Equal(got, predictWant) {
		return fmt.Errorf("%s's predict answered %+v (listed: %v, %v), want the DataFrame %v", m.ID, r, ok, perr, predictWant)
	}
	fmt.Fprintf(d.stdout, "\n    Predictions %v: scikit-learn's LinearRegression with the weights from its resources/ (y = 2a - b + 0.5), in the environment the node built from its requirements.txt.\n", got)
	return nil
}

// predictions reads the "prediction" column of a call table's result:
// PARQUET 2 rows [{"prediction":0.5},{"prediction":6.5}].
func predictions(result string) ([]float64, error) {
	i := strings.Index(result, "[")
	if !strings.HasPrefix(result, "PARQUET ") || i < 0 {
		return nil, fmt.Errorf("not a PARQUET table: %q", result)
	}
	var rows []map[string]float64
	if err := json.Unmarshal([]byte(result[i:]), &rows); err != nil {
		return nil, fmt.Errorf("%q: %w", result, err)
	}
	out := make([]float64, len(rows))
	for j, row := range rows {
		out[j] = row["prediction"]
	}
	return out, nil
}

// impostor calls with a certificate Vault signs for the same crunch (the
// same AppRole) but for a fresh key, as `coordinator --vault-addr` without
// --vault-key does: its hash is not on chain, so every runner must refuse it.
func (d *demo) impostor(ctx context.Context, co *coordinator, models []*model) error {
	fmt.Fprintln(d.stdout, "\n    The same coordinator identity from Vault, but a fresh key (--vault-addr without --vault-key): its hash is not on chain.")
	rows, err := d.call(ctx, co, append(append([]string{}, callArgs...), "--vault-addr", co.vaultAddr))
	if err != nil {
		return err
	}
	var problems []string
	for _, m := range models {
		if r, ok := rows[m.ShortID]; !ok || r.status != "unauthenticated" {
			problems = append(problems, fmt.Sprintf("%s answered a key that is not on chain: %+v (listed: %v)", m.ID, r, ok))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	fmt.Fprintln(d.stdout, "\n    Every runner refused it: a runner admits only the key whose hash the chain records for the crunch's coordinator.")
	return nil
}

func (d *demo) checkSecondFanOut(models []*model, revoked *model, rows map[string]callRow) error {
	var problems []string
	if _, ok := rows[revoked.ShortID]; ok {
		problems = append(problems, revoked.ID+" is still called after its revocation")
	}
	for _, m := range models {
		if m == revoked || m.Broken {
			continue
		}
		if r := rows[m.ShortID]; r.status != "success" {
			problems = append(problems, fmt.Sprintf("%s no longer answers: %+v", m.ID, r))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	fmt.Fprintf(d.stdout, "\n    %s (%s) is gone from the fan-out; the others are unchanged.\n", revoked.ShortID, revoked.ID)
	return nil
}

func runtimeName(m *model) string {
	if m.Runtime == "executable" {
		return "Go"
	}
	return "Python"
}

// allocReport explains models that are not healthy: Nomad's task events and
// the tail of the task's stderr (the runner's log), from the Nomad API.
func (d *demo) allocReport(models []*model) string {
	if d.cluster == nil {
		return ""
	}
	nc := d.cluster.nomad
	var b strings.Builder
	for _, m := range models {
		allocs, _, err := nc.Jobs().Allocations(m.JobID, true, nil)
		if err != nil || len(allocs) == 0 {
			fmt.Fprintf(&b, "--- %s (job %s): no allocation (%v)\n", m.ID, m.JobID, err)
			continue
		}
		sort.Slice(allocs, func(i, j int) bool { return allocs[i].CreateTime > allocs[j].CreateTime })
		a := allocs[0]
		if a.DeploymentStatus != nil && a.DeploymentStatus.Healthy != nil && *a.DeploymentStatus.Healthy {
			continue
		}
		fmt.Fprintf(&b, "--- %s (job %s, allocation %s, %s):\n", m.ID, m.JobID, a.ID[:8], a.ClientStatus)
		if ts := a.TaskStates["model"]; ts != nil {
			evs := ts.Events
			if len(evs) > 6 {
				evs = evs[len(evs)-6:]
			}
			for _, e := range evs {
				fmt.Fprintf(&b, "    event: %s: %s\n", e.Type, e.DisplayMessage)
			}
		}
		alloc := &nomadapi.Allocation{ID: a.ID, NodeID: a.NodeID}
		if r, err := nc.AllocFS().Cat(alloc, "alloc/logs/model.stderr.0", nil); err == nil {
			body, _ := io.ReadAll(io.LimitReader(r, 1<<20))
			r.Close()
			if t := string(logtail.Lines(body, 30)); t != "" {
				fmt.Fprintf(&b, "    last lines of the task's stderr:\n%s\n", indent(indent(t)))
			}
		}
	}
	return strings.TrimRight(b.String(), "\n")
}
