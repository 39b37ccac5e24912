// Package envflag gives every command-line flag an environment-variable
// fallback: flag --call-timeout of a command with prefix MODEL_RUNNER reads
// MODEL_RUNNER_CALL_TIMEOUT when the flag is not on the command line.
package envflag

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// Name returns the environment variable that backs flag name.
func Name(prefix, name string) string {
	return prefix + "_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Parse parses args into fs, then fills every flag that args did not set from
// its environment variable. A malformed value in the environment is an error
// that names the variable.
func Parse(fs *flag.FlagSet, prefix string, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := Name(prefix, f.Name)
		if v, ok := os.LookupEnv(env); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment %s=%q: %w", env, v, e)
			}
		}
	})
	return err
}

// Usage returns a flag.Usage function that prints synopsis, then each flag
// with its default and environment variable.
func Usage(fs *flag.FlagSet, prefix, synopsis string) func() {
	return func() {
		out := fs.Output()
		fmt.Fprintln(out, strings.TrimSpace(synopsis))
		fmt.Fprintln(out, "\nFlags (each also read from the environment variable shown):")
		fs.VisitAll(func(f *flag.Flag) {
			def := ""
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
				def = " (default " + f.DefValue + ")"
			}
			fmt.Fprintf(out, "  --%s  [$%s]%s\n      %s\n", f.Name, Name(prefix, f.Name), def, f.Usage)
		})
	}
}

// SplitList reads a comma-separated flag value: blanks around items and
// empty items are dropped; nil when none is left.
func SplitList(s string) []string {
	var items []string
	for _, it := range strings.Split(s, ",") {
		if it = strings.TrimSpace(it); it != "" {
			items = append(items, it)
		}
	}
	return items
}
