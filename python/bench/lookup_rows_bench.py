"""Single-key lookups from the Python SDK with the rows as JSON arrays (``json_rows``, what the
SDK asks for on lookups of up to ``JSON_ROWS_MAX_KEYS`` keys) against the same lookups answered
in Arrow IPC, on one server, in alternating blocks of 100 calls.

    UNITABLE_BIN=target/release/unitable python python/bench/lookup_rows_bench.py [--rows N]

Starts its own ``unitable serve`` (with ``--resp-addr``) in a temporary directory, writes N rows
of feast_bench's shape (an int64 key, 4 float64, 3 int64, 3 string features and a timestamptz),
then times ``lookup(...).to_pylist()`` of random keys, checking every answer's first feature.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import socket
import subprocess
import tempfile
import time

import pyarrow as pa

import unitable
import unitable._client as sdk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls, both modes")
    parser.add_argument("--keys", type=int, default=1, help="keys per call")
    parser.add_argument("--resp", action=argparse.BooleanOptionalAction, default=True,
                        help="look up over RESP (connect(resp=)); --no-resp: over gRPC")
    args = parser.parse_args()
    binary = os.environ.get("UNITABLE_BIN", "unitable")
    data_dir = tempfile.mkdtemp(prefix="lookup-rows-")
    grpc, http, resp = free_port(), free_port(), free_port()
    log = open(os.path.join(data_dir, "serve.log"), "w")
    server = subprocess.Popen(
        [binary, "serve", "--data-dir", os.path.join(data_dir, "data"),
         "--grpc-addr", f"127.0.0.1:{grpc}", "--http-addr", f"127.0.0.1:{http}",
         "--resp-addr", f"127.0.0.1:{resp}", "--allow-anonymous"],
        stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", grpc), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"unitable serve did not start; see {log.name}") from None
                time.sleep(0.1)
        run(args, grpc, resp if args.resp else None)
    finally:
        server.terminate()
        server.wait()


def run(args: argparse.Namespace, grpc: int, resp: int | None) -> None:
    columns = (["entity_id:int64!"] + [f"f{i}:float64" for i in range(4)]
               + [f"i{i}:int64" for i in range(3)] + [f"s{i}:string" for i in range(3)]
               + ["event_timestamp:timestamptz"])
    names = [c.split(":")[0] for c in columns[1:]]
    rng = random.Random(1)
    n = args.rows
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    data = pa.table({
        "entity_id": pa.array(range(n), pa.int64()),
        **{f"f{i}": [rng.random() for _ in range(n)] for i in range(4)},
        **{f"i{i}": [rng.randrange(10**6) for _ in range(n)] for i in range(3)},
        **{f"s{i}": [f"v{rng.randrange(1000)}" for _ in range(n)] for i in range(3)},
        "event_timestamp": pa.array([start + dt.timedelta(seconds=i) for i in range(n)],
                                    pa.timestamp("us", "UTC")),
    })
    f0 = data["f0"].to_pylist()
    target = f"127.0.0.1:{grpc}"
    with unitable.connect(target, resp=f"127.0.0.1:{resp}" if resp else None) as client:
        client.tables.create("bench.rows", columns, primary_key=["entity_id"])
        client.write("bench.rows", data, wait="snapshot")
        for _ in range(500):
            client.lookup("bench.rows", [{"entity_id": 1}], columns=names).to_pylist()
        keys = [rng.randrange(n) for _ in range(args.calls)]
        times: dict[str, list[float]] = {"json rows": [], "Arrow IPC": []}
        for block in range(0, len(keys), 100):
            mode = "json rows" if (block // 100) % 2 == 0 else "Arrow IPC"
            sdk.JSON_ROWS_MAX_KEYS = args.keys if mode == "json rows" else 0
            for key in keys[block:block + 100]:
                asked = [(key + i * 7919) % n for i in range(args.keys)]
                began = time.perf_counter()
                rows = client.lookup("bench.rows", [{"entity_id": k} for k in asked],
                                     columns=names).to_pylist()
                times[mode].append(time.perf_counter() - began)
                assert [r["f0"] for r in rows] == [f0[k] for k in asked], key
    via = "RESP" if resp else "gRPC"
    print(f"| Answer ({via}, {n:,} rows, {args.keys} keys a call) | calls | p50 | p99 | mean |")
    print("|---|---|---|---|---|")
    for mode, t in times.items():
        t.sort()
        print(f"| {mode} | {len(t):,} | {t[len(t) // 2] * 1e3:.3f} ms | "
              f"{t[int(len(t) * 0.99)] * 1e3:.3f} ms | {sum(t) / len(t) * 1e3:.3f} ms |")


if __name__ == "__main__":
    main()
