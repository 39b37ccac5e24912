package jobs

import (
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
)

// specBeforeDisconnect is SpecHash(model(), opts()) without disconnect
// settings (spec version 7): settings that give a job no disconnect block
// must not rewrite it.
const specBeforeDisconnect = "ggv33axv63cmsme6i2m4ks2o"

func TestDisconnectOffKeepsJobsAndTheirHash(t *testing.T) {
	m := model()
	if got := SpecHash(m, opts()); got != specBeforeDisconnect {
		t.Fatalf("spec hash %s, want %s: every running job would be rewritten", got, specBeforeDisconnect)
	}
	o := opts()
	o.CrunchDisconnect = map[string]Disconnect{"another crunch": {LostAfter: time.Hour, Replace: true}}
	if got := SpecHash(m, o); got != specBeforeDisconnect {
		t.Fatalf("another crunch's setting changed this crunch's spec hash (%s)", got)
	}
	job, err := Build(m, o)
	if err != nil {
		t.Fatal(err)
	}
	if d := job.TaskGroups[0].Disconnect; d != nil {
		t.Fatalf("disconnect block %+v for a crunch without a setting", d)
	}
}

func TestDisconnectBlockPerCrunch(t *testing.T) {
	m := model()
	for _, tc := range []struct {
		name    string
		o       func(*Options)
		want    *Disconnect // nil: no block
		replace bool
	}{
		{"default for every crunch", func(o *Options) { o.Disconnect = Disconnect{LostAfter: 5 * time.Minute, Replace: true} },
			&Disconnect{5 * time.Minute, true}, true},
		{"crunch by name wins over the default", func(o *Options) {
			o.Disconnect = Disconnect{LostAfter: 5 * time.Minute, Replace: true}
			o.CrunchDisconnect = map[string]Disconnect{m.Crunch: {LostAfter: time.Hour}}
		}, &Disconnect{time.Hour, false}, false},
		{"crunch by on-chain id", func(o *Options) {
			o.CrunchDisconnect = map[string]Disconnect{m.CrunchID: {LostAfter: 10 * time.Minute, Replace: true}}
		}, &Disconnect{10 * time.Minute, true}, true},
		{"a crunch turned off under a default", func(o *Options) {
			o.Disconnect = Disconnect{LostAfter: 5 * time.Minute, Replace: true}
			o.CrunchDisconnect = map[string]Disconnect{m.Crunch: {}}
		}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := opts()
			tc.o(o)
			job, err := Build(m, o)
			if err != nil {
				t.Fatal(err)
			}
			got := job.TaskGroups[0].Disconnect
			if tc.want == nil {
				if got != nil {
					t.Fatalf("disconnect block %+v, want none", got)
				}
				if SpecHash(m, o) != specBeforeDisconnect {
					t.Fatal("a job without a block changed its spec hash")
				}
				return
			}
			if got == nil || *got.LostAfter != tc.want.LostAfter || *got.Replace != tc.replace ||
				*got.Reconcile != nomadapi.ReconcileOptionKeepReplacement || got.StopOnClientAfter != nil {
				t.Fatalf("disconnect block %+v, want lost_after %s, replace %v, reconcile keep_replacement", got, tc.want.LostAfter, tc.replace)
			}
			if job.Meta["modelnodes_spec"] == specBeforeDisconnect || SpecHash(m, o) == specBeforeDisconnect {
				t.Fatal("a disconnect block must change the spec hash, or running jobs would never get it")
			}
		})
	}
	// Another lost_after, or replace, is another spec.
	a, b := opts(), opts()
	a.Disconnect = Disconnect{LostAfter: time.Minute, Replace: true}
	b.Disconnect = Disconnect{LostAfter: time.Minute}
	if SpecHash(m, a) == SpecHash(m, b) {
		t.Fatal("replace is not in the spec hash")
	}
	b.Disconnect = Disconnect{LostAfter: 2 * time.Minute, Replace: true}
	if SpecHash(m, a) == SpecHash(m, b) {
		t.Fatal("lost_after is not in the spec hash")
	}
}

func TestParseCrunchDisconnect(t *testing.T) {
	got, err := ParseCrunchDisconnect([]string{"mid-one=10m", "big=1h:no-replace", "flaky=90s:replace", "calm=0", "a=b=5m"}, true)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Disconnect{
		"mid-one": {10 * time.Minute, true}, "big": {time.Hour, false}, "flaky": {90 * time.Second, true},
		"calm": {}, "a=b": {5 * time.Minute, true},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %v, want %v", k, got[k], v)
		}
	}
	if d, _ := ParseCrunchDisconnect([]string{"x=10m"}, false); d["x"].Replace {
		t.Error("without a suffix, replace must be the default given")
	}
	for _, bad := range [][]string{{"mid-one"}, {"=10m"}, {"x=soon"}, {"x=-1m"}, {"x=10m:maybe"}, {"x=1m", "x=2m"}} {
		if _, err := ParseCrunchDisconnect(bad, true); err == nil {
			t.Errorf("%q accepted", bad)
		} else if !strings.Contains(err.Error(), bad[0]) && !strings.Contains(err.Error(), "twice") {
			t.Errorf("%q: error %v does not name the entry", bad, err)
		}
	}
}
