#!/usr/bin/env bash
# Builds the user guide with warnings as errors, then checks every link
# between its pages (and from README.md into it): each target page exists
# and each #fragment is an id on that page. Usage: check-book.sh MDBOOK
set -euo pipefail
cd "$(dirname "$0")/.."
mdbook=${1:-mdbook}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# mdbook logs warnings (unbalanced HTML, a bad include) and carries on; here
# they fail the build.
if ! "$mdbook" build docs >"$log" 2>&1; then
    cat "$log" >&2
    echo "mdbook build failed" >&2
    exit 1
fi
if grep -E '(WARN|ERROR)' "$log" >&2; then
    echo "mdbook build warned: fix the pages above" >&2
    exit 1
fi
python3 docs/check-links.py --self-test
python3 docs/check-links.py target/book README.md
echo "docs: built into target/book, every internal link resolves"
