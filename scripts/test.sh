#!/usr/bin/env bash
# The test command: formatting, lints, then every test of the workspace. Needs only Rust.
# Broker tests run when OFE_TEST_NATS / OFE_TEST_MQTT / OFE_TEST_REDIS / OFE_TEST_KAFKA are set
# (scripts/services.sh starts the brokers and prints them); otherwise they skip and say so.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
# The examples run as tests (tests/example_*.rs), and nextest does not build them.
cargo build --workspace --locked --examples
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests; run them first so nextest's summary closes the output.
  cargo test --workspace --locked --doc
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
