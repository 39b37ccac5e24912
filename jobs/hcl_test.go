//go:build e2e

package jobs

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	nomadapi "github.com/hashicorp/nomad/api"
)

// exampleModel is the model of deploy/jobs/example-model.nomad.hcl.
var exampleModel = Model{
	Crunch: "demo", ModelID: "example", Cruncher: "HN7cABqLq46Es1jh92dQQisAq662SmxELLLsHHe4YWrH",
	ArtifactURL:    "https://models.example/example.tar.gz",
	ArtifactSHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
	Hardware:       CPU, Running: true,
}

// exampleOptions are the options of the example: the runners fetch every
// issuer's revocation list from Vault.
var exampleOptions = Options{ArtifactHosts: []string{"models.example"}, CRLURL: "https://vault.service.consul:8200/v1/pki_int/issuers"}

// nomadBinary finds the pinned Nomad as make test does: $NOMAD_BIN, PATH,
// or the cache of deploy/hashistack/install.
func nomadBinary(t *testing.T) string {
	if b := os.Getenv("NOMAD_BIN"); b != "" {
		return b
	}
	if b, err := exec.LookPath("nomad"); err == nil {
		return b
	}
	home, _ := os.UserCacheDir()
	if m, _ := filepath.Glob(filepath.Join(home, "modelnodes", "hashistack", "nomad-*", "bin", "nomad")); len(m) > 0 {
		return m[0]
	}
	t.Skip("no nomad binary ($NOMAD_BIN, PATH or the hashistack cache): run make hashistack")
	return ""
}

// The example job in deploy/ is what the builder produces for its model:
// Nomad's own HCL parser (nomad job run -output, offline) turns the file
// into the API job, and both are compared after Nomad's canonicalization.
func TestExampleHCLMatchesBuilder(t *testing.T) {
	bin := nomadBinary(t)
	m := exampleModel
	t.Logf("example model: job id %s, spec %s", JobID(&m), SpecHash(&m, &exampleOptions))
	cmd := exec.Command(bin, "job", "run", "-output", "../deploy/jobs/example-model.nomad.hcl")
	cmd.Env = append(os.Environ(), "NOMAD_ADDR=http://127.0.0.1:1") // never contacted
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nomad job run -output: %v", err)
	}
	var parsed struct{ Job *nomadapi.Job }
	if err := json.Unmarshal(out, &parsed); err != nil {
		t.Fatal(err)
	}
	o := exampleOptions
	built, err := Build(&m, &o)
	if err != nil {
		t.Fatal(err)
	}
	parsed.Job.Canonicalize()
	built.Canonicalize()
	a, _ := json.MarshalIndent(parsed.Job, "", " ")
	b, _ := json.MarshalIndent(built, "", " ")
	if !bytes.Equal(a, b) {
		al, bl := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
		var diff []string
		for i := 0; i < max(len(al), len(bl)) && len(diff) < 40; i++ {
			var x, y string
			if i < len(al) {
				x = al[i]
			}
			if i < len(bl) {
				y = bl[i]
			}
			if x != y {
				diff = append(diff, "  hcl:     "+x+"\n  builder: "+y)
			}
		}
		t.Fatalf("deploy/jobs/example-model.nomad.hcl and jobs.Build disagree (first differing lines):\n%s", strings.Join(diff, "\n"))
	}
}
