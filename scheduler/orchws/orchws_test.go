package orchws

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/modelnodes/modelnodes/client/discovery"
	"github.com/modelnodes/modelnodes/names"
	"github.com/modelnodes/modelnodes/runner/authz"
)

func member(id, target, submission string) discovery.Model {
	meta := map[string]string{names.MetaModelID: id, names.MetaModel: "Full" + id, names.MetaCruncher: "W" + id, names.MetaHotkey: "h" + id}
	if submission != "" {
		meta[names.MetaSubmission] = submission
	}
	return discovery.Model{ID: id, Target: target, Meta: meta}
}

func newFeed() *feed {
	return &feed{ready: make(chan struct{}), models: map[string]model{}, subs: map[*subscriber]bool{}, seen: map[string]bool{}}
}

// next returns the event sent to sub, or fails when none was.
func next(t *testing.T, sub *subscriber) event {
	t.Helper()
	select {
	case msg := <-sub.ch:
		var ev event
		if err := json.Unmarshal(msg, &ev); err != nil {
			t.Fatal(err)
		}
		return ev
	default:
		t.Fatal("no event sent")
		return event{}
	}
}

func none(t *testing.T, sub *subscriber) {
	t.Helper()
	select {
	case msg := <-sub.ch:
		t.Fatalf("unexpected event %s", msg)
	default:
	}
}

// Their client drops a model only on STOPPED with the deployment id it
// holds, and reconnects on RUNNING with a new address: each change is sent
// once, as exactly that.
func TestUpdatesCarryWhatTheirClientMatchesOn(t *testing.T) {
	f := newFeed()
	f.update([]discovery.Model{member("a", "10.0.0.1:7000", "sub1"), member("b", "10.0.0.2:7001", "")})
	sub := &subscriber{ch: make(chan []byte, sendQueue)}
	var initEv event
	if err := json.Unmarshal(f.subscribe(sub), &initEv); err != nil {
		t.Fatal(err)
	}
	want := model{DeploymentID: "sub1", ModelID: "a", State: StateRunning, IP: "10.0.0.1", Port: 7000,
		Infos: infos{ModelName: "Fulla", CruncherID: "Wa", CruncherName: "Wa", CruncherWalletPubkey: "Wa", CruncherHotkey: "ha"}}
	if initEv.Event != "init" || len(initEv.Data) != 2 || initEv.Data[0] != want || initEv.Data[1].DeploymentID != "b" {
		t.Fatalf("init = %+v, want a (%+v) and b (deployment b)", initEv, want)
	}
	none(t, sub)

	// The same membership again (a blocking query woken by another
	// service's change) sends nothing.
	f.update([]discovery.Model{member("a", "10.0.0.1:7000", "sub1"), member("b", "10.0.0.2:7001", "")})
	none(t, sub)

	// b leaves, a moves.
	f.update([]discovery.Model{member("a", "10.0.0.9:7100", "sub1")})
	ev := next(t, sub)
	if ev.Event != "update" || len(ev.Data) != 2 {
		t.Fatalf("update = %+v, want two changes", ev)
	}
	if a := ev.Data[0]; a.ModelID != "a" || a.State != StateRunning || a.IP != "10.0.0.9" || a.Port != 7100 || a.DeploymentID != "sub1" {
		t.Errorf("moved model sent as %+v", a)
	}
	if b := ev.Data[1]; b.ModelID != "b" || b.State != StateStopped || b.DeploymentID != "b" || b.IP != "10.0.0.2" {
		t.Errorf("gone model sent as %+v, want STOPPED with its deployment id", b)
	}
	if !f.known("b") || f.known("c") {
		t.Error("a model once announced must stay reportable, and only those")
	}
}

// A coordinator that does not read is dropped (its client reconnects and
// gets a fresh init) instead of holding the feed or growing without bound.
func TestSlowSubscriberIsDropped(t *testing.T) {
	f := newFeed()
	f.update(nil)
	sub := &subscriber{ch: make(chan []byte, 1)}
	f.subscribe(sub)
	f.update([]discovery.Model{member("a", "10.0.0.1:7000", "")})
	f.update(nil)
	if _, ok := <-sub.ch; !ok {
		t.Fatal("the first update was not queued")
	}
	if _, ok := <-sub.ch; ok {
		t.Fatal("a full subscriber was not dropped")
	}
	if len(f.subs) != 0 {
		t.Error("the dropped subscriber is still registered")
	}
}

// No certificate, no upgrade: without TLS (or a verified client
// certificate) the answer is 401 and no Consul watch starts.
func TestRefusedWithoutCertificate(t *testing.T) {
	az, err := authz.New(authz.Config{AnyCoordinatorKey: true})
	if err != nil {
		t.Fatal(err)
	}
	consul, err := consulapi.NewClient(&consulapi.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Consul: consul, Authorizer: az})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for path, want := range map[string]int{"/alpha": http.StatusUnauthorized, "/": http.StatusNotFound, "/a/b": http.StatusNotFound} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		s.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("%s: answered %d, want %d", path, rec.Code, want)
		}
	}
	if len(s.feeds) != 0 {
		t.Error("a refused request started a Consul watch")
	}
}
