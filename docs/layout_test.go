package docs

import (
	"os/exec"
	"strings"
	"testing"
)

// TestTestingRigsStayOutOfProduction holds README's layout to its word:
// the packages under internal/testing (agents started as child processes,
// throwaway CAs, the local chain) are imported only by tests and by the
// demo, never by a package that ships in the runner, the driver, the
// scheduler or the coordinator.
func TestTestingRigsStayOutOfProduction(t *testing.T) {
	goBin, root := goAndRoot(t)
	const (
		module = "github.com/modelnodes/modelnodes/"
		rigs   = module + "internal/testing/"
		demo   = module + "cmd/modelnodes-demo"
	)
	// .Imports leaves out what only the package's tests import.
	cmd := exec.CommandContext(t.Context(), goBin, "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	for line := range strings.Lines(string(out)) {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		pkg := fields[0]
		if strings.HasPrefix(pkg, rigs) || pkg == demo {
			continue
		}
		checked++
		for _, imp := range fields[1:] {
			if strings.HasPrefix(imp, rigs) {
				t.Errorf("%s imports the test rig %s: production code must not carry it (README's layout)", pkg, imp)
			}
		}
	}
	if checked == 0 {
		t.Fatal("go list named no packages to check")
	}
}
