# nomad-tasks: tokens Nomad tasks receive through their Consul workload
# identity (only tasks with a `consul` block get one). Enough for templates
# that look up services; no writes, no KV.
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
