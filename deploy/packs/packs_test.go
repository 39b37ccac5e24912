// Package packs holds the nomad-pack packs of Model Nodes (no Go code; this
// test only). nomad-pack cannot be installed here (the Go module proxy does
// not serve github.com/hashicorp/nomad-pack), so the test renders each
// pack's template as nomad-pack does (Go text/template, delimiters [[ ]],
// the var function over the pack's variables.hcl, and the quote and
// toStringList functions the templates use), parses the result with
// Nomad's own jobspec parser, and compares the job with the job file the
// pack mirrors.
package packs

import (
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"text/template"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/hashicorp/nomad/jobspec2"
	"github.com/zclconf/go-cty/cty"
)

// packVars reads a pack's variables.hcl: each variable's default.
func packVars(t *testing.T, path string) map[string]any {
	t.Helper()
	f, diags := hclparse.NewParser().ParseHCLFile(path)
	if diags.HasErrors() {
		t.Fatalf("%s: %v", path, diags)
	}
	// Partial: a job file has its job beside the variables.
	content, _, diags := f.Body.PartialContent(&hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{{Type: "variable", LabelNames: []string{"name"}}}})
	if diags.HasErrors() {
		t.Fatalf("%s: %v", path, diags)
	}
	out := map[string]any{}
	for _, b := range content.Blocks {
		attrs, diags := b.Body.JustAttributes()
		if diags.HasErrors() {
			t.Fatalf("%s: variable %s: %v", path, b.Labels[0], diags)
		}
		def, ok := attrs["default"]
		if !ok {
			t.Fatalf("%s: variable %s has no default", path, b.Labels[0])
		}
		v, diags := def.Expr.Value(nil)
		if diags.HasErrors() {
			t.Fatalf("%s: variable %s: %v", path, b.Labels[0], diags)
		}
		out[b.Labels[0]] = goValue(t, v)
	}
	return out
}

func goValue(t *testing.T, v cty.Value) any {
	switch {
	case v.Type() == cty.String:
		return v.AsString()
	case v.Type() == cty.Bool:
		return v.True()
	case v.Type() == cty.Number:
		bf := v.AsBigFloat()
		if i, acc := bf.Int64(); acc == big.Exact {
			return i
		}
		f, _ := bf.Float64()
		return f
	case v.Type().IsTupleType() || v.Type().IsListType():
		var list []any
		for it := v.ElementIterator(); it.Next(); {
			_, e := it.Element()
			list = append(list, goValue(t, e))
		}
		return list
	}
	t.Fatalf("variable of type %s: not handled", v.Type().FriendlyName())
	return nil
}

// render renders a pack's one template with vars.
func render(t *testing.T, pack string, vars map[string]any) []byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(pack, "templates", "*.nomad.tpl"))
	if err != nil || len(paths) != 1 {
		t.Fatalf("%s: want one templates/*.nomad.tpl, have %v (%v)", pack, paths, err)
	}
	funcs := template.FuncMap{
		"var": func(name string, ctx map[string]any) (any, error) {
			v, ok := ctx[name]
			if !ok {
				return nil, fmt.Errorf("no variable %q in the pack", name)
			}
			return v, nil
		},
		// quote as sprig's: each argument Go-quoted.
		"quote": func(args ...any) string {
			var out []string
			for _, a := range args {
				out = append(out, strconv.Quote(fmt.Sprint(a)))
			}
			return strings.Join(out, " ")
		},
		// toStringList as nomad-pack's: an HCL list of quoted strings.
		"toStringList": func(l []any) string {
			var out []string
			for _, a := range l {
				out = append(out, strconv.Quote(fmt.Sprint(a)))
			}
			return "[" + strings.Join(out, ", ") + "]"
		},
	}
	tpl, err := template.New(filepath.Base(paths[0])).Delims("[[", "]]").Funcs(funcs).Option("missingkey=error").ParseFiles(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := tpl.Execute(&b, vars); err != nil {
		t.Fatalf("%s: %v", paths[0], err)
	}
	return []byte(b.String())
}

