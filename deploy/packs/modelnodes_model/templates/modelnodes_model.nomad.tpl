# One model's job exactly as the scheduler builds it (jobs.Build), as a
# nomad-pack template: deploy/jobs/example-model.nomad.hcl with its HCL2
# variables as pack variables. The scheduler registers model jobs itself;
# this pack is for running or inspecting one by hand. The job id, the crunch
# and the model are literal (see that file's header for why);
# deploy/packs/packs_test.go checks that the rendered job is that file's.
job "model-node-pdxu2groar3jsn66" {
  type        = "service"
  datacenters = ["*"]
  priority    = 50

  meta {
    modelnodes_managed = "true"
    modelnodes_spec    = "shwyxfcxyo2u2cns4ckpzebf"
    model_id           = "pdxu2groar3jsn66"
    model              = "example"
    crunch             = "demo"
    crunch_name        = "demo"
    cruncher           = "HN7cABqLq46Es1jh92dQQisAq662SmxELLLsHHe4YWrH"
  }

  group "model" {
    count = 1

    network {
      port "grpc" {}
      # Plaintext gRPC health only, for Consul: the model port requires a
      # client certificate, which Consul's check does not have.
      port "health" {}
      # The runner's Prometheus /metrics.
      port "metrics" {}
    }

    # Restart in place a few times, then Nomad reschedules with exponential
    # delays; the scheduler's crash-loop backoff sits on top.
    restart {
      attempts = 3
      interval = "5m"
      delay    = "5s"
      mode     = "fail"
    }

    reschedule {
      delay          = "30s"
      delay_function = "exponential"
      max_delay      = "1h"
      unlimited      = true
    }

    # The deadlines leave room for the node to build the model's Python
    # environment at its first start (the driver's build_timeout, 30 min).
    # A new version runs as a canary beside the serving one, which Nomad
    # stops only once the canary is healthy and promoted (docs/scheduler.md).
    update {
      max_parallel      = 1
      canary            = 1
      auto_promote      = true
      health_check      = "checks"
      min_healthy_time  = "10s"
      healthy_deadline  = "35m"
      progress_deadline = "40m"
      auto_revert       = true
    }

    # Nomad's own provider cannot run gRPC checks.
    service {
      provider = "consul"
      name     = "crunch-demo"
      port     = "grpc"
      # Until promoted: the serving runner does not take it for its replacement.
      canary_tags = ["canary"]
      meta {
        model_id = "pdxu2groar3jsn66"
        model    = "example"
        crunch   = "demo"
        cruncher = "HN7cABqLq46Es1jh92dQQisAq662SmxELLLsHHe4YWrH"
        # The node's seccomp profile (its driver's fingerprint), filled in
        # by Nomad when it registers the service.
        seccomp_profile = "${attr.driver.modelbox.seccomp.profile}"
      }
      check {
        name     = "grpc-health"
        type     = "grpc"
        port     = "health"
        interval = "5s"
        timeout  = "2s"
      }
    }

    # The runner's metrics, for Prometheus' Consul discovery: one service for
    # every model ("crunch--metrics": no crunch's service can be named so),
    # its meta saying whose.
    service {
      provider = "consul"
      name     = "crunch--metrics"
      port     = "metrics"
      tags     = ["metrics"]
      meta {
        model_id = "pdxu2groar3jsn66"
        crunch   = "demo"
      }
    }

    task "model" {
      driver       = "modelbox"
      kill_timeout = "10s"

      config {
        model_dir = "local/model"
        runtime   = "python"
        port      = "grpc"
        tls {
          # One template renders certificate, chain and key together.
          cert      = "secrets/tls.pem"
          key       = "secrets/tls.pem"
          client_ca = "secrets/ca.crt"
        }
        # Only the coordinator of crunch "demo" may call (its certificate's
        # URI SAN); the chain's key hashes are added when it records them.
        authz {
          crunch  = "demo"
          crl_url = [[ var "crl_url" . | quote ]]
        }
        health_port  = "health"
        metrics_port = "metrics"
      }

      artifact {
        source      = [[ var "artifact_url" . | quote ]]
        destination = "local/model"
        options {
          checksum = "sha256:[[ var "artifact_sha256" . ]]"
        }
      }

      resources {
        cpu    = 500
        memory = 512
      }

      identity {
        name = "vault_default"
        aud  = ["vault.io"]
        ttl  = "1h"
      }

      # env = false: VAULT_TOKEN stays out of the task's environment, which
      # Nomad interpolates into the artifact source and the driver config;
      # the runner reads secrets/vault_token. change_mode = "noop": when the
      # token reaches its max TTL Nomad logs in again and rewrites that file,
      # which the runner re-reads; "restart" would restart the model daily.
      vault {
        role        = "runner"
        env         = false
        change_mode = "noop"
      }

      template {
        destination   = "secrets/tls.pem"
        perms         = "0600"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
        {{ with pkiCert "pki_int/issue/runner" (printf "common_name=%s.crunchdao.internal" (env "NOMAD_JOB_ID")) "ttl=24h" }}
        {{- .Cert }}
        {{ .CA }}
        {{ .Key }}
        {{ end }}
        EOT
      }

      template {
        destination   = "secrets/ca.crt"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        # The root coordinators chain to, and every issuer of pki_int: each
        # signs its own revocation list (authz.crl_url), and after
        # `deploy/vault/setup rotate-intermediate` the previous issuer's
        # certificates stay valid (pki_int/cert/ca_chain would hold only the
        # new one). All unauthenticated in Vault.
        data          = <<-EOT
          {{ with secret "pki/cert/ca" }}{{ .Data.certificate }}{{ end }}
          {{ range secrets "pki_int/issuers" }}{{ with secret (printf "pki_int/issuer/%s/json" .) }}{{ .Data.certificate }}
          {{ end }}{{ end }}
          EOT
      }
    }
  }
}
