# The pack's variables: those of deploy/nomad/scheduler.nomad.hcl, with the
# same defaults (deploy/packs/packs_test.go keeps them equal).

variable "job_id" {
  type        = string
  description = "Job id. The Consul binding rule (deploy/consul/setup SCHEDULER_JOB) and the Nomad policy (deploy/nomad/setup scheduler-job) name it; the settings live in nomad/jobs/<job_id>."
  default     = "modelnodes-scheduler"
}

variable "namespace" {
  type        = string
  description = "Nomad namespace of this job (not necessarily the models' namespace, which is the nomad_namespace setting)."
  default     = "default"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "node_pool" {
  type        = string
  description = "Node pool of the control-plane clients that run the scheduler."
  default     = "default"
}

variable "count" {
  type        = number
  description = "Instances: one leads, the others stand by."
  default     = 2
}

variable "distinct_hosts" {
  type        = bool
  description = "Place the instances on different clients (false only on a one-node test cluster)."
  default     = true
}

variable "driver" {
  type        = string
  description = "exec (see the header); raw_exec only where exec cannot run."
  default     = "exec"
}

variable "user" {
  type        = string
  description = "Unix user the scheduler runs as; it needs no privilege."
  default     = "nobody"
}

variable "artifact_url" {
  type        = string
  description = "Where the client fetches the scheduler binary (an https URL); empty: var.command is a path on the client (raw_exec)."
  default     = ""
}

variable "artifact_sha256" {
  type        = string
  description = "SHA-256 (hex) of the binary at var.artifact_url: the client refuses any other content."
  default     = ""
}

variable "command" {
  type        = string
  description = "The scheduler binary as the task sees it."
  default     = "local/scheduler"
}

variable "lock_key" {
  type    = string
  default = "modelnodes/scheduler/leader"
}

variable "lock_ttl" {
  type        = string
  description = "TTL of the lock's Consul session: a crashed leader's lock is free after up to twice this."
  default     = "15s"
}
