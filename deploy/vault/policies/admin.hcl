# admin: writes the project's policies, mounts the engines and auth methods,
# and decides what a runner is (the Nomad JWT auth config and its runner
# role). Whoever can write policies can grant themselves anything, so this is
# root in all but name: hand admin tokens out rarely and short-lived. An
# admin runs `deploy/vault/setup` (everything) with a token that carries both
# admin and operator; the security team's day-to-day work needs only
# operator (docs/vault.md says which step needs which).

# The project's policies, and only those.
path "sys/policies/acl/admin" {
  capabilities = ["create", "read", "update", "delete"]
}
path "sys/policies/acl/operator" {
  capabilities = ["create", "read", "update", "delete"]
}
path "sys/policies/acl/runner" {
  capabilities = ["create", "read", "update", "delete"]
}
path "sys/policies/acl/coordinator" {
  capabilities = ["create", "read", "update", "delete"]
}
path "sys/policies/acl/scheduler" {
  capabilities = ["create", "read", "update", "delete"]
}
path "sys/policies/acl" {
  capabilities = ["list"]
}

# Mount the project's engines and auth methods (enabling an auth method
# needs sudo).
path "sys/mounts/pki" {
  capabilities = ["create", "read", "update"]
}
path "sys/mounts/pki_int" {
  capabilities = ["create", "read", "update"]
}
path "sys/mounts/runner-keys" {
  capabilities = ["create", "read", "update"]
}
path "sys/auth/jwt-nomad" {
  capabilities = ["create", "read", "update", "sudo"]
}
path "sys/auth/approle" {
  capabilities = ["create", "read", "update", "sudo"]
}

# What a runner is: whose JWTs Vault trusts (jwks_url) and which Nomad jobs
# get the runner policy. Whoever writes these can mint runner tokens, which
# read every model's stable key (runner-keys/), so the operator cannot.
path "auth/jwt-nomad/config" {
  capabilities = ["create", "read", "update"]
}
path "auth/jwt-nomad/role/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
