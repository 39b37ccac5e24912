package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelnodes/modelnodes/internal/testing/logtail"
)

// Base ports of the demo's own processes; --port-offset shifts them like
// deploy/dev/up's.
const (
	baseSolanaPort    = 18899
	baseArtifactPort  = 18081
	baseSchedulerPort = 18464
)

// The demo's crunch and models.
const (
	crunchName = "demo"
	setupClass = "crunch_base.Tracker"
)

// demo is one run (or teardown) of the story.
type demo struct {
	o      options
	repo   string
	bin    string
	stdout io.Writer
	stderr io.Writer
	start  time.Time

	mu       sync.Mutex
	step     int
	steps    int
	stepName string
	// logs are the files whose tail explains a failure of the current step;
	// extra adds what only a live look can tell (Nomad allocations).
	logs  []string
	extra func() string

	interrupted atomic.Bool

	cluster *cluster // once step 1 is done
	// crunchers holds the wallets planted as each model's cruncher and
	// hotkey, by model id (step 5), for the delegation of step 9.
	crunchers map[string]cruncherKeys
}

func newDemo(o options, stdout, stderr io.Writer) (*demo, error) {
	d := &demo{o: o, stdout: stdout, stderr: stderr, start: time.Now()}
	var err error
	if d.repo, err = findRepo(o.repo); err != nil {
		return nil, err
	}
	d.bin = o.bin
	if d.bin == "" {
		d.bin = os.Getenv("MODELNODES_BIN")
	}
	if d.bin == "" {
		d.bin = filepath.Join(d.repo, "bin")
	}
	if d.o.state, err = filepath.Abs(o.state); err != nil {
		return nil, err
	}
	return d, nil
}

// findRepo returns the checkout: the flag, else the parent of the directory
// holding this binary (bin/modelnodes-demo), else the current directory or
// one of its parents.
func findRepo(flagValue string) (string, error) {
	isRepo := func(dir string) bool {
		_, err := os.Stat(filepath.Join(dir, "deploy", "dev", "up"))
		return err == nil
	}
	if flagValue != "" {
		dir, _ := filepath.Abs(flagValue)
		if !isRepo(dir) {
			return "", fmt.Errorf("--repo %s: no deploy/dev/up there", dir)
		}
		return dir, nil
	}
	if exe, err := os.Executable(); err == nil {
		if dir := filepath.Dir(filepath.Dir(exe)); isRepo(dir) {
			return dir, nil
		}
	}
	dir, _ := os.Getwd()
	for {
		if isRepo(dir) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the Model Nodes checkout (run from it, or pass --repo)")
		}
		dir = parent
	}
}

// path returns a path in the state dir.
func (d *demo) path(elem ...string) string {
	return filepath.Join(append([]string{d.o.state}, elem...)...)
}

func (d *demo) port(base int) int { return base + d.o.offset }

// progress prints one progress line on stderr: [demo  12.3s] text.
func (d *demo) progress(format string, args ...any) {
	fmt.Fprintf(d.stderr, "[demo %6.1fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

// detail prints an indented line under the current step (stderr).
func (d *demo) detail(format string, args ...any) {
	fmt.Fprintf(d.stderr, "               %s\n", fmt.Sprintf(format, args...))
}

// begin starts step n: a progress line, and the logs a failure shows.
func (d *demo) begin(name string, logs ...string) {
	d.mu.Lock()
	d.step++
	d.stepName = name
	d.logs = logs
	d.extra = nil
	n, total := d.step, d.steps
	d.mu.Unlock()
	d.progress("step %d/%d: %s", n, total, name)
}

// explain adds a live source of explanation to the current step's failure.
func (d *demo) explain(f func() string) {
	d.mu.Lock()
	d.extra = f
	d.mu.Unlock()
}

// failure prints which step failed, why, and the tails of its logs.
func (d *demo) failure(err error) {
	d.mu.Lock()
	n, name, logs, extra := d.step, d.stepName, d.logs, d.extra
	d.mu.Unlock()
	if d.interrupted.Load() {
		d.progress("interrupted at step %d (%s)", n, name)
		return
	}
	d.progress("demo failed at step %d (%s): %v", n, name, err)
	for _, l := range logs {
		if t := tailFile(l, 30); t != "" {
			fmt.Fprintf(d.stderr, "--- last lines of %s:\n%s\n", l, indent(t))
		}
	}
	if extra != nil {
		if t := extra(); t != "" {
			fmt.Fprintln(d.stderr, t)
		}
	}
}

// command shows a command line the way a reader would type it (stdout).
func (d *demo) command(line string) {
	fmt.Fprintf(d.stdout, "\n$ %s\n", line)
}

// output shows a command's output, indented (stdout).
func (d *demo) output(text string) {
	if text = strings.TrimRight(text, "\n"); text != "" {
		fmt.Fprintln(d.stdout, indent(text))
	}
}

// rel shortens a path under the checkout to a relative one, for display.
func (d *demo) rel(p string) string {
	if r, err := filepath.Rel(d.repo, p); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}

func indent(s string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		b.WriteString("    ")
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	return strings.TrimRight(b.String(), "\n")
}

// tailFile returns the last n lines of a file ("" when it is missing).
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(logtail.Lines(b, n))
}
