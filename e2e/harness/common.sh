# Shared settings of the e2e harness scripts; sourced, not run.
# Every address is on loopback. Override a port by exporting its variable.
harness_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$harness_dir/../.." && pwd)
# shellcheck source=versions.env
source "$harness_dir/versions.env"

E2E_CACHE=${FRESHEN_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/freshen-e2e}
E2E_BIN="$E2E_CACHE/bin"
E2E_STATE=${FRESHEN_E2E_STATE:-$repo_root/.e2e}
E2E_ENV_FILE="$E2E_STATE/env"
E2E_CLUSTER=freshen-e2e
E2E_NODES=${FRESHEN_E2E_NODES:-4}
# The chart's release and namespace: the operator's ServiceAccount is
# $E2E_OPERATOR_NAMESPACE/$E2E_RELEASE.
E2E_RELEASE=freshen
E2E_OPERATOR_NAMESPACE=freshen-system

E2E_APISERVER_PORT=${FRESHEN_E2E_APISERVER_PORT:-16443}
E2E_REGISTRY_ADDR=${FRESHEN_E2E_REGISTRY_ADDR:-127.0.0.1:15000}
# A second registry with basic auth (htpasswd) over TLS from a generated CA.
E2E_PRIVATE_REGISTRY_ADDR=${FRESHEN_E2E_PRIVATE_REGISTRY_ADDR:-127.0.0.1:15001}
E2E_PRIVATE_USER=freshen
E2E_PRIVATE_PASSWORD=freshen-e2e-password
# A third registry that sends push notifications to the operator under test
# (only the notification tests push to it, so no other test's pushes queue
# up in front of theirs).
E2E_NOTIFY_REGISTRY_ADDR=${FRESHEN_E2E_NOTIFY_REGISTRY_ADDR:-127.0.0.1:15002}
# Where the operator under test accepts notifications when asked to.
E2E_NOTIFY_ADDR=${FRESHEN_E2E_NOTIFY_ADDR:-127.0.0.1:18081}
E2E_PROMETHEUS_ADDR=${FRESHEN_E2E_PROMETHEUS_ADDR:-127.0.0.1:19090}
# Where the operator under test serves /metrics; Prometheus scrapes it.
E2E_OPERATOR_METRICS_ADDR=${FRESHEN_E2E_OPERATOR_METRICS_ADDR:-127.0.0.1:18080}
# The git server (git http-backend) the GitOps tests push to, and Flux's
# source-controller artifact server (kustomize-controller fetches from it).
E2E_GIT_ADDR=${FRESHEN_E2E_GIT_ADDR:-127.0.0.1:15080}
E2E_GITEA_ADDR=${FRESHEN_E2E_GITEA_ADDR:-127.0.0.1:15300}
E2E_GITEA_SSH_ADDR=${FRESHEN_E2E_GITEA_SSH_ADDR:-127.0.0.1:15322}
E2E_GITEA_USER=freshen
E2E_FLUX_STORAGE_ADDR=${FRESHEN_E2E_FLUX_STORAGE_ADDR:-127.0.0.1:19700}
# Seconds between Prometheus scrapes of the operator.
E2E_SCRAPE_INTERVAL=${FRESHEN_E2E_SCRAPE_INTERVAL:-2s}

kwokctl() { KWOK_WORKDIR="$E2E_STATE/kwok" "$E2E_BIN/kwokctl-$KWOK_VERSION" --name "$E2E_CLUSTER" "$@"; }
kubectl() { "$E2E_BIN/kubectl-$KUBE_VERSION" --kubeconfig "$E2E_STATE/kubeconfig" "$@"; }

log() { printf '[e2e] %s\n' "$*" >&2; }

# wait_until DESCRIPTION SECONDS COMMAND...: poll COMMAND every 0.2s until it
# succeeds; after SECONDS, fail and say what was awaited.
wait_until() {
  local what=$1 limit=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out after ${limit}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

# alive PIDFILE: the process recorded in PIDFILE is running.
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
