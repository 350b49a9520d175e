"""Feature serving: unitable against Feast (Redis online store, file offline store), issue 16.

Both systems get the same generated data: N entities (int64 `entity_id`), ten features (four
float64, three int64, three strings) and an `event_timestamp`. The script starts everything it
uses on free loopback ports in a temporary directory and stops it at the end:

- Feast 0.67: a feature repo (feature_store.yaml, file registry, FileSource over a directory of
  Parquet files, a PushSource on top of it, the Redis online store) on a `redis-server` without
  persistence. It applies the definitions, materializes the data into Redis (timed), then reads
  through `FeatureStore.get_online_features`.
- unitable: `unitable serve` (UNITABLE_BIN, a release build) in its own data dir; the table is
  created and loaded through the Python SDK (timed up to a snapshot holding the rows), then read
  through `Client.lookup`.

Measured, with the same random key sequence on both sides, one call at a time from this process:
1. online lookups of 1 entity per call and of 100 entities per call: p50/p99 of the wall time
   of the SDK call plus turning its answer into Python values (`to_dict()` / `to_pylist()`);
2. historical retrieval of 100k entity rows at random times (the same rows on both sides): Feast's
   `get_historical_features(...).to_df()` and unitable's `Client.training_set(...).to_pandas()`,
   `--hist-runs` calls each (default 3, the sides taking turns; the median is reported), every
   row of every answer checked against the generated data;
3. write-to-serve delay: from the start of a write of a new value for an existing key until a
   lookup returns it. unitable: `write` then `lookup` polled. Feast, two ways: `push` to the
   online store (the streaming path), and a new Parquet file in the offline source followed by
   `materialize_incremental` (the batch path).

Setup (a separate venv, so the pinned test venv stays as it is):

    python3.11 -m venv ~/.cache/unitable/venv-feast
    ~/.cache/unitable/venv-feast/bin/pip install -r python/bench/requirements.txt ./python
    UNITABLE_BIN=$CARGO_TARGET_DIR/release/unitable \\
        ~/.cache/unitable/venv-feast/bin/python python/bench/feast_bench.py --entities 1000000

`redis-server` comes from Debian (`apt-get install -y redis-server`). A run at 1M entities takes
some minutes; `--entities 50000` is a quick check. Results go to stdout as Markdown and, with
`--json`, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "python"))
from harness import (  # noqa: E402
    Process, Service, free_port, http_request, retry_if_port_taken, tcp_accepts)

TABLE = "bench.features"
FEATURE_VIEW = "features"
PUSH_SOURCE = "features_push"
KEY = "entity_id"
TS = "event_timestamp"
FLOATS = ["f0", "f1", "f2", "f3"]
INTS = ["i0", "i1", "i2"]
STRINGS = ["s0", "s1", "s2"]
FEATURES = FLOATS + INTS + STRINGS
SCHEMA = pa.schema(
    [pa.field(KEY, pa.int64(), nullable=False)]
    + [pa.field(c, pa.float64()) for c in FLOATS]
    + [pa.field(c, pa.int64()) for c in INTS]
    + [pa.field(c, pa.string()) for c in STRINGS]
    + [pa.field(TS, pa.timestamp("us", tz="UTC"))]
)
FRESHNESS_TIMEOUT = 60.0


# ---- data ------------------------------------------------------------------------------------

def generate(entities: int, seed: int, now: datetime) -> pa.Table:
    """One row per entity; event times spread over the day that ended an hour before `now`."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {KEY: np.arange(entities, dtype=np.int64)}
    for name in FLOATS:
        columns[name] = rng.random(entities) * 1000.0
    for name in INTS:
        columns[name] = rng.integers(0, 1_000_000, entities, dtype=np.int64)
    for i, name in enumerate(STRINGS):
        codes = rng.integers(0, 100_000, entities)
        columns[name] = [f"{name}-{i}-{code:05d}" for code in codes.tolist()]
    start = now - timedelta(days=1, hours=1)
    offsets_us = rng.integers(0, 86_400 * 1_000_000, entities, dtype=np.int64)
    columns[TS] = pa.array(
        int(start.timestamp() * 1_000_000) + offsets_us, pa.timestamp("us", tz="UTC"))
    return pa.table(columns, schema=SCHEMA)


