package jobs

import (
	"crypto/sha256"
	"fmt"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/names"
)

// Python is the Python a submission asks for, as the scheduler read it from
// the code archive (package scheduler/inspect): Request says what and where
// ("3.13 (.python-version)"), Regexp is pyversion.Request.ListRegexp's
// expression over the driver's names.AttrPythonVersions. The zero Python
// asks for nothing: the job gets no constraint.
type Python struct {
	Request string
	Regexp  string
}

// PythonAttr is the constraint's left side: the node attribute listing the
// node's interpreters' versions.
const PythonAttr = "${attr." + names.AttrPythonVersions + "}"

// ConstrainPython constrains every group of job to the nodes that have a
// Python matching p, and records p.Request in the job's meta. A request no
// node meets leaves the job's evaluation blocked until one joins. Both
// strings derive from a submission's files: they pass CheckString (the
// grammar that made them already allows none of Nomad's interpolation
// characters; this holds it should that change).
func ConstrainPython(job *nomadapi.Job, p Python) error {
	if p.Regexp == "" {
		return nil
	}
	for _, s := range []string{p.Request, p.Regexp} {
		if err := CheckString(s); err != nil {
			return fmt.Errorf("python constraint: %w", err)
		}
	}
	for _, tg := range job.TaskGroups {
		tg.Constraints = append(tg.Constraints, nomadapi.NewConstraint(PythonAttr, "regexp", p.Regexp))
	}
	if job.Meta == nil {
		job.Meta = map[string]string{}
	}
	job.Meta[names.MetaPython] = p.Request
	return nil
}

// SpecWithPython folds p into a SpecHash, so that a job is updated when the
// Python its submission asks for becomes known or changes; without a
// request the spec is SpecHash's, and jobs built before the scheduler read
// submissions stay unchanged.
func SpecWithPython(spec string, p Python) string {
	if p.Regexp == "" {
		return spec
	}
	sum := sha256.Sum256([]byte(spec + "\x00" + p.Request + "\x00" + p.Regexp))
	return names.Base32.EncodeToString(sum[:15])
}
