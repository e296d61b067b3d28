#!/usr/bin/env bash
# The chain example: HTTP orders → ofe → sync function "front", whose CloudEvent replies go
# through a bus topic to the async function "back", which is down for 10 s partway through.
# Extra arguments go to the example, e.g.
#   ./examples/chain/run.sh --orders 1000 --rate 100 --outage-seconds 20
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
echo "building ofe and the example (release; the first build takes a few minutes)..."
cargo build --quiet --release --bin ofe --example chain
exec ./target/release/examples/chain --ofe ./target/release/ofe "$@"
