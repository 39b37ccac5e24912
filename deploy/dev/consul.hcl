# Consul dev agent: the settings shared by `make dev` (deploy/dev/up) and the
# Go test helper (internal/testing/testcluster). Both add a generated file with the
# addresses, ports and tokens of their own instance.
log_level            = "INFO"
disable_update_check = true

# ACLs on, as in production: Nomad services register with tokens derived
# from their workload identities (deploy/consul/setup).
acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = false
}

ui_config {
  enabled = false
}

# Nomad opens a Consul client per allocation; under churn the default of 200
# connections per address refuses new allocations (deploy/consul/client.hcl).
limits {
  http_max_conns_per_client = 1000
}
