// Package driver is the modelbox Nomad task driver: it runs a model as two
// processes, the trusted runner (which holds the TLS key and listens on the
// allocated port) and the model worker, sandboxed by package sandbox and
// limited by package cgroup. Nobody may exec into a model task.
package driver

import (
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/hashicorp/nomad/plugins/drivers/fsisolation"
	"github.com/hashicorp/nomad/plugins/shared/hclspec"
)

// Static plugin metadata, all in one place.
const (
	// Name is what jobs write in `driver = "..."`.
	Name = "modelbox"
	// Version is the plugin's version.
	Version = "0.1.0"
	// taskHandleVersion versions the encoded DriverState.
	taskHandleVersion = 1
)

var pluginInfo = &base.PluginInfoResponse{
	Type:              base.PluginTypeDriver,
	PluginApiVersions: []string{drivers.ApiVersion010},
	PluginVersion:     Version,
	Name:              Name,
}

// configSpec is the plugin block of the Nomad client's configuration:
//
//	plugin "nomad-driver-modelbox" {
//	  config {
//	    runner_path      = "/usr/local/bin/model-runner"
//	    python           = "/usr/bin/python3"
//	    python_interpreters = ["/opt/python/3.13/bin/python3"]
//	    allowed_runtimes = ["python", "executable"]
//	    readonly_paths   = ["/usr", "/lib", "/lib64", "/bin", "/etc/ssl"]
//	    uid_range        = "64000-64999"    # the model workers' users
//	    runner_uid_range = "62000-62999"    # the runners' users (one per task), apart from uid_range
//	    worker_pids_limit        = 256
//	    runner_memory_reserve_mb = 48
//	    landlock         = "best-effort"
//	    disk_mb          = 256                  # a model's /tmp + /scratch (tmpfs, counted in its memory)
//	    cpu_hard_limit   = true                 # cap each task at its cpu share (false: may burst)
//	    allow_written_executables = false       # true: models may execute what they write
//	    model_store      = "/var/lib/modelbox/models"
//	    allow_host_model_dirs = false
//	    environments {                          # a python submission's requirements.txt
//	      root          = "/var/lib/modelbox/envs"
//	      uv            = "uv"                  # the uv binary (path or name in PATH)
//	      index_urls    = ["https://pypi.org/simple"]   # first: default index; others: extra indexes
//	      index_credentials = "secret/data/modelnodes/indexes"   # Vault KV v2: host -> "user:password" (wheels mode)
//	      budget_mb     = 20480                 # disk for environments not in use
//	      build_timeout = "30m"
//	      build         = "wheels"              # wheels only, built on the trusted side; or "sandbox" (sdists too)
//	      build_uid        = 63999              # sandbox: the build's user (not root, not in uid_range)
//	      build_memory_mb  = 4096               # sandbox: per build command
//	      build_pids_limit = 1024
//	      allowed_hosts    = []                 # sandbox: hosts besides the indexes'
//	      default_requirements = ["pandas>=2.2.3,<3", "pyarrow>=18.1,<19"]   # unless a submission names them
//	    }
//	    gpu {                                   # NVIDIA GPUs reserved by nomad-device-nvidia (docs/driver.md)
//	      libraries  = []                       # the driver's user-space libraries; empty: found with ldconfig -p
//	      nvidia_smi = ""                       # empty: looked up in PATH
//	    }
//	  }
//	}
var configSpec = hclspec.NewObject(map[string]*hclspec.Spec{
	"runner_path": hclspec.NewDefault(hclspec.NewAttr("runner_path", "string", false),
		hclspec.NewLiteral(`"model-runner"`)),
	"python": hclspec.NewDefault(hclspec.NewAttr("python", "string", false),
		hclspec.NewLiteral(`"/usr/bin/python3"`)),
	"python_interpreters": hclspec.NewAttr("python_interpreters", "list(string)", false),
	"allowed_runtimes": hclspec.NewDefault(hclspec.NewAttr("allowed_runtimes", "list(string)", false),
		hclspec.NewLiteral(`["python", "executable"]`)),
	"readonly_paths": hclspec.NewDefault(hclspec.NewAttr("readonly_paths", "list(string)", false),
		hclspec.NewLiteral(`["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc/ssl", "/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime"]`)),
	"uid_range": hclspec.NewDefault(hclspec.NewAttr("uid_range", "string", false),
		hclspec.NewLiteral(`"64000-64999"`)),
	"runner_uid_range": hclspec.NewDefault(hclspec.NewAttr("runner_uid_range", "string", false),
		hclspec.NewLiteral(`"62000-62999"`)),
	"worker_pids_limit": hclspec.NewDefault(hclspec.NewAttr("worker_pids_limit", "number", false),
		hclspec.NewLiteral(`256`)),
	"runner_memory_reserve_mb": hclspec.NewDefault(hclspec.NewAttr("runner_memory_reserve_mb", "number", false),
		hclspec.NewLiteral(`48`)),
	"landlock": hclspec.NewDefault(hclspec.NewAttr("landlock", "string", false),
		hclspec.NewLiteral(`"best-effort"`)),
	"disk_mb": hclspec.NewDefault(hclspec.NewAttr("disk_mb", "number", false),
		hclspec.NewLiteral(`256`)),
	"cpu_hard_limit": hclspec.NewDefault(hclspec.NewAttr("cpu_hard_limit", "bool", false),
		hclspec.NewLiteral(`true`)),
	"allow_written_executables": hclspec.NewDefault(hclspec.NewAttr("allow_written_executables", "bool", false),
		hclspec.NewLiteral(`false`)),
	"model_store": hclspec.NewDefault(hclspec.NewAttr("model_store", "string", false),
		hclspec.NewLiteral(`"/var/lib/modelbox/models"`)),
	"allow_host_model_dirs": hclspec.NewDefault(hclspec.NewAttr("allow_host_model_dirs", "bool", false),
		hclspec.NewLiteral(`false`)),
	// Absent fields take EnvironmentsConfig.withDefaults's values.
	"gpu": hclspec.NewBlock("gpu", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"libraries":  hclspec.NewAttr("libraries", "list(string)", false),
		"nvidia_smi": hclspec.NewAttr("nvidia_smi", "string", false),
	})),
	"environments": hclspec.NewBlock("environments", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"root":                 hclspec.NewAttr("root", "string", false),
		"uv":                   hclspec.NewAttr("uv", "string", false),
		"index_urls":           hclspec.NewAttr("index_urls", "list(string)", false),
		"index_credentials":    hclspec.NewAttr("index_credentials", "string", false),
		"budget_mb":            hclspec.NewAttr("budget_mb", "number", false),
		"build_timeout":        hclspec.NewAttr("build_timeout", "string", false),
		"build":                hclspec.NewAttr("build", "string", false),
		"default_requirements": hclspec.NewAttr("default_requirements", "list(string)", false),
		"build_uid":            hclspec.NewAttr("build_uid", "number", false),
		"build_memory_mb":      hclspec.NewAttr("build_memory_mb", "number", false),
		"build_pids_limit":     hclspec.NewAttr("build_pids_limit", "number", false),
		"allowed_hosts":        hclspec.NewAttr("allowed_hosts", "list(string)", false),
	})),
})

