# Debezium's PostgreSQL connector and a Kafka Connect runtime to run it in, for
# tests/python/test_cdc_debezium.py. Source this file, then:
#
#   DEBEZIUM_HOME=$(fetch_debezium "$UNITABLE_CACHE")
#
# DEBEZIUM_HOME/connect holds Kafka Connect (connect-runtime, connect-json and log4j2 for its
# logging; the Kafka install of scripts/kafka/install.sh leaves Connect out), run as
# `java -cp "$DEBEZIUM_HOME/connect/*" org.apache.kafka.connect.cli.ConnectStandalone ...`.
# DEBEZIUM_HOME/plugin is a worker's plugin.path: one plugin directory, debezium-connector-postgres,
# with the connector jar and its runtime dependencies (without Kafka's jars and slf4j, which
# Connect provides; a plugin is a directory, since each jar directly in plugin.path would be a
# plugin of its own, isolated from the others). Progress goes to stderr; the
# function prints only the directory. Idempotent (a `.complete` marker); needs mvn (Maven
# Central), as scripts/test does anyway.

DEBEZIUM_VERSION=${DEBEZIUM_VERSION:-3.6.1.Final}
DEBEZIUM_POSTGRES_SHA256=${DEBEZIUM_POSTGRES_SHA256:-e7bb97f00f97ec78d7c39b19e2b0797739438433b6acaa0941e18dbc2da0d854}
# Connect at the Kafka version Debezium is built with (its debezium-build-parent's version.kafka):
# 4.4's clients lack classes Debezium 3.6 uses. A 4.3 worker talks to the tests' 4.4 broker.
DEBEZIUM_CONNECT_VERSION=${DEBEZIUM_CONNECT_VERSION:-4.3.0}
# Bump when the layout below changes (the cache directory is named after it).
DEBEZIUM_LAYOUT=2

# copy_maven_dependencies DIR DEPENDENCIES_XML: resolves the <dependency> elements and copies
# every runtime jar into DIR.
copy_maven_dependencies() {
  local dir=$1 dependencies=$2 work
  work=$(mktemp -d)
  cat > "$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>unitable.test</groupId>
  <artifactId>debezium-deps</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>$dependencies</dependencies>
</project>
POM
  local ok=0
  (cd "$work" && mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DoutputDirectory="$dir" -DincludeScope=runtime >&2) || ok=1
  rm -rf "$work"
  return $ok
}

fetch_debezium() {
  local cache=${1:?usage: fetch_debezium CACHE_DIR}
  local dir="$cache/debezium-$DEBEZIUM_VERSION-connect-$DEBEZIUM_CONNECT_VERSION-$DEBEZIUM_LAYOUT"
  if [ -f "$dir/.complete" ]; then
    printf 'debezium: %s (cached)\n' "$dir" >&2
    printf '%s\n' "$dir"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || { echo "fetch_debezium: mvn not found" >&2; return 1; }
  rm -rf "$dir" "$dir.tmp"
  mkdir -p "$dir.tmp/plugin/debezium-connector-postgres" "$dir.tmp/connect"
  printf 'debezium: fetching debezium-connector-postgres %s and Kafka Connect %s into %s\n' \
    "$DEBEZIUM_VERSION" "$DEBEZIUM_CONNECT_VERSION" "$dir" >&2
  if ! copy_maven_dependencies "$dir.tmp/plugin/debezium-connector-postgres" "
    <dependency>
      <groupId>io.debezium</groupId><artifactId>debezium-connector-postgres</artifactId>
      <version>$DEBEZIUM_VERSION</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.slf4j</groupId><artifactId>*</artifactId></exclusion>
      </exclusions>
    </dependency>" || ! copy_maven_dependencies "$dir.tmp/connect" "
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId><version>$DEBEZIUM_CONNECT_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-json</artifactId><version>$DEBEZIUM_CONNECT_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.25.5</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.25.5</version></dependency>"; then
    echo "fetch_debezium: mvn could not fetch Debezium or Kafka Connect" >&2
    rm -rf "$dir.tmp"
    return 1
  fi
  local sum
  sum=$(sha256sum "$dir.tmp/plugin/debezium-connector-postgres/debezium-connector-postgres-$DEBEZIUM_VERSION.jar" | cut -d' ' -f1)
  if [ "$sum" != "$DEBEZIUM_POSTGRES_SHA256" ]; then
    echo "fetch_debezium: debezium-connector-postgres-$DEBEZIUM_VERSION.jar has sha256 $sum, expected $DEBEZIUM_POSTGRES_SHA256" >&2
    rm -rf "$dir.tmp"
    return 1
  fi
  mv "$dir.tmp" "$dir"
  touch "$dir/.complete"
  printf '%s\n' "$dir"
}
