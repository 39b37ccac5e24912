app {
  url = "https://github.com/modelnodes/modelnodes"
}

pack {
  name        = "modelnodes_scheduler"
  description = "The Model Nodes scheduler: two instances on the Consul lock, credentials from workload identities, settings from the job's Nomad Variable (docs/operations.md)."
  version     = "0.1.0"
}
