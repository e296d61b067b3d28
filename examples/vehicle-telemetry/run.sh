#!/usr/bin/env bash
# The vehicle-telemetry demo: a simulated fleet → MQTT → ofe → an alert function (overspeed)
# and a metrics function (every message, through a bus topic). Brings its own MQTT broker
# unless MQTT_URL is set (tcp://host:port). Extra arguments go to the demo, e.g.
#   ./examples/vehicle-telemetry/run.sh --vehicles 200 --rate 10 --seconds 30
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
# The demo needs only MQTT: it builds an ofe with just that adapter (and the demo) into
# target/demo, which is much quicker than the full binary and leaves target/release alone.
echo "building ofe (MQTT only) and the demo (release; the first build takes a few minutes)..."
export CARGO_TARGET_DIR="$root/target/demo"
cargo build --quiet --release -p ofe --no-default-features --features mqtt --bin ofe \
  -p ofe-examples --bin vehicle-telemetry
args=("$@")
if [ -n "${MQTT_URL:-}" ]; then args+=(--mqtt-url "$MQTT_URL"); fi
exec "$CARGO_TARGET_DIR/release/vehicle-telemetry" --ofe "$CARGO_TARGET_DIR/release/ofe" "${args[@]}"
