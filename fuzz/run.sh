#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (600) each, FUZZ_JOBS (2) at a
# time, and writes bench/results/fuzz-<date>.md: executions, executions per
# second and crashes per target. Working corpora live under target/ (not
# committed); fuzz/seeds/<target> holds the seeds that matter. A crash
# leaves its input in fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo_fuzz=${CARGO_FUZZ:?set by make fuzz}
seconds=${FUZZ_SECONDS:-600}
jobs=${FUZZ_JOBS:-2}
targets=${FUZZ_TARGETS:-"image_reference duration window annotations policy_spec manifest notification promql"}
logs=target/fuzz-logs
mkdir -p "$logs" bench/results
# libFuzzer needs the sanitizer flags only nightly accepts; stable rustc
# takes them when told it is bootstrapping.
export RUSTC_BOOTSTRAP=1
(cd fuzz && "$cargo_fuzz" build)

run() {
  local t=$1 corpus=target/fuzz-corpus/$1
  mkdir -p "$corpus"
  (cd fuzz && "$cargo_fuzz" run "$t" "../$corpus" "seeds/$t" -- \
     -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10) \
     >"$logs/$t.log" 2>&1 || echo "crashed" >"$logs/$t.crashed"
}

rm -f "$logs"/*.crashed
set -- $targets
while [ $# -gt 0 ]; do
  pids=()
  for _ in $(seq "$jobs"); do
    [ $# -gt 0 ] || break
    run "$1" & pids+=($!)
    shift
  done
  wait "${pids[@]}"
done

out=bench/results/fuzz-$(date -u +%F).md
{
  echo "# Fuzzing, $(date -u +%F)"
  echo
  echo "\`make fuzz\` (cargo-fuzz, libFuzzer with AddressSanitizer, ${seconds} s per target, ${jobs} at a time on 2 cores)."
  echo
  echo "| target | executions | executions / s | corpus | crashes |"
  echo "|---|---|---|---|---|"
  for t in $targets; do
    log=$logs/$t.log
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
    corpus=$(find "target/fuzz-corpus/$t" -type f | wc -l)
    crashes=0
    [ -e "$logs/$t.crashed" ] && crashes=$(find "fuzz/artifacts/$t" -type f 2>/dev/null | wc -l)
    echo "| $t | $execs | $rate | $corpus | $crashes |"
  done
} >"$out"
cat "$out"
! ls "$logs"/*.crashed >/dev/null 2>&1
