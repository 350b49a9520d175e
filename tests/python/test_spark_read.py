"""Spark reads what unitable writes: Spark 4.1 with Iceberg 1.12's SparkCatalog over the JDBC
catalog, opened read-only on DATA_DIR/catalog.db.

A server writes a keyed table (2 buckets) through rounds of random upserts and deletes (each
write waits for its snapshot), once unpartitioned and once partitioned by identity(region) and
day(placed_at) with rows moving between partitions. The test keeps every change with the
changelog partition and offset it got, so the model of any snapshot is the changes below the
offsets its summary records (a write reports the snapshot holding all of it; a snapshot may hold
part of a write, one bucket's rows, since a request is not atomic across partitions). Spark must
read the current snapshot, every snapshot by id (VERSION AS OF, versionAsOf) and by commit time
(TIMESTAMP AS OF, timestampAsOf) as the model of that snapshot; list the position-delete files
(each in the spec and partition of every data file it deletes from: Iceberg 1.12 refuses a scan
otherwise); and after `unitable compact` and one more round of writes, read the new snapshots as
the model while every older snapshot still reads as before. Spark never changes catalog.db.

Needs pyspark (tests/python/requirements.txt), Java 17 or 21 (JAVA_HOME) and the jars that
`fetch_spark_jars` (scripts/lib/jvm-deps.sh) puts into SPARK_JARS_DIR.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import re
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import pytest

from harness import Service

pytestmark = pytest.mark.slow

# The Spark catalog's name is the JDBC catalog's name, which must equal the `catalog_name` the
# service writes into iceberg_tables.
CATALOG = "unitable"
UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

# Rows: id -> tuple of column values in COLUMNS order, in the normal form `spark_rows` yields.
Rows = dict[int, tuple]


# --- Spark ----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def spark_base() -> Iterator[Any]:
    """One local Spark (one JVM) for the session; each test reads through a session of its own."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        pytest.skip("pyspark is not installed (tests/python/requirements.txt pins pyspark==4.1.4)")
    jars_dir = os.environ.get("SPARK_JARS_DIR", "")
    if not jars_dir:
        pytest.skip("SPARK_JARS_DIR is not set; scripts/test sets it with fetch_spark_jars "
                    "(scripts/lib/jvm-deps.sh): Iceberg's Spark runtime and the SQLite JDBC driver")
    jars = sorted(str(p) for p in Path(jars_dir).glob("*.jar"))
    names = " ".join(Path(j).name for j in jars)
    if "iceberg-spark-runtime" not in names or "sqlite-jdbc" not in names:
        pytest.fail(f"SPARK_JARS_DIR={jars_dir} lacks iceberg-spark-runtime or sqlite-jdbc: {names!r}")
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
    try:
        version = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except OSError as err:
        pytest.fail(f"cannot run {java} ({err}); Spark 4.1 needs Java 17 or 21 (set JAVA_HOME)")
    major = re.search(r'version "(\d+)', version)
    if not major or major.group(1) not in ("17", "21"):
        pytest.fail(f"{java} is not Java 17 or 21, which Spark 4.1 needs (newer ones fail in Hadoop's "
                    f"Subject.getSubject); fetch_spark_jars in scripts/lib/jvm-deps.sh sets JAVA_HOME:\n"
                    f"{version}")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # else Spark binds the public interface
    spark = (
        SparkSession.builder.master("local[2]").appName("unitable-spark-read")
        .config("spark.jars", ",".join(jars))
        .config("spark.driver.memory", "1g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", "-XX:+UseSerialGC -Xss4m")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    yield spark
    spark.stop()


def open_catalog(spark_base: Any, data_dir: Path) -> Any:
    """A new Spark session whose catalog `unitable` is the service's catalog, read-only."""
    spark = spark_base.newSession()  # own SQL conf and catalog manager, same JVM
    c = f"spark.sql.catalog.{CATALOG}"
    for key, value in {
        "spark.sql.session.timeZone": "UTC",
        c: "org.apache.iceberg.spark.SparkCatalog",
        f"{c}.type": "jdbc",
        f"{c}.uri": f"jdbc:sqlite:{data_dir}/catalog.db",
        f"{c}.warehouse": f"file://{data_dir}/warehouse",
        # The service owns the catalog tables: never create or migrate them.
        f"{c}.jdbc.init-catalog-tables": "false",
        # Handed to the SQLite driver (Iceberg strips `jdbc.`): SQLITE_OPEN_READONLY.
        f"{c}.jdbc.open_mode": "1",
        # Every query sees the service's latest commit.
        f"{c}.cache-enabled": "false",
    }.items():
        spark.conf.set(key, value)
    return spark


def spark_rows(df: Any, columns: list[str]) -> list[tuple]:
    """The rows of `df` as tuples of `columns`, sorted by id: timestamptz as microseconds since
    the epoch (exact, whatever the session's zone), binary as bytes, the rest as Spark gives them
    (Decimal, date, naive datetime for timestamp without zone, float, int, str, bool)."""
    from pyspark.sql.types import TimestampType

    types = {f.name: f.dataType for f in df.schema.fields}
    missing = [c for c in columns if c not in types]
    assert not missing, f"Spark's schema lacks {missing}: {df.schema.simpleString()}"
    exprs = [f"unix_micros(`{c}`) AS `{c}`" if isinstance(types[c], TimestampType) else f"`{c}`"
             for c in columns]
    out = []
    for row in df.selectExpr(*exprs).collect():
        out.append(tuple(bytes(v) if isinstance(v, (bytearray, memoryview)) else v for v in row))
    return sorted(out, key=lambda r: r[0])


def ts_literal(ms: int) -> str:
    """Milliseconds since the epoch as a Spark timestamp literal in UTC (the session's zone)."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def catalog_digest(data_dir: Path) -> dict[str, list]:
    """The Iceberg catalog's rows in catalog.db: every table's metadata pointer and every
    namespace property. (Not the file's bytes: the serve node renews its committer leases in
    the same database every few seconds.)"""
    import sqlite3
    db = sqlite3.connect(f"file:{data_dir / 'catalog.db'}?mode=ro", uri=True)
    try:
        return {
            table: sorted(db.execute(f"SELECT * FROM {table}").fetchall())
            for table in ("iceberg_tables", "iceberg_namespace_properties")
        }
    finally:
        db.close()


# --- the tables -----------------------------------------------------------------------------------

class Table:
    """A keyed table's columns, how to make random rows of it, and their JSON and model forms."""

    def __init__(self, name: str, columns: list[tuple[str, str]], partition_by: list[str]):
        self.name = name
        self.columns = columns  # (name, unitable type with `!` for not null)
        self.names = [c for c, _ in columns]
        self.partition_by = partition_by

    def create_args(self) -> list[str]:
        args = ["table", "create", self.name]
        for column, type_name in self.columns:
            args += ["--column", f"{column}:{type_name}"]
        args += ["--primary-key", "id", "--buckets", "2"]
        for field in self.partition_by:
            args += ["--partition-by", field]
        # Small files count: compaction rewrites files with few deletes and packs two small files.
        args += ["--property", "unitable.compaction.min-input-files=2",
                 "--property", "unitable.compaction.delete-ratio=0.05"]
        return args

    def random_row(self, rng: random.Random, key: int, tag: str) -> tuple[dict, tuple]:
        """(JSON object for `unitable write`, the model's tuple) of a random row with id `key`."""
        json_row: dict[str, Any] = {}
        model: list[Any] = []
        for column, type_name in self.columns:
            required = type_name.endswith("!")
            kind = type_name.rstrip("!")
            if column == "id":
                j, m = key, key
            elif not required and rng.random() < 0.15:
                j, m = None, None
            elif kind == "string" and column == "region":
                j = m = rng.choice(["eu", "us", "apac"])
            elif kind == "string":
                j = m = f"{tag}-{rng.randrange(1000)}"
            elif kind.startswith("decimal"):
                cents = rng.randrange(-100_000, 10_000_000)
                m = Decimal(cents).scaleb(-2)
                j = f"{m:.2f}"
            elif kind == "timestamptz":
                # Three days in UTC, so day(placed_at) spreads rows over three partitions.
                at = dt.datetime(2024, 5, 1, tzinfo=UTC) + dt.timedelta(
                    microseconds=rng.randrange(3 * 86_400_000_000))
                j = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                m = (at - EPOCH) // dt.timedelta(microseconds=1)
            elif kind == "timestamp":
                m = dt.datetime(2023, 11, 14) + dt.timedelta(microseconds=rng.randrange(10**12))
                j = m.strftime("%Y-%m-%dT%H:%M:%S.%f")
            elif kind == "date":
                m = dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(-1000, 1000))
                j = m.isoformat()
            elif kind == "bool":
                j = m = rng.random() < 0.5
            elif kind == "int32":
                j = m = rng.randrange(-2**31, 2**31)
            elif kind in ("float64", "float32"):
                j = m = rng.randrange(-4000, 4000) / 8  # exact in both widths
            elif kind == "binary":
                m = rng.randbytes(rng.randrange(0, 12))
                j = base64.b64encode(m).decode()
            else:
                raise AssertionError(f"no random values for {type_name}")
            json_row[column] = j
            model.append(m)
        return json_row, tuple(model)


