#!/usr/bin/env bash
# Starts the e2e harness on loopback, idempotently: a Kubernetes control plane
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) with kwok
# simulating nodes and kubelets, an OCI registry and Prometheus. Writes the env
# file the tests and the demo read. Running it again restarts only what is down.
set -euo pipefail
source "$(dirname "$0")/common.sh"

start=$SECONDS
"$harness_dir/install-deps.sh"
"$harness_dir/build-tools.sh" etcd kwok kubernetes helm cosign flux gitea
mkdir -p "$E2E_STATE"

# Up means: our kubeconfig exists and the API server it names answers. Another
# cluster on the same port, without our kubeconfig, does not count.
cluster_up() {
  [ -f "$E2E_STATE/kubeconfig" ] && kubectl get --raw /readyz >/dev/null 2>&1
}

# kwok's stages and the components' flags are fixed when the cluster is
# created: a cluster made from another version of them is made again.
cluster_sum=$(cat "$harness_dir/kwok-stages.yaml" "$harness_dir/up.sh" | sha256sum | cut -c1-16)

start_cluster() {
  if [ -d "$E2E_STATE/kwok/clusters/$E2E_CLUSTER" ] &&
    [ "$(cat "$E2E_STATE/cluster.sum" 2>/dev/null)" != "$cluster_sum" ]; then
    log "kwok stages or cluster flags changed; recreating the cluster"
    kwokctl delete cluster >&2 || true
    rm -rf "$E2E_STATE/kwok/clusters/$E2E_CLUSTER" "$E2E_STATE/kubeconfig"
  fi
  if cluster_up; then
    log "control plane already up"
    return
  fi
  if [ -d "$E2E_STATE/kwok/clusters/$E2E_CLUSTER" ]; then
    log "starting stopped control plane"
    kwokctl start cluster --wait 2m >&2 || {
      log "restart failed; recreating the cluster"
      kwokctl delete cluster >&2 || true
      rm -rf "$E2E_STATE/kwok/clusters/$E2E_CLUSTER"
    }
  fi
  if ! cluster_up; then
    log "creating control plane (Kubernetes $KUBE_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION)"
    {
      cat <<YAML
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeApiserverPort: $E2E_APISERVER_PORT
  kubeVersion: $KUBE_VERSION
  kubeApiserverBinary: $E2E_BIN/kube-apiserver-$KUBE_VERSION
  kubeControllerManagerBinary: $E2E_BIN/kube-controller-manager-$KUBE_VERSION
  kubeSchedulerBinary: $E2E_BIN/kube-scheduler-$KUBE_VERSION
  kubectlBinary: $E2E_BIN/kubectl-$KUBE_VERSION
  etcdBinary: $E2E_BIN/etcd-$ETCD_VERSION
  kwokControllerBinary: $E2E_BIN/kwok-$KWOK_VERSION
  # Scale tests create hundreds of ReplicaSets and pods at once; the
  # components' default client QPS would make that take minutes.
  disableQPSLimits: true
componentsPatches:
  # blockOwnerDeletion on a canary's owner reference then needs the
  # operator's update right on refreshes/finalizers, as in most clusters.
  - name: kube-apiserver
    extraArgs:
      - key: enable-admission-plugins
        value: OwnerReferencesPermissionEnforcement
---
YAML
      cat "$harness_dir/kwok-stages.yaml"
    } >"$E2E_STATE/kwokctl.yaml"
    kwokctl --config "$E2E_STATE/kwokctl.yaml" create cluster \
      --kubeconfig "$E2E_STATE/kubeconfig" --wait 2m >&2
    echo "$cluster_sum" >"$E2E_STATE/cluster.sum"
  fi
  wait_until "the API server" 60 cluster_up
  # The default ServiceAccount is what test pods run as; its creation is
  # asynchronous in a new cluster.
  wait_until "the default ServiceAccount" 60 kubectl -n default get serviceaccount default
}

# service_up NAME HEALTH_URL: the service we started as NAME runs and is healthy.
service_up() {
  if alive "$E2E_STATE/$1/pid" && curl -fsk "$2" >/dev/null 2>&1; then
    log "$1 already up"
    return 0
  fi
  return 1
}

