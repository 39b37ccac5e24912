// Package feed is the scheduler's source for CrunchDAO's model-state feed,
// the one their orchestrator polls: GET {url}/models/states?crunchNames[]=NAME...
// Every entry is the feed's, so attacker-controlled: each becomes a
// jobs.Model only through jobs.Model.Validate, and the scheduler's watcher
// applies the deployment's policy after that.
package feed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/modelnodes/modelnodes/internal/redact"
	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/scheduler/source"
)

// Source polls CrunchDAO's model-state feed, the one their orchestrator
// reads: GET {URL}/models/states?crunchNames[]=NAME...
type Source struct {
	URL      string
	Crunches []string
	// ArtifactURL builds the artifact location of a model from the
	// placeholders {submission_id}, {resource_id} and {model_id}.
	ArtifactURL string
	// ResourcesURL, when set, builds the location of a model's resources
	// archive the same way, for entries that name a resource id; its digest
	// is the entry's model.resourcesSha256 (required, as for the artifact).
	ResourcesURL string
	Interval     time.Duration // default 10 s, as their orchestrator
	Client       *http.Client

	// last holds, per crunch asked for, the models of the last reading
	// that listed any (an empty listing keeps them: not evidence).
	last map[string][]jobs.Model
}

// Name implements source.Source.
func (f *Source) Name() string { return "crunchdao-feed" }

// Entry is one element of the feed's JSON array.
type Entry struct {
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
		// ResourcesSHA256 is the resources archive's digest (hex); like
		// ArtifactSHA256, not in CrunchDAO's feed yet.
		ResourcesSHA256 string `json:"resourcesSha256"`
	} `json:"model"`
	DesiredState string `json:"desiredState"`
}

// Run implements source.Source.
func (f *Source) Run(ctx context.Context, report func(source.Snapshot)) error {
	if f.URL == "" || len(f.Crunches) == 0 {
		return errors.New("crunchdao feed: need a URL and at least one crunch name")
	}
	interval := f.Interval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	for {
		snap := f.read(ctx)
		snap.Err = redact.Error(snap.Err) // the feed URL may carry credentials
		report(snap)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

func (f *Source) read(ctx context.Context) source.Snapshot {
	q := url.Values{}
	for _, c := range f.Crunches {
		q.Add("crunchNames[]", c)
	}
	u := strings.TrimRight(f.URL, "/") + "/models/states?" + q.Encode()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, u, nil)
	if err != nil {
		return source.Snapshot{Err: err}
	}
	client := f.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return source.Snapshot{Err: fmt.Errorf("crunchdao feed: %w", err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return source.Snapshot{Err: fmt.Errorf("crunchdao feed: %w", err)}
	}
	if resp.StatusCode != http.StatusOK {
		return source.Snapshot{Err: fmt.Errorf("crunchdao feed: status %d: %.200s", resp.StatusCode, body)}
	}
	var entries []Entry
	if err := json.Unmarshal(body, &entries); err != nil {
		return source.Snapshot{Err: fmt.Errorf("crunchdao feed: not a JSON array of model states: %w", err)}
	}
	return f.keepListedEmpty(entries, f.convert(entries))
}

// keepListedEmpty fails static per crunch: a crunch asked for of which the
// feed lists no entry at all keeps the models of the last reading that
// listed some (a feed that answers an empty list, after a restart or for
// a lost crunch, is no evidence that its models were revoked). An entry
// of the crunch, even STOPPED or refused, is evidence about the crunch:
// its models absent from that listing are no longer desired.
func (f *Source) keepListedEmpty(entries []Entry, snap source.Snapshot) source.Snapshot {
	listed := map[string]bool{}
	for _, e := range entries {
		listed[e.CrunchName] = true
	}
	if f.last == nil {
		f.last = map[string][]jobs.Model{}
	}
	for _, c := range f.Crunches {
		if listed[c] {
			f.last[c] = nil
			for _, m := range snap.Models {
				if m.Crunch == c {
					f.last[c] = append(f.last[c], m)
				}
			}
			continue
		}
		if kept := f.last[c]; len(kept) > 0 {
			snap.Models = append(snap.Models, kept...)
			snap.Kept = append(snap.Kept, &source.EntryError{Entry: fmt.Sprintf("crunch %q", c),
				Err: fmt.Errorf("the feed lists no model of it: keeping the %d of its last listing that had any (an empty listing is no evidence)", len(kept))})
		}
	}
	source.SortModels(snap.Models)
	return snap
}

func (f *Source) convert(entries []Entry) source.Snapshot {
	var snap source.Snapshot
	var labels []string
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
		fill := strings.NewReplacer("{submission_id}", e.Model.SubmissionID,
			"{resource_id}", e.Model.ResourceID, "{model_id}", e.Model.ID).Replace
		if f.ArtifactURL != "" {
			m.ArtifactSHA256 = strings.ToLower(e.Model.ArtifactSHA256)
			m.ArtifactURL = fill(f.ArtifactURL)
			if f.ResourcesURL != "" && e.Model.ResourceID != "" {
				m.ResourcesSHA256 = strings.ToLower(e.Model.ResourcesSHA256)
				m.ResourcesURL = fill(f.ResourcesURL)
			}
		}
		if err := m.Validate(); err != nil {
			snap.Skipped = append(snap.Skipped, &source.EntryError{Entry: fmt.Sprintf("feed entry %d (model %q of crunch %q)", i, e.Model.ID, e.CrunchName), Err: err})
			continue
		}
		snap.Models = append(snap.Models, m)
		labels = append(labels, fmt.Sprintf("feed entry %d", i))
	}
	// Entries of the same model: the first in the feed's order that wants
	// it running is used.
	snap.Models, snap.Duplicates = source.Dedupe(snap.Models, labels)
	source.SortModels(snap.Models)
	return snap
}
