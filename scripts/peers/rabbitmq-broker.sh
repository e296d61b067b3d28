#!/usr/bin/env bash
# Runs a RabbitMQ node (Debian's rabbitmq-server, AMQP 0-9-1) in the foreground, as the user
# running this, for clients on 127.0.0.1:PORT, keeping its data and log under DIR (a restart
# with the same DIR keeps durable queues and their messages). guest/guest may log in, as
# RabbitMQ allows on loopback. The Erlang distribution listens on 127.0.0.1:PORT+1, and the
# node registers with an epmd on 127.0.0.1:14369, not the system's 4369.
# usage: rabbitmq-broker.sh DIR PORT
#        rabbitmq-broker.sh ctl DIR PORT ARGS...   (rabbitmqctl against that node)
set -euo pipefail
ctl=
if [ "$1" = ctl ]; then ctl=1; shift; fi
dir=$1 port=$2
shift 2
mkdir -p "$dir/mnesia" "$dir/log"
dir=$(cd "$dir" && pwd)
[ -n "$ctl" ] || printf 'listeners.tcp.default = 127.0.0.1:%s\n' "$port" >"$dir/rabbitmq.conf"
[ -n "$ctl" ] || echo '[].' >"$dir/enabled_plugins"
export HOME="$dir" \
  RABBITMQ_NODENAME="ofe-$port@localhost" \
  RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
  RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
  RABBITMQ_MNESIA_BASE="$dir/mnesia" \
  RABBITMQ_LOG_BASE="$dir/log" \
  RABBITMQ_PID_FILE="$dir/pid" \
  RABBITMQ_DIST_PORT=$((port + 1)) \
  ERL_EPMD_PORT=14369 \
  ERL_EPMD_ADDRESS=127.0.0.1 \
  RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
if [ -n "$ctl" ]; then exec /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBITMQ_NODENAME" "$@"; fi
# Debian's /usr/sbin/rabbitmq-server switches to the rabbitmq user, who cannot write DIR;
# the script it wraps runs the node as the caller.
# Without a proxy shell: the node is this process, so killing it kills the node.
export RUNNING_UNDER_SYSTEMD=true
exec /usr/lib/rabbitmq/bin/rabbitmq-server
