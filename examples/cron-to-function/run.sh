#!/usr/bin/env bash
# Runs the example end to end: the sync function, then `ofe run` on these manifests, for
# SECONDS_TO_RUN seconds (default 8; 0 = until Ctrl-C). No broker is needed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
cargo build --quiet -p ofe --bin ofe -p ofe-examples --bin sync-function
data=$(mktemp -d)
./target/debug/sync-function 127.0.0.1:8081 &
function_pid=$!
./target/debug/ofe run -f "$here" --data-dir "$data" --listen 127.0.0.1:9464 &
ofe_pid=$!
cleanup() { kill -TERM "$ofe_pid" 2>/dev/null || true; wait "$ofe_pid" 2>/dev/null || true; kill "$function_pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
secs=${SECONDS_TO_RUN:-8}
if [ "$secs" = 0 ]; then wait "$ofe_pid"; else sleep "$secs"; fi
echo "--- metrics (http://127.0.0.1:9464/metrics) ---"
curl -s http://127.0.0.1:9464/metrics | grep -E '^ofe_(eventsource_events_published|trigger_events_delivered)_total' || true