def one_row(key: int, marker: float, ts: datetime) -> dict[str, Any]:
    """A new row for `key` whose f0 is `marker` (the value the delay probes wait for)."""
    row: dict[str, Any] = {KEY: key, TS: ts}
    for name in FLOATS:
        row[name] = marker
    for name in INTS:
        row[name] = 7
    for name in STRINGS:
        row[name] = "updated"
    return row


# ---- statistics ------------------------------------------------------------------------------

@dataclass
class Timings:
    """Wall times in seconds of repeated operations."""

    samples: list[float] = field(default_factory=list)

    def time(self, op: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = op()
        self.samples.append(time.perf_counter() - start)
        return result

    def summary(self) -> dict[str, float]:
        ms = np.array(self.samples) * 1000.0
        return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
                "max_ms": float(ms.max())}


def poll_until(check: Callable[[], bool], what: str) -> int:
    """Calls check() until it is true; returns the number of calls."""
    deadline = time.monotonic() + FRESHNESS_TIMEOUT
    calls = 0
    while True:
        calls += 1
        if check():
            return calls
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not served after {FRESHNESS_TIMEOUT}s")


# ---- Feast -----------------------------------------------------------------------------------

class FeastSide:
    """A Feast feature repo in `root` on a Redis at `redis_port`."""

    # The file store's point-in-time join returns the entity rows in an order of its own.
    keeps_entity_order = False

    def __init__(self, root: Path, redis_port: int):
        from feast import Entity, FeatureStore, FeatureView, Field, FileSource, PushSource
        from feast.types import Float64, Int64, String

        self.root = root
        self.source_dir = root / "data"
        self.source_dir.mkdir(parents=True)
        # cache_ttl_seconds 0: the registry is read once and never refreshed in a timed call.
        (root / "feature_store.yaml").write_text(
            "project: unitable_bench\n"
            "provider: local\n"
            "registry:\n"
            f"  path: {root / 'registry.db'}\n"
            "  cache_ttl_seconds: 0\n"
            "online_store:\n"
            "  type: redis\n"
            f"  connection_string: 127.0.0.1:{redis_port}\n"
            "offline_store:\n"
            "  type: file\n"
            "entity_key_serialization_version: 3\n")
        self.store = FeatureStore(repo_path=str(root))
        self.entity = Entity(name="entity", join_keys=[KEY])
        batch = FileSource(name="features_file", path=str(self.source_dir), timestamp_field=TS)
        push = PushSource(name=PUSH_SOURCE, batch_source=batch)
        dtypes = {**{c: Float64 for c in FLOATS}, **{c: Int64 for c in INTS},
                  **{c: String for c in STRINGS}}
        self.push_source = push
        self.view = FeatureView(
            name=FEATURE_VIEW, entities=[self.entity], ttl=timedelta(days=30), online=True,
            schema=[Field(name=KEY, dtype=Int64)]
            + [Field(name=c, dtype=dtypes[c]) for c in FEATURES],
            source=push)
        self.refs = [f"{FEATURE_VIEW}:{c}" for c in FEATURES]
        self.files = 0

    def add_file(self, table: pa.Table) -> None:
        """Adds a Parquet file to the offline source directory (an append to the offline store)."""
        pq.write_table(table, self.source_dir / f"part-{self.files:05d}.parquet")
        self.files += 1

    def apply(self) -> None:
        self.store.apply([self.entity, self.push_source, self.view])

    def online(self, keys: list[int]) -> dict[str, list[Any]]:
        return self.store.get_online_features(
            features=self.refs, entity_rows=[{KEY: k} for k in keys]).to_dict()

    def historical(self, entity_df: Any) -> Any:
        return self.store.get_historical_features(entity_df=entity_df, features=self.refs).to_df()

    def push(self, row: dict[str, Any]) -> None:
        import pandas as pd
        self.store.push(PUSH_SOURCE, pd.DataFrame([row]))


# ---- unitable --------------------------------------------------------------------------------

