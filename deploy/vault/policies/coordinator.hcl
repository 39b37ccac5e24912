# coordinator: attached to the AppRole token of one crunch's coordinator
# (created by `deploy/vault/setup coordinator <crunch>`).
#
# The PKI role "coordinator" only signs names derived from the entity metadata
# key "crunch" that the security team set when onboarding the coordinator, so
# one policy serves every crunch and a coordinator can never obtain a
# certificate naming another crunch.

# Sign the coordinator's own CSR. Signing (rather than issuing) keeps the
# coordinator's key stable across renewals: its public key hash is what the
# crunch records on chain.
path "pki_int/sign/coordinator" {
  capabilities = ["update"]
}
