# Nomad dev agent: the settings shared by `make dev` (deploy/dev/up) and the
# Go test helper (internal/testing/testcluster). Both add a generated file with the
# data dir, ports, plugin dir, Consul and Vault addresses of their own instance
# (and the plugin "nomad-driver-modelbox" block when that binary exists).
log_level            = "INFO"
disable_update_check = true

client {
  options = {
    # The cloud fingerprinters probe metadata addresses; the AWS one kills the
    # dev agent on this kind of machine.
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
    "driver.denylist"      = "docker,qemu,java"
    # -dev mode enables raw_exec, which runs any command as root: with it,
    # whoever may submit a job owns the machine. Off; internal/testing/testcluster
    # turns it back on (a plugin "raw_exec" block wins over this option) for
    # its test workloads. deploy/dev/up also turns Nomad's ACLs on.
    "driver.raw_exec.enable" = "false"
  }

  # As deploy/nomad/client.hcl (why: there): templates retry Vault, Consul
  # and Nomad for as long as they are down, and never kill a running task.
  # TestNomadClientTemplateSettingsMatchProduction keeps the two the same.
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

# Consul integration through workload identities: each service logs in to
# Consul's "nomad-workloads" JWT auth method and may register only itself.
consul {
  service_identity {
    aud = ["consul.io"]
    ttl = "1h"
  }
  task_identity {
    aud = ["consul.io"]
    ttl = "1h"
  }
}

# Vault integration through workload identities: tasks with a vault block log
# in to Vault's jwt-nomad backend (deploy/vault/setup) with this identity.
vault {
  enabled               = true
  jwt_auth_backend_path = "jwt-nomad"
  default_identity {
    aud = ["vault.io"]
    ttl = "1h"
  }
}
