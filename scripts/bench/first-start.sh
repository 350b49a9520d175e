#!/usr/bin/env bash
# The run-time side of docs/benchmarks.md "First start": starts `unitable serve` from BIN in a
# temporary directory, writes ROWS rows (default 400,000) to a keyed table up to a snapshot, then
# times three rounds of a SQL aggregate and a full scan to JSON lines. Run it once per binary:
#   scripts/bench/first-start.sh ~/.cache/unitable/target/release/unitable release
#   scripts/bench/first-start.sh ~/.cache/unitable/target/quickstart/unitable quickstart
set -euo pipefail
BIN=${1:?usage: first-start.sh BIN LABEL [ROWS]}
LABEL=${2:?usage: first-start.sh BIN LABEL [ROWS]}
ROWS=${3:-400000}
dir=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$((20000 + RANDOM % 20000))
"$BIN" serve --data-dir "$dir/data" --grpc-addr "127.0.0.1:$port" \
  --http-addr "127.0.0.1:$((port + 1))" --allow-anonymous >"$dir/serve.log" 2>&1 &
server=$!
for _ in $(seq 150); do
  curl -sf "http://127.0.0.1:$((port + 1))/healthz" >/dev/null && break
  sleep 0.2
done
cli() { "$BIN" --server "http://127.0.0.1:$port" "$@"; }
seconds() { local start=$1; echo "$(date +%s.%N) - $start" | bc; }
awk -v n="$ROWS" 'BEGIN { srand(1); for (i = 0; i < n; i++)
  printf "{\"id\":%d,\"customer\":\"c%d\",\"amount\":%.6f,\"note\":\"note %d xxxxxxxxxxxxxxxxxxxx\"}\n",
    i, i % 997, rand() * 100, i }' >"$dir/rows.jsonl"
cli table create bench.t --column id:int64! --column customer:string --column amount:float64 \
  --column note:string --primary-key id --buckets 4 >/dev/null
start=$(date +%s.%N)
cli write bench.t --file "$dir/rows.jsonl" --wait snapshot >/dev/null
echo "$LABEL write_${ROWS}_rows_s $(seconds "$start")"
for _ in 1 2 3; do
  start=$(date +%s.%N)
  cli sql "SELECT count(*), sum(amount), count(distinct customer) FROM bench.t" >/dev/null 2>&1
  echo "$LABEL sql_aggregate_s $(seconds "$start")"
  start=$(date +%s.%N)
  cli scan bench.t --format jsonl >/dev/null 2>&1
  echo "$LABEL scan_jsonl_s $(seconds "$start")"
done
