package supersede

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/modelnodes/modelnodes/names"
)

func instance(node, model, addr string, port int, index uint64) *consulapi.ServiceEntry {
	return &consulapi.ServiceEntry{
		Node: &consulapi.Node{Node: node, Address: "10.0.0.9"},
		Service: &consulapi.AgentService{ID: node + "-" + model, Address: addr, Port: port, CreateIndex: index,
			Meta: map[string]string{names.MetaModelID: model}},
	}
}

// Only another instance of the same model, registered after the runner's
// own, supersedes it; anything else is no evidence.
func TestSupersedes(t *testing.T) {
	const self = "10.0.0.1:2000"
	own := instance("a", "m1", "10.0.0.1", 2000, 10)
	for _, tc := range []struct {
		name    string
		entries []*consulapi.ServiceEntry
		want    string // the newer instance's id, "" for none
	}{
		{"alone", []*consulapi.ServiceEntry{own}, ""},
		{"newer elsewhere", []*consulapi.ServiceEntry{own, instance("b", "m1", "10.0.0.2", 3000, 20)}, "b-m1"},
		{"older elsewhere (the runner is the replacement)", []*consulapi.ServiceEntry{own, instance("b", "m1", "10.0.0.2", 3000, 5)}, ""},
		{"another model", []*consulapi.ServiceEntry{own, instance("b", "m2", "10.0.0.2", 3000, 20)}, ""},
		{"own instance not passing", []*consulapi.ServiceEntry{instance("b", "m1", "10.0.0.2", 3000, 20)}, ""},
		{"the newest of two", []*consulapi.ServiceEntry{own, instance("b", "m1", "10.0.0.2", 3000, 20), instance("c", "m1", "10.0.0.3", 3000, 30)}, "c-m1"},
		{"a canary (a new version on trial, not promoted)", []*consulapi.ServiceEntry{own, canary(instance("b", "m1", "10.0.0.2", 3000, 20))}, ""},
		{"a promoted canary beside a canary", []*consulapi.ServiceEntry{own, instance("b", "m1", "10.0.0.2", 3000, 20), canary(instance("c", "m1", "10.0.0.3", 3000, 30))}, "b-m1"},
		{"re-registered at its own address", []*consulapi.ServiceEntry{own, instance("a2", "m1", "10.0.0.1", 2000, 20)}, ""},
		{"node address when the service has none", []*consulapi.ServiceEntry{
			instance("a", "m1", "", 2000, 10), instance("b", "m1", "10.0.0.2", 3000, 20)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Supersedes(tc.entries, "m1", self)
			switch {
			case tc.want == "" && got != nil:
				t.Errorf("superseded by %v, want no evidence", got)
			case tc.want != "" && (got == nil || got.ServiceID != tc.want):
				t.Errorf("superseded by %v, want %s", got, tc.want)
			}
		})
	}
	// The node's address stands for an instance registered without one.
	if got := Supersedes([]*consulapi.ServiceEntry{instance("a", "m1", "", 2000, 10), instance("b", "m1", "10.0.0.2", 3000, 20)},
		"m1", "10.0.0.9:2000"); got == nil {
		t.Error("an instance without an address was not matched by its node's")
	}
}

// A Consul with ACLs answers a token that may not read the service with an
// empty list, not an error: the watch says that it sees nothing rather than
// wait in silence, and it supersedes nothing.
func TestWatchWarnsWhenItCannotSeeItself(t *testing.T) {
	defer func(d time.Duration) { unseenWarnAfter = d }(unseenWarnAfter)
	unseenWarnAfter = 300 * time.Millisecond
	var queries atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/health/service/crunch-demo" {
			http.NotFound(w, r)
			return
		}
		n := queries.Add(1)
		if wait, _ := time.ParseDuration(r.URL.Query().Get("wait")); n == 1 && wait > unseenWarnAfter {
			t.Errorf("the first query waits %s, longer than the warning's delay", wait)
		}
		time.Sleep(50 * time.Millisecond)
		w.Header().Set("X-Consul-Index", strconv.FormatInt(10+n, 10))
		_, _ = w.Write([]byte("[]"))
	}))
	defer srv.Close()
	client, err := consulapi.NewClient(&consulapi.Config{Address: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Warn})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	w := &Watch{Client: client, Service: "crunch-demo", ModelID: "m1", Self: "127.0.0.1:2000", Logger: log}
	newer, err := w.Run(ctx)
	if newer != nil || err == nil {
		t.Fatalf("Run = %v, %v; want nothing until the context ends", newer, err)
	}
	if got := strings.Count(logs.String(), "own instance is not among"); got != 1 {
		t.Errorf("warned %d times, want once:\n%s", got, logs.String())
	}
}

// canary tags an instance as Nomad tags a canary that is not promoted yet.
func canary(e *consulapi.ServiceEntry) *consulapi.ServiceEntry {
	e.Service.Tags = append(e.Service.Tags, names.TagCanary)
	return e
}
