//go:build e2e

package scheduler

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/modelnodes/modelnodes/names"
)

// scrapeJob is the job label of the scrape config in docs/operations.md.
const scrapeJob = "modelnodes-runners"

// checkRunnerMetrics does what Prometheus' consul_sd_configs entry in
// docs/operations.md does for a crunch's running models: it finds the
// names.MetricsService instances in Consul's catalog, GETs /metrics at each
// address and labels the samples as the relabel_configs do. Every model
// must be found; its runner must export the series the alert rules read
// (deploy/monitoring/alerts.yml) with sane values, and the runner alerts,
// evaluated by Prometheus' engine on the scraped samples, must not fire.
// certTTL bounds the certificate's remaining life.
func checkRunnerMetrics(t *testing.T, cc *consulapi.Client, crunch string, models []string, certTTL time.Duration) {
	t.Helper()
	entries, _, err := cc.Catalog().Service(names.MetricsService, "", nil)
	if err != nil {
		t.Fatalf("consul catalog: %v", err)
	}
	st := &scrapedSamples{}
	now := time.Now()
	var scraped []string
	for _, e := range entries {
		if e.ServiceMeta[names.MetaCrunch] != crunch {
			continue
		}
		addr := e.ServiceAddress
		if addr == "" {
			addr = e.Address
		}
		target := net.JoinHostPort(addr, strconv.Itoa(e.ServicePort))
		id := e.ServiceMeta[names.MetaModelID]
		fams := scrape(t, target)
		checkRunnerSeries(t, id, fams, certTTL)
		st.add(t, fams, map[string]string{"job": scrapeJob, "instance": target, "model_id": id, "crunch": crunch}, now)
		scraped = append(scraped, id)
	}
	slices.Sort(scraped)
	if want := slices.Sorted(slices.Values(models)); !slices.Equal(scraped, want) {
		t.Fatalf("scraped the runners of models %v through Consul, want %v", scraped, want)
	}
	evalRunnerAlerts(t, st, now, len(models))
}

// scrape GETs a target's /metrics as Prometheus does and parses the text
// exposition.
func scrape(t *testing.T, target string) map[string]*dto.MetricFamily {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+target+"/metrics", nil)
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("scraping %s: %v", target, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping %s: %s", target, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the metrics of %s: %v", target, err)
	}
	return fams
}

