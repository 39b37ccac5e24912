# The scheduler's job (deploy/nomad/scheduler.nomad.hcl) as a nomad-pack
# template: the same job, its HCL2 variables turned into pack variables
# (variables.hcl). deploy/packs/packs_test.go renders it and checks that it
# is the job file's job.
job "modelnodes-scheduler" {
  id          = [[ var "job_id" . | quote ]]
  namespace   = [[ var "namespace" . | quote ]]
  datacenters = [[ var "datacenters" . | toStringList ]]
  node_pool   = [[ var "node_pool" . | quote ]]
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
    count = [[ var "count" . ]]

    [[- if var "distinct_hosts" . ]]
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }
    [[- end ]]

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
      driver = [[ var "driver" . | quote ]]
      user   = [[ var "user" . | quote ]]

      config {
        command = [[ var "command" . | quote ]]
        args = [
          "--listen=${NOMAD_ADDR_http}",
          "--lock-key=[[ var "lock_key" . ]]",
          "--lock-ttl=[[ var "lock_ttl" . ]]",
          "--instance=${NOMAD_ALLOC_ID}",
          "--log-json",
        ]
      }

      [[- if var "artifact_url" . ]]
      artifact {
        source      = [[ var "artifact_url" . | quote ]]
        destination = "local/scheduler"
        mode        = "file"
        options {
          checksum = "sha256:[[ var "artifact_sha256" . ]]"
        }
      }
      [[- end ]]

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
