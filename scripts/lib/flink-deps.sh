# Flink dependencies of tests/python/test_flink_upsert_kafka.py. Source this file, then:
#
#   FLINK_CONNECTOR_JAR=$(fetch_flink_jars "$UNITABLE_CACHE")   # the Kafka SQL connector jar
#                                                 (the avro-confluent format jar lies beside it)
#   install_flink_python "$venv"                                 # PyFlink into the test venv
#
# Progress goes to stderr; fetch_flink_jars prints only the jar's path on stdout. Both are
# idempotent (a `.complete` marker) and need what scripts/test needs anyway: mvn (Maven Central)
# and the venv's pip (PyPI). The test also needs a JDK 11/17/21 (JAVA_HOME, else `java` on PATH).

# The Kafka connector is released per Flink minor version; this one is built for Flink 2.2 and
# goes with apache-flink==2.2.* in tests/python/requirements-flink.txt. The avro-confluent format
# (for avro-v1 changelogs; it bundles Avro and the registry client, shaded) is released with Flink.
FLINK_KAFKA_CONNECTOR=${FLINK_KAFKA_CONNECTOR:-org.apache.flink:flink-sql-connector-kafka:5.0.0-2.2}
FLINK_KAFKA_CONNECTOR_SHA256=${FLINK_KAFKA_CONNECTOR_SHA256:-5605c691d11a501382c383fecba37a7a552467da5ab7ba904ef5d6f3d62c5616}
FLINK_AVRO_FORMAT=${FLINK_AVRO_FORMAT:-org.apache.flink:flink-sql-avro-confluent-registry:2.2.0}
FLINK_AVRO_FORMAT_SHA256=${FLINK_AVRO_FORMAT_SHA256:-dc331e14107ded6e07f5f77321aa06d8019aa9f33654d0658e49648409b5b80d}

# fetch_flink_jar COORDINATES SHA256 DIR: copies one jar from Maven Central into DIR and checks it.
fetch_flink_jar() {
  local coordinates=$1 want=$2 dir=$3
  local rest=${coordinates#*:}                   # ARTIFACT:VERSION
  local artifact=${rest%%:*} version=${rest#*:}
  printf 'flink jars: fetching %s from Maven Central into %s\n' "$coordinates" "$dir" >&2
  if ! mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
      -Dartifact="$coordinates" -DoutputDirectory="$dir" >&2; then
    echo "fetch_flink_jars: mvn could not fetch $coordinates" >&2
    return 1
  fi
  local sum
  sum=$(sha256sum "$dir/$artifact-$version.jar" | cut -d' ' -f1)
  if [ -n "$want" ] && [ "$sum" != "$want" ]; then
    echo "fetch_flink_jars: $artifact-$version.jar has sha256 $sum, expected $want" >&2
    return 1
  fi
}

# fetch_flink_jars CACHE_DIR: downloads the connector jar and the avro-confluent format jar into
# one directory under CACHE_DIR once, and prints the connector jar's path (the format jar is
# beside it).
fetch_flink_jars() {
  local cache=${1:?usage: fetch_flink_jars CACHE_DIR}
  local rest=${FLINK_KAFKA_CONNECTOR#*:}          # ARTIFACT:VERSION
  local artifact=${rest%%:*} version=${rest#*:}
  local dir="$cache/flink-jars-$version-avro-${FLINK_AVRO_FORMAT##*:}"
  local jar="$dir/$artifact-$version.jar"
  if [ -f "$dir/.complete" ] && [ -f "$jar" ]; then
    printf 'flink jars: %s (cached)\n' "$jar" >&2
    printf '%s\n' "$jar"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || { echo "fetch_flink_jars: mvn not found" >&2; return 1; }
  rm -rf "$dir" "$dir.tmp"
  mkdir -p "$dir.tmp"
  if ! fetch_flink_jar "$FLINK_KAFKA_CONNECTOR" "$FLINK_KAFKA_CONNECTOR_SHA256" "$dir.tmp" \
      || ! fetch_flink_jar "$FLINK_AVRO_FORMAT" "$FLINK_AVRO_FORMAT_SHA256" "$dir.tmp"; then
    rm -rf "$dir.tmp"
    return 1
  fi
  mv "$dir.tmp" "$dir"
  touch "$dir/.complete"
  printf 'flink jars: %s\n' "$jar" >&2
  printf '%s\n' "$jar"
}

# install_flink_python VENV [REQUIREMENTS]: installs tests/python/requirements-flink.txt into VENV
# with --no-deps (see that file for why), once per content of the file.
install_flink_python() {
  local venv=${1:?usage: install_flink_python VENV [REQUIREMENTS]}
  local repo
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  local requirements=${2:-$repo/tests/python/requirements-flink.txt}
  local marker
  marker="$venv/.flink-$(sha256sum "$requirements" | cut -c1-12).complete"
  if [ -f "$marker" ]; then
    printf 'pyflink: %s (cached)\n' "$venv" >&2
    return 0
  fi
  printf 'pyflink: installing %s into %s (--no-deps, about a minute, 340 MB)\n' "$requirements" "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --no-deps -r "$requirements" >&2 || return 1
  "$venv/bin/python" -c 'import pyflink.table' >&2 || return 1
  touch "$marker"
}
