#!/usr/bin/env bash
# Start a KRaft Kafka cluster on loopback: N nodes, each a combined broker+controller, all N in
# the controller quorum (static controller.quorum.voters). N=1 gives a single-node cluster.
#
# Usage: start.sh [--nodes N] [--init-only] WORK_DIR
#   First run: picks 2 free loopback ports per node (client + controller), writes
#   WORK_DIR/node-ID/server.properties, formats every node's log dir with one cluster id, starts
#   all nodes and waits until each serves clients. Later runs on the same WORK_DIR reuse the
#   ports, config and data (restart after stop.sh); running nodes are left alone.
#   --init-only: write config and format, start nothing (then node.sh start WORK_DIR ID).
#   Prints "KAFKA_BOOTSTRAP=127.0.0.1:P1,..." on stdout (also in WORK_DIR/cluster.env).
#
# Environment:
#   KAFKA_HOME       install dir (default ${UNITABLE_CACHE:-$HOME/.cache/unitable}/kafka-4.4.0)
#   KAFKA_BASE_PORT  use fixed ports BASE, BASE+1, ... (client, controller per node) instead of
#                    free ones chosen now
#   KAFKA_EXTRA_PROPS  extra server.properties lines (newline separated), appended on first run
#   KAFKA_AUTO_CREATE_TOPICS  auto.create.topics.enable (default false)
#   plus KAFKA_HEAP_OPTS, KAFKA_JVM_OPTS, KAFKA_READY_TIMEOUT (see node.sh)
set -euo pipefail

die() { printf '[kafka-start] error: %s\n' "$*" >&2; exit 1; }
log() { printf '[kafka-start] %s\n' "$*" >&2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

nodes=1
init_only=0
while [ $# -gt 1 ]; do
  case "$1" in
    --nodes) nodes=$2; shift 2 ;;
    --init-only) init_only=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[ $# -eq 1 ] || die "usage: $0 [--nodes N] [--init-only] WORK_DIR"
case "$nodes" in ''|*[!0-9]*|0) die "--nodes wants a positive number" ;; esac
mkdir -p "$1"
work=$(cd "$1" && pwd)

KAFKA_HOME=${KAFKA_HOME:-${UNITABLE_CACHE:-$HOME/.cache/unitable}/kafka-4.4.0}
[ -f "$KAFKA_HOME/.complete" ] || die "no Kafka install at $KAFKA_HOME (run install.sh CACHE_DIR)"
export KAFKA_HOME

free_ports() { # N -> N distinct free loopback ports, one per line
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
}

random_cluster_id() { # 16 random bytes, base64url without padding (Kafka's Uuid text form)
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    case "$id" in -*) ;; *) echo "$id"; return ;; esac
  done
}

if [ -f "$work/cluster.env" ]; then
  nodes=$(sed -n 's/^KAFKA_NODES=//p' "$work/cluster.env")
  log "reusing $work ($nodes node(s))"
else
  # No cluster.env: nothing usable here yet (or an interrupted first run): lay out afresh.
  rm -rf "$work"/node-*
  if [ -n "${KAFKA_BASE_PORT:-}" ]; then
    ports=$(seq "$KAFKA_BASE_PORT" $((KAFKA_BASE_PORT + 2 * nodes - 1)))
  else
    ports=$(free_ports $((2 * nodes)))
  fi
  mapfile -t p <<<"$ports"
  voters="" bootstrap=""
  for i in $(seq 1 "$nodes"); do
    voters+="${voters:+,}$i@127.0.0.1:${p[2 * i - 1]}"
    bootstrap+="${bootstrap:+,}127.0.0.1:${p[2 * i - 2]}"
  done
  rf=$((nodes < 3 ? nodes : 3))
  min_isr=$((rf > 1 ? 2 : 1))
  cluster_id=$(random_cluster_id)
  for i in $(seq 1 "$nodes"); do
    node="$work/node-$i"
    mkdir -p "$node/data" "$node/logs"
    cat >"$node/server.properties" <<EOF
# KRaft combined node $i of $nodes (test cluster on loopback)
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:${p[2 * i - 2]},CONTROLLER://127.0.0.1:${p[2 * i - 1]}
advertised.listeners=PLAINTEXT://127.0.0.1:${p[2 * i - 2]}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$node/data

# Replication of internal and new topics for a cluster of $nodes
default.replication.factor=$rf
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$min_isr
share.coordinator.state.topic.num.partitions=1
num.partitions=1
auto.create.topics.enable=${KAFKA_AUTO_CREATE_TOPICS:-false}
unclean.leader.election.enable=false

# Fast group joins and fast failure detection (defaults: 3000, 2000, 9000, 30000 ms)
group.initial.rebalance.delay.ms=0
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
replica.lag.time.max.ms=10000

# Small footprint on a 2-core test machine
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
EOF
    if [ -n "${KAFKA_EXTRA_PROPS:-}" ]; then
      printf '\n# KAFKA_EXTRA_PROPS\n%s\n' "$KAFKA_EXTRA_PROPS" >>"$node/server.properties"
    fi
  done
  # Format every node (in parallel: one JVM each). With static controller.quorum.voters no
  # --standalone / --initial-controllers flag is used; every node gets the same cluster id.
  log "formatting $nodes node(s), cluster id $cluster_id"
  fmt_pids=()
  for i in $(seq 1 "$nodes"); do
    java -Xmx128m -XX:TieredStopAtLevel=1 -XX:-UsePerfData \
      -XX:SharedArchiveFile="$KAFKA_HOME/kafka.jsa" -Xlog:cds*=off \
      -Dlog4j2.configurationFile="$KAFKA_HOME/config/tools-log4j2.properties" \
      -cp "$KAFKA_HOME/libs/*" kafka.tools.StorageTool format \
      --config "$work/node-$i/server.properties" --cluster-id "$cluster_id" \
      >"$work/node-$i/logs/format.log" 2>&1 &
    fmt_pids+=($!)
  done
  for i in $(seq 1 "$nodes"); do
    wait "${fmt_pids[i - 1]}" || { cat "$work/node-$i/logs/format.log" >&2; die "format of node $i failed"; }
  done
  cat >"$work/cluster.env" <<EOF
KAFKA_HOME=$KAFKA_HOME
KAFKA_NODES=$nodes
KAFKA_CLUSTER_ID=$cluster_id
KAFKA_BOOTSTRAP=$bootstrap
KAFKA_CONTROLLER_QUORUM=$voters
EOF
fi

if [ "$init_only" = 1 ]; then
  grep '^KAFKA_BOOTSTRAP=' "$work/cluster.env"
  exit 0
fi

# Start all nodes first, then wait: a multi-node quorum elects a leader only once a majority runs.
started=$(date +%s%N)
for i in $(seq 1 "$nodes"); do
  "$here/node.sh" start "$work" "$i" --no-wait
done
for i in $(seq 1 "$nodes"); do
  "$here/node.sh" wait "$work" "$i"
done
log "$nodes node(s) ready in $(( ($(date +%s%N) - started) / 1000000 )) ms"
grep '^KAFKA_BOOTSTRAP=' "$work/cluster.env"
