#!/usr/bin/env bash
# Runs each fuzz target for a bounded time: scripts/fuzz.sh [SECONDS] [TARGET...]
# (default 60 s each, every target). Targets: manifest, cloudevent_http, cloudevent_broker,
# bus_codec, filter (fuzz/fuzz_targets/). A crash stops the run and leaves its input in
# fuzz/artifacts/<target>/; reproduce it with `scripts/fuzz.sh 0 <target> <that file>`, and
# turn it into a regression test before fixing it.
#
# Needs cargo-fuzz (installed when missing). libFuzzer wants nightly compiler flags;
# RUSTC_BOOTSTRAP=1 lets the stable compiler take them, as no nightly can be fetched here.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
if [ "$seconds" = 0 ] && [ $# -eq 2 ]; then
  exec cargo fuzz run --fuzz-dir fuzz "$1" "$2"
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(manifest cloudevent_http cloudevent_broker bus_codec filter)
fi
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  echo "== fuzz $target for ${seconds}s"
  # The first folder collects the corpus; the seeds (committed) start it.
  cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 2>&1 |
    grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|.*panicked)' || true
  if ls "fuzz/artifacts/$target"/crash-* >/dev/null 2>&1; then
    echo "fuzz $target: crashed; inputs in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "no crashes"
