#!/usr/bin/env bash
# Install Apache Kafka (KRaft broker + controller, no ZooKeeper) from Maven Central jars.
#
# Usage: install.sh CACHE_DIR
#   Result: CACHE_DIR/kafka-$KAFKA_VERSION/{libs/*.jar, config/log4j2.properties,
#           config/tools-log4j2.properties, kafka.jsa (AppCDS archive), .complete}
#   Prints the install directory (KAFKA_HOME) as the last line of stdout.
#
# Idempotent: returns at once when CACHE_DIR/kafka-$KAFKA_VERSION/.complete exists. Safe to run
# concurrently (flock on CACHE_DIR/.kafka-install.lock). Needs java (17+) and mvn on PATH.
#
# Environment:
#   KAFKA_VERSION   default 4.4.0
#   KAFKA_M2_REPO   Maven local repository to download into (default CACHE_DIR/m2repo, so the
#                   install does not depend on, or fill, ~/.m2; delete it after install if you
#                   need the space: libs/ holds copies)
#   KAFKA_WITH_CONNECT=1  also keep connect-runtime (jetty/jersey: +45 jars, +10 MB) that kafka-tools
#                   drags in; not needed by the broker, kafka-storage, or kafka-topics etc.
set -euo pipefail

log() { printf '[kafka-install] %s\n' "$*" >&2; }
die() { printf '[kafka-install] error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 CACHE_DIR"
command -v java >/dev/null || die "java not found on PATH"
command -v mvn >/dev/null || die "mvn not found on PATH"

KAFKA_VERSION=${KAFKA_VERSION:-4.4.0}
mkdir -p "$1"
CACHE_DIR=$(cd "$1" && pwd)
HOME_DIR="$CACHE_DIR/kafka-$KAFKA_VERSION"
M2_REPO=${KAFKA_M2_REPO:-$CACHE_DIR/m2repo}

if [ -f "$HOME_DIR/.complete" ]; then
  log "already installed: $HOME_DIR"
  echo "$HOME_DIR"
  exit 0
fi

# One installer at a time; re-check the marker once we hold the lock.
exec 9>"$CACHE_DIR/.kafka-install.lock"
if command -v flock >/dev/null; then
  flock 9
fi
if [ -f "$HOME_DIR/.complete" ]; then
  log "already installed (by a concurrent run): $HOME_DIR"
  echo "$HOME_DIR"
  exit 0
fi

started=$(date +%s)
work=$(mktemp -d "$CACHE_DIR/.kafka-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
stage="$work/kafka-$KAFKA_VERSION"
mkdir -p "$stage/libs" "$stage/config"

connect_exclusion='<exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>'
[ "${KAFKA_WITH_CONNECT:-0}" = 1 ] && connect_exclusion=''

# log4j-slf4j-impl: Kafka logs through slf4j-api 1.7.x; this routes it to log4j2 (log4j-core
# comes with kafka-server). Without it slf4j prints "NOP logger" and the broker logs nothing.
cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.kafka-install</groupId>
  <artifactId>kafka-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <properties>
    <kafka.version>$KAFKA_VERSION</kafka.version>
    <log4j2.version>2.25.5</log4j2.version>
  </properties>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>\${kafka.version}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-server</artifactId><version>\${kafka.version}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-clients</artifactId><version>\${kafka.version}</version></dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>\${kafka.version}</version>
      <exclusions>$connect_exclusion</exclusions>
    </dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>\${log4j2.version}</version></dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
EOF

log "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION + kafka-server, kafka-tools, kafka-clients (Maven local repo: $M2_REPO)"
if ! mvn -B -q -f "$work/pom.xml" -Dmaven.repo.local="$M2_REPO" \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$stage/libs" >"$work/mvn.log" 2>&1; then
  tail -n 40 "$work/mvn.log" >&2
  die "mvn dependency:copy-dependencies failed"
fi
n=$(find "$stage/libs" -name '*.jar' | wc -l)
log "copied $n jars"
[ -f "$stage/libs/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka_2.13-$KAFKA_VERSION.jar missing"
[ -f "$stage/libs/kafka-server-$KAFKA_VERSION.jar" ] || die "kafka-server-$KAFKA_VERSION.jar missing"
ls "$stage/libs"/log4j-core-*.jar >/dev/null 2>&1 || die "log4j-core jar missing"

# Broker logging: everything to $kafka.logs.dir/server.log (size-rolled), WARN+ to stderr.
# Pass -Dkafka.logs.dir=DIR -Dlog4j2.configurationFile=$HOME_DIR/config/log4j2.properties.
cat >"$stage/config/log4j2.properties" <<'EOF'
# log4j2 config for a test broker: INFO to ${sys:kafka.logs.dir}/server.log, WARN+ to stderr.
status = warn
name = kafka-test
# Kafka logs from its own shutdown hook; log4j2's hook would stop logging first (then
# "Unable to register Log4j shutdown hook ... Using SimpleLogger" and lost last lines).
shutdownHook = disable
property.dir = ${sys:kafka.logs.dir:-.}

appender.console.type = Console
appender.console.name = STDERR
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
appender.console.filter.threshold.type = ThresholdFilter
appender.console.filter.threshold.level = warn

appender.server.type = RollingFile
appender.server.name = SERVER
appender.server.fileName = ${dir}/server.log
appender.server.filePattern = ${dir}/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 20MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 2

rootLogger.level = info
rootLogger.appenderRef.server.ref = SERVER
rootLogger.appenderRef.console.ref = STDERR

# Quieter: per-request / per-segment chatter that makes server.log grow fast in tests.
logger.kafka_log.name = kafka.log
logger.kafka_log.level = warn
logger.storage_log.name = org.apache.kafka.storage.internals.log
logger.storage_log.level = warn
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
EOF

# Storage-tool logging (format): WARN+ to stderr only, no file.
cat >"$stage/config/tools-log4j2.properties" <<'EOF'
status = warn
name = kafka-tools
appender.console.type = Console
appender.console.name = STDERR
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.console.ref = STDERR
EOF

# Smoke test: the storage tool loads and prints a cluster id.
if ! cid=$(java -Xmx128m -Dlog4j2.configurationFile="$stage/config/tools-log4j2.properties" \
             -cp "$stage/libs/*" kafka.tools.StorageTool random-uuid 2>"$work/smoke.err"); then
  cat "$work/smoke.err" >&2
  die "smoke test (kafka.tools.StorageTool random-uuid) failed"
fi
log "smoke test ok (random-uuid: $cid)"

rm -rf "$HOME_DIR"
mv "$stage" "$HOME_DIR"

# AppCDS archive (class-data sharing) of one broker start: about halves JVM start to ready
# (~6 s -> ~3 s on a busy 2-core machine). Dumped once, from the final path (the archive
# records the classpath); a JVM that cannot use it (other JDK build, changed jars) runs without.
# Best effort: KAFKA_NO_CDS=1 skips it, and a failure only loses the speed-up.
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}
if [ "${KAFKA_NO_CDS:-0}" != 1 ]; then
  log "dumping AppCDS archive (one broker start + stop, ~15-30 s)"
  cds="$work/cds"
  mkdir -p "$cds/data" "$cds/logs"
  bport=$(free_port)
  cport=$(free_port)
  while [ "$cport" = "$bport" ]; do cport=$(free_port); done
  printf '%s\n' \
    "process.roles=broker,controller" "node.id=1" \
    "controller.quorum.voters=1@127.0.0.1:$cport" \
    "listeners=PLAINTEXT://127.0.0.1:$bport,CONTROLLER://127.0.0.1:$cport" \
    "advertised.listeners=PLAINTEXT://127.0.0.1:$bport" \
    "controller.listener.names=CONTROLLER" "inter.broker.listener.name=PLAINTEXT" \
    "log.dirs=$cds/data" "offsets.topic.replication.factor=1" \
    "transaction.state.log.replication.factor=1" "transaction.state.log.min.isr=1" \
    >"$cds/server.properties"
  java -Xmx128m -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$HOME_DIR/config/tools-log4j2.properties" \
    -cp "$HOME_DIR/libs/*" kafka.tools.StorageTool format --config "$cds/server.properties" \
    --cluster-id "$cid" >"$cds/logs/format.log" 2>&1
  java -Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData \
    -XX:ArchiveClassesAtExit="$HOME_DIR/kafka.jsa" -Xlog:cds*=off \
    -Dkafka.logs.dir="$cds/logs" -Dlog4j2.configurationFile="$HOME_DIR/config/log4j2.properties" \
    -cp "$HOME_DIR/libs/*" kafka.Kafka "$cds/server.properties" \
    >"$cds/logs/stdout.log" 2>&1 </dev/null &
  cds_pid=$!
  for _ in $(seq 1200); do
    grep -qs 'Kafka Server started' "$cds/logs/server.log" && break
    kill -0 "$cds_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -TERM "$cds_pid" 2>/dev/null || true
  wait "$cds_pid" || true
  if [ -s "$HOME_DIR/kafka.jsa" ] &&
     java -XX:SharedArchiveFile="$HOME_DIR/kafka.jsa" -Xshare:on -Xlog:cds*=off \
       -cp "$HOME_DIR/libs/*" kafka.tools.StorageTool version >/dev/null 2>&1; then
    log "AppCDS archive ok ($(du -h "$HOME_DIR/kafka.jsa" | cut -f1))"
  else
    rm -f "$HOME_DIR/kafka.jsa"
    log "warning: no AppCDS archive (brokers start without it, just slower)"
  fi
fi

echo "$KAFKA_VERSION" >"$HOME_DIR/.complete"
size=$(du -sh "$HOME_DIR" | cut -f1)
log "installed Kafka $KAFKA_VERSION in $HOME_DIR ($n jars, $size) in $(( $(date +%s) - started ))s"
echo "$HOME_DIR"
