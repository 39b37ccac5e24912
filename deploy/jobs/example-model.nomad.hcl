# One model on the modelbox driver, by hand. The scheduler (scheduler/, jobs/)
# writes jobs of this shape for every authorized model; this one is for
# operators trying the driver. The job id is the runner's identity for Vault:
# "model-node-<model_id>" (see docs/vault.md), so copy this file and rename
# the job (HCL cannot compute a job's id) when the model is not "example".
#
#   nomad job run -var model_dir=/srv/models/example deploy/jobs/example-model.nomad.hcl

variable "model_dir" {
  type        = string
  description = "The submission on the node (or use an artifact block and local/model)."
}

variable "crunch" {
  type    = string
  default = "demo"
}

job "model-node-example" {
  type = "service"

  group "model" {
    network {
      port "grpc" {}
    }

    restart {
      attempts = 3
      delay    = "5s"
      mode     = "delay"
    }

    task "model" {
      driver = "modelbox"

      config {
        model_dir = var.model_dir
        runtime   = "python"
        port      = "grpc"
        tls {
          # One template renders key and chain together, so they always match.
          cert      = "secrets/tls.pem"
          key       = "secrets/tls.pem"
          client_ca = "secrets/ca.pem"
        }
      }

      vault {}

      template {
        destination   = "secrets/tls.pem"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
        {{ with pkiCert "pki_int/issue/runner" (printf "common_name=%s.crunchdao.internal" (env "NOMAD_JOB_ID")) "ttl=24h" }}{{ .Cert }}{{ .CA }}{{ .Key }}{{ end }}
        EOT
      }

      template {
        destination   = "secrets/ca.pem"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
        {{ with secret "pki_int/cert/ca_chain" }}{{ .Data.ca_chain }}{{ end }}
        EOT
      }

      resources {
        cpu    = 500
        memory = 512
      }

      service {
        provider = "consul"
        name     = "crunch-${var.crunch}"
        port     = "grpc"
        meta {
          model_id = "example"
        }
        check {
          type            = "grpc"
          interval        = "10s"
          timeout         = "2s"
          grpc_use_tls    = true
          tls_skip_verify = false
        }
      }
    }
  }
}
