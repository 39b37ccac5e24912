// Package testdevice is a Nomad device plugin for tests: it offers character
// device nodes the test made (ptys of a private devpts instance, say) as
// instances of the device "modelnodes/testdev/pty", so a test can reserve
// devices through Nomad's real scheduler and device hook on a machine
// without a GPU. internal/testing/testdevice/cmd/nomad-device-testdev serves it; a Nomad client loads it
// with
//
//	plugin "nomad-device-testdev" {
//	  config {
//	    devices   = ["/tmp/x/pts/0", "/tmp/x/pts/1"]   # one instance each: testdev0, testdev1
//	    mount_dir = "/tmp/x/mounts"                    # optional: <mount_dir>/<id> at /testdev/<id>
//	  }
//	}
//
// A task's reservation of instance testdevN gives it the node at
// /dev/testdevN (cgroup permissions "rw"), the environment variable
// MODELNODES_TESTDEV (the reserved ids, comma-separated) and, with
// mount_dir, that instance's directory at /testdev/testdevN, read-write.
package testdevice

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/device"
	"github.com/hashicorp/nomad/plugins/shared/hclspec"
	pstructs "github.com/hashicorp/nomad/plugins/shared/structs"
	"golang.org/x/sys/unix"
)

// Static plugin metadata.
const (
	// PluginName is the binary's name, which the client's plugin block names.
	PluginName = "nomad-device-testdev"
	// Vendor, Type and Name make the device's id in jobs:
	// device "modelnodes/testdev/pty" (or "modelnodes/testdev").
	Vendor = "modelnodes"
	Type   = "testdev"
	Name   = "pty"
	// EnvVar lists the reserved instances in the task's environment.
	EnvVar = "MODELNODES_TESTDEV"
	// MountRoot is where an instance's directory appears in the task.
	MountRoot = "/testdev"
	// fingerprintPeriod is how often the nodes' health is looked at again.
	fingerprintPeriod = 5 * time.Second
)

var pluginInfo = &base.PluginInfoResponse{
	Type:              base.PluginTypeDevice,
	PluginApiVersions: []string{device.ApiVersion010},
	PluginVersion:     "0.1.0",
	Name:              PluginName,
}

var configSpec = hclspec.NewObject(map[string]*hclspec.Spec{
	"devices":   hclspec.NewAttr("devices", "list(string)", true),
	"mount_dir": hclspec.NewAttr("mount_dir", "string", false),
})

// Config is the plugin block's config.
type Config struct {
	Devices  []string `codec:"devices"`
	MountDir string   `codec:"mount_dir"`
}

// Plugin is the test device plugin.
type Plugin struct {
	log hclog.Logger

	mu  sync.Mutex
	cfg Config
}

var _ device.DevicePlugin = (*Plugin)(nil)

// New returns the plugin, unconfigured.
func New(log hclog.Logger) *Plugin { return &Plugin{log: log.Named(PluginName)} }

func (p *Plugin) PluginInfo() (*base.PluginInfoResponse, error) { return pluginInfo, nil }
func (p *Plugin) ConfigSchema() (*hclspec.Spec, error)          { return configSpec, nil }

// SetConfig takes the plugin block; every device must be an absolute path.
func (p *Plugin) SetConfig(c *base.Config) error {
	var cfg Config
	if len(c.PluginConfig) != 0 {
		if err := base.MsgPackDecode(c.PluginConfig, &cfg); err != nil {
			return fmt.Errorf("testdev: plugin config: %w", err)
		}
	}
	for _, d := range cfg.Devices {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("testdev: device %q: want an absolute path", d)
		}
	}
	if cfg.MountDir != "" && !filepath.IsAbs(cfg.MountDir) {
		return fmt.Errorf("testdev: mount_dir %q: want an absolute path", cfg.MountDir)
	}
	p.mu.Lock()
	p.cfg = cfg
	p.mu.Unlock()
	return nil
}

func (p *Plugin) config() Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// instanceID is the id of the i-th configured device.
func instanceID(i int) string { return Type + strconv.Itoa(i) }

// group is the device group as it stands: an instance is healthy while its
// node is a character device.
func (p *Plugin) group() *device.DeviceGroup {
	g := &device.DeviceGroup{Vendor: Vendor, Type: Type, Name: Name,
		Attributes: map[string]*pstructs.Attribute{"backing": pstructs.NewStringAttribute("pty")}}
	for i, path := range p.config().Devices {
		d := &device.Device{ID: instanceID(i), Healthy: true}
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			d.Healthy, d.HealthDesc = false, err.Error()
		} else if st.Mode&unix.S_IFMT != unix.S_IFCHR {
			d.Healthy, d.HealthDesc = false, path+" is not a character device"
		}
		g.Devices = append(g.Devices, d)
	}
	return g
}

// Fingerprint sends the device group now and again whenever an instance's
// health changes.
func (p *Plugin) Fingerprint(ctx context.Context) (<-chan *device.FingerprintResponse, error) {
	ch := make(chan *device.FingerprintResponse)
	go func() {
		defer close(ch)
		var last string
		t := time.NewTimer(0)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				t.Reset(fingerprintPeriod)
			}
			g := p.group()
			if key := fmt.Sprintf("%+v", g.Devices); key == last {
				continue
			} else {
				last = key
			}
			resp := device.NewFingerprint()
			if len(g.Devices) > 0 {
				resp.Devices = []*device.DeviceGroup{g}
			}
			select {
			case ch <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// Reserve gives the reserved instances' nodes, directories and ids.
func (p *Plugin) Reserve(ids []string) (*device.ContainerReservation, error) {
	cfg := p.config()
	r := &device.ContainerReservation{Envs: map[string]string{EnvVar: strings.Join(ids, ",")}}
	for _, id := range ids {
		i := -1
		for j := range cfg.Devices {
			if instanceID(j) == id {
				i = j
			}
		}
		if i < 0 {
			return nil, fmt.Errorf("testdev: no instance %q", id)
		}
		r.Devices = append(r.Devices, &device.DeviceSpec{HostPath: cfg.Devices[i], TaskPath: "/dev/" + id, CgroupPerms: "rw"})
		if cfg.MountDir != "" {
			r.Mounts = append(r.Mounts, &device.Mount{HostPath: filepath.Join(cfg.MountDir, id), TaskPath: MountRoot + "/" + id})
		}
	}
	return r, nil
}

// Stats sends, every interval, that each instance exists (the test devices
// have nothing to measure).
func (p *Plugin) Stats(ctx context.Context, interval time.Duration) (<-chan *device.StatsResponse, error) {
	ch := make(chan *device.StatsResponse)
	go func() {
		defer close(ch)
		t := time.NewTicker(max(interval, time.Second))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			g := &device.DeviceGroupStats{Vendor: Vendor, Type: Type, Name: Name, InstanceStats: map[string]*device.DeviceStats{}}
			for i := range p.config().Devices {
				g.InstanceStats[instanceID(i)] = &device.DeviceStats{Timestamp: time.Now(),
					Summary: &pstructs.StatValue{StringVal: new("present")}}
			}
			select {
			case ch <- &device.StatsResponse{Groups: []*device.DeviceGroupStats{g}}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}
