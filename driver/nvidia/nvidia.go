// Package nvidia finds what a sandboxed model worker needs to use the NVIDIA
// GPUs Nomad reserved for its task, as the NVIDIA container toolkit does for
// a container: nomad-device-nvidia's reservation only sets
// NVIDIA_VISIBLE_DEVICES, and a driver that is not Docker must itself
// expose the device nodes (the GPUs', /dev/nvidiactl, /dev/nvidia-uvm and,
// for a MIG instance, its capability nodes) and the host driver's
// user-space libraries and nvidia-smi. Everything is read from /proc and
// /dev (and `ldconfig -p`): no NVML, no cgo.
package nvidia

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// EnvVisibleDevices is the variable nomad-device-nvidia's reservation sets:
// the reserved GPUs' UUIDs, comma-separated.
const EnvVisibleDevices = "NVIDIA_VISIBLE_DEVICES"

// Host is where the node's driver state is read: "/proc" and "/dev" on a
// node, a fake tree in tests.
type Host struct {
	Proc, Dev string
}

// Node is the real host.
var Node = Host{Proc: "/proc", Dev: "/dev"}

// GPU is one GPU the driver knows.
type GPU struct {
	// UUID is "GPU-" and the GPU's UUID (what nomad-device-nvidia
	// reserves by).
	UUID string
	// Minor is the minor number of its node, /dev/nvidia<Minor>.
	Minor int
	// BusID is its PCI location ("0000:3b:00.0").
	BusID string
	// Model is its name ("NVIDIA H200").
	Model string
	// Index is nvidia-smi's (and NVIDIA_VISIBLE_DEVICES's) index: its
	// place in PCI bus order.
	Index int
}

// ErrNoDriver is returned where the node has no NVIDIA kernel driver loaded.
var ErrNoDriver = errors.New("nvidia: no NVIDIA kernel driver (no /proc/driver/nvidia)")

// GPUs lists the GPUs from /proc/driver/nvidia/gpus/*/information, in PCI
// bus order (nvidia-smi's indexes).
func (h Host) GPUs() ([]GPU, error) {
	dirs, err := filepath.Glob(filepath.Join(h.Proc, "driver", "nvidia", "gpus", "*", "information"))
	if err != nil {
		return nil, err
	}
	if len(dirs) == 0 {
		if _, err := os.Stat(filepath.Join(h.Proc, "driver", "nvidia")); errors.Is(err, os.ErrNotExist) {
			return nil, ErrNoDriver
		}
	}
	var gpus []GPU
	for _, p := range dirs {
		g, err := readInformation(p)
		if err != nil {
			return nil, err
		}
		gpus = append(gpus, g)
	}
	slices.SortFunc(gpus, func(a, b GPU) int { return strings.Compare(strings.ToLower(a.BusID), strings.ToLower(b.BusID)) })
	for i := range gpus {
		gpus[i].Index = i
	}
	return gpus, nil
}

