// Package yamlfile is the scheduler's development source: models listed in
// a YAML file the operator writes, re-read when it changes. It is the only
// source that may name a host model directory (and the watcher still
// refuses one without --allow-host-model-dirs).
package yamlfile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/modelnodes/modelnodes/jobs"
	"github.com/modelnodes/modelnodes/scheduler/source"
)

// Source reads models from a YAML file (development), re-reading it
// when its content changes:
//
//	models:
//	  - crunch: demo
//	    model_id: example
//	    model_dir: /srv/models/example   # or artifact_url + artifact_sha256
//	    # resources_url + resources_sha256: the resources archive (with an artifact)
//	    hardware: cpu
//	    running: true
type Source struct {
	Path     string
	Interval time.Duration // how often to look for changes (default 1 s)
}

// Name implements source.Source.
func (f *Source) Name() string { return "file:" + f.Path }

// Run implements source.Source.
func (f *Source) Run(ctx context.Context, report func(source.Snapshot)) error {
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
			report(source.Snapshot{Err: fmt.Errorf("models file: %w", err)})
			last = nil
		case first || string(b) != string(last):
			report(Parse(b))
			last, first = b, false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

// Parse parses a models file; invalid models are skipped, a file
// that is not YAML of that shape is an error.
func Parse(b []byte) source.Snapshot {
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
		return source.Snapshot{Err: fmt.Errorf("models file: %w", err)}
	}
	var snap source.Snapshot
	var entries []string
	for i, e := range doc.Models {
		m := e.Model
		switch strings.ToLower(e.Desired) {
		case "running", "start", "started":
			m.Running = true
		case "stopped", "stop":
			m.Running = false
		case "":
		default:
			snap.Skipped = append(snap.Skipped, &source.EntryError{Entry: fmt.Sprintf("models[%d]", i), Err: fmt.Errorf("desired %q is neither running nor stopped", e.Desired)})
			continue
		}
		if m.Hardware == "" {
			m.Hardware = jobs.CPU
		}
		if err := m.Validate(); err != nil {
			snap.Skipped = append(snap.Skipped, &source.EntryError{Entry: fmt.Sprintf("models[%d] (model %q of crunch %q)", i, m.ModelID, m.Crunch), Err: err})
			continue
		}
		snap.Models = append(snap.Models, m)
		entries = append(entries, fmt.Sprintf("models[%d]", i))
	}
	// The operator's own file: an entry removed is evidence, and of two
	// entries of one model the first listed that wants it running is used.
	snap.Models, snap.Duplicates = source.Dedupe(snap.Models, entries)
	source.SortModels(snap.Models)
	return snap
}
