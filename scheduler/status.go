package scheduler

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/scheduler/observer"
	"github.com/modelnodes/modelnodes/scheduler/quarantine"
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
	// Duplicate names the two entries (accounts) that claim this model,
	// when two do.
	Duplicate string `json:"duplicate,omitempty"`
	// Quarantine says why the model is held stopped after its
	// coordinator's reports, while it is.
	Quarantine *quarantine.Record `json:"quarantine,omitempty"`
	observer.ModelState
}

// placementNote gives a pending model without a reason Nomad's placement
// failure, when there is one.
func placementNote(ms *ModelStatus, blocked string) {
	if ms.State == observer.StatePending && ms.Reason == "" && blocked != "" {
		ms.Reason = blocked
	}
}

// Handler serves the status API: GET /v1/status, GET /v1/models,
// GET /v1/quarantines, GET /metrics (Prometheus), GET /healthz, and the
// write endpoints POST /v1/stop-holds/confirm and POST
// /v1/quarantines/lift (bearer AdminToken).
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
		body["stop_holds"] = s.Reconciler.Guard.Holds()
		if s.Quarantine != nil {
			recs, _ := s.Quarantine.Cached()
			body["quarantined_models"] = len(recs)
		}
		writeJSON(w, body)
	})
	mux.HandleFunc("POST /v1/stop-holds/confirm", s.confirmStops)
	mux.HandleFunc("GET /v1/quarantines", s.listQuarantines)
	mux.HandleFunc("POST /v1/quarantines/lift", s.liftQuarantine)
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
	var held map[string]quarantine.Record
	if s.Quarantine != nil {
		held, _ = s.Quarantine.Cached()
	}
	seen := map[string]bool{}
	var out []ModelStatus
	for _, st := range observed {
		ms := ModelStatus{JobID: st.JobID, Desired: "absent", ModelState: st}
		if d := desired[st.JobID]; d != nil {
			fill(&ms, d)
			n, ok := notes[st.JobID]
			annotate(&ms, n, ok, blocked[st.JobID])
			placementNote(&ms, blocked[st.JobID])
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
			placementNote(&ms, blocked[id])
		}
		out = append(out, ms)
	}
	for i := range out {
		if rec, ok := held[out[i].JobID]; ok {
			out[i].Quarantine = &rec
		}
	}
	sortStatuses(out)
	return out
}

func fill(ms *ModelStatus, d *Desired) {
	ms.Crunch, ms.ModelID, ms.Cruncher, ms.Source = d.Model.Crunch, d.Model.ModelID, d.Model.Cruncher, d.Source
	ms.Duplicate = d.Duplicate
	ms.Desired = "stopped"
	if d.Model.Running {
		ms.Desired = "running"
	}
}

// ConfirmRequest is the body of POST /v1/stop-holds/confirm.
type ConfirmRequest struct {
	// Crunch names the hold to confirm (its id or name); empty confirms
	// every hold.
	Crunch string `json:"crunch"`
}

// confirmStops serves POST /v1/stop-holds/confirm: an operator confirms
// held stops, which the next pass then makes (StopGuard.Confirm).
func (s *Scheduler) confirmStops(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(w, r) {
		return
	}
	var req ConfirmRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		http.Error(w, "body: want {\"crunch\": \"<crunch id or name>\"} or nothing: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !s.Leading() {
		http.Error(w, "this instance does not lead: held stops live in the leader; ask it", http.StatusConflict)
		return
	}
	held, err := s.Reconciler.Guard.Confirm(req.Crunch)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	s.Kick()
	writeJSON(w, map[string]any{"confirmed": held})
}

// LiftRequest is the body of POST /v1/quarantines/lift.
type LiftRequest struct {
	// Model names the quarantined model: its job id, its short id (as
	// CrunchDAO's coordinators see it) or its full model id.
	Model string `json:"model"`
}

// listQuarantines serves GET /v1/quarantines: every quarantine, read from
// Consul KV now.
func (s *Scheduler) listQuarantines(w http.ResponseWriter, r *http.Request) {
	if s.Quarantine == nil {
		http.Error(w, "quarantines are off: this scheduler has no Consul (see --failure-policy)", http.StatusNotFound)
		return
	}
	recs, err := s.Quarantine.List(r.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	list := make([]quarantine.Record, 0, len(recs))
	for _, id := range slices.Sorted(maps.Keys(recs)) {
		list = append(list, recs[id])
	}
	writeJSON(w, map[string]any{"quarantines": list})
}

// liftQuarantine serves POST /v1/quarantines/lift: an operator ends a
// model's quarantine, and the leader's next pass starts the model again.
// Any instance can answer it (the record is in Consul KV).
func (s *Scheduler) liftQuarantine(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(w, r) {
		return
	}
	if s.Quarantine == nil {
		http.Error(w, "quarantines are off: this scheduler has no Consul (see --failure-policy)", http.StatusNotFound)
		return
	}
	var req LiftRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil || req.Model == "" {
		http.Error(w, `body: want {"model": "<job id, short id or model id>"}`, http.StatusBadRequest)
		return
	}
	recs, err := s.Quarantine.List(r.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	var lifted []quarantine.Record
	for _, id := range slices.Sorted(maps.Keys(recs)) {
		rec := recs[id]
		if req.Model != id && req.Model != rec.ModelID && names.Job(req.Model) != id {
			continue
		}
		ok, err := s.Quarantine.Delete(r.Context(), id, rec.Index)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		if !ok {
			http.Error(w, "the quarantine of "+id+" changed meanwhile; list it again", http.StatusConflict)
			return
		}
		s.Metrics.quarantineLifted("operator")
		s.Logger.Warn("quarantine lifted by an operator", "job", id, "crunch", rec.Crunch, "model", rec.ModelID, "code", rec.Code, "since", rec.At)
		lifted = append(lifted, rec)
	}
	if len(lifted) == 0 {
		http.Error(w, "no quarantine of model "+strconv.Quote(req.Model), http.StatusNotFound)
		return
	}
	s.Kick()
	writeJSON(w, map[string]any{"lifted": lifted})
}

// authorized checks a write request's bearer token against AdminToken,
// and answers it when it fails.
func (s *Scheduler) authorized(w http.ResponseWriter, r *http.Request) bool {
	if s.AdminToken == "" {
		http.Error(w, "write endpoints are off: start the scheduler with --admin-token (or MODELNODES_SCHEDULER_ADMIN_TOKEN)", http.StatusForbidden)
		return false
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(s.AdminToken)) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="modelnodes scheduler"`)
		http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
		return false
	}
	return true
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