// checkRunnerSeries checks one runner's series that the alerts and the
// dashboard rest on: a fresh certificate, fresh revocation lists, a worker
// up and never restarted, and the coordinator's calls counted.
func checkRunnerSeries(t *testing.T, id string, fams map[string]*dto.MetricFamily, certTTL time.Duration) {
	t.Helper()
	one := func(name string) float64 {
		f := fams[name]
		if f == nil || len(f.Metric) != 1 {
			t.Errorf("model %s: %s is missing or not one series: %v", id, name, f)
			return 0
		}
		return value(f.Metric[0])
	}
	if v := one("modelnodes_runner_certificate_expiry_seconds"); v <= 0 || v > certTTL.Seconds() {
		t.Errorf("model %s: certificate_expiry_seconds %v, want in (0, %v]", id, v, certTTL.Seconds())
	}
	if v := one("modelnodes_runner_worker_up"); v != 1 {
		t.Errorf("model %s: worker_up %v", id, v)
	}
	if v := one("modelnodes_runner_worker_restarts_total"); v != 0 {
		t.Errorf("model %s: worker_restarts_total %v", id, v)
	}
	one("modelnodes_runner_crl_fetch_failures_total") // a count of transient failures; present
	crls := fams["modelnodes_runner_crl_expiry_seconds"]
	if crls == nil || len(crls.Metric) == 0 {
		t.Errorf("model %s: no crl_expiry_seconds: the runner holds no revocation list", id)
	} else {
		for _, m := range crls.Metric {
			if v := value(m); v < 3600 {
				t.Errorf("model %s: crl_expiry_seconds %v for %v: stale within the hour", id, v, m.Label)
			}
		}
	}
	calls := 0.0
	for _, m := range fams["modelnodes_runner_calls_total"].GetMetric() {
		if label(m, "rpc") == "Call" && label(m, "status") == "SUCCESS" {
			calls += value(m)
		}
	}
	if calls == 0 {
		t.Errorf("model %s: calls_total counts none of the coordinator's successful calls", id)
	}
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.Label {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// scrapedSamples holds scraped samples for Prometheus' engine: a
// storage.Queryable, enough for instant queries at their time.
type scrapedSamples []scrapedSample

type scrapedSample struct {
	lset labels.Labels
	t    int64
	v    float64
}

// add stores a scrape's samples at ts with the target's labels.
func (s *scrapedSamples) add(t *testing.T, fams map[string]*dto.MetricFamily, target map[string]string, ts time.Time) {
	t.Helper()
	var list []*dto.MetricFamily
	for _, f := range fams {
		list = append(list, f)
	}
	samples, err := expfmt.ExtractSamples(&expfmt.DecodeOptions{Timestamp: model.TimeFromUnixNano(ts.UnixNano())}, list...)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range samples {
		b := labels.NewBuilder(labels.EmptyLabels())
		for k, v := range x.Metric {
			b.Set(string(k), string(v))
		}
		for k, v := range target {
			b.Set(k, v)
		}
		*s = append(*s, scrapedSample{lset: b.Labels(), t: int64(x.Timestamp), v: float64(x.Value)})
	}
}

// Querier implements storage.Queryable.
func (s *scrapedSamples) Querier(int64, int64) (storage.Querier, error) {
	return &storage.MockQuerier{SelectMockFunction: func(sorted bool, _ *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
		out := &seriesList{}
	samples:
		for _, x := range *s {
			for _, m := range ms {
				if !m.Matches(x.lset.Get(m.Name)) {
					continue samples
				}
			}
			out.series = append(out.series, storage.NewListSeries(x.lset, []chunks.Sample{x}))
		}
		if sorted {
			slices.SortFunc(out.series, func(a, b storage.Series) int { return labels.Compare(a.Labels(), b.Labels()) })
		}
		return out
	}}, nil
}

func (x scrapedSample) T() int64                      { return x.t }
func (x scrapedSample) F() float64                    { return x.v }
func (x scrapedSample) H() *histogram.Histogram       { return nil }
func (x scrapedSample) FH() *histogram.FloatHistogram { return nil }
func (x scrapedSample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (x scrapedSample) Copy() chunks.Sample           { return x }

// seriesList is a storage.SeriesSet over a slice.
type seriesList struct {
	series []storage.Series
	i      int
}

func (l *seriesList) Next() bool                        { l.i++; return l.i <= len(l.series) }
func (l *seriesList) At() storage.Series                { return l.series[l.i-1] }
func (l *seriesList) Err() error                        { return nil }
func (l *seriesList) Warnings() annotations.Annotations { return nil }

// evalRunnerAlerts evaluates, at ts, the alert rules that read runner
// series: every runner series a rule selects must be there for each of
// the n runners, and no rule may fire. Then a runner whose certificate has
// ten minutes left, added beside them, must make
// ModelNodesCertificateNearExpiry fire for it alone: the evaluation can
// fire.
func evalRunnerAlerts(t *testing.T, st *scrapedSamples, ts time.Time, n int) {
	t.Helper()
	groups, errs := rulefmt.ParseFile("../deploy/monitoring/alerts.yml", false)
	if len(errs) > 0 {
		t.Fatalf("alerts.yml: %v", errs)
	}
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 1 << 20, Timeout: 10 * time.Second})
	query := func(expr string) promql.Vector {
		t.Helper()
		q, err := engine.NewInstantQuery(context.Background(), st, nil, expr, ts)
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		defer q.Close()
		v, err := q.Exec(context.Background()).Vector()
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return v
	}
	var nearExpiry string
	evaluated := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			e, err := parser.ParseExpr(r.Expr)
			if err != nil {
				t.Fatalf("%s: %v", r.Alert, err)
			}
			var selected []string
			parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
				if vs, ok := node.(*parser.VectorSelector); ok && strings.HasPrefix(vs.Name, "modelnodes_runner_") {
					selected = append(selected, vs.Name)
				}
				return nil
			})
			if len(selected) == 0 {
				continue
			}
			for _, name := range selected {
				if v := query(fmt.Sprintf("count by (model_id) (%s)", name)); len(v) != n {
					t.Errorf("%s: %s scraped from %d runners, want %d", r.Alert, name, len(v), n)
				}
			}
			if v := query(r.Expr); len(v) != 0 {
				t.Errorf("%s fires on the scraped runners: %v", r.Alert, v)
			}
			if r.Alert == "ModelNodesCertificateNearExpiry" {
				nearExpiry = r.Expr
			}
			evaluated++
		}
	}
	t.Logf("%d runner alerts evaluated on %d runners' scrapes", evaluated, n)
	if nearExpiry == "" {
		t.Fatal("alerts.yml has no ModelNodesCertificateNearExpiry")
	}
	*st = append(*st, scrapedSample{lset: labels.FromStrings("__name__", "modelnodes_runner_certificate_expiry_seconds",
		"job", scrapeJob, "instance", "control"), t: ts.UnixMilli(), v: 600})
	if v := query(nearExpiry); len(v) != 1 || v[0].Metric.Get("instance") != "control" {
		t.Errorf("ModelNodesCertificateNearExpiry with a certificate 10 minutes from expiry beside them: %v, want that one", v)
	}
}
