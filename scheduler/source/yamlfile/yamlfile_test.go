package yamlfile

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelnodes/modelnodes/scheduler/source"
)

func TestFileSourceFollowsChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "models.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("models:\n  - {crunch: demo, model_id: a, model_dir: /m/a, desired: running}\n  - {crunch: demo, model_id: b, desired: running}\n")
	snaps := make(chan source.Snapshot, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = (&Source{Path: path, Interval: 20 * time.Millisecond}).Run(ctx, func(s source.Snapshot) { snaps <- s })
	}()
	s := <-snaps
	if len(s.Models) != 1 || !s.Models[0].Running || len(s.Skipped) != 1 || !strings.Contains(s.Skipped[0].Error(), `models[1] (model "b"`) {
		t.Fatalf("first read: %+v", s)
	}
	write("models: [oops")
	if s := <-snaps; s.Err == nil {
		t.Fatalf("broken YAML accepted: %+v", s)
	}
	write("models:\n  - {crunch: demo, model_id: a, model_dir: /m/a, desired: stopped}\n")
	if s := <-snaps; s.Err != nil || len(s.Models) != 1 || s.Models[0].Running {
		t.Fatalf("after the change: %+v", s)
	}
}
