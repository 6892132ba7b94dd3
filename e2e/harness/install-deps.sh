#!/usr/bin/env bash
# Installs what the e2e harness needs from Debian's packages, when missing:
# the OCI registry (docker-registry), Prometheus (with promtool), htpasswd and
# openssl for registry auth/TLS tests, curl; git, libssl-dev, openssh-client
# and gcc for the GitOps promotion; jq and time for make bench-peers.
set -euo pipefail
need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
# e2e/harness/keyless.py (keyless signatures) and the chart schema check.
command -v python3 >/dev/null || need+=(python3)
# The GitOps tests' git server (git http-backend) and their own clones.
command -v git >/dev/null || need+=(git)
# freshen's git client (libgit2 through the git2 crate) links OpenSSL for
# HTTPS, found with pkg-config, statically in the release binary.
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
# The SSH push test: a client key (ssh-keygen) and Gitea's host keys
# (ssh-keyscan). Gitea is built with cgo, for SQLite.
command -v ssh-keyscan >/dev/null || need+=(openssh-client)
command -v gcc >/dev/null || need+=(gcc)
# make bench-peers: its image-age script, and peak memory of one-shot tools.
command -v jq >/dev/null || need+=(jq)
[ -x /usr/bin/time ] || need+=(time)
[ ${#need[@]} -gt 0 ] || exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
echo "[e2e] installing ${need[*]} from Debian's packages" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
