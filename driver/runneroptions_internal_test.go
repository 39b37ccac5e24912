package driver

import (
	"strings"
	"testing"

	"github.com/hashicorp/nomad/nomad/structs"
	"github.com/hashicorp/nomad/plugins/drivers"
)

// The job's metrics and health port labels become the runner's listen
// addresses, on the node's address Nomad allotted; a label the group does
// not declare refuses the task, saying how to fix the job.
func TestRunnerOptionsPorts(t *testing.T) {
	ports := structs.AllocatedPorts{{Label: "grpc", Value: 20000, HostIP: "10.0.0.7"},
		{Label: "health", Value: 20001, HostIP: "10.0.0.7"}, {Label: "metrics", Value: 20002, HostIP: "10.0.0.7"}}
	cfg := &drivers.TaskConfig{AllocDir: t.TempDir(), Name: "model", Resources: &drivers.Resources{Ports: &ports}}
	tc := &TaskConfig{ModelDir: "local/model", Runtime: "python", Port: "grpc", Plaintext: true, HealthPort: "health", MetricsPort: "metrics"}
	o, err := runnerOptions(cfg, tc, &Config{}, "10.0.0.7:20000", "/m", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.MetricsListen != "10.0.0.7:20002" || o.HealthListen != "10.0.0.7:20001" {
		t.Fatalf("metrics %q, health %q", o.MetricsListen, o.HealthListen)
	}
	tc.MetricsPort = "prom"
	if _, err := runnerOptions(cfg, tc, &Config{}, "10.0.0.7:20000", "/m", "", nil); err == nil || !strings.Contains(err.Error(), `port "prom"`) {
		t.Fatalf("an undeclared metrics port: %v", err)
	}
}
