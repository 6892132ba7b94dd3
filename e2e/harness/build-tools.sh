#!/usr/bin/env bash
# Builds the Go control-plane tools the e2e harness runs, from their Go modules
# at pinned versions, into a cache outside the clone keyed by version:
#   ${FRESHEN_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/freshen-e2e}/bin/<tool>-<version>
# A tool already in the cache is not rebuilt, so a warm run takes no time.
# Usage: build-tools.sh [tool ...]   (default: every tool the tests run; the
# benchmarks name theirs: crane descheduler flagger)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${FRESHEN_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/freshen-e2e}
bin="$cache/bin"
mkdir -p "$bin"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOPATH=${GOPATH:-$HOME/go}

log() { printf '[build-tools] %s\n' "$*" >&2; }

# have TOOL VERSION: true when the cached binary exists.
have() { [ -x "$bin/$1-$2" ]; }

build_kubernetes() {
  local tools=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  local missing=()
  for t in "${tools[@]}"; do have "$t" "$KUBE_VERSION" || missing+=("$t"); done
  [ ${#missing[@]} -gt 0 ] || return 0
  log "building ${missing[*]} $KUBE_VERSION (cold: tens of minutes on 2 cores)"
  local work="$cache/src/kubernetes-$KUBE_VERSION"
  mkdir -p "$work"
  # k8s.io/kubernetes replaces its staging modules with local paths, so it
  # cannot be `go install`ed; a wrapper module replaces each with its release.
  local gomod
  gomod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module freshen.dev/e2e/kubernetes"
    echo
    sed -n 's/^go \(.*\)/go \1/p' "$gomod" | head -n1
    grep '^godebug' "$gomod" || true
    sed -n '/^godebug (/,/^)/p' "$gomod"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 '"$KUBE_STAGING_VERSION"'#p' "$gomod"
    echo ")"
  } >"$work/go.mod"
  # Every package main we build must be importable from the wrapper module.
  cat >"$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  (cd "$work" && go mod tidy -e >/dev/null 2>&1 || true; cd "$work" && go get "k8s.io/kubernetes@$KUBE_VERSION" >/dev/null)
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local ld=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  for t in "${missing[@]}"; do
    log "go build $t"
    (cd "$work" && go build -trimpath -ldflags "-s -w $ld" -o "$bin/$t-$KUBE_VERSION.tmp" "k8s.io/kubernetes/cmd/$t")
    mv "$bin/$t-$KUBE_VERSION.tmp" "$bin/$t-$KUBE_VERSION"
  done
}

build_etcd() {
  have etcd "$ETCD_VERSION" && return 0
  log "building etcd $ETCD_VERSION"
  local work="$cache/src/etcd-$ETCD_VERSION"
  mkdir -p "$work"
  (cd "$work" && { [ -f go.mod ] || go mod init freshen.dev/e2e/etcd >/dev/null 2>&1; } \
    && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 \
    && go build -trimpath -ldflags "-s -w" -o "$bin/etcd-$ETCD_VERSION.tmp" go.etcd.io/etcd/server/v3)
  mv "$bin/etcd-$ETCD_VERSION.tmp" "$bin/etcd-$ETCD_VERSION"
}

# go_install TOOL MODULE_PATH VERSION: `go install` into a private GOBIN.
go_install() {
  local tool=$1 pkg=$2 version=$3
  have "$tool" "$version" && return 0
  log "building $tool $version"
  local gobin="$cache/src/gobin-$tool-$version"
  mkdir -p "$gobin"
  GOBIN="$gobin" go install -trimpath -ldflags "-s -w" "$pkg@$version"
  mv "$gobin/$tool" "$bin/$tool-$version"
}

build_kwok() {
  go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
  go_install kwokctl sigs.k8s.io/kwok/cmd/kwokctl "$KWOK_VERSION"
}

build_helm() { go_install helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION"; }
# About 3 minutes cold on 2 cores.
build_cosign() { go_install cosign github.com/sigstore/cosign/v3/cmd/cosign "$COSIGN_VERSION"; }

# The tools `make bench-peers` compares freshen with (not built by default).

# go_wrapped TOOL MODULE VERSION PACKAGE [GOTOOLCHAIN]: builds PACKAGE of
# MODULE@VERSION through a wrapper module that copies MODULE's replace
# directives (`go install` refuses a module that has any).
go_wrapped() {
  local tool=$1 module=$2 version=$3 pkg=$4 toolchain=${5:-local}
  have "$tool" "$version" && return 0
  log "building $tool $version"
  local work="$cache/src/$tool-$version"
  mkdir -p "$work"
  local gomod
  gomod=$(cd "$work" && GOTOOLCHAIN=$toolchain go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module freshen.dev/e2e/$tool"
    echo
    sed -n 's/^go \(.*\)/go \1/p' "$gomod" | head -n1
    echo
    echo "require $module $version"
    echo
    sed -n '/^replace (/,/^)/p' "$gomod"
    grep '^replace [^(]' "$gomod" || true
  } >"$work/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$pkg" >"$work/tools.go"
  (cd "$work" && GOTOOLCHAIN=$toolchain go mod tidy >/dev/null 2>&1 || true)
  (cd "$work" && GOTOOLCHAIN=$toolchain go build -trimpath ${GO_BUILD_TAGS:+-tags "$GO_BUILD_TAGS"} \
    -ldflags "-s -w" -o "$bin/$tool-$version.tmp" "$pkg")
  mv "$bin/$tool-$version.tmp" "$bin/$tool-$version"
}

build_crane() { go_install crane github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION"; }
build_descheduler() {
  go_wrapped descheduler sigs.k8s.io/descheduler "$DESCHEDULER_VERSION" sigs.k8s.io/descheduler/cmd/descheduler
}
build_flagger() {
  go_wrapped flagger github.com/fluxcd/flagger "$FLAGGER_VERSION" github.com/fluxcd/flagger/cmd/flagger
}
# Argo Rollouts needs Go >= 1.26.10: the approved go1.27.3 toolchain.
build_argo_rollouts() {
  go_wrapped argo-rollouts github.com/argoproj/argo-rollouts "$ARGO_ROLLOUTS_VERSION" \
    github.com/argoproj/argo-rollouts/cmd/rollouts-controller go1.27.3
}

# Flux's source-controller, kustomize-controller and helm-controller (the
# GitOps tests). Their go.mod replaces modules with directories of their own
# repository (`./api`, a module of its own that the module's zip leaves out)
# and pins a few patch releases the Go module proxy here does not serve; the
# wrapper drops the first (the required release of `api` comes from the
# proxy) and swaps the second for the nearest served release
# (FLUX_GO_REPLACES in versions.env). helm-controller took 98 s here with a
# warm Go cache.
go_flux() {
  local tool=$1 module=$2 version=$3
  have "$tool" "$version" && return 0
  log "building $tool $version"
  local work="$cache/src/$tool-$version"
  mkdir -p "$work"
  local gomod
  gomod=$(cd "$work" && go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module freshen.dev/e2e/$tool"
    echo
    sed -n 's/^go \(.*\)/go \1/p' "$gomod" | head -n1
    echo
    echo "require $module $version"
    echo
    { sed -n '/^replace (/,/^)/p' "$gomod" | sed '1d;$d'; sed -n 's/^replace \([^(].*\)/\1/p' "$gomod"; } |
      grep -v '=> \./' | sed 's/^/replace /'
    for r in $FLUX_GO_REPLACES; do echo "replace ${r%@*} => ${r%@*} ${r#*@}"; done
  } >"$work/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$module" >"$work/tools.go"
  (cd "$work" && go mod tidy >/dev/null 2>&1 || true)
  (cd "$work" && go build -trimpath -ldflags "-s -w" -o "$bin/$tool-$version.tmp" "$module")
  mv "$bin/$tool-$version.tmp" "$bin/$tool-$version"
}
build_flux() {
  go_flux source-controller github.com/fluxcd/source-controller "$FLUX_SOURCE_VERSION"
  go_flux kustomize-controller github.com/fluxcd/kustomize-controller "$FLUX_KUSTOMIZE_VERSION"
  go_flux helm-controller github.com/fluxcd/helm-controller "$FLUX_HELM_VERSION"
  # Their CRDs, from the same module releases, kept beside the binaries.
  local crds="$bin/flux-crds-$FLUX_SOURCE_VERSION-$FLUX_KUSTOMIZE_VERSION-$FLUX_HELM_VERSION.yaml"
  [ -s "$crds" ] && return 0
  local src kus hel
  src=$(go mod download -json "github.com/fluxcd/source-controller@$FLUX_SOURCE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  kus=$(go mod download -json "github.com/fluxcd/kustomize-controller@$FLUX_KUSTOMIZE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  hel=$(go mod download -json "github.com/fluxcd/helm-controller@$FLUX_HELM_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  for f in "$src"/config/crd/bases/*.yaml "$kus"/config/crd/bases/*.yaml "$hel"/config/crd/bases/*.yaml; do
    cat "$f"; echo "---"
  done >"$crds.tmp"
  mv "$crds.tmp" "$crds"
}

# Gitea, the forge of the pull-request tests (gitops: PullRequest): its API
# opens, labels, merges and closes pull requests as GitHub's and GitLab's do.
# SQLite needs cgo (about 5 minutes cold). Built without its bindata tag (the
# module does not carry the generated assets), it reads its locales and
# templates from a copy of the module's options/ and templates/ kept beside
# the binary.
build_gitea() {
  CGO_ENABLED=1 GO_BUILD_TAGS="sqlite sqlite_unlock_notify" \
    go_wrapped gitea code.gitea.io/gitea "$GITEA_VERSION" code.gitea.io/gitea
  local static="$bin/gitea-$GITEA_VERSION-static"
  [ -d "$static/options" ] && return 0
  local dir
  dir=$(go mod download -json "code.gitea.io/gitea@$GITEA_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  rm -rf "$static.tmp" && mkdir -p "$static.tmp"
  cp -r "$dir/options" "$dir/templates" "$static.tmp/"
  chmod -R u+w "$static.tmp"
  mv "$static.tmp" "$static"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(etcd kwok kubernetes helm cosign argo_rollouts flux gitea)
start=$(date +%s)
for t in "${targets[@]}"; do "build_$t"; done
log "tools ready in $bin ($(($(date +%s) - start))s)"
