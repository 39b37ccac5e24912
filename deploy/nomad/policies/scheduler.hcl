# scheduler: the watcher + reconciler's Nomad token. It registers, stops and
# purges the model jobs, lists them and their allocations, and follows the
# Job and Allocation event streams (crash-loop holds), and restarts a
# model's allocation when its coordinator reports it timing out
# (alloc-lifecycle; docs/scheduler.md, "Failure reports"). Nothing else: no
# variables (it never sees delegations), no nodes, no operator endpoints.
# Nomad cannot restrict job names: give the model jobs a namespace of their
# own (--nomad-namespace) and name it here instead of "default".
namespace "default" {
  capabilities = ["list-jobs", "read-job", "submit-job", "alloc-lifecycle"]
}
