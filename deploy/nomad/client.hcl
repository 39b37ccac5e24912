# Nomad client snippet for Model Nodes (merge into each model node's config).

client {
  enabled = true
  options = {
    # Model nodes run untrusted code: only our driver (and nothing that
    # could exec into a model) is needed.
    "driver.allowlist" = "modelbox"
  }

  # Fail static through an outage of Vault, Consul or Nomad's servers.
  # Every model's job has templates (its CA bundle from Vault; its wallet
  # delegation from a Nomad variable; without runner_vault_addr its
  # certificate too). Nomad re-reads them (secrets without a lease about
  # every 5 minutes, at each agent restart) and, by default, gives up
  # after 12 attempts (250 ms doubling to 1 min: about 5 minutes), then KILLS
  # the task ("Template failed"): a Vault outage stops every model 5 to 10
  # minutes in, and replacements cannot start until Vault is back.
  # attempts = 0 retries for as long as the source is down: the task keeps
  # running on what it rendered last (the runner on its current certificate,
  # until it expires; docs/vault.md) and re-renders once the source is back.
  # A task that starts during an outage waits for its first render.
  # max_stale is left at Nomad's default (87600h): it only concerns Consul
  # reads, which any Consul server may then answer from its own state.
  template {
    vault_retry {
      attempts    = 0
      backoff     = "250ms"
      max_backoff = "1m"
    }
    consul_retry {
      attempts    = 0
      backoff     = "250ms"
      max_backoff = "1m"
    }
    nomad_retry {
      attempts    = 0
      backoff     = "250ms"
      max_backoff = "1m"
    }
  }
}

# Nomad only loads plugin binaries named in a plugin block below.
plugin_dir = "/opt/nomad/plugins"

# Our task driver ("modelbox"): starts the trusted runner and the sandboxed
# model worker. All keys and their defaults: driver/about.go (configSpec).
plugin "nomad-driver-modelbox" {
  config {
    # The runner binary (cmd/model-runner) the driver starts for each model.
    runner_path = "/opt/modelnodes/bin/model-runner"
    # Interpreter for runtime = "python".
    python = "/usr/bin/python3"
    # Model runtimes a job may ask for; "executable" runs a program shipped
    # with the model, so leave it out unless you need it.
    allowed_runtimes = ["python"]
    # Where each model lives while it runs: the driver moves it out of the
    # alloc dir's local/ (which `nomad alloc fs` serves) at the task's start
    # and removes it once Nomad has garbage-collected the allocation.
    model_store = "/var/lib/modelbox/models"
    # Keep false on real nodes: true lets any job's model_dir show a host
    # directory to model code (development and test clusters only).
    allow_host_model_dirs = false
    # What a model may write (/tmp and /scratch together): a tmpfs counted
    # in the task's memory; a job's task config disk_mb overrides it.
    disk_mb = 256
    # Each task is capped at the CPU it reserved (Docker's cpu_hard_limit);
    # false lets models burst into idle CPU, at their neighbours' expense.
    cpu_hard_limit = true
    # Models may not execute what they write: their writable places are
    # noexec without a Landlock execute right, and the seccomp filter refuses
    # memfd_create. true lifts all three (runtimes that compile code at run
    # time) and changes the profile hash the node reports
    # (driver.modelbox.seccomp.profile; docs/driver.md "System calls").
    allow_written_executables = false
    # Each running model's runner runs as a user of this range of its own
    # (not root, no capabilities); the workers use uid_range (64000-64999).
    # Keep both free of the node's accounts and of Nomad's dynamic users.
    runner_uid_range = "62000-62999"
  }
}

# Node kernel settings the sandbox relies on beyond its own filter (set them
# in /etc/sysctl.d/90-modelnodes.conf). The driver fingerprints each one as
# driver.modelbox.sysctl.<name>, so `nomad node status -verbose` shows what a
# node enforces and a job may constrain on it, e.g.
#   constraint { attribute = "${attr.driver.modelbox.sysctl.kernel.io_uring_disabled}" value = "2" }
#
#   kernel.io_uring_disabled = 2          # io_uring off for every process (Linux 6.6+)
#   user.max_user_namespaces = 0          # the driver needs no user namespaces; set it
#                                         # where nothing else on the node does either
#   kernel.unprivileged_bpf_disabled = 2  # no bpf() without CAP_BPF
#   kernel.perf_event_paranoid = 3        # where the kernel has level 3; else 2
#   kernel.yama.ptrace_scope = 2          # ptrace needs CAP_SYS_PTRACE
#   vm.unprivileged_userfaultfd = 0       # userfaultfd needs CAP_SYS_PTRACE
#
# The model's seccomp filter refuses these calls already; the sysctls close
# them for everything else on the node too (the runner, Nomad, other tasks).

# The local Consul agent, over TLS. The token only needs to let Nomad read
# its own node and (de)register services it derived identities for.
consul {
  address      = "127.0.0.1:8501"
  ssl          = true
  ca_file      = "/etc/nomad.d/tls/consul-ca.pem"
  grpc_address = "127.0.0.1:8503"
  grpc_ca_file = "/etc/nomad.d/tls/consul-ca.pem"
  token        = "<nomad client agent token>"
}

# Vault, reached by the client to exchange workload identities for tokens.
vault {
  enabled = true
  address = "https://vault.service.consul:8200"
  ca_file = "/etc/nomad.d/tls/vault-ca.pem"
}

# mTLS between agents and on the HTTP API. Consul and Vault fetch the JWKS
# over HTTPS without a client certificate, hence verify_https_client = false;
# give them Nomad's CA (NOMAD_JWKS_CA_FILE for deploy/*/setup).
tls {
  http                   = true
  rpc                    = true
  ca_file                = "/etc/nomad.d/tls/nomad-ca.pem"
  cert_file              = "/etc/nomad.d/tls/client.pem"
  key_file               = "/etc/nomad.d/tls/client-key.pem"
  verify_server_hostname = true
  verify_https_client    = false
}
