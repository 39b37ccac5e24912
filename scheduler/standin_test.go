package scheduler

import (
	"reflect"
	"strings"
	"testing"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/modelnodes/modelnodes/jobs"
)

// standInJob turns a model job into its stand-in: the task runs Nomad's
// mock_driver for a day and keeps no logs (logmon would be one process per
// task); what needs a runner or Vault is left out (see BenchmarkScale).
func standInJob(job *nomadapi.Job) {
	for _, tg := range job.TaskGroups {
		if tg.Update != nil {
			tg.Update.HealthCheck = new("task_states")
		}
		for _, t := range tg.Tasks {
			t.Driver = "mock_driver"
			t.Config = map[string]any{"run_for": "24h"}
			t.Artifacts = nil
			t.Templates = nil
			t.Vault = nil
			var ids []*nomadapi.WorkloadIdentity
			for _, id := range t.Identities {
				if id.Name != "vault_default" {
					ids = append(ids, id)
				}
			}
			t.Identities = ids
			t.LogConfig = &nomadapi.LogConfig{Disabled: new(true)}
		}
	}
}

// The stand-in of BenchmarkScale keeps everything of a model's job but
// what a task without a runner or Vault cannot use: the job registered at
// 10,000 stays jobs.Build's.
func TestStandInKeepsTheJob(t *testing.T) {
	m := jobs.Model{Crunch: "mid-one", CrunchID: "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin", ModelID: "m00001",
		Cruncher: "HN7cABqLq46Es1jh92dQQisAq662SmxELLLsHHe4YWrH", Hotkey: "hk", ArtifactURL: "https://models.example/m.tar.gz",
		ArtifactSHA256: strings.Repeat("ab", 32), Hardware: jobs.CPU, Running: true}
	want, err := jobs.Build(&m, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := jobs.Build(&m, testOptions)
	standInJob(got)
	task, wtask := got.TaskGroups[0].Tasks[0], want.TaskGroups[0].Tasks[0]
	if task.Driver != "mock_driver" || task.Vault != nil || task.Templates != nil || task.Artifacts != nil ||
		!*task.LogConfig.Disabled || *got.TaskGroups[0].Update.HealthCheck != "task_states" {
		t.Fatalf("not a stand-in: %+v", task)
	}
	if wtask.Vault == nil || len(wtask.Templates) == 0 || len(wtask.Artifacts) == 0 {
		t.Fatal("jobs.Build's job changed: review what the stand-in leaves out (BenchmarkScale's doc)")
	}
	// Put back what the stand-in leaves out: the rest must be jobs.Build's.
	task.Driver, task.Config, task.Artifacts, task.Templates, task.Vault = wtask.Driver, wtask.Config, wtask.Artifacts, wtask.Templates, wtask.Vault
	task.Identities, task.LogConfig = wtask.Identities, wtask.LogConfig
	got.TaskGroups[0].Update.HealthCheck = want.TaskGroups[0].Update.HealthCheck
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the stand-in changed more of the job than it says:\n got %+v\nwant %+v", got.TaskGroups[0], want.TaskGroups[0])
	}
	// The model's service with its gRPC check, and the runner's metrics
	// service: 20,000 Consul instances at 10,000 models, as in production.
	if len(got.TaskGroups[0].Services) != 2 || len(got.TaskGroups[0].Services[0].Checks) != 1 {
		t.Error("the model's service and its check, and the metrics service, must stay")
	}
}
