#!/usr/bin/env bash
# The chain example: HTTP orders → ofe → sync function "front", whose CloudEvent replies go
# through a bus topic to the async function "back", which is down for 10 s partway through.
# Extra arguments go to the example, e.g.
#   ./examples/chain/run.sh --orders 1000 --rate 100 --outage-seconds 20
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
# The chain needs no broker adapter (webhook, embedded bus, HTTP and topic sinks): it builds a
# slim ofe into target/demo, leaving target/release alone.
echo "building ofe (no broker adapters) and the example (release; the first build takes a few minutes)..."
export CARGO_TARGET_DIR="$root/target/demo"
cargo build --quiet --release -p ofe --no-default-features --bin ofe -p ofe-examples --bin chain
exec "$CARGO_TARGET_DIR/release/chain" --ofe "$CARGO_TARGET_DIR/release/ofe" "$@"
