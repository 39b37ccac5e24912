# Sourced by the deploy scripts: the names Model Nodes derives from a crunch's
# name come from cmd/modelnodes-names (package names), never from a copy of
# its rules in shell.
#
#   crunch_name FIELD CRUNCH   prints one of: label service coordinator_cn
#                              coordinator_uri approle (modelnodes-names --help)
#   name_contract FIELD        prints one of: job_prefix runner_domain
#                              service_prefix coordinator_domain
#                              coordinator_uri_prefix approle_prefix
#
# The binary: MODELNODES_NAMES_BIN, else $MODELNODES_BIN/modelnodes-names, else
# the repository's bin/ (make build), else modelnodes-names on PATH.
modelnodes_names_bin() {
  local repo_bin
  repo_bin="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/bin/modelnodes-names"
  if [[ -n ${MODELNODES_NAMES_BIN:-} ]]; then
    printf '%s\n' "$MODELNODES_NAMES_BIN"
  elif [[ -n ${MODELNODES_BIN:-} && -x $MODELNODES_BIN/modelnodes-names ]]; then
    printf '%s\n' "$MODELNODES_BIN/modelnodes-names"
  elif [[ -x $repo_bin ]]; then
    printf '%s\n' "$repo_bin"
  elif command -v modelnodes-names >/dev/null; then
    command -v modelnodes-names
  else
    printf 'modelnodes-names not found: run make build, or set MODELNODES_NAMES_BIN\n' >&2
    return 1
  fi
}

crunch_name() {
  local bin
  bin=$(modelnodes_names_bin) || return 1
  "$bin" crunch --field "$1" -- "$2"
}

name_contract() {
  local bin
  bin=$(modelnodes_names_bin) || return 1
  "$bin" contract --field "$1"
}
