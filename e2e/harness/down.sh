#!/usr/bin/env bash
# Stops everything e2e/harness/up.sh started and removes its state.
set -uo pipefail
source "$(dirname "$0")/common.sh"

if [ -d "$E2E_STATE/kwok/clusters/$E2E_CLUSTER" ]; then
  log "deleting control plane"
  kwokctl delete cluster >&2 || true
fi
for svc in registry private-registry notify-registry prometheus git-server gitea source-controller kustomize-controller helm-controller operator; do
  pidfile="$E2E_STATE/$svc/pid"
  if alive "$pidfile"; then
    log "stopping $svc"
    kill "$(cat "$pidfile")" 2>/dev/null || true
    wait_until "$svc to stop" 20 bash -c "! kill -0 $(cat "$pidfile") 2>/dev/null" || kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  fi
done
rm -rf "$E2E_STATE"
log "harness down"
