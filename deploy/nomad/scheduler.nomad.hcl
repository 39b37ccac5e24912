# The Model Nodes scheduler (cmd/scheduler) as a Nomad service: two
# instances, one leading through the Consul lock (--lock-key), the other
# standing by with its sources read, ready to take over without a write.
#
#   nomad var put nomad/jobs/modelnodes-scheduler @settings.json   # first: see "Settings"
#   nomad job run -var artifact_url=https://... -var artifact_sha256=... \
#       deploy/nomad/scheduler.nomad.hcl
#
# docs/operations.md walks through it (the one-time setup, upgrades);
# deploy/packs/modelnodes_scheduler renders this same job with nomad-pack.
#
# Credentials: none on disk, none in this file.
# - Nomad: the task's workload identity (identity { env = true }: NOMAD_TOKEN),
#   used on the task API socket of the local client (NOMAD_UNIX_ADDR), which
#   needs no TLS material in the task. Its rights are the ACL policy
#   deploy/nomad/setup attaches to this job (`deploy/nomad/setup scheduler-job`).
# - Consul: the task's Consul workload identity (consul {}), exchanged by the
#   Nomad client at Consul's nomad-workloads auth method for a token
#   (CONSUL_HTTP_TOKEN) with the role deploy/consul/setup binds to this job:
#   the lock's key and sessions.
# - Everything else (RPC URLs with API keys, the admin token) comes from the
#   job's Nomad Variable, readable by this job's tasks only.
#
# Settings: every item of the Nomad Variable nomad/jobs/<job id> becomes the
# scheduler's environment variable MODELNODES_SCHEDULER_<ITEM> (upper case),
# which sets flag --<item with - for _> (cmd/scheduler: every flag reads one).
# A change of the variable restarts each task within a minute (splay). For example:
#
#   {"Items": {
#     "solana_rpc": "https://rpc.example", "solana_ws": "wss://rpc.example",
#     "solana_program": "<PROGRAM>", "consul_addr": "127.0.0.1:8500",
#     "crl_url": "https://vault:8200/v1/pki_int/issuers",
#     "runner_vault_addr": "https://vault.service.consul:8200",
#     "artifact_hosts": "models.example", "nomad_namespace": "models"}}
#
# The driver: exec. The scheduler is trusted code, but it needs no privilege:
# exec runs it as an unprivileged user (var.user) in a chroot with its own
# pid namespace and resource limits, from a binary fetched and checked by
# sha256 (var.artifact_url). raw_exec would run it as root with no
# isolation, and enabling raw_exec lets any job submitter own the node;
# modelbox is for untrusted model code and gives it no network at all.
# Run it on control-plane clients (var.node_pool), never on model nodes
# (their client allows only modelbox).

variable "job_id" {
  type        = string
  description = "Job id. The Consul binding rule (deploy/consul/setup SCHEDULER_JOB) and the Nomad policy (deploy/nomad/setup scheduler-job) name it; the settings live in nomad/jobs/<job_id>."
  default     = "modelnodes-scheduler"
}

