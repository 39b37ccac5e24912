package monitoring

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/modelnodes/modelnodes/client"
	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/client/discovery/consul"
	"github.com/modelnodes/modelnodes/runner"
	"github.com/modelnodes/modelnodes/runner/authz"
	"github.com/modelnodes/modelnodes/scheduler"
	"github.com/modelnodes/modelnodes/scheduler/orchws"
)

// targetLabels are the labels Prometheus itself attaches to every scraped
// series; a rule or panel may select or group by them on any metric.
var targetLabels = []string{"job", "instance"}

// registered collects, from the components' own registries, every metric
// name they export and its labels: the scheduler's (with the orchestrator
// WebSocket it serves on the same /metrics), the runner's (with its
// authorizer's), and the coordinator client's (with its Consul discovery).
func registered(t *testing.T) map[string][]string {
	t.Helper()
	sched := scheduler.NewMetrics()
	auth, err := authz.New(authz.Config{Static: authz.Policy{Crunch: "c"}, Registerer: sched.Registry})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := consulapi.NewClient(&consulapi.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := orchws.New(orchws.Config{Consul: cc, Authorizer: auth, Registerer: sched.Registry}); err != nil {
		t.Fatal(err)
	}

	run := prometheus.NewRegistry()
	runner.New(runner.Config{Registerer: run})
	if _, err := authz.New(authz.Config{Static: authz.Policy{Crunch: "c"}, Registerer: run}); err != nil {
		t.Fatal(err)
	}

	cli := prometheus.NewRegistry()
	if _, err := client.New(client.Config{Source: discovery.Static{}, Plaintext: true, Registerer: cli}); err != nil {
		t.Fatal(err)
	}
	// A Source registers its series when it starts watching.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = (&consul.Source{Client: cc, Service: "crunch-c", Crunch: "c", Registerer: cli}).Watch(ctx, func([]discovery.Model) {})

	out := map[string][]string{}
	for _, reg := range []*prometheus.Registry{sched.Registry, run, cli} {
		ch := make(chan *prometheus.Desc, 256)
		go func() { reg.Describe(ch); close(ch) }()
		for d := range ch {
			name, labels, err := parseDesc(d.String())
			if err != nil {
				t.Fatal(err)
			}
			out[name] = labels
		}
	}
	if len(out) < 20 {
		t.Fatalf("only %d metric names read from the registries: %v", len(out), out)
	}
	return out
}

var descRE = regexp.MustCompile(`^Desc\{fqName: ("(?:[^"\\]|\\.)*"), .*, constLabels: \{([^}]*)\}, variableLabels: \{([^}]*)\}\}$`)

// parseDesc reads a metric's name and labels from prometheus.Desc's String
// (client_golang exports no accessor); a format it cannot read fails the
// test rather than passing it.
func parseDesc(s string) (string, []string, error) {
	m := descRE.FindStringSubmatch(s)
	if m == nil {
		return "", nil, fmt.Errorf("cannot read a metric name from %s", s)
	}
	name, err := strconv.Unquote(m[1])
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", s, err)
	}
	var labels []string
	for _, kv := range strings.Split(m[2], ",") {
		if k, _, ok := strings.Cut(kv, "="); ok {
			labels = append(labels, k)
		}
	}
	for _, l := range strings.Split(m[3], ",") {
		if l = strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")"); l != "" {
			labels = append(labels, l)
		}
	}
	return name, labels, nil
}

// series returns the exported metric a selected name refers to, and the
// extra labels its name brings (a histogram's _bucket has le).
func series(name string, reg map[string][]string) (string, []string, bool) {
	if _, ok := reg[name]; ok {
		return name, nil, true
	}
	for suffix, extra := range map[string][]string{"_bucket": {"le"}, "_sum": nil, "_count": nil} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if _, ok := reg[base]; ok {
				return base, extra, true
			}
		}
	}
	return "", nil, false
}