PLAIN = Table("shop.plain", [
    ("id", "int64!"), ("customer", "string"), ("amount", "decimal(12,2)"),
    ("placed_at", "timestamptz!"), ("flag", "bool"), ("score", "float64"), ("day", "date"),
    ("n", "int32"), ("raw", "binary"), ("ts", "timestamp"), ("f", "float32"),
], partition_by=[])

PARTITIONED = Table("shop.parted", [
    ("id", "int64!"), ("customer", "string"), ("amount", "decimal(12,2)"),
    ("placed_at", "timestamptz!"), ("region", "string!"),
], partition_by=["identity(region)", "day(placed_at)"])


# --- writing --------------------------------------------------------------------------------------

SNAPSHOT_LINE = re.compile(r"^committed in snapshot (-?\d+)$", re.MULTILINE)
OFFSETS_LINE = re.compile(r"; last offsets (\S+)$", re.MULTILINE)
BUCKETS = 2
OFFSETS_PROPERTY = "unitable.changelog-offsets"


def murmur2(data: bytes) -> int:
    """The Java Kafka client's murmur2 (seed 0x9747b28c), as a signed 32-bit int."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    whole = len(data) - len(data) % 4
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i:i + 4], "little") * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = data[whole:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h >= 1 << 31 else h


def bucket_of(key: int) -> int:
    """The changelog partition of id `key` (docs/changelog-format.md, "Partitioning")."""
    return (murmur2(json.dumps({"id": key}, separators=(",", ":")).encode()) & 0x7FFFFFFF) % BUCKETS


def parse_offsets(text: str) -> dict[int, int]:
    """`P:OFFSET,...` (or `-`) as {partition: offset}."""
    if text in ("", "-"):
        return {}
    return {int(p): int(o) for p, o in (part.split(":") for part in text.split(","))}


class Writer:
    """Writes through `unitable write --wait snapshot` and keeps every change with the changelog
    partition (the key's bucket, computed here) and offset it got, so the rows of any snapshot
    follow from the offsets it reflects: a request's rows land in two partitions and need not
    become visible in one snapshot (docs/writer.md: a request is not atomic across partitions)."""

    def __init__(self, service: Service, table: Table, workdir: Path, seed: int):
        self.service = service
        self.table = table
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.rows: Rows = {}
        # (partition, offset, key, row or None for a delete), in write order
        self.changes: list[tuple[int, int, int, tuple | None]] = []
        self.next_offset: dict[int, int] = {}
        # (snapshot id the write reported, offsets it ends at (exclusive), rows after it)
        self.reported: list[tuple[int, dict[int, int], Rows]] = []
        self.writes = 0

    def _write(self, op: str, lines: list[dict], rows: list[tuple | None]) -> None:
        self.writes += 1
        path = self.workdir / f"write-{self.writes}-{op}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        out = self.service.cli("write", self.table.name, "--file", str(path), "--op", op,
                               "--wait", "snapshot", check=True).stdout
        assert f"wrote {len(lines)} rows" in out and "; 0 rejected" in out, out
        found, offsets = SNAPSHOT_LINE.search(out), OFFSETS_LINE.search(out)
        assert found and offsets, f"`unitable write --wait snapshot` printed no snapshot or offsets:\n{out}"
        last = parse_offsets(offsets.group(1))
        # Each partition's records of this request follow the previous ones, in request order.
        by_partition: dict[int, list[tuple[int, tuple | None]]] = {}
        for line, row in zip(lines, rows):
            by_partition.setdefault(bucket_of(line["id"]), []).append((line["id"], row))
        assert set(last) == set(by_partition), (
            f"write {self.writes}: offsets {last} for partitions {sorted(by_partition)} by murmur2")
        for partition, changes in sorted(by_partition.items()):
            first = last[partition] - len(changes) + 1
            assert first == self.next_offset.get(partition, 0), (
                f"write {self.writes}: partition {partition} got offsets {first}..{last[partition]}, "
                f"want them to follow {self.next_offset.get(partition, 0) - 1}")
            for i, (key, row) in enumerate(changes):
                self.changes.append((partition, first + i, key, row))
            self.next_offset[partition] = last[partition] + 1
        for line, row in zip(lines, rows):
            if row is None:
                del self.rows[line["id"]]
            else:
                self.rows[line["id"]] = row
        snapshot_id = int(found.group(1))
        assert snapshot_id not in [s for s, _, _ in self.reported], (
            f"write {self.writes} reported snapshot {snapshot_id} again")
        self.reported.append((snapshot_id, dict(self.next_offset), dict(self.rows)))

    def model_at(self, offsets: dict[int, int]) -> Rows:
        """The rows after every change below `offsets` (per partition, exclusive)."""
        rows: Rows = {}
        for partition, offset, key, row in self.changes:
            if offset < offsets.get(partition, 0):
                if row is None:
                    rows.pop(key, None)
                else:
                    rows[key] = row
        return rows

    def upsert(self, keys: list[int], tag: str) -> None:
        pairs = [self.table.random_row(self.rng, key, tag) for key in keys]
        self._write("upsert", [line for line, _ in pairs], [row for _, row in pairs])

    def delete(self, keys: list[int]) -> None:
        self._write("delete", [{"id": key} for key in keys], [None] * len(keys))

    def random_round(self, tag: str, new_keys: int = 4) -> None:
        """Upserts of live keys (with new random values, so most move to another partition of the
        partitioned table) and of new keys, then deletes of live keys: two writes, both making
        position deletes."""
        live = sorted(self.rows)
        updated = self.rng.sample(live, min(len(live), 12))
        top = max(self.rows, default=-1) + 1  # may reuse a deleted id: a key coming back
        self.upsert(updated + list(range(top, top + new_keys)), tag)
        live = sorted(self.rows)
        self.delete(self.rng.sample(live, min(len(live), 5)))


# --- reading and checking -------------------------------------------------------------------------

class Snap(NamedTuple):
    id: int
    parent: int | None
    ms: int  # commit time, ms since the epoch
    op: str
    offsets: dict[int, int] | None  # unitable.changelog-offsets (exclusive ends), if recorded


def spark_snapshots(spark: Any, ident: str) -> list[Snap]:
    """Every snapshot as Spark's `snapshots` metadata table lists it, oldest first."""
    out = []
    for r in spark.sql(
            f"SELECT snapshot_id, parent_id, unix_millis(committed_at) AS ms, operation, summary "
            f"FROM {ident}.snapshots ORDER BY committed_at, snapshot_id").collect():
        summary = dict(r.summary or {})
        offsets = parse_offsets(summary[OFFSETS_PROPERTY]) if OFFSETS_PROPERTY in summary else None
        out.append(Snap(r.snapshot_id, r.parent_id, r.ms, r.operation, offsets))
    return out


def spark_manifests(spark: Any, ident: str) -> list[Any]:
    """The current snapshot's manifests as Spark's `manifests` metadata table lists them."""
    return spark.sql(
        f"SELECT content, partition_spec_id, deleted_data_files_count, deleted_delete_files_count "
        f"FROM {ident}.manifests").collect()


def describe(snaps: list[Snap], marked: set[int] = frozenset()) -> str:
    """The snapshots one a line, `>` before those in `marked`, for failure messages."""
    return "\n" + "\n".join(f"  {'>' if s.id in marked else ' '} {s.id} parent {s.parent} at {s.ms} "
                             f"{s.op} offsets {s.offsets}" for s in snaps)


def as_of_time(snaps: list[Snap], ms: int) -> Snap:
    """The snapshot TIMESTAMP AS OF `ms` reads: the last one committed at or before `ms`."""
    return [s for s in snaps if s.ms <= ms][-1]


def expect_rows(got: list[tuple], want: Rows, what: str) -> None:
    ids = [r[0] for r in got]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"{what}: Spark returned ids {dupes} more than once"
    got_map = {r[0]: r for r in got}
    if got_map != want:
        missing = sorted(set(want) - set(got_map))
        extra = sorted(set(got_map) - set(want))
        changed = [(k, got_map[k], want[k]) for k in sorted(set(want) & set(got_map))
                   if got_map[k] != want[k]]
        raise AssertionError(
            f"{what}: Spark differs from the model: {len(got_map)} rows, want {len(want)}; "
            f"missing ids {missing}; unexpected ids {extra}; changed (id, spark, model) "
            f"{changed[:5]}{' ...' if len(changed) > 5 else ''}")


def check_snapshot(spark: Any, table: Table, snap: Snap, want: Rows, want_by_time: Rows,
                   what: str, every_form: bool = True) -> int:
    """Reads `snap` by id (want `want`) and by its commit time (want `want_by_time`, the rows of
    the last snapshot committed by then); returns the number of reads."""
    ident = f"{CATALOG}.{table.name}"
    sid, at = snap.id, ts_literal(snap.ms)
    reads: list[tuple[str, Rows, Callable[[], Any]]] = [
        (f"VERSION AS OF {sid}", want,
         lambda: spark.sql(f"SELECT * FROM {ident} VERSION AS OF {sid}")),
        (f"TIMESTAMP AS OF '{at}'", want_by_time,
         lambda: spark.sql(f"SELECT * FROM {ident} TIMESTAMP AS OF '{at}'")),
    ]
    if every_form:
        reads += [
            (f"option versionAsOf={sid}", want,
             lambda: spark.read.format("iceberg").option("versionAsOf", str(sid)).load(ident)),
            (f"option timestampAsOf={at}", want_by_time,
             lambda: spark.read.option("timestampAsOf", at).table(ident)),
        ]
    for form, rows, read in reads:
        expect_rows(spark_rows(read(), table.names), rows, f"{what}, {form}")
    return len(reads)


def check_delete_files(spark: Any, table: Table) -> list[Any]:
    """The current snapshot's delete files: position deletes (content 1) only, each in the spec
    and partition of every data file it names, and naming only rows that exist. Returns them."""
    ident = f"{CATALOG}.{table.name}"
    # The metadata tables of an unpartitioned table have no `partition` column.
    partition = "partition" if table.partition_by else "NULL AS partition"
    deletes = spark.sql(
        f"SELECT content, file_path, record_count, spec_id, {partition} FROM {ident}.delete_files"
    ).collect()
    assert {d.content for d in deletes} <= {1}, (
        f"{table.name}: delete files of content {sorted({d.content for d in deletes})}; "
        "unitable writes position deletes (1) only")
    data = {r.file_path: r for r in spark.sql(
        f"SELECT file_path, spec_id, {partition}, record_count FROM {ident}.all_data_files").collect()}
    for d in deletes:
        entries = spark.read.parquet(d.file_path).collect()
        assert len(entries) == d.record_count, (d.file_path, len(entries), d.record_count)
        for target in sorted({e.file_path for e in entries}):
            assert target in data, f"delete file {d.file_path} names unknown data file {target}"
            f = data[target]
            assert (d.spec_id, d.partition) == (f.spec_id, f.partition), (
                f"{table.name}: delete file {d.file_path} has spec {d.spec_id} partition "
                f"{d.partition} but deletes from {target} of spec {f.spec_id} partition "
                f"{f.partition}")
            positions = [e.pos for e in entries if e.file_path == target]
            assert all(0 <= p < f.record_count for p in positions), (d.file_path, target, positions)
    return deletes


def log(message: str) -> None:
    print(f"[spark-read {time.strftime('%H:%M:%S')}] {message}", flush=True)


def check_history(writer: Writer, snaps: list[Snap], what: str) -> dict[int, Rows]:
    """Checks the snapshots against the writes; returns the model of each: the rows after every
    change below its changelog offsets."""
    ids = [s.id for s in snaps]
    reported = [sid for sid, _, _ in writer.reported]
    missing = [sid for sid in reported if sid not in ids]
    assert not missing, f"{what}: reported snapshots {missing} are not listed:{describe(snaps, set(missing))}"
    assert [i for i in ids if i in set(reported)] == reported, (
        f"{what}: the reported snapshots are listed out of order:{describe(snaps, set(reported))}")
    no_offsets = [s.id for s in snaps if s.offsets is None]
    assert not no_offsets, f"{what}: snapshots without {OFFSETS_PROPERTY}:{describe(snaps, set(no_offsets))}"
    for sid, offsets, rows in writer.reported:
        snap = snaps[ids.index(sid)]
        # The snapshot a write waited for holds it whole and no later write (none had started).
        assert snap.offsets == offsets, (
            f"{what}: write's snapshot {sid} reflects offsets {snap.offsets}, want {offsets}")
        assert writer.model_at(offsets) == rows, "the test's own bookkeeping is wrong"
    by_id = {s.id: s for s in snaps}
    for s in snaps:
        if s.op == "replace":  # a rewrite keeps its parent's anchor and rows
            assert s.parent in by_id and by_id[s.parent].offsets == s.offsets, (
                f"{what}: replace {s.id} changed the offsets of its parent:{describe(snaps, {s.id})}")
    return {s.id: writer.model_at(s.offsets) for s in snaps}


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("table", [PLAIN, PARTITIONED], ids=["unpartitioned", "partitioned"])
def test_spark_reads_every_snapshot_before_and_after_compaction(
        start_service: Callable[..., Service], spark_base: Any, tmp_path: Path, table: Table) -> None:
    # The bucket hash agrees with the vectors in docs/changelog-format.md.
    assert [murmur2(k) for k in (b'{"id":42}', b'{"id":0}', b'{"id":-1}')] == [
        486015037, -793890088, 1871856115]
    started = time.monotonic()
    # No background compaction: the test says when to compact. A 50 ms commit interval makes
    # several snapshots a second.
    service = start_service("--commit-interval", "50ms", "--compaction-interval", "0")
    service.cli(*table.create_args(), check=True)
    writer = Writer(service, table, tmp_path, seed=20240501 + len(table.partition_by))
    writer.upsert(list(range(40)), "init")
    for round_no in range(4):
        writer.random_round(f"r{round_no}")
    log(f"{table.name}: {writer.writes} writes in {time.monotonic() - started:.1f}s")

    data_dir = service.data_dir
    spark = open_catalog(spark_base, data_dir)
    ident = f"{CATALOG}.{table.name}"
    digest = catalog_digest(data_dir)

    # --- before compaction -------------------------------------------------------------------
    assert table.name.split(".")[0] in {r.namespace for r in spark.sql(
        f"SHOW NAMESPACES IN {CATALOG}").collect()}
    assert table.name.split(".")[1] in {r.tableName for r in spark.sql(
        f"SHOW TABLES IN {CATALOG}.{table.name.split('.')[0]}").collect()}
    expect_rows(spark_rows(spark.table(ident), table.names), writer.rows, "current snapshot")
    history = spark_snapshots(spark, ident)
    models = check_history(writer, history, "before compaction")
    extra = [s for s in history if s.id not in {sid for sid, _, _ in writer.reported}]
    assert all(s.op != "replace" for s in history), describe(history)
    reads = 0
    for snap in history:
        reads += check_snapshot(spark, table, snap, models[snap.id],
                                models[as_of_time(history, snap.ms).id],
                                f"{table.name} snapshot {snap.id} ({snap.op})")
    deletes = check_delete_files(spark, table)
    assert deletes, f"{table.name}: no position-delete files before compaction"
    partitions = {d.partition for d in deletes}
    if table.partition_by:
        assert len(partitions) >= 2, f"deletes in {len(partitions)} partition(s) only: {partitions}"
    log(f"{table.name}: {len(history)} snapshots ({len(extra)} holding part of a write), {reads} "
        f"reads equal the model; {len(deletes)} position-delete files "
        f"({sum(d.record_count for d in deletes)} deletes) in {len(partitions)} partitions")
    manifests_before = spark_manifests(spark, ident)
    assert catalog_digest(data_dir) == digest, "catalog.db changed while only Spark read it"

    # --- compaction, then one more round against the compacted files --------------------------
    out = service.cli("compact", table.name, check=True).stdout
    assert f"compacted {table.name}" in out, out
    compacted = spark_snapshots(spark, ident)
    replaces = [s for s in compacted if s.id not in models]
    assert replaces and all(s.op == "replace" for s in replaces), (
        f"`unitable compact` should add replace snapshots:\n{out}{describe(compacted)}")
    # The run ended with a manifest merge: fewer manifests, at most one per content type and
    # partition spec, no DELETED entries, and the same rows.
    merged = spark_manifests(spark, ident)
    groups = [(m.content, m.partition_spec_id) for m in merged]
    assert len(merged) < len(manifests_before), (
        f"{len(merged)} manifests after compaction, {len(manifests_before)} before:\n{out}")
    assert len(groups) == len(set(groups)), f"more than one manifest per content and spec: {groups}"
    assert all(m.deleted_data_files_count == 0 and m.deleted_delete_files_count == 0
               for m in merged), merged
    expect_rows(spark_rows(spark.table(ident), table.names), writer.rows,
                "current snapshot after compaction and the manifest merge")
    log(f"{table.name}: manifests {len(manifests_before)} -> {len(merged)} after compaction")
    remaining = check_delete_files(spark, table)
    log(f"{table.name}: {out.strip().splitlines()[-1]}; delete files left: {len(remaining)}")
    writer.random_round("after")

    digest = catalog_digest(data_dir)
    expect_rows(spark_rows(spark.table(ident), table.names), writer.rows,
                "current snapshot after compaction")
    final = spark_snapshots(spark, ident)
    expired = [s.id for s in history if s.id not in {f.id for f in final}]
    assert not expired, f"snapshots {expired} expired though younger than the retention (1 h)"
    models = check_history(writer, final, "after compaction")
    for snap in final:
        new = snap.id not in {h.id for h in history}
        reads += check_snapshot(spark, table, snap, models[snap.id],
                                models[as_of_time(final, snap.ms).id],
                                f"{table.name} snapshot {snap.id} ({snap.op}) after compaction",
                                every_form=new)
    check_delete_files(spark, table)
    assert catalog_digest(data_dir) == digest, "catalog.db changed while only Spark read it"
    partial = [s for s in final if s.op != "replace" and s.id not in {r for r, _, _ in writer.reported}]
    log(f"{table.name}: {len(final)} snapshots ({len(replaces)} replace, {len(partial)} holding part "
        f"of a write), {reads} reads equal the model, {time.monotonic() - started:.1f}s")


def test_spark_reads_a_table_whose_columns_changed(spark_base, start_service):
    """The workload of test_schema_evolution.py (renamed, widened, optional, moved and dropped
    columns, with old-schema records committed after the change): Spark reads the current
    snapshot as the model, by field id, with old data files' values widened, and reads every
    earlier snapshot; after compaction it still does."""
    import unitable
    from test_schema_evolution import NEW_COLUMNS, TABLE as EVOLVED, write_and_evolve

    service = start_service("--commit-interval", "1500ms")
    columns = ["id"] + [c for c in NEW_COLUMNS if c != "id"]
    with unitable.connect(service.grpc_url) as client:
        model = write_and_evolve(client, "json-v1")
        want = sorted(tuple(row[c] for c in columns) for row in model.values())
        spark = open_catalog(spark_base, service.data_dir)
        ident = f"{CATALOG}.{EVOLVED}"
        df = spark.table(ident)
        assert df.columns == NEW_COLUMNS
        assert spark_rows(df, columns) == want
        for snap in spark_snapshots(spark, ident):
            spark.sql(f"SELECT * FROM {ident} VERSION AS OF {snap.id}").collect()
        client.compact(EVOLVED)
        assert spark_rows(spark.table(ident), columns) == want
