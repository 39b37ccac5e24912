# Nomad client snippet for Model Nodes (merge into each model node's config).

client {
  enabled = true
  options = {
    # Model nodes run untrusted code: only our driver (and nothing that
    # could exec into a model) is needed.
    "driver.allowlist" = "modelbox"
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
  }
}

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
