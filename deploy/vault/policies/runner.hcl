# runner: attached to the Vault token a model runner's task receives through
# Nomad workload identity (JWT auth role "runner", see deploy/vault/setup).
#
# The PKI role "runner" only issues names derived from the job the token was
# issued to (identity templating on the JWT alias metadata), so this policy can
# stay a plain path grant: a runner can obtain a certificate for its own job and
# for nothing else.

# Issue a fresh key pair and server certificate (consul-template's pkiCert).
path "pki_int/issue/runner" {
  capabilities = ["update"]
}

# Sign a CSR for a long-lived per-model key: the cruncher's delegation covers the
# runner's public key, so the key must survive certificate renewals.
path "pki_int/sign/runner" {
  capabilities = ["update"]
}

# Keep the model's key across renewals, restarts and nodes (runner/vaultkey):
# read it, or create it once when it is missing. The path is computed from the
# job id in the token's JWT alias, so a runner reaches only its own model's
# key; without "update" it cannot replace it. deploy/vault/setup replaces
# JWT_ACCESSOR with the accessor of the Nomad JWT auth mount.
path "runner-keys/data/{{identity.entity.aliases.JWT_ACCESSOR.metadata.nomad_job_id}}" {
  capabilities = ["create", "read"]
}

# The package indexes' credentials (a private mirror's token), which the
# modelbox driver reads with this token when it builds the model's Python
# environment on the node's trusted side (plugin config
# environments.index_credentials, docs/driver.md). The runner never reads
# it, and the model never sees the token.
path "secret/data/modelnodes/indexes" {
  capabilities = ["read"]
}
