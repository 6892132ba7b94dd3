#!/usr/bin/env bash
# Image age the way a user without freshen gets it: list every Deployment,
# ask the registry for each distinct image's config with crane, and print
# one line per container: namespace, deployment, container, image, age in
# seconds (or "unknown"). Used by `make bench-peers` as the comparison for
# freshen's image-age measurement.
#
# Needs: kubectl (KUBECTL), crane (CRANE), jq. CRANE_FLAGS (e.g. --insecure)
# is passed to every crane call. Concurrency: PARALLEL (default 8).
set -euo pipefail
kubectl=${KUBECTL:-kubectl}
crane=${CRANE:-crane}
parallel=${PARALLEL:-8}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# namespace<TAB>deployment<TAB>container<TAB>image, one line per container.
"$kubectl" get deployments -A -o json \
  | jq -r '.items[] | .metadata as $m | .spec.template.spec.containers[]
           | [$m.namespace, $m.name, .name, .image] | @tsv' >"$work/containers"

# Each distinct image once: its config's `created`.
cut -f4 "$work/containers" | sort -u >"$work/images"
export crane CRANE_FLAGS
# shellcheck disable=SC2016
xargs -P "$parallel" -I{} sh -c \
  'printf "%s\t%s\n" "$1" "$("$crane" config $CRANE_FLAGS "$1" 2>/dev/null | jq -r ".created // empty" || true)"' \
  _ {} <"$work/images" >"$work/created"

now=$(date +%s)
jq -Rr --argjson now "$now" --rawfile created "$work/created" '
  ($created | split("\n") | map(select(length > 0) | split("\t") | {(.[0]): .[1]}) | add // {}) as $c
  | split("\t") | . as [$ns, $d, $name, $image]
  | ($c[$image] // "") as $t
  | [$ns, $d, $name, $image,
     (if $t == "" then "unknown"
      else ($now - ($t | sub("\\.[0-9]+"; "") | fromdateiso8601) | tostring) end)]
  | @tsv' "$work/containers"
