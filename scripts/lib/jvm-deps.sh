# shellcheck shell=bash
# JVM dependencies of the Spark interop test (tests/python/test_spark_read.py). Source this file
# from scripts/test, then call:
#
#   fetch_spark_jars CACHE_DIR
#
# It puts the Iceberg Spark runtime and the SQLite JDBC driver into
# CACHE_DIR/spark-jars-<versions> (once: a `.complete` marker makes later calls instant) and
# exports what the test reads:
#   SPARK_JARS_DIR  the directory with the jars (the test puts every *.jar there on spark.jars)
#   JAVA_HOME       a Java 17 or 21 (Spark 4.1 runs on those; Java 23+ fails in Hadoop's
#                   Subject.getSubject), kept if it already names one
#   SPARK_LOCAL_IP  127.0.0.1, so Spark never binds the host's public interface
# Needs `mvn` (or `curl`) and a Java 17/21 under $JAVA_HOME or /usr/lib/jvm. Returns non-zero
# with a message on stderr when it cannot.

SPARK_ICEBERG_RUNTIME=${SPARK_ICEBERG_RUNTIME:-org.apache.iceberg:iceberg-spark-runtime-4.1_2.13:1.12.0}
SPARK_SQLITE_JDBC=${SPARK_SQLITE_JDBC:-org.xerial:sqlite-jdbc:3.54.1.0}

# The major version of the java at $1/bin/java, or nothing.
_jvm_major() {
  [ -x "$1/bin/java" ] || return 0
  "$1/bin/java" -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -n1
}

# Sets JAVA_HOME to a Java 17 or 21: the current one if it is, else one under /usr/lib/jvm.
_find_spark_java() {
  local candidate major
  for candidate in "${JAVA_HOME:-}" /usr/lib/jvm/java-17-openjdk-* /usr/lib/jvm/*-17* \
                   /usr/lib/jvm/java-21-openjdk-* /usr/lib/jvm/*-21*; do
    [ -n "$candidate" ] || continue
    major=$(_jvm_major "$candidate")
    if [ "$major" = 17 ] || [ "$major" = 21 ]; then
      JAVA_HOME=$candidate
      return 0
    fi
  done
  printf 'jvm-deps: no Java 17 or 21 found (JAVA_HOME=%s, /usr/lib/jvm); Spark 4.1 needs one\n' \
    "${JAVA_HOME:-unset}" >&2
  return 1
}

# Copies Maven artifact $1 (group:artifact:version) into directory $2.
_fetch_jar() {
  local coords=$1 dir=$2 group artifact version
  IFS=: read -r group artifact version <<<"$coords"
  printf '==> jvm-deps: %s\n' "$coords"
  if command -v mvn >/dev/null 2>&1; then
    # Quiet unless it fails (its output is only colour codes otherwise).
    if ! mvn -B -q -Dstyle.color=never org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
        -Dartifact="$coords" -DoutputDirectory="$dir" >"$dir/.mvn.log" 2>&1; then
      cat "$dir/.mvn.log" >&2
      printf 'jvm-deps: mvn could not fetch %s\n' "$coords" >&2
      return 1
    fi
    rm -f "$dir/.mvn.log"
  elif command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 3 -o "$dir/$artifact-$version.jar" \
      "https://repo1.maven.org/maven2/${group//.//}/$artifact/$version/$artifact-$version.jar"
  else
    printf 'jvm-deps: neither mvn nor curl is installed; cannot fetch %s\n' "$coords" >&2
    return 1
  fi
  [ -s "$dir/$artifact-$version.jar" ] || {
    printf 'jvm-deps: %s did not arrive in %s\n' "$coords" "$dir" >&2
    return 1
  }
}

fetch_spark_jars() {
  local cache=${1:?usage: fetch_spark_jars CACHE_DIR} tag dir partial coords
  _find_spark_java || return 1
  export JAVA_HOME
  export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
  # Named after the artifacts, so changing a version fetches into a fresh directory.
  tag=$(printf '%s\n%s\n' "$SPARK_ICEBERG_RUNTIME" "$SPARK_SQLITE_JDBC" | sha256sum | cut -c1-12)
  dir="$cache/spark-jars-$tag"
  if [ -f "$dir/.complete" ]; then
    printf '==> spark jars %s (cached; java %s at %s)\n' "$dir" "$(_jvm_major "$JAVA_HOME")" "$JAVA_HOME"
  else
    printf '==> spark jars: fetching into %s (java %s at %s)\n' "$dir" "$(_jvm_major "$JAVA_HOME")" "$JAVA_HOME"
    mkdir -p "$cache" || return 1
    # Fetch into a scratch directory and rename it, so an interrupted fetch leaves no half set.
    partial="$dir.partial.$$"
    rm -rf "$partial" && mkdir -p "$partial" || return 1
    for coords in "$SPARK_ICEBERG_RUNTIME" "$SPARK_SQLITE_JDBC"; do
      _fetch_jar "$coords" "$partial" || { rm -rf "$partial"; return 1; }
    done
    touch "$partial/.complete"
    rm -rf "$dir"
    mv "$partial" "$dir" || return 1
    local jars=("$dir"/*.jar)
    printf '==> spark jars ready: %s\n' "${jars[*]##*/}"
  fi
  export SPARK_JARS_DIR="$dir"
}
