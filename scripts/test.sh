#!/usr/bin/env bash
# The test command: formatting, lints, then every test of the workspace, against real brokers.
#
# It starts the services the tests use first (scripts/services.sh: NATS 2.15 and Debian's 2.9,
# Mosquitto, Redis, Apache Kafka, and etcd with a kube-apiserver, all on loopback; idempotent, so services that
# already run are kept). A test whose service variable is unset is reported as ignored/skipped
# with the variable it needs, never as passed; set but unreachable, it fails.
#
# OFE_TEST_SERVICES=none skips starting them (the tests needing them are then skipped). A
# service that cannot start fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

# A cold build of the workspace with its tests needs about 20 GB; a full disk otherwise shows up
# minutes later as a rustc or OpenSSL build error that does not say why.
free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
echo "== disk: ${free_gb} GB free"
if [ "$free_gb" -lt 20 ] && [ ! -d target/debug/deps ]; then
  echo "warning: a cold build needs about 20 GB and ${free_gb} GB are free here; the build may fail with 'No space left on device'" >&2
fi

if [ "${OFE_TEST_SERVICES:-start}" != "none" ]; then
  echo "== services"
  # A service or peer that cannot start or build fails the run, with the reason above: its
  # tests would otherwise be skipped without anyone asking for it.
  if ! exports=$(scripts/services.sh); then
    echo "the services did not start; see the lines above (OFE_TEST_SERVICES=none runs the tests without them)" >&2
    exit 1
  fi
  eval "$exports"
fi
skipped=()
for name in OFE_TEST_NATS OFE_TEST_NATS_2_9 OFE_TEST_NATS_SERVER OFE_TEST_KAFKA OFE_TEST_KAFKA_SERVER \
  OFE_TEST_MQTT OFE_TEST_MOSQUITTO_SERVER OFE_TEST_REDIS OFE_TEST_REDIS_SERVER \
  OFE_TEST_KUBECONFIG OFE_TEST_KUBECTL OFE_TEST_KUBE_AUDIT_LOG OFE_TEST_PODMAN \
  OFE_TEST_GO_PEERS OFE_TEST_NATS_CLUSTER OFE_TEST_NATS_CLUSTER_DIR OFE_TEST_DAPRD \
  OFE_TEST_AMQP OFE_TEST_AMQP_SERVER OFE_TEST_NGINX OFE_TEST_ARGO OFE_TEST_CHROMIUM OFE_TEST_PLAYWRIGHT; do
  [ -n "${!name:-}" ] || skipped+=("$name")
done
if [ ${#skipped[@]} -gt 0 ]; then
  echo "== not set, so the tests that need them are skipped: ${skipped[*]}"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
# The examples run as tests (tests/example_*.rs), and nextest does not build them.
cargo build --workspace --locked --bins
# The adapters are features: a slim build must keep compiling and lint-clean.
echo "== cargo clippy, MQTT only and no adapters"
cargo clippy -p ofe --no-default-features --features mqtt --locked -- -D warnings
cargo clippy -p ofe --no-default-features --locked -- -D warnings
# Each source kind alone: the helpers kinds share must be built exactly when one needs them.
for kind in amqp kafka nats redis; do
  cargo clippy -p ofe-eventsource --no-default-features --features "$kind" --locked -- -D warnings
done
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests; run them first so nextest's summary closes the output.
  cargo test --workspace --locked --doc
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
