package scheduler

import (
	"encoding/json"
	"net/http"
	"sort"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/modelnodes/modelnodes/scheduler/observer"
)

// ModelStatus is one model in the status API.
type ModelStatus struct {
	JobID    string `json:"job_id"`
	Crunch   string `json:"crunch"`
	ModelID  string `json:"model_id"`
	Cruncher string `json:"cruncher,omitempty"`
	Source   string `json:"source,omitempty"`
	Desired  string `json:"desired"` // running, stopped, absent
	// Python is what the submission's code asks for, when it asks.
	Python string `json:"python,omitempty"`
	observer.ModelState
}

// Handler serves the status API: GET /v1/status, GET /v1/models,
// GET /metrics (Prometheus) and GET /healthz.
func (s *Scheduler) Handler() http.Handler {
	s.init()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		desired, complete := s.watcher.Desired()
		s.mu.Lock()
		body := map[string]any{
			"leader": s.leading, "sources_ready": complete, "desired_models": len(desired),
			"sources": s.watcher.Sources(), "last_reconcile": s.last,
		}
		s.mu.Unlock()
		writeJSON(w, body)
	})
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, s.Models())
	})
	if s.Metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.Metrics.Registry, promhttp.HandlerOpts{}))
	}
	return mux
}

// Models joins the desired state with the observed one, by job id.
func (s *Scheduler) Models() []ModelStatus {
	desired, _ := s.watcher.Desired()
	var observed []observer.ModelState
	if s.Observer != nil {
		observed = s.Observer.States()
	}
	notes, blocked := s.pythonNotes(), s.placementNotes()
	seen := map[string]bool{}
	var out []ModelStatus
	for _, st := range observed {
		ms := ModelStatus{JobID: st.JobID, Desired: "absent", ModelState: st}
		if d := desired[st.JobID]; d != nil {
			fill(&ms, d)
			n, ok := notes[st.JobID]
			annotate(&ms, n, ok, blocked[st.JobID])
		}
		seen[st.JobID] = true
		out = append(out, ms)
	}
	for id, d := range desired {
		if seen[id] {
			continue
		}
		ms := ModelStatus{JobID: id, ModelState: observer.ModelState{JobID: id, State: observer.StatePending}}
		if !d.Model.Running {
			ms.State = observer.StateStopped
		}
		fill(&ms, d)
		if d.Model.Running {
			n, ok := notes[id]
			annotate(&ms, n, ok, blocked[id])
		}
		out = append(out, ms)
	}
	sortStatuses(out)
	return out
}

func fill(ms *ModelStatus, d *Desired) {
	ms.Crunch, ms.ModelID, ms.Cruncher, ms.Source = d.Model.Crunch, d.Model.ModelID, d.Model.Cruncher, d.Source
	ms.Desired = "stopped"
	if d.Model.Running {
		ms.Desired = "running"
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func sortStatuses(ms []ModelStatus) {
	sort.Slice(ms, func(i, j int) bool { return ms[i].JobID < ms[j].JobID })
}