class UnitableSide:
    # A training set returns the entity rows in their order (Client.training_set).
    keeps_entity_order = True

    def __init__(self, service: Service, resp: str | None = None):
        import unitable

        # resp: the server's RESP endpoint, to send lookups there (connect(resp=...)).
        self.client = unitable.connect(service.grpc_url, resp=resp)
        self.columns = [KEY, *FEATURES]
        self.features = [f"{TABLE}.{c}" for c in FEATURES]

    def create(self) -> None:
        self.client.tables.create(TABLE, SCHEMA, primary_key=[KEY])

    def load(self, table: pa.Table) -> None:
        self.client.write(TABLE, table, wait="snapshot", strict=True)

    def online(self, keys: list[int]) -> list[dict[str, Any]]:
        found = self.client.lookup(TABLE, [{KEY: k} for k in keys], columns=self.columns)
        return found.to_pylist()

    def historical(self, entity_df: Any) -> Any:
        return self.client.training_set(
            entity_df, self.features, timestamp_column=TS).to_pandas()

    def write(self, row: dict[str, Any]) -> None:
        self.client.write(TABLE, [row], strict=True)


# ---- the measurements ------------------------------------------------------------------------

def check_same_values(data: pa.Table, keys: list[int], feast: FeastSide | None,
                      uni: UnitableSide | None) -> None:
    """Both systems serve exactly the generated values for `keys` (a sanity check, untimed)."""
    expected = data.take(pa.array(keys)).select([KEY, *FEATURES]).to_pylist()
    if uni is not None:
        got = uni.online(keys)
        if got != expected:
            raise AssertionError(f"unitable served {got[:2]}..., expected {expected[:2]}...")
    if feast is not None:
        answer = feast.online(keys)
        got = [{c: answer[c][i] for c in [KEY, *FEATURES]} for i in range(len(keys))]
        if got != expected:
            raise AssertionError(f"Feast served {got[:2]}..., expected {expected[:2]}...")


def historical_entities(rows: int, entities: int, seed: int, after: datetime) -> Any:
    """`rows` random entities at random times between `after` and now.

    `after` follows both loads, so every row finds its entity's loaded value on both sides:
    Feast joins on the data's event times (all over a day before), and its file store drops an
    entity row that has no value before its time; unitable joins on the changelog's record
    times, which are the writer's acceptance times (all before the load returned)."""
    import pandas as pd
    rng = np.random.default_rng(seed)
    start = int(after.timestamp() * 1_000_000)
    span = max(1, int(datetime.now(timezone.utc).timestamp() * 1_000_000) - start)
    offsets = rng.integers(0, span, rows)
    return pd.DataFrame({KEY: rng.integers(0, entities, rows),
                         TS: pd.to_datetime(start + offsets, unit="us", utc=True)})


def check_historical(name: str, frame: Any, entity_df: Any, data: pa.Table,
                     ordered: bool) -> None:
    """`frame` holds exactly the rows of `entity_df` (in its order if `ordered`), each with the
    generated values of its entity: every row is compared (untimed)."""
    if len(frame) != len(entity_df):
        raise AssertionError(f"{name} historical retrieval gave {len(frame):,} rows for "
                             f"{len(entity_df):,} entity rows")
    if not ordered:
        frame = frame.sort_values([KEY, TS], kind="stable")
        entity_df = entity_df.sort_values([KEY, TS], kind="stable")
    keys = frame[KEY].to_numpy()
    if not ((keys == entity_df[KEY].to_numpy()).all()
            and (frame[TS].to_numpy() == entity_df[TS].to_numpy()).all()):
        raise AssertionError(f"{name} historical retrieval: the rows' entities or times are not "
                             "the entity rows'")
    expected = data.take(pa.array(keys)).select(FEATURES)
    for column in FEATURES:
        want = expected.column(column).to_numpy(zero_copy_only=False)
        got = frame[column].to_numpy()
        wrong = np.flatnonzero(got != want)
        if len(wrong):
            i = wrong[0]
            raise AssertionError(
                f"{name} historical retrieval: {len(wrong):,} wrong values of `{column}`; "
                f"entity {keys[i]} got {got[i]!r}, generated {want[i]!r}")