func parseJob(t *testing.T, path string, body []byte, argVars []string) *nomadapi.Job {
	t.Helper()
	job, err := jobspec2.ParseWithConfig(&jobspec2.ParseConfig{Path: path, Body: body, ArgVars: argVars, Strict: true})
	if err != nil {
		t.Fatalf("%s: %v\n%s", path, err, body)
	}
	return job
}

// sameJob fails t when the two jobs differ, showing both as JSON.
func sameJob(t *testing.T, what string, got, want *nomadapi.Job) {
	t.Helper()
	if reflect.DeepEqual(got, want) {
		return
	}
	g, _ := json.MarshalIndent(got, "", " ")
	w, _ := json.MarshalIndent(want, "", " ")
	gl, wl := strings.Split(string(g), "\n"), strings.Split(string(w), "\n")
	for i := range min(len(gl), len(wl)) {
		if gl[i] != wl[i] {
			t.Fatalf("%s: the pack's job differs from the job file's at line %d of their JSON: pack %q, file %q", what, i+1, gl[i], wl[i])
		}
	}
	t.Fatalf("%s: the pack's job differs from the job file's (%d vs %d JSON lines)", what, len(gl), len(wl))
}

func TestPacksRenderTheJobFiles(t *testing.T) {
	for _, tc := range []struct {
		pack, jobFile string
		// overrides: pack variables, and the same as -var arguments
		overrides map[string]any
		argVars   []string
	}{
		{pack: "modelnodes_scheduler", jobFile: "../nomad/scheduler.nomad.hcl"},
		{pack: "modelnodes_scheduler", jobFile: "../nomad/scheduler.nomad.hcl",
			overrides: map[string]any{"artifact_url": "https://releases.example/scheduler", "artifact_sha256": strings.Repeat("ab", 32),
				"distinct_hosts": false, "count": int64(3), "datacenters": []any{"dc1", "dc2"}, "job_id": "sched-b"},
			argVars: []string{"artifact_url=https://releases.example/scheduler", "artifact_sha256=" + strings.Repeat("ab", 32),
				"distinct_hosts=false", "count=3", `datacenters=["dc1","dc2"]`, "job_id=sched-b"}},
		{pack: "modelnodes_model", jobFile: "../jobs/example-model.nomad.hcl"},
		{pack: "modelnodes_model", jobFile: "../jobs/example-model.nomad.hcl",
			overrides: map[string]any{"artifact_url": "https://models.example/other.tar.gz"},
			argVars:   []string{"artifact_url=https://models.example/other.tar.gz"}},
	} {
		t.Run(tc.pack+fmt.Sprint(len(tc.argVars)), func(t *testing.T) {
			for _, f := range []string{"metadata.hcl", "variables.hcl"} {
				if _, diags := hclparse.NewParser().ParseHCLFile(filepath.Join(tc.pack, f)); diags.HasErrors() {
					t.Fatalf("%s/%s: %v", tc.pack, f, diags)
				}
			}
			vars := packVars(t, filepath.Join(tc.pack, "variables.hcl"))
			// The pack's variables are the job file's, with its defaults.
			if fileVars := packVars(t, tc.jobFile); !reflect.DeepEqual(vars, fileVars) {
				t.Fatalf("pack variables %v, job file's %v", vars, fileVars)
			}
			for k, v := range tc.overrides {
				vars[k] = v
			}
			body, err := os.ReadFile(tc.jobFile)
			if err != nil {
				t.Fatal(err)
			}
			want := parseJob(t, tc.jobFile, body, tc.argVars)
			got := parseJob(t, tc.pack+".nomad", render(t, tc.pack, vars), nil)
			sameJob(t, tc.pack, got, want)
		})
	}
}
