#!/usr/bin/env bash
# Control one node (combined broker+controller) of a cluster laid out by start.sh.
#
# Usage: node.sh start   WORK_DIR ID [--no-wait]   start node ID (same ports, same data)
#        node.sh wait    WORK_DIR ID               wait until node ID serves clients
#        node.sh stop    WORK_DIR ID               SIGTERM, wait (<= KAFKA_STOP_TIMEOUT s), then SIGKILL
#        node.sh kill    WORK_DIR ID               SIGKILL (crash)
#        node.sh status  WORK_DIR ID               exit 0 if running (prints pid)
#        node.sh run     WORK_DIR ID               run node ID in the foreground (exec java):
#                                                   for harnesses that supervise the process
#
# Layout: WORK_DIR/node-ID/{server.properties,data/,logs/server.log,logs/stdout.log,pid}
# Environment:
#   KAFKA_HOME           install dir from install.sh (default: read from WORK_DIR/cluster.env)
#   KAFKA_HEAP_OPTS      default "-Xms64m -Xmx512m"
#   KAFKA_JVM_OPTS       default "$DEFAULT_JVM_OPTS" below (fast start, small RSS)
#   KAFKA_READY_TIMEOUT  seconds for "wait" (default 120)
#   KAFKA_STOP_TIMEOUT   seconds for "stop" before SIGKILL (default 30)
set -euo pipefail

die() { printf '[kafka-node] error: %s\n' "$*" >&2; exit 1; }
log() { printf '[kafka-node] %s\n' "$*" >&2; }

[ $# -ge 3 ] || die "usage: $0 start|wait|stop|kill|status WORK_DIR ID [--no-wait]"
cmd=$1 work=$2 id=$3
node="$work/node-$id"
[ -f "$node/server.properties" ] || die "$node/server.properties not found (run start.sh first)"
if [ -z "${KAFKA_HOME:-}" ] && [ -f "$work/cluster.env" ]; then
  KAFKA_HOME=$(sed -n 's/^KAFKA_HOME=//p' "$work/cluster.env")
fi

# True while the process exists and is not a zombie (a SIGKILLed child of a still-running
# parent stays a zombie until reaped, and kill -0 still succeeds on it).
alive() {
  local state
  state=$(sed -n 's/^[0-9]* (.*) \([A-Z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

pid_of() {
  local pid
  [ -f "$node/pid" ] || return 1
  pid=$(cat "$node/pid")
  # Alive and really our JVM (pid reuse): its command line names this node's server.properties.
  [ -n "$pid" ] && alive "$pid" &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$node/server.properties" || return 1
  echo "$pid"
}

# Tuned for start-up time and footprint, not throughput: C1 only (TieredStopAtLevel=1) and
# SerialGC. For benchmarks set KAFKA_JVM_OPTS to Kafka's own:
#   -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
#   -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true
DEFAULT_JVM_OPTS="-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError -XX:-UsePerfData -Djava.awt.headless=true"

wait_ready() {
  local timeout=${KAFKA_READY_TIMEOUT:-120} off=0 start=$SECONDS
  [ -f "$node/start.offset" ] && off=$(cat "$node/start.offset")
  while :; do
    # Readiness: the broker has been unfenced and its client listener is serving requests.
    if [ -f "$node/logs/server.log" ] &&
       tail -c +"$((off + 1))" "$node/logs/server.log" | grep -q 'Kafka Server started'; then
      return 0
    fi
    if ! pid_of >/dev/null; then
      tail -n 30 "$node/logs/stdout.log" >&2 2>/dev/null || true
      die "node $id exited during start-up (see $node/logs/)"
    fi
    [ $((SECONDS - start)) -lt "$timeout" ] || die "node $id not ready after ${timeout}s (see $node/logs/server.log)"
    sleep 0.1
  done
}

# The broker's JVM command line (without the exec), shared by start and run.
java_command() {
  local cds=()
  # Class-data sharing archive written by install.sh (ignored if absent or unusable).
  [ -f "$KAFKA_HOME/kafka.jsa" ] && cds=("-XX:SharedArchiveFile=$KAFKA_HOME/kafka.jsa" "-Xlog:cds*=off")
  # shellcheck disable=SC2086  # option strings are meant to be split
  java_cmd=(java ${KAFKA_HEAP_OPTS:--Xms64m -Xmx512m} ${KAFKA_JVM_OPTS:-$DEFAULT_JVM_OPTS} "${cds[@]}"
    -Dkafka.logs.dir="$node/logs"
    -Dlog4j2.configurationFile="$KAFKA_HOME/config/log4j2.properties"
    -cp "$KAFKA_HOME/libs/*"
    kafka.Kafka "$node/server.properties")
}

case "$cmd" in
  run)
    if [ -z "${KAFKA_HOME:-}" ] || [ ! -f "$KAFKA_HOME/.complete" ]; then
      die "KAFKA_HOME not set or not installed (run install.sh)"
    fi
    mkdir -p "$node/logs"
    java_command
    exec "${java_cmd[@]}"
    ;;
  start)
    if pid=$(pid_of); then
      log "node $id already running (pid $pid)"
    else
      if [ -z "${KAFKA_HOME:-}" ] || [ ! -f "$KAFKA_HOME/.complete" ]; then
        die "KAFKA_HOME not set or not installed (run install.sh)"
      fi
      mkdir -p "$node/logs"
      # Byte offset of server.log at this start: wait_ready only looks at lines after it.
      stat -c %s "$node/logs/server.log" 2>/dev/null >"$node/start.offset" || echo 0 >"$node/start.offset"
      java_command
      nohup "${java_cmd[@]}" >>"$node/logs/stdout.log" 2>&1 </dev/null &
      echo $! >"$node/pid"
      log "node $id started (pid $!)"
    fi
    if [ "${4:-}" != "--no-wait" ]; then
      wait_ready
      log "node $id ready"
    fi
    ;;
  wait)
    wait_ready
    ;;
  stop|kill)
    if pid=$(pid_of); then
      if [ "$cmd" = kill ]; then
        kill -KILL "$pid"
      else
        kill -TERM "$pid"
        for _ in $(seq $((${KAFKA_STOP_TIMEOUT:-30} * 10))); do
          alive "$pid" || break
          sleep 0.1
        done
        alive "$pid" && { log "node $id did not stop in time; SIGKILL"; kill -KILL "$pid"; }
      fi
      while alive "$pid"; do sleep 0.05; done
      if [ "$cmd" = kill ]; then log "node $id killed (pid $pid)"; else log "node $id stopped (pid $pid)"; fi
    fi
    rm -f "$node/pid"
    ;;
  status)
    pid_of
    ;;
  *) die "unknown command '$cmd'" ;;
esac
