// Command nomad-driver-modelbox is the modelbox Nomad task driver plugin. Nomad
// loads it from its plugin_dir when the client configuration names it:
//
//	plugin "nomad-driver-modelbox" {
//	  config { runner_path = "/usr/local/bin/model-runner" }
//	}
//
// The same binary is the sandbox that confines model workers: the driver has
// the runner start workers through its hidden "sandbox" subcommand.
package main

import (
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins"

	"github.com/modelnodes/modelnodes/driver"
	"github.com/modelnodes/modelnodes/driver/sandbox"
)

func main() {
	if sandbox.Main(os.Args[1:]) {
		return
	}
	plugins.Serve(func(log hclog.Logger) interface{} { return driver.New(log) })
}
