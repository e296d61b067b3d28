#!/usr/bin/env bash
# Runs one Apache Kafka broker in KRaft mode (broker and controller in one process) in the
# foreground, so that killing this process kills the broker:
#
#   kafka-broker.sh DIR PORT [--protocol P] [KEY=VALUE ...] [--add-scram 'SCRAM-SHA-512=[name=u,password=p]' ...]
#
# DIR holds the log and the settings; the first start formats it, later starts reuse it (a
# restart keeps every topic, offset and user). Clients connect to 127.0.0.1:PORT with protocol P
# (PLAINTEXT, the default, SSL, SASL_PLAINTEXT or SASL_SSL); for any but PLAINTEXT the broker
# talks to itself over a PLAINTEXT listener on a port of its own, so the test's SASL or TLS
# settings apply to clients alone. KEY=VALUE lines override the defaults (the mechanisms, the
# key store); `--add-scram` creates SCRAM users when DIR is formatted. The jars come from
# scripts/peers/kafka.sh. The broker's own log is DIR/broker.log.
set -euo pipefail
dir=$1 port=$2; shift 2
version=${OFE_KAFKA_VERSION:-4.1.1}
libs="$HOME/.cache/ofe-tools/kafka-$version/libs"
[ -d "$libs" ] || { echo "kafka-broker: no jars in $libs; run scripts/peers/kafka.sh" >&2; exit 2; }
mkdir -p "$dir/data"
props=() scram=() protocol=PLAINTEXT
while [ $# -gt 0 ]; do
  case $1 in
    --protocol) protocol=$2; shift 2 ;;
    --add-scram) scram+=(--add-scram "$2"); shift 2 ;;
    *=*) props+=("$1"); shift ;;
    *) echo "kafka-broker: unknown argument $1" >&2; exit 2 ;;
  esac
done
# The controller's and the inner listener's ports are chosen at the first start and kept, since
# the quorum's address is written into the formatted log.
kept_port() {
  if [ ! -f "$dir/$1.port" ]; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' >"$dir/$1.port"
  fi
  cat "$dir/$1.port"
}
cport=$(kept_port controller)
if [ "$protocol" = PLAINTEXT ]; then
  listeners="PLAINTEXT://127.0.0.1:$port"
  map="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
else
  iport=$(kept_port inner)
  listeners="CLIENT://127.0.0.1:$port,PLAINTEXT://127.0.0.1:$iport"
  map="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,CLIENT:$protocol"
fi
{
  echo "process.roles=broker,controller"
  echo "node.id=1"
  echo "controller.quorum.bootstrap.servers=127.0.0.1:$cport"
  echo "controller.listener.names=CONTROLLER"
  echo "listeners=$listeners,CONTROLLER://127.0.0.1:$cport"
  echo "advertised.listeners=$listeners"
  echo "listener.security.protocol.map=$map"
  echo "inter.broker.listener.name=PLAINTEXT"
  echo "log.dirs=$dir/data"
  echo "num.partitions=1"
  echo "offsets.topic.replication.factor=1"
  echo "offsets.topic.num.partitions=4"
  echo "transaction.state.log.replication.factor=1"
  echo "transaction.state.log.min.isr=1"
  echo "share.coordinator.state.topic.replication.factor=1"
  echo "share.coordinator.state.topic.min.isr=1"
  echo "group.initial.rebalance.delay.ms=0"
  echo "auto.create.topics.enable=true"
  # Later lines win: the caller's settings override the defaults above.
  for p in "${props[@]}"; do echo "$p"; done
} >"$dir/server.properties"
# Warnings, plus the group coordinator's joins, rebalances and expiries (few lines, and what a
# test about consumer groups needs to read), to DIR/broker.log.
cat >"$dir/log4j2.properties" <<'L4J'
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = %d{HH:mm:ss.SSS} %-5p %c{1} - %m%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.group.name = org.apache.kafka.coordinator.group
logger.group.level = INFO
L4J
java=${JAVA_HOME:+$JAVA_HOME/bin/}java
if [ ! -f "$dir/data/meta.properties" ]; then
  # `--cluster-id=ID` in one word: a base64 id starts with '-' one time in 64, and argparse
  # would read `-t -abc…` as a missing value and an unknown option.
  "$java" -cp "$libs/*" kafka.tools.StorageTool format --standalone --cluster-id="$(python3 -c 'import uuid,base64; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')" \
    -c "$dir/server.properties" "${scram[@]}" >>"$dir/broker.log" 2>&1
fi
exec "$java" -Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
  -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$libs/*" kafka.Kafka "$dir/server.properties" >>"$dir/broker.log" 2>&1