def check_one_historical(name: str, side: FeastSide | UnitableSide, entity_df: Any,
                         data: pa.Table, out: dict[str, Any]) -> None:
    """Times one historical retrieval into `out` (the runs and their median), then checks every
    row of its answer (untimed)."""
    t = time.perf_counter()
    frame = side.historical(entity_df)
    out.setdefault("historical_runs_s", []).append(time.perf_counter() - t)
    out["historical_s"] = float(np.median(out["historical_runs_s"]))
    out["historical_rows"] = len(frame)
    if name == "unitable":
        # Which snapshot served the rows (the base of the point-in-time join).
        snapshots = frame[f"{TABLE}._snapshot_id"]
        out["historical_snapshot_ids"] = sorted(int(x) for x in snapshots.dropna().unique())
        out["historical_rows_without_snapshot"] = int(snapshots.isna().sum())
        frame = frame.rename(columns={f"{TABLE}.{c}": c for c in FEATURES})
    check_historical(name, frame, entity_df, data, side.keeps_entity_order)
    print(f"{name} historical: {len(frame):,} rows in {out['historical_runs_s'][-1]:.2f} s, "
          "every row checked", flush=True)


def measure_online(readers: dict[str, Callable[[list[int]], Any]], single: list[int],
                   warmup: int, batch_warmup: list[list[int]], batches: list[list[int]],
                   block: int = 100) -> dict[str, dict[str, Any]]:
    """Times each reader on single[warmup:] after single[:warmup], and on `batches` after
    `batch_warmup`, every reader on the same keys.

    The readers take turns by blocks of `block` calls (the order alternating), so slow drifts
    of other load on the machine fall on both alike, while each call still follows a call of
    the same SDK, as in a process that uses one of them."""
    names = list(readers)
    first = {name: Timings() for name in names}
    one = {name: Timings() for name in names}
    hundred = {name: Timings() for name in names}

    def in_turns(timings: dict[str, Timings] | None, calls: list[list[int]]) -> None:
        for b, start in enumerate(range(0, len(calls), block)):
            for name in names if b % 2 == 0 else names[::-1]:
                read = readers[name]
                for keys in calls[start:start + block]:
                    if timings is None:
                        read(keys)
                    else:
                        timings[name].time(lambda r=read, k=keys: r(k))

    in_turns(first, [[single[0]]])
    in_turns(None, [[key] for key in single[:warmup]])
    in_turns(one, [[key] for key in single[warmup:]])
    in_turns(None, batch_warmup)
    in_turns(hundred, batches)
    return {name: {"first_call_ms": first[name].samples[0] * 1000.0,
                   "one": one[name].summary(), "hundred": hundred[name].summary()}
            for name in names}


def measure_unitable_freshness(uni: UnitableSide, keys: list[int]) -> dict[str, Any]:
    delay, ack, polls = Timings(), Timings(), []
    for n, key in enumerate(keys):
        marker = -1.0 - n
        row = one_row(key, marker, datetime.now(timezone.utc))
        start = time.perf_counter()
        uni.write(row)
        ack.samples.append(time.perf_counter() - start)
        polls.append(poll_until(lambda k=key, m=marker: uni.online([k])[0]["f0"] == m,
                                f"unitable key {key}"))
        delay.samples.append(time.perf_counter() - start)
    return {"delay": delay.summary(), "write_ack": ack.summary(),
            "lookups_per_probe_max": max(polls)}


def feast_served(feast: FeastSide, key: int, marker: float) -> bool:
    return feast.online([key])["f0"][0] == marker


def measure_feast_push(feast: FeastSide, keys: list[int]) -> dict[str, Any]:
    delay, ack, polls = Timings(), Timings(), []
    for n, key in enumerate(keys):
        marker = -1.0 - n
        row = one_row(key, marker, datetime.now(timezone.utc))
        start = time.perf_counter()
        feast.push(row)
        ack.samples.append(time.perf_counter() - start)
        polls.append(poll_until(lambda k=key, m=marker: feast_served(feast, k, m),
                                f"Feast push of key {key}"))
        delay.samples.append(time.perf_counter() - start)
    return {"delay": delay.summary(), "write_ack": ack.summary(),
            "lookups_per_probe_max": max(polls)}


