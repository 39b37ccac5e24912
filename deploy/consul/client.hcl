# Consul client agent snippet for Model Nodes (merge into each node's config).
#
# Runners serve the model over mutual TLS only; Consul's gRPC checks reach
# them on a separate health-only port that serves grpc.health.v1 in plaintext
# and nothing else (the job's "health" port, docs/driver.md), so the checks
# need no client certificate. enable_agent_tls_for_checks stays on for jobs
# that check a TLS port directly (tls_server_name =
# model-node-<id>.crunchdao.internal, grpc_use_tls = true): the agent then
# presents its own certificate and verifies the runner against ca_path, which
# must hold the Model Nodes root CA next to Consul's own.

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

# Nomad 1.11 opens a Consul client per allocation (to derive its token); each
# leaves idle connections for 90 s. A node starting ~100 allocations in that
# time exceeds Consul's default of 200 connections per address and new
# allocations fail with 429 "too many concurrent connections" (measured in
# scheduler's BenchmarkAuthorizationToCallable, docs/performance.md).
limits {
  http_max_conns_per_client = 1000
}