// readInformation parses one GPU's information file ("Key: \t value" lines).
func readInformation(path string) (GPU, error) {
	f, err := os.Open(path)
	if err != nil {
		return GPU{}, err
	}
	defer f.Close()
	g := GPU{Minor: -1, BusID: filepath.Base(filepath.Dir(path))}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.TrimSpace(k) {
		case "Model":
			g.Model = v
		case "GPU UUID":
			g.UUID = v
		case "Bus Location":
			g.BusID = v
		case "Device Minor":
			if g.Minor, err = strconv.Atoi(v); err != nil {
				return GPU{}, fmt.Errorf("nvidia: %s: device minor %q", path, v)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return GPU{}, fmt.Errorf("nvidia: %s: %w", path, err)
	}
	if g.Minor < 0 || !strings.HasPrefix(g.UUID, "GPU-") {
		return GPU{}, fmt.Errorf("nvidia: %s: no device minor or GPU UUID", path)
	}
	return g, nil
}

var versionRE = regexp.MustCompile(`Kernel Module(?:\s+for\s+\S+)?\s+([0-9]+(?:\.[0-9]+)+)`)

// DriverVersion is the kernel driver's version ("580.159.04"), from
// /proc/driver/nvidia/version.
func (h Host) DriverVersion() (string, error) {
	b, err := os.ReadFile(filepath.Join(h.Proc, "driver", "nvidia", "version"))
	if errors.Is(err, os.ErrNotExist) {
		return "", ErrNoDriver
	}
	if err != nil {
		return "", err
	}
	m := versionRE.FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("nvidia: no version in /proc/driver/nvidia/version: %q", firstLine(b))
	}
	return string(m[1]), nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

// MIG is one Multi-Instance GPU instance: a GPU instance and a compute
// instance of a parent GPU.
type MIG struct {
	Parent GPU
	GI, CI int
}

// Selection is what NVIDIA_VISIBLE_DEVICES asks for.
type Selection struct {
	// GPUs are whole GPUs.
	GPUs []GPU
	// MIGs are MIG instances.
	MIGs []MIG
	// DriverOnly ("none") asks for the driver's libraries and no GPU.
	DriverOnly bool
}

// Empty reports a selection of nothing at all (unset, "void").
func (s Selection) Empty() bool { return len(s.GPUs) == 0 && len(s.MIGs) == 0 && !s.DriverOnly }

var oldMIG = regexp.MustCompile(`^MIG-(GPU-[0-9a-fA-F-]+)/([0-9]+)/([0-9]+)$`)

// Select resolves the value of NVIDIA_VISIBLE_DEVICES against the node's
// GPUs: "" and "void" select nothing, "none" the driver without a GPU,
// "all" every GPU, else a comma-separated list of GPU UUIDs ("GPU-..."),
// nvidia-smi indexes and MIG instances named "MIG-GPU-<uuid>/<gi>/<ci>".
// An entry that names no GPU of the node is an error: a task must never get
// more, or other, GPUs than it asked for.
func Select(value string, gpus []GPU) (Selection, error) {
	var s Selection
	switch v := strings.TrimSpace(value); v {
	case "", "void":
		return s, nil
	case "none":
		s.DriverOnly = true
		return s, nil
	case "all":
		s.GPUs = slices.Clone(gpus)
		return s, nil
	}
	seen := map[string]bool{}
	for _, e := range strings.Split(value, ",") {
		e = strings.TrimSpace(e)
		if e == "" || seen[e] {
			continue
		}
		seen[e] = true
		switch {
		case strings.HasPrefix(e, "GPU-"):
			i := slices.IndexFunc(gpus, func(g GPU) bool { return strings.EqualFold(g.UUID, e) })
			if i < 0 {
				return Selection{}, fmt.Errorf("nvidia: %s names %q: no such GPU on this node", EnvVisibleDevices, e)
			}
			s.GPUs = append(s.GPUs, gpus[i])
		case strings.HasPrefix(e, "MIG-"):
			m := oldMIG.FindStringSubmatch(e)
			if m == nil {
				// A MIG instance's own UUID maps to its GPU and
				// compute instance only through NVML.
				return Selection{}, fmt.Errorf("nvidia: %s names %q: MIG instances are supported as MIG-GPU-<uuid>/<gi>/<ci>, not by their own UUID (that needs NVML)", EnvVisibleDevices, e)
			}
			i := slices.IndexFunc(gpus, func(g GPU) bool { return strings.EqualFold(g.UUID, m[1]) })
			if i < 0 {
				return Selection{}, fmt.Errorf("nvidia: %s names %q: no such GPU on this node", EnvVisibleDevices, e)
			}
			gi, _ := strconv.Atoi(m[2])
			ci, _ := strconv.Atoi(m[3])
			s.MIGs = append(s.MIGs, MIG{Parent: gpus[i], GI: gi, CI: ci})
		default:
			n, err := strconv.Atoi(e)
			if err != nil || n < 0 || n >= len(gpus) || strconv.Itoa(n) != e {
				return Selection{}, fmt.Errorf("nvidia: %s names %q: no such GPU on this node (%d GPUs)", EnvVisibleDevices, e, len(gpus))
			}
			s.GPUs = append(s.GPUs, gpus[n])
		}
	}
	return s, nil
}

// Nodes are the device nodes (host paths under h.Dev) the selection needs:
// each GPU's /dev/nvidiaN, /dev/nvidiactl, /dev/nvidia-uvm and (where it
// exists) /dev/nvidia-uvm-tools, and for each MIG instance its parent's node
// and its GPU and compute instances' capability nodes. CUDA fails without
// nvidia-uvm, so a missing one is an error that says how to make it.
func (h Host) Nodes(s Selection) ([]string, error) {
	if len(s.GPUs) == 0 && len(s.MIGs) == 0 {
		return nil, nil
	}
	var nodes []string
	add := func(p string) {
		if !slices.Contains(nodes, p) {
			nodes = append(nodes, p)
		}
	}
	for _, g := range s.GPUs {
		add(filepath.Join(h.Dev, "nvidia"+strconv.Itoa(g.Minor)))
	}
	for _, m := range s.MIGs {
		add(filepath.Join(h.Dev, "nvidia"+strconv.Itoa(m.Parent.Minor)))
		caps, err := h.migCaps(m)
		if err != nil {
			return nil, err
		}
		for _, c := range caps {
			add(c)
		}
	}
	add(filepath.Join(h.Dev, "nvidiactl"))
	add(filepath.Join(h.Dev, "nvidia-uvm"))
	for _, p := range nodes {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("nvidia: %w (the driver creates it on first use: run `nvidia-modprobe -u -c=0` once at boot, or nvidia-smi as root)", err)
		}
	}
	// Profilers' node: given where the host has it.
	if tools := filepath.Join(h.Dev, "nvidia-uvm-tools"); fileExists(tools) {
		add(tools)
	}
	return nodes, nil
}

// migCaps are the capability nodes that give access to a MIG instance:
// /dev/nvidia-caps/nvidia-cap<N>, N read from the driver's
// /proc/driver/nvidia/capabilities/gpu<minor>/mig/gi<G>[/ci<C>]/access.
func (h Host) migCaps(m MIG) ([]string, error) {
	gi := filepath.Join(h.Proc, "driver", "nvidia", "capabilities", "gpu"+strconv.Itoa(m.Parent.Minor), "mig", "gi"+strconv.Itoa(m.GI))
	var caps []string
	for _, access := range []string{filepath.Join(gi, "access"), filepath.Join(gi, "ci"+strconv.Itoa(m.CI), "access")} {
		minor, err := capMinor(access)
		if err != nil {
			return nil, fmt.Errorf("nvidia: MIG instance %d/%d of %s: %w", m.GI, m.CI, m.Parent.UUID, err)
		}
		caps = append(caps, filepath.Join(h.Dev, "nvidia-caps", "nvidia-cap"+strconv.Itoa(minor)))
	}
	return caps, nil
}

// capMinor reads "DeviceFileMinor: N" from a capability's access file.
func capMinor(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "DeviceFileMinor:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("%s: no DeviceFileMinor", path)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
