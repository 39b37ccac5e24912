# scheduler: the watcher + reconciler. It turns on-chain authorizations into
# Nomad jobs; runners get their certificates through their own workload
# identity, so the scheduler needs no PKI access at all.

# Its own configuration secrets (RPC endpoints with API keys, indexer tokens).
path "secret/data/modelnodes/scheduler/*" {
  capabilities = ["read"]
}