# launch NAME HEALTH_URL COMMAND...: starts COMMAND detached, logging to
# $E2E_STATE/NAME/NAME.log, and waits until HEALTH_URL answers.
launch() {
  local name=$1 health=$2; shift 2
  local dir="$E2E_STATE/$name"
  log "starting $name"
  setsid nohup "$@" >>"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  wait_until "$name at $health" 60 curl -fsk "$health"
}

start_registry() {
  local dir="$E2E_STATE/registry"
  service_up registry "http://$E2E_REGISTRY_ADDR/v2/" && return
  mkdir -p "$dir/data"
  cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $E2E_REGISTRY_ADDR
YAML
  launch registry "http://$E2E_REGISTRY_ADDR/v2/" docker-registry serve "$dir/config.yml"
}

# The notifying registry: like the first, and it POSTs every manifest push
# to the operator's notification endpoint with a bearer token generated
# here, once. Restarted when its configuration changes.
start_notify_registry() {
  local dir="$E2E_STATE/notify-registry"
  mkdir -p "$dir/data"
  [ -f "$dir/token" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$dir/token"
  cat >"$dir/config.yml.next" <<YAML
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $E2E_NOTIFY_REGISTRY_ADDR
notifications:
  endpoints:
    - name: freshen
      url: http://$E2E_NOTIFY_ADDR/notify
      headers:
        Authorization: [Bearer $(cat "$dir/token")]
      timeout: 2s
      threshold: 3
      backoff: 1s
      ignoredmediatypes:
        - application/octet-stream
      ignore:
        actions:
          - pull
YAML
  if cmp -s "$dir/config.yml.next" "$dir/config.yml" &&
    service_up notify-registry "http://$E2E_NOTIFY_REGISTRY_ADDR/v2/"; then
    return
  fi
  if alive "$dir/pid"; then
    log "notify-registry configuration changed; restarting it"
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    wait_until "notify-registry to stop" 20 bash -c "! kill -0 $(cat "$dir/pid") 2>/dev/null"
  fi
  mv "$dir/config.yml.next" "$dir/config.yml"
  launch notify-registry "http://$E2E_NOTIFY_REGISTRY_ADDR/v2/" docker-registry serve "$dir/config.yml"
}

# The private registry: htpasswd (bcrypt) basic auth, TLS with a server
# certificate for 127.0.0.1 signed by a CA generated here, once.
start_private_registry() {
  local dir="$E2E_STATE/private-registry"
  local health="https://$E2E_PRIVATE_USER:$E2E_PRIVATE_PASSWORD@$E2E_PRIVATE_REGISTRY_ADDR/v2/"
  service_up private-registry "$health" && return
  mkdir -p "$dir/data"
  if [ ! -f "$dir/tls.crt" ]; then
    log "generating the private registry's CA and certificate"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=freshen e2e CA" \
      -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
      -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=IP:127.0.0.1" "basicConstraints=CA:FALSE" \
      "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$dir/ext.cnf"
    openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
      -CAcreateserial -days 3650 -extfile "$dir/ext.cnf" -out "$dir/tls.crt" 2>/dev/null
  fi
  htpasswd -Bbn "$E2E_PRIVATE_USER" "$E2E_PRIVATE_PASSWORD" >"$dir/htpasswd"
  cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $dir/data
auth:
  htpasswd:
    realm: freshen-e2e
    path: $dir/htpasswd
http:
  addr: $E2E_PRIVATE_REGISTRY_ADDR
  tls:
    certificate: $dir/tls.crt
    key: $dir/tls.key
YAML
  launch private-registry "$health" docker-registry serve "$dir/config.yml"
}

start_prometheus() {
  local dir="$E2E_STATE/prometheus"
  service_up prometheus "http://$E2E_PROMETHEUS_ADDR/-/ready" && return
  mkdir -p "$dir/data"
  cat >"$dir/prometheus.yml" <<YAML
global:
  scrape_interval: $E2E_SCRAPE_INTERVAL
  evaluation_interval: $E2E_SCRAPE_INTERVAL
scrape_configs:
  - job_name: freshen
    static_configs:
      - targets: ["$E2E_OPERATOR_METRICS_ADDR"]
YAML
  launch prometheus "http://$E2E_PROMETHEUS_ADDR/-/ready" prometheus --config.file="$dir/prometheus.yml" \
    --storage.tsdb.path="$dir/data" --web.listen-address="$E2E_PROMETHEUS_ADDR" --web.enable-lifecycle
}

# Stand-ins for CRDs of other projects: Tekton's PipelineRun (its module is
# not served here), the Prometheus Operator's ServiceMonitor and
# PrometheusRule (the chart renders them) and Argo CD's Application (Argo
# CD cannot run here). freshen's CRDs come with the chart.
apply_standin_crds() {
  kubectl apply --server-side --force-conflicts -f "$harness_dir/tekton-pipelinerun-crd.yaml" \
    -f "$harness_dir/monitoring-crds.yaml" -f "$harness_dir/argocd-application-crd.yaml" >/dev/null
  kubectl create namespace argocd --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

# The git server the GitOps tests push to: Debian's git http-backend behind
# git-server.py. Tests create their own bare repositories under its root.
start_git_server() {
  local dir="$E2E_STATE/git-server"
  service_up git-server "http://$E2E_GIT_ADDR/healthz" && return
  mkdir -p "$dir/repos"
  launch git-server "http://$E2E_GIT_ADDR/healthz" \
    python3 "$harness_dir/git-server.py" "$E2E_GIT_ADDR" "$dir/repos"
}

# Gitea, the forge of the pull-request tests: an admin user whose API token
# (its file named in the env file) opens, merges and closes pull requests,
# and Gitea's own SSH server, which the SSH push test pushes through.
# Tests create their own repositories through its API. Its secrets are
# generated into app.ini on the first start, so app.ini is written once.
start_gitea() {
  local dir="$E2E_STATE/gitea"
  service_up gitea "http://$E2E_GITEA_ADDR/api/healthz" && [ -s "$dir/token" ] && return
  mkdir -p "$dir"
  [ -f "$dir/app.ini" ] || cat >"$dir/app.ini" <<INI
APP_NAME = freshen-e2e
RUN_MODE = prod
WORK_PATH = $dir
[server]
HTTP_ADDR = ${E2E_GITEA_ADDR%:*}
HTTP_PORT = ${E2E_GITEA_ADDR#*:}
ROOT_URL = http://$E2E_GITEA_ADDR/
STATIC_ROOT_PATH = $E2E_BIN/gitea-$GITEA_VERSION-static
START_SSH_SERVER = true
SSH_DOMAIN = ${E2E_GITEA_SSH_ADDR%:*}
SSH_LISTEN_HOST = ${E2E_GITEA_SSH_ADDR%:*}
SSH_PORT = ${E2E_GITEA_SSH_ADDR#*:}
SSH_LISTEN_PORT = ${E2E_GITEA_SSH_ADDR#*:}
BUILTIN_SSH_SERVER_USER = git
OFFLINE_MODE = true
LFS_START_SERVER = false
[database]
DB_TYPE = sqlite3
PATH = $dir/gitea.db
[security]
INSTALL_LOCK = true
[repository]
ROOT = $dir/repos
DEFAULT_BRANCH = main
[log]
MODE = file
LEVEL = Warn
ROOT_PATH = $dir/log
[service]
DISABLE_REGISTRATION = true
[indexer]
REPO_INDEXER_ENABLED = false
[cron]
ENABLED = false
INI
  # The harness runs as whoever runs it; CI runs as root, which Gitea
  # refuses unless told.
  export GITEA_I_AM_BEING_UNSAFE_RUNNING_AS_ROOT=true
  local gitea=("$E2E_BIN/gitea-$GITEA_VERSION" --config "$dir/app.ini" --work-path "$dir")
  if [ ! -s "$dir/token" ]; then
    "${gitea[@]}" migrate >>"$dir/gitea.log" 2>&1
    "${gitea[@]}" admin user create --username "$E2E_GITEA_USER" --password "$E2E_GITEA_USER-e2e" \
      --email "$E2E_GITEA_USER@freshen.invalid" --admin --must-change-password=false \
      >>"$dir/gitea.log" 2>&1 || true
    "${gitea[@]}" admin user generate-access-token --username "$E2E_GITEA_USER" \
      --token-name "e2e-$(date +%s)" --scopes all --raw | tail -n1 >"$dir/token.tmp"
    mv "$dir/token.tmp" "$dir/token"
  fi
  launch gitea "http://$E2E_GITEA_ADDR/api/healthz" "${gitea[@]}" web
}

# Flux's source-controller, kustomize-controller and helm-controller, built
# from their Go modules, against the harness API server: the reconcilers a
# promotion through git goes through. Their CRDs come from the same releases.
start_flux() {
  kubectl apply --server-side --force-conflicts \
    -f "$E2E_BIN/flux-crds-$FLUX_SOURCE_VERSION-$FLUX_KUSTOMIZE_VERSION-$FLUX_HELM_VERSION.yaml" >/dev/null
  kubectl create namespace flux-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  local storage="$E2E_STATE/source-controller/storage"
  mkdir -p "$storage" "$E2E_STATE/kustomize-controller" "$E2E_STATE/helm-controller"
  # Controllers started against a cluster since recreated hold its old
  # credentials: stop them, to be started against this one.
  local cluster
  cluster=$(kubectl get namespace kube-system -o jsonpath='{.metadata.uid}')
  for c in source-controller kustomize-controller helm-controller; do
    if alive "$E2E_STATE/$c/pid" && [ "$(cat "$E2E_STATE/$c/cluster" 2>/dev/null)" != "$cluster" ]; then
      log "restarting $c for the recreated cluster"
      kill "$(cat "$E2E_STATE/$c/pid")" 2>/dev/null || true
      wait_until "$c to stop" 20 bash -c "! kill -0 $(cat "$E2E_STATE/$c/pid") 2>/dev/null"
    fi
    echo "$cluster" >"$E2E_STATE/$c/cluster"
  done
  if ! service_up source-controller "http://127.0.0.1:19702/healthz"; then
    RUNTIME_NAMESPACE=flux-system KUBECONFIG="$E2E_STATE/kubeconfig" launch source-controller \
      "http://127.0.0.1:19702/healthz" "$E2E_BIN/source-controller-$FLUX_SOURCE_VERSION" \
      --storage-path="$storage" --storage-addr="$E2E_FLUX_STORAGE_ADDR" \
      --storage-adv-addr="$E2E_FLUX_STORAGE_ADDR" --metrics-addr=127.0.0.1:19701 \
      --health-addr=127.0.0.1:19702 --enable-leader-election=false --log-level=info
  fi
  if ! service_up kustomize-controller "http://127.0.0.1:19704/healthz"; then
    RUNTIME_NAMESPACE=flux-system KUBECONFIG="$E2E_STATE/kubeconfig" launch kustomize-controller \
      "http://127.0.0.1:19704/healthz" "$E2E_BIN/kustomize-controller-$FLUX_KUSTOMIZE_VERSION" \
      --metrics-addr=127.0.0.1:19703 --health-addr=127.0.0.1:19704 \
      --enable-leader-election=false --log-level=info
  fi
  if ! service_up helm-controller "http://127.0.0.1:19706/healthz"; then
    RUNTIME_NAMESPACE=flux-system KUBECONFIG="$E2E_STATE/kubeconfig" launch helm-controller \
      "http://127.0.0.1:19706/healthz" "$E2E_BIN/helm-controller-$FLUX_HELM_VERSION" \
      --metrics-addr=127.0.0.1:19705 --health-addr=127.0.0.1:19706 \
      --enable-leader-election=false --log-level=info
  fi
}

# freshen's chart, installed (or upgraded) the way a platform team would:
# `helm upgrade --install` against the real API server. It brings the CRDs,
# the operator's ServiceAccount and RBAC, and the admission policies. The
# operator's own Deployment is scaled to 0 (its pods could not run under
# kwok); every e2e operator runs on this machine with a token of the
# chart's ServiceAccount, so a verb the chart lacks fails a test. Upgraded
# on every run: the chart may have changed since the cluster was created.
install_chart() {
  "$E2E_BIN/helm-$HELM_VERSION" --kubeconfig "$E2E_STATE/kubeconfig" upgrade --install \
    "$E2E_RELEASE" "$repo_root/charts/freshen" --namespace "$E2E_OPERATOR_NAMESPACE" --create-namespace \
    --set replicaCount=0 --set pipelines.job.enabled=true --set pipelines.tekton.enabled=true \
    --wait --timeout 2m >/dev/null
  kubectl wait --for condition=established --timeout=60s crd -l app.kubernetes.io/part-of=freshen >/dev/null
  log "chart charts/freshen installed as release $E2E_RELEASE in $E2E_OPERATOR_NAMESPACE (operator replicas 0)"
}

# Simulated nodes, so that replicas spread as they would for real. kwok's
# default node holds 110 pods (a kubelet's default); 250 each gives the
# scale benchmarks room (FRESHEN_E2E_NODES=52 holds 13,000 pods). Applied to
# a cluster that is already up too, so a benchmark can ask for more nodes.
scale_nodes() {
  if [ "$(kubectl get nodes -o name 2>/dev/null | wc -l)" -lt "$E2E_NODES" ]; then
    log "scaling to $E2E_NODES simulated nodes"
    kwokctl scale node --replicas "$E2E_NODES" --param '.allocatable.pods=250' >&2
  fi
  wait_until "$E2E_NODES Ready nodes" 120 bash -c \
    "[ \$('$E2E_BIN/kubectl-$KUBE_VERSION' --kubeconfig '$E2E_STATE/kubeconfig' get nodes --no-headers | grep -c ' Ready') -ge $E2E_NODES ]"
}

start_cluster
scale_nodes
apply_standin_crds
install_chart
start_registry
start_private_registry
start_notify_registry
start_prometheus
start_git_server
start_gitea
start_flux

cat >"$E2E_ENV_FILE" <<ENV
# Written by e2e/harness/up.sh; read by the e2e tests and the demo.
KUBECONFIG=$E2E_STATE/kubeconfig
FRESHEN_E2E_KUBECTL=$E2E_BIN/kubectl-$KUBE_VERSION
FRESHEN_E2E_HELM=$E2E_BIN/helm-$HELM_VERSION
FRESHEN_E2E_COSIGN=$E2E_BIN/cosign-$COSIGN_VERSION
FRESHEN_E2E_REGISTRY=$E2E_REGISTRY_ADDR
FRESHEN_E2E_REGISTRY_LOG=$E2E_STATE/registry/registry.log
FRESHEN_E2E_PRIVATE_REGISTRY=$E2E_PRIVATE_REGISTRY_ADDR
FRESHEN_E2E_PRIVATE_REGISTRY_USER=$E2E_PRIVATE_USER
FRESHEN_E2E_PRIVATE_REGISTRY_PASSWORD=$E2E_PRIVATE_PASSWORD
FRESHEN_E2E_PRIVATE_REGISTRY_CA=$E2E_STATE/private-registry/ca.crt
FRESHEN_E2E_NOTIFY_REGISTRY=$E2E_NOTIFY_REGISTRY_ADDR
FRESHEN_E2E_NOTIFY_ADDR=$E2E_NOTIFY_ADDR
FRESHEN_E2E_NOTIFY_TOKEN_FILE=$E2E_STATE/notify-registry/token
FRESHEN_E2E_PROMETHEUS_URL=http://$E2E_PROMETHEUS_ADDR
FRESHEN_E2E_OPERATOR_METRICS_ADDR=$E2E_OPERATOR_METRICS_ADDR
FRESHEN_E2E_SCRAPE_INTERVAL=$E2E_SCRAPE_INTERVAL
FRESHEN_E2E_GIT_URL=http://$E2E_GIT_ADDR
FRESHEN_E2E_GIT_ROOT=$E2E_STATE/git-server/repos
FRESHEN_E2E_GITEA_URL=http://$E2E_GITEA_ADDR
FRESHEN_E2E_GITEA_USER=$E2E_GITEA_USER
FRESHEN_E2E_GITEA_TOKEN_FILE=$E2E_STATE/gitea/token
FRESHEN_E2E_GITEA_SSH_ADDR=$E2E_GITEA_SSH_ADDR
ENV
log "harness up in $((SECONDS - start))s; env file: $E2E_ENV_FILE"
