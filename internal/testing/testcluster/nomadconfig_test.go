package testcluster

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// The Nomad client configurations shipped: production's, and the dev (and
// demo) cluster's, which the e2e tests of Vault outages run on.
const (
	prodNomadClient = "deploy/nomad/client.hcl"
	devNomadClient  = "deploy/dev/nomad.hcl"
)

// Both Nomad client configurations retry templates for as long as Vault,
// Consul or Nomad is down (attempts = 0 in vault_retry, consul_retry and
// nomad_retry; issue 19 item 4), and the dev cluster's client template
// block is production's, setting by setting: the e2e tests of outages stand
// for production only while the two are the same.
func TestNomadClientTemplateSettingsMatchProduction(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]map[string]string{}
	for _, f := range []string{prodNomadClient, devNomadClient} {
		s, err := clientTemplateSettings(filepath.Join(root, f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		settings[f] = s
		for _, retry := range []string{"vault_retry", "consul_retry", "nomad_retry"} {
			if got, ok := s[retry+".attempts"]; !ok || got != "0" {
				t.Errorf("%s: client template %s attempts = %s, want 0 (retry for as long as the source is down: Nomad's default of 12 kills the tasks about 5 minutes into an outage)", f, retry, orUnset(got, ok))
			}
		}
	}
	prod, dev := settings[prodNomadClient], settings[devNomadClient]
	var keys []string
	for k := range prod {
		keys = append(keys, k)
	}
	for k := range dev {
		if _, ok := prod[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		p, inProd := prod[k]
		d, inDev := dev[k]
		if p != d || inProd != inDev {
			t.Errorf("client template %s: %s sets %s, %s sets %s", k, prodNomadClient, orUnset(p, inProd), devNomadClient, orUnset(d, inDev))
		}
	}
}

func orUnset(v string, ok bool) string {
	if !ok {
		return "nothing (Nomad's default)"
	}
	return v
}

// clientTemplateSettings reads the client { template { ... } } block of a
// Nomad agent configuration: each setting, as "vault_retry.attempts" ->
// "0". A duration ("1m", "60s") is given as Go prints it, so the same
// duration written two ways is one value.
func clientTemplateSettings(path string) (map[string]string, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, diags := hclsyntax.ParseConfig(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, diags
	}
	client, err := onlyBlock(f.Body.(*hclsyntax.Body), "client")
	if err != nil {
		return nil, err
	}
	template, err := onlyBlock(client.Body, "template")
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	out := map[string]string{}
	return out, flattenBody(out, "", template.Body)
}

// onlyBlock returns body's one block of type typ: Nomad merges repeated
// ones, which this test does not.
func onlyBlock(body *hclsyntax.Body, typ string) (*hclsyntax.Block, error) {
	var found []*hclsyntax.Block
	for _, b := range body.Blocks {
		if b.Type == typ {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("%d %s blocks, want one", len(found), typ)
	}
	return found[0], nil
}

func flattenBody(out map[string]string, prefix string, body *hclsyntax.Body) error {
	for name, a := range body.Attributes {
		v, diags := a.Expr.Value(nil)
		if diags.HasErrors() {
			return fmt.Errorf("%s%s: %w", prefix, name, diags)
		}
		out[prefix+name] = settingValue(v)
	}
	for _, b := range body.Blocks {
		if err := flattenBody(out, prefix+strings.Join(append([]string{b.Type}, b.Labels...), ".")+".", b.Body); err != nil {
			return err
		}
	}
	return nil
}

func settingValue(v cty.Value) string {
	if v.Type() == cty.String {
		if d, err := time.ParseDuration(v.AsString()); err == nil {
			return d.String()
		}
		return fmt.Sprintf("%q", v.AsString())
	}
	if v.Type() == cty.Number {
		return v.AsBigFloat().String()
	}
	return fmt.Sprint(v.GoString())
}
