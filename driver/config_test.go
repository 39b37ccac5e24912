package driver_test

import (
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers/testutils"

	"github.com/modelnodes/modelnodes/driver"
)

// Refused plugin configurations need no root: SetConfig validates before
// anything is isolated. (The driver's lifecycle tests, which need root,
// are in the e2e-tagged files.)
func TestBadConfigsAreRefused(t *testing.T) {
	d := driver.New(hclog.NewNullLogger())
	h := testutils.NewDriverHarness(t, d)
	for name, cfg := range map[string]map[string]any{
		"unknown runtime":     {"allowed_runtimes": []string{"python", "bash"}},
		"relative ro path":    {"readonly_paths": []string{"usr"}},
		"uid range of root":   {"uid_range": "0-10"},
		"runners as root":     {"runner_uid_range": "0-10"},
		"runners as models":   {"runner_uid_range": "64500-65500"},
		"runner as builder":   {"runner_uid_range": "63000-63999"},
		"bad landlock value":  {"landlock": "sometimes"},
		"relative store":      {"model_store": "models"},
		"relative env root":   {"environments": map[string]any{"root": "envs"}},
		"bad build timeout":   {"environments": map[string]any{"build_timeout": "soon"}},
		"unknown build mode":  {"environments": map[string]any{"build": "anything"}},
		"index not a URL":     {"environments": map[string]any{"index_urls": []string{"pypi.org/simple"}}},
		"two defaults in one": {"environments": map[string]any{"default_requirements": []string{"pandas\nsix"}}},
		"default is option":   {"environments": map[string]any{"default_requirements": []string{"--index-url https://evil/simple"}}},
		"relative python":     {"python_interpreters": []string{"python3.13"}},
	} {
		var data []byte
		if err := base.MsgPackEncode(&data, cfg); err != nil {
			t.Fatal(err)
		}
		if err := h.SetConfig(&base.Config{PluginConfig: data}); err == nil {
			t.Errorf("%s: plugin config accepted", name)
		}
	}
}