variable "namespace" {
  type        = string
  description = "Nomad namespace of this job (not necessarily the models' namespace, which is the nomad_namespace setting)."
  default     = "default"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "node_pool" {
  type        = string
  description = "Node pool of the control-plane clients that run the scheduler."
  default     = "default"
}

variable "count" {
  type        = number
  description = "Instances: one leads, the others stand by."
  default     = 2
}

variable "distinct_hosts" {
  type        = bool
  description = "Place the instances on different clients (false only on a one-node test cluster)."
  default     = true
}

variable "driver" {
  type        = string
  description = "exec (see the header); raw_exec only where exec cannot run."
  default     = "exec"
}

variable "user" {
  type        = string
  description = "Unix user the scheduler runs as; it needs no privilege."
  default     = "nobody"
}

variable "artifact_url" {
  type        = string
  description = "Where the client fetches the scheduler binary (an https URL); empty: var.command is a path on the client (raw_exec)."
  default     = ""
}

variable "artifact_sha256" {
  type        = string
  description = "SHA-256 (hex) of the binary at var.artifact_url: the client refuses any other content."
  default     = ""
}

variable "command" {
  type        = string
  description = "The scheduler binary as the task sees it."
  default     = "local/scheduler"
}

variable "lock_key" {
  type    = string
  default = "modelnodes/scheduler/leader"
}

variable "lock_ttl" {
  type        = string
  description = "TTL of the lock's Consul session: a crashed leader's lock is free after up to twice this."
  default     = "15s"
}

job "modelnodes-scheduler" {
  id          = var.job_id
  namespace   = var.namespace
  datacenters = var.datacenters
  node_pool   = var.node_pool
  type        = "service"

  # One instance at a time, and only once the new one is healthy: at most
  # one leader change per instance replaced (docs/operations.md "Upgrade the
  # scheduler"); a version that does not come up healthy is rolled back.
  update {
    max_parallel      = 1
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
  }

  group "scheduler" {
    count = var.count

    dynamic "constraint" {
      for_each = var.distinct_hosts ? [true] : []
      content {
        operator = "distinct_hosts"
        value    = "true"
      }
    }

    network {
      port "http" {}
    }

    # The status API and /metrics (Prometheus: consul_sd_configs on this
    # service, or nomad_sd_configs on the job). /healthz answers on leader
    # and standby alike; GET /v1/status says which leads.
    service {
      name     = "modelnodes-scheduler"
      provider = "nomad"
      port     = "http"
      tags     = ["metrics"]
      check {
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    task "scheduler" {
      driver = var.driver
      user   = var.user

      config {
        command = var.command
        args = [
          "--listen=${NOMAD_ADDR_http}",
          "--lock-key=${var.lock_key}",
          "--lock-ttl=${var.lock_ttl}",
          "--instance=${NOMAD_ALLOC_ID}",
          "--log-json",
        ]
      }

      dynamic "artifact" {
        for_each = var.artifact_url == "" ? [] : [var.artifact_url]
        content {
          source      = artifact.value
          destination = "local/scheduler"
          mode        = "file"
          options {
            checksum = "sha256:${var.artifact_sha256}"
          }
        }
      }

      # NOMAD_TOKEN: this task's workload identity, no expiry, valid while
      # the allocation runs; its rights are the policies attached to the job.
      identity {
        env = true
      }

      # CONSUL_HTTP_TOKEN: a Consul token derived from the task's Consul
      # identity (Nomad's consul.task_identity), role modelnodes-scheduler.
      consul {}

      env {
        # The task API of the local client: the scheduler's Nomad calls
        # (jobs, allocations, the event stream) go through it with
        # NOMAD_TOKEN. The settings' nomad_addr overrides it. The socket's
        # path must fit in 108 bytes: keep the client's alloc_dir short.
        NOMAD_ADDR = "${NOMAD_UNIX_ADDR}"
        # What --python-constraints learnt of each code archive, kept across
        # restarts of the task (the user has no home directory).
        MODELNODES_SCHEDULER_CODE_CACHE_DIR = "${NOMAD_TASK_DIR}/code-cache"
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/settings.env"
        env         = true
        change_mode = "restart"
        # Each instance restarts at a random moment within a minute of a
        # settings change, so that the two rarely restart together.
        splay = "1m"
        # Item keys are flag names with _ for -; values are quoted for the
        # env file (a newline in a value cannot start another variable).
        data = <<-EOT
        {{- with nomadVar (printf "nomad/jobs/%s" (env "NOMAD_JOB_ID")) }}
        {{- range $k, $v := . }}
        MODELNODES_SCHEDULER_{{ $k | toUpper }}={{ $v | toJSON }}
        {{- end }}
        {{- end }}
        EOT
      }

      # SIGTERM: the scheduler finishes its pass, releases the lock and
      # exits, so the standby takes over at once instead of after the TTL.
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
