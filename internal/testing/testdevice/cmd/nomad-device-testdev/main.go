// Command nomad-device-testdev is a Nomad device plugin for tests only: it
// offers character device nodes named in its config as the device
// "modelnodes/testdev/pty" (package internal/testing/testdevice), so device
// reservations can be tested through a real Nomad client without a GPU.
// Nomad loads it only from a plugin block that names it; no deployment does.
package main

import (
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins"

	"github.com/modelnodes/modelnodes/internal/testing/testdevice"
)

func main() {
	plugins.Serve(func(log hclog.Logger) interface{} { return testdevice.New(log) })
}
