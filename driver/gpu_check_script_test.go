package driver_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// scripts/gpu-check on a host without a usable NVIDIA GPU says so and stops
// (exit 77) before it builds or starts anything: no nvidia-smi at all, and
// an nvidia-smi that finds no device or no driver.
func TestGPUCheckRefusesWithoutGPU(t *testing.T) {
	script, err := filepath.Abs("../scripts/gpu-check")
	if err != nil {
		t.Fatal(err)
	}
	fake := func(out string, code int) string {
		p := filepath.Join(t.TempDir(), "nvidia-smi")
		body := "#!/bin/sh\necho '" + out + "'\nexit " + strconv.Itoa(code) + "\n"
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, smi string
	}{
		{"no nvidia-smi", ""},
		{"no device", fake("No devices were found", 6)},
		{"no driver", fake("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", 9)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.smi == "" {
				if p, err := exec.LookPath("nvidia-smi"); err == nil {
					t.Skipf("this host has %s: the case needs a host without it", p)
				}
			}
			cmd := exec.Command(script)
			cmd.Env = append(os.Environ(), "GPU_CHECK_NVIDIA_SMI="+tc.smi)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 77 {
				t.Fatalf("gpu-check: %v, want exit 77\n%s", err, out)
			}
			if !strings.Contains(string(out), "no usable NVIDIA GPU") && !strings.Contains(string(out), "no NVIDIA GPU") {
				t.Errorf("gpu-check does not say why it stopped:\n%s", out)
			}
			if strings.Contains(string(out), "building") || strings.Contains(string(out), "starting") {
				t.Errorf("gpu-check went on without a GPU:\n%s", out)
			}
		})
	}
}