def measure_feast_materialize(feast: FeastSide, keys: list[int]) -> dict[str, Any]:
    delay, materialize = Timings(), Timings()
    for n, key in enumerate(keys):
        marker = -100_000.0 - n
        start = time.perf_counter()
        row = one_row(key, marker, datetime.now(timezone.utc))
        feast.add_file(pa.Table.from_pylist([row], schema=SCHEMA))
        # After the row's event time and before the next probe's: each window holds one row.
        end = datetime.now(timezone.utc)
        materialize.time(lambda e=end: feast.store.materialize_incremental(end_date=e))
        poll_until(lambda k=key, m=marker: feast_served(feast, k, m),
                   f"Feast materialized key {key}")
        delay.samples.append(time.perf_counter() - start)
    return {"delay": delay.summary(), "materialize_incremental": materialize.summary()}


# ---- processes -------------------------------------------------------------------------------

def start_redis(workdir: Path) -> tuple[Process, int]:
    holder: dict[str, Any] = {}

    def start() -> None:
        port = free_port()
        process = Process("redis-server", [
            shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            workdir)
        process.wait_until(f"redis-server to accept connections on {port}",
                           lambda: tcp_accepts(port))
        holder.update(process=process, port=port)

    retry_if_port_taken(start)
    return holder["process"], holder["port"]


def lookup_cache_counters(service: Service) -> dict[str, float]:
    """The server's LOOKUP block-cache counters from /metrics (empty if it has none)."""
    status, body = http_request("GET", f"http://{service.http_addr}/metrics")
    counters: dict[str, float] = {}
    if status != 200:
        return counters
    for line in body.decode(errors="replace").splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("unitable_lookup_cache_"):
            counters[name] = counters.get(name, 0.0) + float(value.split()[0])
    return counters


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def versions(unitable_bin: str | None) -> dict[str, str]:
    from importlib.metadata import version
    out = {"feast": version("feast"), "redis-py": version("redis"),
           "pandas": version("pandas"), "pyarrow": version("pyarrow"), "python": sys.version.split()[0]}
    redis_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
    out["redis-server"] = subprocess.run([redis_bin, "--version"], capture_output=True,
                                         text=True).stdout.split()[2].removeprefix("v=")
    out["repo commit (bench script)"] = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
        text=True).stdout.strip()
    if unitable_bin:
        built = datetime.fromtimestamp(os.stat(unitable_bin).st_mtime, timezone.utc)
        out["unitable binary"] = f"{unitable_bin} (built {built:%Y-%m-%d %H:%M} UTC)"
    return out


# ---- report ----------------------------------------------------------------------------------

def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def report(results: dict[str, Any]) -> str:
    args, feast, uni = results["args"], results.get("feast", {}), results.get("unitable", {})
    lines = [
        f"{args['entities']:,} entities x 10 features; {args['lookups']:,} single-entity calls "
        f"after {args['warmup']:,} warm-up; {args['batches']:,} calls of 100 entities; "
        f"load average {results['load_before']} before, {results['load_after']} after.",
        "",
        "| Measure | unitable | Feast 0.67 (Redis + file) | Goal |",
        "|---|---|---|---|",
    ]

    def row(name: str, u: str, f: str, goal: str) -> None:
        lines.append(f"| {name} | {u} | {f} | {goal} |")

    def pct(side: dict[str, Any], key: str, p: str) -> str:
        return fmt(side[key][p]) + " ms" if key in side else "-"

    resp = results.get("unitable_resp", {})
    for label, key in (("1 entity/call", "one"), ("100 entities/call", "hundred")):
        us, fs = uni.get("online", {}), feast.get("online", {})
        rs = resp.get("online", {})
        row(f"Online lookup, {label}, p50", pct(us, key, "p50_ms"), pct(fs, key, "p50_ms"),
            "unitable <= Feast")
        row(f"Online lookup, {label}, p99", pct(us, key, "p99_ms"), pct(fs, key, "p99_ms"),
            "unitable <= Feast")
        row(f"Online lookup over RESP (SDK `resp=`), {label}, p50", pct(rs, key, "p50_ms"),
            pct(fs, key, "p50_ms"), "unitable <= Feast")
        row(f"Online lookup over RESP (SDK `resp=`), {label}, p99", pct(rs, key, "p99_ms"),
            pct(fs, key, "p99_ms"), "unitable <= Feast")
    hist_u, hist_f = uni.get("historical_s"), feast.get("historical_s")
    ratio = results.get("historical_feast_over_unitable")
    runs = args.get("hist_runs", 1)
    row(f"Historical retrieval, {args['hist_rows']:,} entity rows (unitable training_set), "
        f"median of {runs}",
        (f"{fmt(hist_u)} s" if hist_u is not None else "-")
        + (f" (Feast / unitable = {fmt(ratio)}x)" if ratio is not None else ""),
        f"{fmt(hist_f)} s" if hist_f is not None else "-", "unitable >= 10x faster")
    fr = uni.get("freshness", {})
    push, mat = feast.get("push", {}), feast.get("materialize_incremental", {})
    row("Write-to-serve delay, p50 (unitable write; Feast push)",
        pct(fr, "delay", "p50_ms"), pct(push, "delay", "p50_ms"), "unitable < 1 s")
    row("Write-to-serve delay, p99 (unitable write; Feast push)",
        pct(fr, "delay", "p99_ms"), pct(push, "delay", "p99_ms"), "unitable < 1 s")
    row("Write-to-serve delay, p50 (Feast: Parquet file + materialize_incremental)",
        "", pct(mat, "delay", "p50_ms"), "")
    row(f"Bulk load of {args['entities']:,} rows until served",
        f"{fmt(uni.get('load_s'))} s" if "load_s" in uni else "-",
        f"{fmt(feast.get('materialize_s'))} s" if "materialize_s" in feast else "-", "")
    return "\n".join(lines)


