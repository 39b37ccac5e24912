package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/names"
)

// FeedSource polls CrunchDAO's model-state feed, the one their orchestrator
// reads: GET {URL}/models/states?crunchNames[]=NAME...
type FeedSource struct {
	URL      string
	Crunches []string
	// ArtifactURL builds the artifact location of a model from the
	// placeholders {submission_id}, {resource_id} and {model_id}.
	ArtifactURL string
	Interval    time.Duration // default 10 s, as their orchestrator
	// ModelIDNames names jobs model-node-<model id> instead of a hash when
	// the id is a lowercase DNS label (CrunchDAO's client verifies the
	// runner's certificate as model-node-<model id>.crunchdao.internal).
	ModelIDNames bool
	Client       *http.Client
}

// Name implements Source.
func (f *FeedSource) Name() string { return "crunchdao-feed" }

// FeedEntry is one element of the feed's JSON array.
type FeedEntry struct {
	CrunchName             string `json:"crunchName"`
	CrunchPubKey           string `json:"crunchPubKey"`
	CruncherWalletPubkey   string `json:"cruncherWalletPubkey"`
	CruncherSmpHotkey      string `json:"cruncherSmpHotkey"`
	CoordinatorWalletPubky string `json:"coordinatorWalletPubkey"`
	CoordinatorCertificate struct {
		CertHash          string `json:"certHash"`
		CertHashSecondary string `json:"certHashSecondary"`
	} `json:"coordinatorCertificate"`
	Model struct {
		ID           string `json:"id"`
		SubmissionID string `json:"submissionId"`
		ResourceID   string `json:"resourceId"`
		HardwareType string `json:"hardwareType"`
		Signature    string `json:"signature"`
		Owner        string `json:"owner"`
		// ArtifactSHA256 is the artifact's digest (hex). CrunchDAO's feed
		// has no such field yet: without it a model with an artifact URL
		// is refused (an artifact is only fetched with its digest).
		ArtifactSHA256 string `json:"artifactSha256"`
	} `json:"model"`
	DesiredState string `json:"desiredState"`
}

// Run implements Source.
func (f *FeedSource) Run(ctx context.Context, report func(Snapshot)) error {
	if f.URL == "" || len(f.Crunches) == 0 {
		return errors.New("crunchdao feed: need a URL and at least one crunch name")
	}
	interval := f.Interval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	for {
		snap := f.read(ctx)
		snap.Err = redactErr(snap.Err) // the feed URL may carry credentials
		report(snap)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

func (f *FeedSource) read(ctx context.Context) Snapshot {
	q := url.Values{}
	for _, c := range f.Crunches {
		q.Add("crunchNames[]", c)
	}
	u := strings.TrimRight(f.URL, "/") + "/models/states?" + q.Encode()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, u, nil)
	if err != nil {
		return Snapshot{Err: err}
	}
	client := f.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return Snapshot{Err: fmt.Errorf("crunchdao feed: %w", err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return Snapshot{Err: fmt.Errorf("crunchdao feed: %w", err)}
	}
	if resp.StatusCode != http.StatusOK {
		return Snapshot{Err: fmt.Errorf("crunchdao feed: status %d: %.200s", resp.StatusCode, body)}
	}
	var entries []FeedEntry
	if err := json.Unmarshal(body, &entries); err != nil {
		return Snapshot{Err: fmt.Errorf("crunchdao feed: not a JSON array of model states: %w", err)}
	}
	return f.convert(entries)
}

func (f *FeedSource) convert(entries []FeedEntry) Snapshot {
	var snap Snapshot
	for i, e := range entries {
		m := jobs.Model{
			Crunch: e.CrunchName, CrunchID: e.CrunchPubKey, ModelID: e.Model.ID,
			Cruncher: e.CruncherWalletPubkey, Hotkey: e.CruncherSmpHotkey, SubmissionID: e.Model.SubmissionID,
			Coordinator: e.CoordinatorWalletPubky, CertHash: strings.ToLower(e.CoordinatorCertificate.CertHash),
			CertHashSecondary: strings.ToLower(e.CoordinatorCertificate.CertHashSecondary),
			Hardware:          jobs.Hardware(strings.ToLower(e.Model.HardwareType)),
			Running:           strings.Contains(strings.ToLower(e.DesiredState), "start"),
		}
		if m.Hardware == "" {
			m.Hardware = jobs.CPU
		}
		if f.ModelIDNames && names.IsLabel(m.ModelID, 52) {
			m.Name = m.ModelID
		}
		if f.ArtifactURL != "" {
			m.ArtifactSHA256 = strings.ToLower(e.Model.ArtifactSHA256)
			m.ArtifactURL = strings.NewReplacer("{submission_id}", e.Model.SubmissionID,
				"{resource_id}", e.Model.ResourceID, "{model_id}", e.Model.ID).Replace(f.ArtifactURL)
		}
		if err := m.Validate(); err != nil {
			snap.Skipped = append(snap.Skipped, &entryError{entry: fmt.Sprintf("feed entry %d (model %q of crunch %q)", i, e.Model.ID, e.CrunchName), err: err})
			continue
		}
		snap.Models = append(snap.Models, m)
	}
	sortModels(snap.Models)
	return snap
}

// FileSource reads models from a YAML file (development), re-reading it
// when its content changes:
//
//	models:
//	  - crunch: demo
//	    model_id: example
//	    model_dir: /srv/models/example   # or artifact_url + artifact_sha256
//	    hardware: cpu
//	    running: true
type FileSource struct {
	Path     string
	Interval time.Duration // how often to look for changes (default 1 s)
}

// Name implements Source.
func (f *FileSource) Name() string { return "file:" + f.Path }

// Run implements Source.
func (f *FileSource) Run(ctx context.Context, report func(Snapshot)) error {
	interval := f.Interval
	if interval <= 0 {
		interval = time.Second
	}
	var last []byte
	first := true
	for {
		b, err := os.ReadFile(f.Path)
		switch {
		case err != nil:
			report(Snapshot{Err: fmt.Errorf("models file: %w", err)})
			last = nil
		case first || string(b) != string(last):
			report(ParseModelsYAML(b))
			last, first = b, false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

// ParseModelsYAML parses a models file; invalid models are skipped, a file
// that is not YAML of that shape is an error.
func ParseModelsYAML(b []byte) Snapshot {
	var doc struct {
		Models []struct {
			jobs.Model `yaml:",inline"`
			// Desired accepts "running"/"stopped" besides running: bool.
			Desired string `yaml:"desired"`
		} `yaml:"models"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return Snapshot{Err: fmt.Errorf("models file: %w", err)}
	}
	var snap Snapshot
	for i, e := range doc.Models {
		m := e.Model
		switch strings.ToLower(e.Desired) {
		case "running", "start", "started":
			m.Running = true
		case "stopped", "stop":
			m.Running = false
		case "":
		default:
			snap.Skipped = append(snap.Skipped, &entryError{entry: fmt.Sprintf("models[%d]", i), err: fmt.Errorf("desired %q is neither running nor stopped", e.Desired)})
			continue
		}
		if m.Hardware == "" {
			m.Hardware = jobs.CPU
		}
		if err := m.Validate(); err != nil {
			snap.Skipped = append(snap.Skipped, &entryError{entry: fmt.Sprintf("models[%d] (model %q of crunch %q)", i, m.ModelID, m.Crunch), err: err})
			continue
		}
		snap.Models = append(snap.Models, m)
	}
	sortModels(snap.Models)
	return snap
}
