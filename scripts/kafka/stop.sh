#!/usr/bin/env bash
# Stop every node of the cluster in WORK_DIR (SIGTERM, then SIGKILL after KAFKA_STOP_TIMEOUT s).
# Usage: stop.sh WORK_DIR [--kill]     (--kill: SIGKILL at once; data is kept either way)
# A clean stop of a multi-node cluster is done all at once (in parallel): stopping nodes one by
# one lets the last ones lose the controller majority and wait for it during shutdown. Even so
# the quorum leader waits out a 5 s Raft graceful-shutdown timeout (one ERROR "Graceful shutdown
# of RaftClient failed" in its log): ~6 s for 3 nodes, ~0.7 s for 1. Use --kill for throwaway data.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 1 ] || { echo "usage: $0 WORK_DIR [--kill]" >&2; exit 1; }
work=$1
how="stop"
if [ "${2:-}" = --kill ]; then how="kill"; fi
[ -f "$work/cluster.env" ] || { echo "[kafka-stop] no cluster in $work" >&2; exit 0; }
nodes=$(sed -n 's/^KAFKA_NODES=//p' "$work/cluster.env")
pids=()
for i in $(seq 1 "$nodes"); do
  "$here/node.sh" "$how" "$work" "$i" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