# ---- main ------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=5_000,
                        help="timed single-entity calls on each side")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--batches", type=int, default=500, help="timed calls of 100 entities")
    parser.add_argument("--hist-rows", type=int, default=100_000,
                        help="entity rows of the historical retrieval")
    parser.add_argument("--hist-runs", type=int, default=3,
                        help="historical retrievals per side (the median is reported)")
    parser.add_argument("--freshness", type=int, default=50,
                        help="write-to-serve probes (unitable write, Feast push)")
    parser.add_argument("--materialize-probes", type=int, default=5,
                        help="write-to-serve probes through Feast's materialize_incremental")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--skip", choices=["feast", "unitable"], action="append", default=[])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the temporary directory goes (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    unitable_bin = os.environ.get("UNITABLE_BIN")
    if "unitable" not in args.skip and not (unitable_bin and os.access(unitable_bin, os.X_OK)):
        parser.error("UNITABLE_BIN must name the unitable binary (a release build)")
    warnings.filterwarnings("ignore")  # Feast warns about experimental features on every call

    now = datetime.now(timezone.utc).replace(microsecond=0)
    rng = np.random.default_rng(args.seed + 1)
    single = rng.integers(0, args.entities, args.warmup + args.lookups).tolist()
    batches = [rng.integers(0, args.entities, 100).tolist()
               for _ in range(max(1, args.batches // 10) + args.batches)]
    batch_warmup, batches = batches[:-args.batches], batches[-args.batches:]
    probe_keys = rng.integers(0, args.entities, args.freshness).tolist()
    mat_keys = rng.integers(0, args.entities, args.materialize_probes).tolist()
    check_keys = rng.integers(0, args.entities, 50).tolist()

    results: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v
                                        for k, v in vars(args).items()},
                               "versions": versions(unitable_bin),
                               "cpus": os.cpu_count(),
                               "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    print(f"versions: {results['versions']}; load average {results['load_before']}", flush=True)
    t = time.perf_counter()
    data = generate(args.entities, args.seed, now)
    print(f"generated {data.num_rows:,} rows in {time.perf_counter() - t:.1f} s", flush=True)

    root = Path(tempfile.mkdtemp(prefix="feast-bench-", dir=args.workdir))
    processes: list[Process] = []
    service: Service | None = None
    try:
        feast: FeastSide | None = None
        uni: UnitableSide | None = None
        if "feast" not in args.skip:
            out: dict[str, Any] = results.setdefault("feast", {})
            redis, redis_port = start_redis(root)
            processes.append(redis)
            feast = FeastSide(root / "feast", redis_port)
            t = time.perf_counter()
            feast.add_file(data)
            feast.apply()
            out["apply_s"] = time.perf_counter() - t
            t = time.perf_counter()
            feast.store.materialize(start_date=now - timedelta(days=2), end_date=now)
            out["materialize_s"] = time.perf_counter() - t
            out["redis_rss_mib"] = rss_mib(redis.popen.pid)  # type: ignore[union-attr]
            print(f"feast: applied in {out['apply_s']:.1f} s, materialized in "
                  f"{out['materialize_s']:.1f} s", flush=True)
        if "unitable" not in args.skip:
            out = results.setdefault("unitable", {})
            resp_addr = f"127.0.0.1:{free_port()}"
            service = Service(unitable_bin, root / "unitable",  # type: ignore[arg-type]
                              ("--resp-addr", resp_addr))
            uni = UnitableSide(service)
            uni_resp = UnitableSide(service, resp=resp_addr)
            results["unitable_resp"] = {}
            uni.create()
            t = time.perf_counter()
            uni.load(data)
            out["load_s"] = time.perf_counter() - t
            print(f"unitable: loaded until a snapshot held the rows in {out['load_s']:.1f} s",
                  flush=True)
        loaded = datetime.now(timezone.utc)
        check_same_values(data, check_keys, feast, uni)

        readers: dict[str, Callable[[list[int]], Any]] = {}
        if uni is not None:
            readers["unitable"] = uni.online
            readers["unitable_resp"] = uni_resp.online
        if feast is not None:
            readers["feast"] = feast.online
        for name, online in measure_online(readers, single, args.warmup, batch_warmup,
                                           batches).items():
            results[name]["online"] = online
            print(f"{name} online: {json.dumps(online)}", flush=True)
        if uni is not None:
            results["unitable"]["server_rss_mib"] = rss_mib(
                service.process.popen.pid)  # type: ignore[union-attr]
            results["unitable"]["lookup_cache"] = lookup_cache_counters(service)
            print(f"unitable lookup cache: {results['unitable']['lookup_cache']}", flush=True)
        if args.hist_rows > 0 and readers:
            # The same entity rows for both, made after the online reads: times between the end
            # of the loads and now (historical_entities).
            entity_df = historical_entities(args.hist_rows, args.entities, args.seed + 2, loaded)
            sides: dict[str, FeastSide | UnitableSide] = {}
            if uni is not None:
                sides["unitable"] = uni
            if feast is not None:
                sides["feast"] = feast
            # Each side answers the same rows `--hist-runs` times, the sides taking turns; the
            # median counts, and every answer is checked.
            for _ in range(args.hist_runs):
                for name, side in sides.items():
                    check_one_historical(name, side, entity_df, data, results[name])
            if service is not None:
                # The server's own time per call, and what it logged besides (compactions, the
                # lookup state's re-bases and cache warming), so a slow call can be traced after
                # the directory is gone.
                marks = ("training set", "compact", "re-base", "cache warmed", "index built")
                logged = [line for line in service.log().splitlines()
                          if any(mark in line for mark in marks)]
                results["unitable"]["historical_server_log"] = logged[-20:]
                for line in logged[-20:]:
                    print(f"server: {line}", flush=True)
            if len(sides) == 2:
                results["historical_feast_over_unitable"] = (
                    results["feast"]["historical_s"] / results["unitable"]["historical_s"])

        # Write-to-serve probes change values, so they come after every read measurement.
        if uni is not None:
            results["unitable"]["freshness"] = measure_unitable_freshness(uni, probe_keys)
            print(f"unitable freshness: {json.dumps(results['unitable']['freshness'])}", flush=True)
        if feast is not None:
            results["feast"]["push"] = measure_feast_push(feast, probe_keys)
            print(f"feast push: {json.dumps(results['feast']['push'])}", flush=True)
            results["feast"]["materialize_incremental"] = measure_feast_materialize(feast, mat_keys)
            print(f"feast materialize_incremental: "
                  f"{json.dumps(results['feast']['materialize_incremental'])}", flush=True)
    finally:
        if service is not None:
            try:
                service.stop()
            except RuntimeError:
                service.kill()
        for process in processes:
            process.kill()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    results["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
