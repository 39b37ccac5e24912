# delegations: whoever installs crunchers' wallet delegations (an operator or
# a service acting for crunchers). It writes the "delegation" item of a model
# job's variable (nomad/jobs/<job id>, rendered into the job's tasks; see
# docs/security.md) and reads the jobs to find a model's job id. It cannot
# submit or stop jobs, nor read other variables.
namespace "default" {
  capabilities = ["list-jobs", "read-job"]
  variables {
    path "nomad/jobs/model-node-*" {
      capabilities = ["write", "read", "list", "destroy"]
    }
  }
}
