# Nomad server snippet for Model Nodes (merge into the server's config).
# The servers sign workload identities; Consul and Vault verify them against
# https://<nomad>/.well-known/jwks.json (deploy/consul/setup, deploy/vault/setup).

server {
  enabled          = true
  bootstrap_expect = 3

  # Spread models over the clients instead of bin-packing them: losing a
  # machine then takes ~1 % of 10,000 models, not as many as fit on it
  # (docs/scaling.md). Read at the cluster's bootstrap only; on a running
  # cluster: nomad operator scheduler set-config -scheduler-algorithm=spread
  default_scheduler_config {
    scheduler_algorithm = "spread"
  }
}

acl {
  enabled = true
}

# Identities injected into every Consul service and into tasks with a consul
# block. Audience must match deploy/consul/setup's BoundAudiences.
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

# Identity injected into tasks with a vault block (the runners). Audience must
# match the "runner" role of auth/jwt-nomad (deploy/vault/setup). Runner jobs
# must be named model-node-<model_id> in the namespace the role is bound to.
vault {
  enabled               = true
  jwt_auth_backend_path = "jwt-nomad"
  default_identity {
    aud = ["vault.io"]
    ttl = "1h"
  }
}

# mTLS between agents and on the HTTP API. Consul and Vault fetch the JWKS
# over HTTPS without a client certificate, hence verify_https_client = false;
# give them Nomad's CA (NOMAD_JWKS_CA_FILE for deploy/*/setup).
tls {
  http                   = true
  rpc                    = true
  ca_file                = "/etc/nomad.d/tls/nomad-ca.pem"
  cert_file              = "/etc/nomad.d/tls/server.pem"
  key_file               = "/etc/nomad.d/tls/server-key.pem"
  verify_server_hostname = true
  verify_https_client    = false
}
