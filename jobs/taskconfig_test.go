package jobs

import (
	"reflect"
	"testing"
)

// Every kind of job Build writes carries a driver config the driver
// accepts, and the job holds exactly that config.
func TestBuildWritesADriverConfigTheDriverAccepts(t *testing.T) {
	stable := opts()
	stable.RunnerVaultAddr = "https://vault.service.consul:8200"
	plain := &Options{Plaintext: true, AllowHostModelDirs: true}
	exe := model()
	exe.Runtime, exe.Entry = "executable", "bin/model"
	host := model()
	host.ArtifactURL, host.ArtifactSHA256, host.ModelDir = "", "", "/srv/models/m"
	for name, c := range map[string]struct {
		m *Model
		o *Options
	}{
		"issued certificate": {model(), opts()},
		"stable key":         {model(), stable},
		"executable":         {exe, opts()},
		"plaintext":          {host, plain},
	} {
		job, err := Build(c.m, c.o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		o := c.o.withDefaults()
		cfg := taskConfig(c.m, &o)
		if err := cfg.Validate([]string{"python", "executable"}); err != nil {
			t.Errorf("%s: the driver would refuse the job's config: %v", name, err)
		}
		if got := job.TaskGroups[0].Tasks[0].Config; !reflect.DeepEqual(got, cfg.Map()) {
			t.Errorf("%s: the job's config %v is not the task config's map %v", name, got, cfg.Map())
		}
	}
}
