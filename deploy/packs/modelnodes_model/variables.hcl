# The pack's variables: those of deploy/jobs/example-model.nomad.hcl, with the
# same defaults (deploy/packs/packs_test.go keeps them equal).

variable "artifact_url" {
  type        = string
  description = "Where the node fetches the submission: an https URL without query string."
  default     = "https://models.example/example.tar.gz"
}

variable "artifact_sha256" {
  type        = string
  description = "SHA-256 of the artifact (hex): Nomad refuses any other content."
  default     = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
}

variable "crl_url" {
  type        = string
  description = "Where runners fetch the revocation lists of coordinator certificates: Vault's issuer list, so every issuer's list is fetched (a rotated intermediate's too)."
  default     = "https://vault.service.consul:8200/v1/pki_int/issuers"
}
