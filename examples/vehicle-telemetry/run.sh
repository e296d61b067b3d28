#!/usr/bin/env bash
# The vehicle-telemetry demo: a simulated fleet → MQTT → ofe → an alert function (overspeed)
# and a metrics function (every message, through a bus topic). Brings its own MQTT broker
# unless MQTT_URL is set (tcp://host:port). Extra arguments go to the demo, e.g.
#   ./examples/vehicle-telemetry/run.sh --vehicles 200 --rate 10 --seconds 30
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
echo "building ofe and the demo (release; the first build takes a few minutes)..."
cargo build --quiet --release --bin ofe --example vehicle-telemetry
args=("$@")
if [ -n "${MQTT_URL:-}" ]; then args+=(--mqtt-url "$MQTT_URL"); fi
exec ./target/release/examples/vehicle-telemetry --ofe ./target/release/ofe "${args[@]}"