// taskConfigSpec is the task's config block:
//
//	config {
//	  model_dir = "local/model"      # in the task dir (moved to model_store at start), or an absolute
//	                                 # host path where the plugin config allows host model dirs
//	  runtime   = "python"           # or "executable"
//	  entry     = ""                 # python: module; executable: program in model_dir
//	  port      = "grpc"             # the network port label the runner listens on
//	  tls {
//	    cert      = "secrets/runner.crt"
//	    key       = "secrets/runner.key"
//	    client_ca = "secrets/ca.crt"
//	  }
//	  plaintext    = false
//	  call_timeout = "5m"
//	  max_queue    = 128
//	  disk_mb      = 300             # /tmp + /scratch (default: the plugin's disk_mb); match ephemeral_disk
//	  authz {                        # who may call: the crunch's coordinator (docs/security.md)
//	    crunch      = "alpha"        # or policy_file = "secrets/authz.json" (re-read on change)
//	    cert_hashes = ["<sha256 of the coordinator's SPKI, hex>"]   # none: nobody may call
//	    crl         = "secrets/crl.pem"      # required, or crl_url = "https://vault:8200/v1/pki_int/issuers"
//	    crl_grace   = "1h"                   # past nextUpdate + this, the issuer's certificates are refused
//	  }
//	  delegation  = "local/delegation.json"   # the cruncher's wallet delegation
//	  health_port = "health"                  # a port label for a health-only endpoint (Consul checks)
//	  metrics_port = "metrics"                # a port label for the runner's Prometheus /metrics
//	}
var taskConfigSpec = hclspec.NewObject(map[string]*hclspec.Spec{
	"model_dir": hclspec.NewAttr("model_dir", "string", true),
	"runtime":   hclspec.NewDefault(hclspec.NewAttr("runtime", "string", false), hclspec.NewLiteral(`"python"`)),
	"entry":     hclspec.NewAttr("entry", "string", false),
	"port":      hclspec.NewDefault(hclspec.NewAttr("port", "string", false), hclspec.NewLiteral(`"grpc"`)),
	"tls": hclspec.NewBlock("tls", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"cert":      hclspec.NewAttr("cert", "string", false),
		"key":       hclspec.NewAttr("key", "string", false),
		"client_ca": hclspec.NewAttr("client_ca", "string", false),
		"vault": hclspec.NewBlock("vault", false, hclspec.NewObject(map[string]*hclspec.Spec{
			"address": hclspec.NewAttr("address", "string", true),
			"sign_path": hclspec.NewDefault(hclspec.NewAttr("sign_path", "string", false),
				hclspec.NewLiteral(`"pki_int/sign/runner"`)),
			"key_path":    hclspec.NewAttr("key_path", "string", false),
			"common_name": hclspec.NewAttr("common_name", "string", false),
			"ttl":         hclspec.NewAttr("ttl", "string", false),
		})),
	})),
	"authz": hclspec.NewBlock("authz", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"crunch":      hclspec.NewAttr("crunch", "string", false),
		"cert_hashes": hclspec.NewAttr("cert_hashes", "list(string)", false),
		"policy_file": hclspec.NewAttr("policy_file", "string", false),
		"crl":         hclspec.NewAttr("crl", "string", false),
		"crl_url":     hclspec.NewAttr("crl_url", "string", false),
		"crl_grace":   hclspec.NewAttr("crl_grace", "string", false),
	})),
	"delegation":   hclspec.NewAttr("delegation", "string", false),
	"health_port":  hclspec.NewAttr("health_port", "string", false),
	"metrics_port": hclspec.NewAttr("metrics_port", "string", false),
	"plaintext":    hclspec.NewAttr("plaintext", "bool", false),
	"call_timeout": hclspec.NewAttr("call_timeout", "string", false),
	"max_queue":    hclspec.NewAttr("max_queue", "number", false),
	"disk_mb":      hclspec.NewAttr("disk_mb", "number", false),
})

var capabilities = &drivers.Capabilities{
	SendSignals: true,
	// No exec: nobody may read model code through `nomad alloc exec`.
	Exec: false,
	// The driver isolates the worker itself; Nomad must not build a chroot
	// copy of the host for the task.
	FSIsolation:          fsisolation.None,
	NetIsolationModes:    []drivers.NetIsolationMode{drivers.NetIsolationModeHost, drivers.NetIsolationModeGroup},
	DynamicWorkloadUsers: true,
}
