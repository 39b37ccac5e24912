# operator: the security team. Manages the model-call PKI, the Nomad JWT auth
# backend, the coordinators' AppRoles and entities, and the project's policies,
# without touching code and without root. It cannot read other secrets, change
# seal or audit settings, or mint tokens for arbitrary policies.

# PKI: issuers, keys, roles, URLs, CRLs, tidy, revocation, intermediate
# rotation (generate CSR on pki_int, sign it with pki, import it).
path "pki/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
path "pki_int/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
path "sys/mounts/pki" {
  capabilities = ["read", "update"]
}
path "sys/mounts/pki_int" {
  capabilities = ["read", "update"]
}
path "sys/mounts/pki/tune" {
  capabilities = ["read", "update"]
}
path "sys/mounts/pki_int/tune" {
  capabilities = ["read", "update"]
}

# Nomad workload identity: JWKS URL, bound claims and claim mappings.
path "auth/jwt-nomad/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

# Coordinators: one AppRole and one identity entity per crunch.
path "auth/approle/role/coordinator-*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
path "auth/approle/role" {
  capabilities = ["list"]
}
path "identity/entity" {
  capabilities = ["create", "update"]
}
path "identity/entity/name/coordinator-*" {
  capabilities = ["create", "read", "update", "delete"]
}
path "identity/entity/id/*" {
  capabilities = ["read", "list"]
}
path "identity/entity-alias" {
  capabilities = ["create", "update"]
}
path "identity/entity-alias/id/*" {
  capabilities = ["read", "delete"]
}
# Listing mounts and reading the accessors deploy/vault/setup templates with.
path "sys/auth" {
  capabilities = ["read"]
}
path "sys/mounts" {
  capabilities = ["read"]
}

# The project's policies (this file included: the team owns it).
path "sys/policies/acl/runner" {
  capabilities = ["create", "read", "update"]
}
path "sys/policies/acl/coordinator" {
  capabilities = ["create", "read", "update"]
}
path "sys/policies/acl/scheduler" {
  capabilities = ["create", "read", "update"]
}
path "sys/policies/acl/operator" {
  capabilities = ["create", "read", "update"]
}
path "sys/policies/acl" {
  capabilities = ["list"]
}

# Runner keys: list them and delete one (a model's next runner creates a new
# key: rotation after a suspected leak); never read the keys themselves.
path "runner-keys/metadata/*" {
  capabilities = ["read", "list", "delete"]
}
path "sys/mounts/runner-keys" {
  capabilities = ["read", "update"]
}
