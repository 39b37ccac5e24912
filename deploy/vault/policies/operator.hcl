# operator: the security team's day-to-day token. Manages the model-call PKI,
# onboards and revokes coordinators, rotates the intermediate and deletes
# runner keys, without touching code and without root. It cannot raise its
# own rights: no policy writes (that is admin.hcl), no tokens, no AppRole
# or identity that carries another policy, no change to what a runner is
# (the Nomad JWT auth), no secrets outside its job (TestVaultOperatorCannotRaiseItsRights).
# deploy/vault/setup replaces APPROLE_ACCESSOR with the accessor of the
# AppRole auth mount.

# PKI: issuers, keys, roles, URLs, CRLs, tidy, revocation, intermediate
# rotation (generate CSR on pki_int, sign it with pki, import it).
path "pki/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
path "pki_int/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
path "sys/mounts/pki/tune" {
  capabilities = ["read", "update"]
}
path "sys/mounts/pki_int/tune" {
  capabilities = ["read", "update"]
}

# Listing mounts and reading the accessors deploy/vault/setup templates with.
path "sys/auth" {
  capabilities = ["read"]
}
path "sys/mounts" {
  capabilities = ["read"]
}

# The Nomad workload identity auth: read only (admin writes it).
path "auth/jwt-nomad/config" {
  capabilities = ["read"]
}
path "auth/jwt-nomad/role/*" {
  capabilities = ["read", "list"]
}

# Coordinators: one AppRole per crunch, whose tokens carry the coordinator
# policy and nothing else. The glob also covers the role's sub-paths
# (role-id, secret-id, policies, ...), so every write there is held to these
# parameters: token_policies (and its old name, policies) may only be
# "coordinator"; no period (tokens renewable forever) and no custom role_id.
path "auth/approle/role/coordinator-*" {
  capabilities = ["create", "read", "update", "delete", "list"]
  allowed_parameters = {
    "token_policies"          = ["coordinator"]
    "policies"                = ["coordinator"]
    "token_ttl"               = []
    "token_max_ttl"           = []
    "token_explicit_max_ttl"  = []
    "token_num_uses"          = []
    "token_bound_cidrs"       = []
    "token_no_default_policy" = []
    "token_type"              = []
    "bind_secret_id"          = []
    "secret_id_ttl"           = []
    "secret_id_num_uses"      = []
    "secret_id_bound_cidrs"   = []
    # secret-id, custom-secret-id, secret-id/lookup, secret-id/destroy,
    # secret-id-accessor/{lookup,destroy}
    "metadata"                = []
    "cidr_list"               = []
    "ttl"                     = []
    "num_uses"                = []
    "secret_id"               = []
    "secret_id_accessor"      = []
  }
}
path "auth/approle/role" {
  capabilities = ["list"]
}

# A coordinator's crunch: custom metadata "crunch" on the identity alias of
# its AppRole login (the PKI role "coordinator" names certificates after
# it). Only aliases of the AppRole mount, and never canonical_id: an alias
# pointed at another entity would log that AppRole in as that entity, with
# its policies. A new alias gets an entity of its own, without policies.
path "identity/entity-alias" {
  capabilities = ["create", "update"]
  allowed_parameters = {
    "name"            = []
    "mount_accessor"  = ["APPROLE_ACCESSOR"]
    "custom_metadata" = []
  }
}
# Looking at identities is fine; changing entities (policies, aliases,
# groups) is not.
path "identity/entity/id/*" {
  capabilities = ["read", "list"]
}
path "identity/entity-alias/id/*" {
  capabilities = ["read", "list"]
}

# Runner keys: list them and delete one (a model's next runner creates a new
# key: rotation after a suspected leak); never read the keys themselves.
path "runner-keys/metadata/*" {
  capabilities = ["read", "list", "delete"]
}
path "sys/mounts/runner-keys" {
  capabilities = ["read"]
}
