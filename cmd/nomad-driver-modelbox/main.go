// Command nomad-driver-modelbox is the modelbox Nomad task driver plugin. Nomad
// loads it from its plugin_dir when the client configuration names it:
//
//	plugin "nomad-driver-modelbox" {
//	  config { runner_path = "/usr/local/bin/model-runner" }
//	}
//
// The same binary is the sandbox that confines model workers, and the
// launcher that starts the runner as an unprivileged user: the driver starts
// its hidden "runner-launch" subcommand in the runner's place, which starts
// workers through the hidden "sandbox" subcommand when the runner asks.
//
// For a security team, it prints the seccomp profile it installs in every
// worker's sandbox, and the hash nodes report as the attribute
// driver.modelbox.seccomp.profile:
//
//	nomad-driver-modelbox seccomp-profile [-allow-written-executables]
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins"

	"github.com/modelnodes/modelnodes/driver"
	"github.com/modelnodes/modelnodes/driver/launcher"
	"github.com/modelnodes/modelnodes/driver/sandbox"
	"github.com/modelnodes/modelnodes/driver/sandbox/seccomp"
)

func main() {
	if sandbox.Main(os.Args[1:]) || launcher.Main(os.Args[1:]) {
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "seccomp-profile" {
		os.Exit(printSeccompProfile(os.Stdout, os.Stderr, os.Args[2:]))
	}
	plugins.Serve(func(log hclog.Logger) interface{} { return driver.New(log) })
}

// printSeccompProfile writes the seccomp profile's canonical text and its
// hash, for the node option given.
func printSeccompProfile(stdout, stderr io.Writer, args []string) int {
	fs := flag.NewFlagSet("seccomp-profile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	written := fs.Bool("allow-written-executables", false, "the profile of a node with allow_written_executables = true")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	o := seccomp.Options{AllowWrittenExecutables: *written}
	fmt.Fprint(stdout, seccomp.Canonical(o))
	fmt.Fprintf(stdout, "hash %s\n", seccomp.Hash(o))
	return 0
}
