# scheduler: the scheduler's Consul token when it runs as a Nomad job
# (deploy/nomad/scheduler.nomad.hcl): its tasks' Consul workload identity gets
# this role through the binding rule deploy/consul/setup makes for the job. The
# leader lock (--lock-key under modelnodes/scheduler/) is a KV key held by a
# session of the local agent's node; services are read through role
# nomad-tasks (the orchestrator WebSocket's crunches).
key_prefix "modelnodes/scheduler/" {
  policy = "write"
}
session_prefix "" {
  policy = "write"
}
