package supersede

import (
	"testing"

	consulapi "github.com/hashicorp/consul/api"

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
