package feed

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const feedBody = `[
 {"crunchName":"mid-one","crunchPubKey":"9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin",
  "cruncherWalletPubkey":"HN7cABqLq46Es1jh92dQQisAq662SmxELLLsHHe4YWrH","cruncherSmpHotkey":"hk",
  "coordinatorWalletPubkey":"CoordWa11et","coordinatorCertificate":{"certHash":"AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12","certHashSecondary":""},
  "model":{"id":"1234","submissionId":"sub-1","resourceId":"res-1","hardwareType":"CPU","signature":"s","owner":"o",
    "artifactSha256":"CDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCD"},
  "desiredState":"RUNNING_START"},
 {"crunchName":"mid-one","model":{"id":"99","submissionId":"sub-9","hardwareType":"GPU","artifactSha256":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"},"desiredState":"STOP"},
 {"crunchName":"mid-one","model":{"id":"","submissionId":"x","hardwareType":"CPU"},"desiredState":"START"}
]`

func TestFeed(t *testing.T) {
	var body = feedBody
	var gotQuery string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotQuery = r.URL.RawQuery
		if r.URL.Path != "/models/states" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	f := &Source{URL: srv.URL, Crunches: []string{"mid-one"}, ArtifactURL: "https://store/{submission_id}.tar.gz"}
	snap := f.read(context.Background())
	if snap.Err != nil || len(snap.Models) != 2 || len(snap.Skipped) != 1 {
		t.Fatalf("snapshot: %+v", snap)
	}
	if !strings.Contains(gotQuery, "crunchNames%5B%5D=mid-one") {
		t.Fatalf("query %q lacks crunchNames[]", gotQuery)
	}
	m := snap.Models[0]
	if m.ModelID != "1234" || !m.Running || m.ArtifactURL != "https://store/sub-1.tar.gz" || m.CertHash != strings.Repeat("ab12", 16) || m.ArtifactSHA256 != strings.Repeat("cd", 32) || m.Hotkey != "hk" {
		t.Fatalf("model: %+v", m)
	}
	if snap.Models[1].Running || snap.Models[1].Hardware != "gpu" {
		t.Fatalf("stopped GPU model: %+v", snap.Models[1])
	}
	if !strings.Contains(snap.Skipped[0].Error(), "feed entry 2") {
		t.Fatalf("skip does not name the entry: %v", snap.Skipped[0])
	}
	body = "<html>bad gateway</html>"
	if snap := f.read(context.Background()); snap.Err == nil {
		t.Fatal("garbage accepted as a feed")
	}
	srv.Close()
	if snap := f.read(context.Background()); snap.Err == nil {
		t.Fatal("an unreachable feed must be an error, not an empty state")
	}
}

// With --feed-resources-url, an entry naming a resource id gets its
// resources archive, with the entry's digest; one without a digest is
// skipped with the reason; one without a resource id has none.
func TestFeedResources(t *testing.T) {
	f := &Source{ArtifactURL: "https://store/{submission_id}.tar.gz", ResourcesURL: "https://store/resources/{resource_id}.tar.gz"}
	entry := func(id, resource, digest string) Entry {
		var e Entry
		e.CrunchName, e.Model.ID, e.Model.SubmissionID, e.Model.HardwareType, e.DesiredState = "c", id, "sub-"+id, "CPU", "START"
		e.Model.ArtifactSHA256, e.Model.ResourceID, e.Model.ResourcesSHA256 = strings.Repeat("ab", 32), resource, digest
		return e
	}
	snap := f.convert([]Entry{entry("m1", "res-1", strings.Repeat("EF", 32)), entry("m2", "", ""), entry("m3", "res-3", "")})
	if len(snap.Models) != 2 || len(snap.Skipped) != 1 || !strings.Contains(snap.Skipped[0].Error(), "resources: no sha256") {
		t.Fatalf("snapshot: %+v %v", snap.Models, snap.Skipped)
	}
	m1, m2 := snap.Models[0], snap.Models[1]
	if m1.ResourcesURL != "https://store/resources/res-1.tar.gz" || m1.ResourcesSHA256 != strings.Repeat("ef", 32) {
		t.Errorf("m1's resources: %q %q", m1.ResourcesURL, m1.ResourcesSHA256)
	}
	if m2.ResourcesURL != "" || m2.ResourcesSHA256 != "" {
		t.Errorf("m2 names no resource id but got %q %q", m2.ResourcesURL, m2.ResourcesSHA256)
	}
}

// A feed that answers an empty list (for one crunch, or for all) is no
// evidence that the crunch's models were revoked: they stay, and the
// snapshot says why. An entry of the crunch, even STOPPED, is evidence:
// a model absent from such a listing goes.
func TestFeedEmptyListingKeepsTheCrunch(t *testing.T) {
	body := feedBody
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(body)) }))
	defer srv.Close()
	f := &Source{URL: srv.URL, Crunches: []string{"mid-one", "other"}, ArtifactURL: "https://store/{submission_id}.tar.gz"}
	if snap := f.read(context.Background()); len(snap.Models) != 2 || len(snap.Kept) != 0 {
		t.Fatalf("first reading: %+v", snap)
	}
	for _, empty := range []string{"[]", `[{"crunchName":"other","model":{"id":"o"},"desiredState":"START"}]`} {
		body = empty
		snap := f.read(context.Background())
		if snap.Err != nil || len(snap.Models) != 2 || !snap.Models[0].Running || len(snap.Kept) != 1 ||
			!strings.Contains(snap.Kept[0].Error(), `crunch "mid-one"`) {
			t.Fatalf("an empty listing of mid-one (%s) changed its models: %+v", empty, snap)
		}
	}
	// mid-one listed again, with only model 99 (STOPPED): 1234 goes.
	body = `[{"crunchName":"mid-one","model":{"id":"99","submissionId":"sub-9","hardwareType":"GPU","artifactSha256":"` +
		strings.Repeat("cd", 32) + `"},"desiredState":"STOP"}]`
	snap := f.read(context.Background())
	if len(snap.Models) != 1 || snap.Models[0].ModelID != "99" || len(snap.Kept) != 0 {
		t.Fatalf("a listing of the crunch is evidence: %+v", snap)
	}
}

// Two entries of one model: the first (in the feed's order) that wants it
// running is used, whatever comes after; the other is named as a duplicate.
func TestFeedDuplicates(t *testing.T) {
	f := &Source{ArtifactURL: "https://store/{submission_id}.tar.gz"}
	entry := func(sub, state string) Entry {
		var e Entry
		e.CrunchName, e.Model.ID, e.Model.SubmissionID, e.Model.HardwareType, e.DesiredState = "c", "m", sub, "CPU", state
		e.Model.ArtifactSHA256 = strings.Repeat("ab", 32)
		return e
	}
	snap := f.convert([]Entry{entry("old", "STOP"), entry("a", "START"), entry("b", "START")})
	if len(snap.Models) != 1 || snap.Models[0].SubmissionID != "a" || len(snap.Duplicates) != 2 ||
		snap.Duplicates[0].Used != "feed entry 1" || !strings.Contains(snap.Duplicates[1].Error(), "feed entry 2") {
		t.Fatalf("duplicates: %+v", snap)
	}
}