// checkExpr parses a PromQL expression and checks every metric it selects
// against the registries, every label it matches on or groups by against
// the labels of the metrics involved.
func checkExpr(where, expr string, reg map[string][]string) []string {
	e, err := parser.ParseExpr(expr)
	if err != nil {
		return []string{fmt.Sprintf("%s: %q does not parse: %v", where, expr, err)}
	}
	var problems []string
	labelsOf := func(n parser.Node) map[string]bool {
		have := map[string]bool{}
		for _, l := range targetLabels {
			have[l] = true
		}
		parser.Inspect(n, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				if base, extra, ok := series(vs.Name, reg); ok {
					for _, l := range append(reg[base], extra...) {
						have[l] = true
					}
				}
			}
			return nil
		})
		return have
	}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			if n.Name == "" {
				problems = append(problems, fmt.Sprintf("%s: %q selects no metric by name", where, n.String()))
				return nil
			}
			base, extra, ok := series(n.Name, reg)
			if !ok {
				problems = append(problems, fmt.Sprintf("%s: metric %s is not registered by any component", where, n.Name))
				return nil
			}
			for _, m := range n.LabelMatchers {
				if m.Name != "__name__" && !slices.Contains(append(append(reg[base], extra...), targetLabels...), m.Name) {
					problems = append(problems, fmt.Sprintf("%s: %s has no label %s (it has %v)", where, n.Name, m.Name, reg[base]))
				}
			}
		case *parser.AggregateExpr:
			have := labelsOf(n.Expr)
			for _, l := range n.Grouping {
				if !have[l] {
					problems = append(problems, fmt.Sprintf("%s: %s groups by %s, which none of its metrics has", where, n.String(), l))
				}
			}
		}
		return nil
	})
	return problems
}

// The alert rules parse as Prometheus loads them (rulefmt: YAML, PromQL,
// templates) and use only metrics, and labels, that the code registers.
func TestAlertRules(t *testing.T) {
	reg := registered(t)
	groups, errs := rulefmt.ParseFile("alerts.yml", false)
	if len(errs) > 0 {
		t.Fatalf("alerts.yml: %v", errs)
	}
	var alerts []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule that is not an alert (%q)", g.Name, r.Expr)
				continue
			}
			alerts = append(alerts, r.Alert)
			for _, p := range checkExpr("alert "+r.Alert, r.Expr, reg) {
				t.Error(p)
			}
		}
	}
	// What the operators asked to be told about (issue 20).
	for _, want := range []string{"ModelNodesModelCrashLooping", "ModelNodesSourceFailing", "ModelNodesCertificateNearExpiry",
		"ModelNodesCRLStale", "ModelNodesClientDiscoveryFailing"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s (have %v)", want, alerts)
		}
	}
}

// The Grafana dashboard is valid JSON with unique panel ids, and every query
// parses and uses only metrics, and labels, that the code registers.
func TestDashboard(t *testing.T) {
	reg := registered(t)
	b, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard.json: title %q, uid %q, %d panels", d.Title, d.UID, len(d.Panels))
	}
	ids := map[int]bool{}
	used := map[string]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			for _, pr := range checkExpr(fmt.Sprintf("panel %q %s", p.Title, q.RefID), q.Expr, reg) {
				t.Error(pr)
			}
			e, err := parser.ParseExpr(q.Expr)
			if err != nil {
				continue
			}
			parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
				if vs, ok := n.(*parser.VectorSelector); ok {
					if base, _, ok := series(vs.Name, reg); ok {
						used[base] = true
					}
				}
				return nil
			})
		}
	}
	// Every component has its panels.
	for _, prefix := range []string{"modelnodes_scheduler_", "modelnodes_runner_", "modelnodes_client_", "modelnodes_orchestrator_"} {
		found := false
		for name := range used {
			found = found || strings.HasPrefix(name, prefix)
		}
		if !found {
			t.Errorf("no panel shows a %s* metric", prefix)
		}
	}
	var unused []string
	for name := range reg {
		if strings.HasPrefix(name, "modelnodes_") && !used[name] {
			unused = append(unused, name)
		}
	}
	sort.Strings(unused)
	t.Logf("metrics no panel shows: %v", unused)
}
