# Consul client agent snippet for Model Nodes (merge into each node's config).
#
# Runners serve gRPC over mutual TLS only, so Consul's gRPC health checks must
# speak TLS too: with enable_agent_tls_for_checks the agent uses its own
# cert_file/key_file as the client certificate of each check and ca_file /
# ca_path to verify the runner. The runner's certificate comes from Vault's
# pki_int (docs/vault.md), so ca_path must hold the Model Nodes root CA next
# to Consul's own CA, and runners must accept the agent's certificate for the
# grpc.health.v1 service. Job checks set tls_server_name to the runner's name
# (model-node-<model_id>.crunchdao.internal) and grpc_use_tls = true.

enable_agent_tls_for_checks = true

tls {
  defaults {
    # Consul's CA and the Model Nodes root CA (vault read pki/cert/ca), one
    # PEM file each.
    ca_path         = "/etc/consul.d/tls/ca"
    cert_file       = "/etc/consul.d/tls/agent.pem"
    key_file        = "/etc/consul.d/tls/agent-key.pem"
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
  https {
    # Local clients (Nomad, coordinators' discovery) present no certificate.
    verify_incoming = false
  }
  grpc {
    # Envoy and local tools connect without a client certificate.
    verify_incoming = false
  }
}

ports {
  http     = -1
  https    = 8501
  grpc     = -1
  grpc_tls = 8503
}

acl {
  enabled        = true
  default_policy = "deny"
  down_policy    = "extend-cache"
}
