package jobs

import (
	"errors"
	"testing"

	"github.com/modelnodes/modelnodes/names"
)

func TestConstrainPython(t *testing.T) {
	m := &Model{Crunch: "demo", ModelID: "m", Hardware: CPU, Running: true,
		ArtifactURL: "https://models.example/m.tar.gz", ArtifactSHA256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
	opts := &Options{ArtifactHosts: []string{"models.example"}, Plaintext: true}
	job, err := Build(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	spec := job.Meta[names.MetaSpec]
	if err := ConstrainPython(job, Python{}); err != nil {
		t.Fatal(err)
	}
	if len(job.TaskGroups[0].Constraints) != 0 || SpecWithPython(spec, Python{}) != spec {
		t.Fatal("the zero Python changed the job or its spec")
	}
	p := Python{Request: "3.13 (.python-version)", Regexp: `(\A|,)(3\.13\.[0-9]+)(,|\z)`}
	if err := ConstrainPython(job, p); err != nil {
		t.Fatal(err)
	}
	c := job.TaskGroups[0].Constraints
	if len(c) != 1 || c[0].LTarget != "${attr.driver.modelbox.python.versions}" || c[0].Operand != "regexp" || c[0].RTarget != p.Regexp {
		t.Fatalf("constraints %+v", c)
	}
	if job.Meta[names.MetaPython] != p.Request {
		t.Fatalf("meta %v", job.Meta)
	}
	if err := ConstrainPython(job, Python{Request: "x", Regexp: "${attr.unique.hostname}"}); !errors.Is(err, ErrInterpolation) {
		t.Fatalf("an interpolating regexp: %v", err)
	}
	other := p
	other.Regexp = `(\A|,)(3\.12\.[0-9]+)(,|\z)`
	if s1, s2 := SpecWithPython(spec, p), SpecWithPython(spec, other); s1 == spec || s1 == s2 {
		t.Fatal("the spec does not follow the python request")
	}
}
