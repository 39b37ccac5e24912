//go:build e2e

package scheduler

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/internal/pyversion"
	"github.com/modelnodes/modelnodes/internal/testing/testcluster"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/nomad"
	"github.com/modelnodes/modelnodes/scheduler/inspect"
	"github.com/modelnodes/modelnodes/scheduler/observer"
	"github.com/modelnodes/modelnodes/scheduler/source/yamlfile"
)

// On the real Nomad with the real driver: the node reports its Python
// versions; a model whose code asks for one of them is placed there; one
// whose code asks for a Python no node has is registered, Nomad blocks its
// placement on the python constraint, and the status API says why instead
// of an endless "pending".
func TestE2EPythonConstraint(t *testing.T) {
	cl := testcluster.Shared(t, testcluster.Nomad)
	nc := nomad.Wrap(cl.Nomad.Client)
	t.Cleanup(func() { purgeAll(t, nc) })
	requireModelbox(t, cl.Nomad.Client)

	// The node's attribute, read with the test's management token (the
	// scheduler's own token may not read nodes: it learns from Nomad's
	// evaluations instead).
	nodes, _, err := cl.Nomad.Client.Nodes().List(nil)
	if err != nil || len(nodes) == 0 {
		t.Fatalf("nodes: %v", err)
	}
	node, _, err := cl.Nomad.Client.Nodes().Info(nodes[0].ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	have := node.Attributes[names.AttrPythonVersions]
	t.Logf("node %s: %s = %q (driver attributes: %q)", node.Name, names.AttrPythonVersions, have,
		node.Drivers["modelbox"].Attributes[names.AttrPythonVersions])
	vs, err := pyversion.ParseList(have)
	if err != nil || len(vs) == 0 {
		t.Fatalf("the node's list %q: %v", have, err)
	}
	nodeMinor := strings.Join(strings.Split(vs[0].String(), ".")[:2], ".") // "3.11"

	var archives sync.Map
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := archives.Load(r.URL.Path)
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(b.([]byte))
	}))
	defer srv.Close()
	model := func(id string, files map[string]string) jobs.Model {
		b, sum := codeArchive(t, files)
		archives.Store("/"+id+".tar.gz", b)
		return jobs.Model{Crunch: "lead", ModelID: id, Hardware: jobs.CPU, Running: true,
			ArtifactURL: srv.URL + "/" + id + ".tar.gz", ArtifactSHA256: sum}
	}
	fits := model("python-fits", map[string]string{".python-version": nodeMinor + "\n", "main.py": ""})
	future := model("python-future", map[string]string{"pyproject.toml": "[project]\nname = \"m\"\nrequires-python = \">=3.99\"\n"})

	s := startSchedulerWith(t, func(s *Scheduler) {
		s.Inspector = &inspect.Inspector{Options: testOptions, TempDir: t.TempDir()}
		s.Placements = nc
	}, nc, nc, nil, &yamlfile.Source{Path: modelsFile(t, fits, future)})
	status := httptest.NewServer(s.s.Handler())
	defer status.Close()

	// The model asking for the node's Python is placed on the node.
	api := cl.Nomad.Client
	deadline := time.Now().Add(90 * time.Second)
	for {
		allocs, _, err := api.Jobs().Allocations(jobs.JobID(jobs.Named(&fits)), false, nil)
		if err == nil && len(allocs) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the model asking for python %s was not placed (err %v)", nodeMinor, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	job, _, err := api.Jobs().Info(jobs.JobID(jobs.Named(&fits)), nil)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range job.TaskGroups[0].Constraints {
		found = found || c.LTarget == jobs.PythonAttr && c.Operand == "regexp"
	}
	if !found {
		t.Fatal("the placed job has no python constraint")
	}

	// The other is registered, blocked by the constraint, and reported.
	futureID := jobs.JobID(jobs.Named(&future))
	var last []ModelStatus
	for deadline = time.Now().Add(60 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no blocked placement reported: %+v", last)
		}
		evals, _, err := api.Jobs().Evaluations(futureID, nil)
		if err != nil || !constraintFiltered(evals) {
			continue
		}
		allocs, _, _ := api.Jobs().Allocations(futureID, false, nil)
		if len(allocs) != 0 {
			t.Fatalf("the model asking for >=3.99 was placed: %d allocations", len(allocs))
		}
		last = nil
		getJSON(t, status.URL+"/v1/models", &last)
		for _, ms := range last {
			if ms.JobID != futureID {
				continue
			}
			want := "no node has a python matching >=3.99 (requires-python in pyproject.toml) (nodes evaluated: 1)"
			if ms.State == observer.StatePending && ms.Reason == want {
				t.Logf("reported: state=%s reason=%q", ms.State, ms.Reason)
				return
			}
		}
	}
}

// constraintFiltered says an evaluation of the job failed to place its
// group because every node was filtered by the python constraint.
func constraintFiltered(evals []*nomadapi.Evaluation) bool {
	for _, e := range evals {
		for _, m := range e.FailedTGAllocs {
			for c := range m.ConstraintFiltered {
				if strings.Contains(c, names.AttrPythonVersions) {
					return true
				}
			}
		}
	}
	return false
}
