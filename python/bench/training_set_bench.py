"""Training sets larger than the server's training-set memory: time, spill and memory.

Starts `unitable serve` (UNITABLE_BIN) with ``--training-set-memory`` set low, loads the
feature table of feast_bench.py (ENTITIES entities, ten features), writes ROWS entity rows
(random entities, times after the load) to a Parquet file, and reads the training set with
the SDK's ``training_set_reader`` into a Parquet file, batch by batch, so the client holds
neither side whole. Reports the time, the server's peak RSS before and after the call
(VmHWM), the bytes the server spilled (unitable_training_set_spilled_bytes_total), and checks
every answer row against the generated data (each row must carry its entity's values).

    UNITABLE_BIN=.../release/unitable python python/bench/training_set_bench.py \\
        --entities 1000000 --rows 10000000 --memory 64MiB
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import feast_bench as fb  # noqa: E402  (also puts tests/python on the path)
from harness import Service, http_request  # noqa: E402


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def spilled_bytes(service: Service) -> float:
    _, raw = http_request("GET", f"http://{service.http_addr}/metrics")
    body = raw.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("unitable_training_set_spilled_bytes_total"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=10_000_000, help="entity rows")
    parser.add_argument("--memory", default="64MiB", help="--training-set-memory")
    parser.add_argument("--no-lookup-state", action="store_true",
                        help="skip the warm-up lookup, so every segment scans the snapshot")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="training-set-bench-"))
    service = Service(os.environ["UNITABLE_BIN"], root / "unitable",
                      args=("--training-set-memory", args.memory))
    try:
        now = datetime.now(timezone.utc).replace(microsecond=0)
        data = fb.generate(args.entities, 16, now)
        uni = fb.UnitableSide(service)
        uni.create()
        t = time.perf_counter()
        uni.load(data)
        print(f"loaded {args.entities:,} entities in {time.perf_counter() - t:.1f} s", flush=True)
        loaded = datetime.now(timezone.utc)
        if not args.no_lookup_state:
            # A feature table that serves lookups has a lookup state; the training set then
            # finds base rows through its key index instead of scanning the snapshot per
            # segment (docs/reader.md, "Training sets").
            uni.client.lookup(fb.TABLE, [{fb.KEY: 0}])
        time.sleep(1)
        entities_path = root / "entities.parquet"
        rng = np.random.default_rng(7)
        with pq.ParquetWriter(entities_path, pa.schema(
                [(fb.KEY, pa.int64()), (fb.TS, pa.timestamp("us", tz="UTC")),
                 ("label", pa.int64())])) as writer:
            start = int(loaded.timestamp() * 1_000_000)
            span = max(1, int(datetime.now(timezone.utc).timestamp() * 1_000_000) - start)
            for at in range(0, args.rows, 1_000_000):
                n = min(1_000_000, args.rows - at)
                writer.write_table(pa.table({
                    fb.KEY: rng.integers(0, args.entities, n),
                    fb.TS: pa.array(start + rng.integers(0, span, n), pa.timestamp("us", tz="UTC")),
                    "label": np.arange(at, at + n, dtype=np.int64)}))
        size = entities_path.stat().st_size
        pid = service.process.popen.pid
        before_rss, before_spill = peak_rss_mib(pid), spilled_bytes(service)
        print(f"{args.rows:,} entity rows ({size / 2**20:.0f} MiB Parquet); server peak RSS "
              f"{before_rss:.0f} MiB; --training-set-memory {args.memory}; lookup state: "
              f"{'no' if args.no_lookup_state else 'yes'}", flush=True)
        out_path = root / "answer.parquet"
        t = time.perf_counter()
        reader = uni.client.training_set_reader(entities_path, uni.features,
                                                timestamp_column=fb.TS)
        first = time.perf_counter() - t
        rows = 0
        with pq.ParquetWriter(out_path, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
        took = time.perf_counter() - t
        after_rss, spilled = peak_rss_mib(pid), spilled_bytes(service) - before_spill
        print(f"training set: {rows:,} rows in {took:.1f} s ({rows / took:,.0f} rows/s; first "
              f"answer after {first:.1f} s); spilled {spilled / 2**20:,.0f} MiB; server peak "
              f"RSS {before_rss:.0f} -> {after_rss:.0f} MiB", flush=True)
        # Every row: in order, and its entity's generated values.
        expected = data.select([fb.KEY, *fb.FEATURES])
        checked = 0
        for batch in pq.ParquetFile(out_path).iter_batches(batch_size=1_000_000):
            labels = batch.column("label").to_numpy()
            if not np.array_equal(labels, np.arange(checked, checked + len(labels))):
                raise AssertionError(f"rows out of order after row {checked}")
            keys = batch.column(fb.KEY)
            want = expected.take(keys)
            for name in fb.FEATURES:
                got = batch.column(f"{fb.TABLE}.{name}")
                if not got.equals(want.column(name).combine_chunks().cast(got.type)):
                    raise AssertionError(f"feature {name} differs in rows {checked}..")
            checked += len(labels)
        if checked != args.rows:
            raise AssertionError(f"{checked:,} of {args.rows:,} rows came back")
        print(f"checked all {checked:,} rows against the generated data", flush=True)
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
