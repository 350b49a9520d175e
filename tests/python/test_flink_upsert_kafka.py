"""A real Flink SQL job reads a unitable changelog topic with the `upsert-kafka` connector and the
`json` format, configured from docs/changelog-format.md alone, and materializes exactly the rows
that a model of the writes holds: latest values per key, deleted keys absent.

`unitable serve --kafka-brokers` takes several rounds of random upserts, inserts and deletes
through the CLI (every column type, a composite key with awkward strings, a column added halfway).
The Flink table's column types come from the doc's Types table and its WITH options from the doc's
Flink SQL example (only topic, brokers and group id are ours, plus `scan.bounded.mode`, so that the
streaming job stops at the end of the topic: batch mode rejects upsert sources). The job runs
PyFlink on a local mini-cluster (parallelism 1, small heap) in a subprocess (this file, run as a
script), collects the changelog of `SELECT ... FROM src` and the test applies it. The same
job reads the `headers` and `timestamp` metadata (op, schema id and table uuid headers; CreateTime
within the write) and, through a narrower table on the same topic, checks that unknown members are
ignored; records from before the added column lack its member and must read as null.

Needs, besides UNITABLE_BIN and KAFKA_HOME:
  FLINK_CONNECTOR_JAR  flink-sql-connector-kafka jar matching the PyFlink version
                       (scripts/lib/flink-deps.sh: fetch_flink_jars CACHE_DIR prints its path)
  pyflink importable   apache-flink from tests/python/requirements-flink.txt, installed with
                       --no-deps into the test venv (install_flink_python in flink-deps.sh)
  JAVA_HOME or java    a JDK 11/17/21 for Flink (optional JAVA_HOME; else `java` on PATH)
  FLINK_JOB_TIMEOUT    optional, seconds for the Flink job (default 240)
  FLINK_JVM_ARGS       optional, the job JVM's options (default -Xmx320m, serial GC, C1 only)

Values leave Flink as SQL strings (CAST ... AS STRING) wherever PyFlink's own Python conversion
of collected rows is lossy or breaks (TIMESTAMP to milliseconds, NaN/Infinity, year 0), so that
what is compared is what Flink's json format decoded.

The test runs once per changelog format: for `avro-v1` the table is created with that format and
the job declares the doc's avro-v1 example (value format `avro-confluent` reading each value's
schema from the service's registry endpoint, timestamps as BIGINT microseconds), and also needs
the flink-sql-avro-confluent-registry jar beside FLINK_CONNECTOR_JAR (fetch_flink_jars puts it
there).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "changelog-format.md"
NS, NAME = "flink", "orders"
TABLE = f"{NS}.{NAME}"
TOPIC = f"unitable.{NS}.{NAME}"
BUCKETS = 3
KEY = ["region", "id"]
# (name, unitable type, not null); `tag` is added after ROUNDS_BEFORE_ADD rounds.
COLUMNS = [
    ("region", "string", True), ("id", "int64", True), ("status", "string", False),
    ("amount", "decimal(12,2)", False), ("placed_at", "timestamptz", False), ("paid", "bool", False),
    ("note", "string", False), ("qty", "int32", False), ("score", "float64", False),
    ("ratio", "float32", False), ("day", "date", False), ("local_ts", "timestamp", False),
    ("raw", "binary", False),
]
ADDED = ("tag", "string", False)
ALL_COLUMNS = COLUMNS + [ADDED]
ROUNDS = 6
ROUNDS_BEFORE_ADD = 3
UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
REGIONS = ["eu", "us", "日本", 'q"uo\\te', "tab\there\u0001"]
IDS = list(range(-4, 24)) + [-(2 ** 63), 2 ** 63 - 1]


# --- what the doc says ------------------------------------------------------------------------

def doc_flink_types() -> dict[str, str]:
    """unitable column type -> Flink SQL type, from the doc's Types table (last column)."""
    text = DOC.read_text()
    section = text.split("\n## Types\n", 1)[1].split("\n## ", 1)[0]
    types = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[4].startswith("`"):
            types[cells[0].strip("`")] = cells[4].strip("`")
    assert {"bool", "int64", "decimal(P,S)", "timestamptz"} <= set(types), types
    return types


def doc_flink_options(example: int = 0) -> dict[str, str]:
    """The WITH options of the doc's `upsert-kafka` examples: 0 for json-v1, 1 for avro-v1."""
    text = DOC.read_text()
    section = text.split("\n## Reading a topic with Flink SQL\n", 1)[1].split("\n## ", 1)[0]
    sql = section.split("```sql\n")[1 + example].split("```", 1)[0]
    options = dict(re.findall(r"'([^']+)'\s*=\s*'([^']*)'", sql.split(" WITH ", 1)[1]))
    assert options.get("connector") == "upsert-kafka", options
    return options


def flink_type(types: dict[str, str], column_type: str) -> str:
    m = re.fullmatch(r"decimal\((\d+),(\d+)\)", column_type)
    if m:
        return types["decimal(P,S)"].replace("P", m[1]).replace("S", m[2])
    return types[column_type]


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def create_table(name: str, columns, types, options: dict[str, str], metadata: bool) -> str:
    cols = [f"{quote(c)} {flink_type(types, t)}{' NOT NULL' if nn else ''}" for c, t, nn in columns]
    if metadata:
        cols += ["`hdr` MAP<STRING, BYTES> METADATA FROM 'headers' VIRTUAL",
                 "`ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL"]
    cols.append(f"PRIMARY KEY ({', '.join(quote(k) for k in KEY)}) NOT ENFORCED")
    with_ = ",\n  ".join(f"'{k}' = '{v}'" for k, v in options.items())
    return f"CREATE TABLE {quote(name)} (\n  " + ",\n  ".join(cols) + f"\n) WITH (\n  {with_}\n)"


def select_expr(name: str, column_type: str) -> str:
    """Column as it leaves Flink: as is where PyFlink converts it exactly, else as SQL text."""
    if column_type in ("string", "int64", "int32", "bool", "binary"):
        return quote(name)
    return f"CAST({quote(name)} AS STRING)"


# --- Flink's text back to Python values, and values made comparable ----------------------------

def from_flink(column_type: str, v):
    if v is None:
        return None
    if column_type.startswith("decimal"):
        return Decimal(v)
    if column_type == "timestamptz":  # CAST(TIMESTAMP_LTZ AS STRING) in table.local-time-zone UTC
        return dt.datetime.strptime(v, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    if column_type == "timestamp":
        return dt.datetime.strptime(v, "%Y-%m-%d %H:%M:%S.%f")
    if column_type == "date":
        return dt.date.fromisoformat(v)
    if column_type == "float64":
        return float(v)  # Java's Double.toString: 1.0E300, NaN, -Infinity, 4.9E-324
    if column_type == "float32":
        return f32(float(v))
    if column_type == "binary":
        return bytes(v)
    return v


def from_micros(column_type: str, v):
    """A timestamp column read as BIGINT microseconds (avro-v1 in Flink); else from_flink."""
    if v is None or column_type not in ("timestamp", "timestamptz"):
        return from_flink(column_type, v)
    at = EPOCH + dt.timedelta(microseconds=int(v))
    return at if column_type == "timestamptz" else at.replace(tzinfo=None)


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def comparable(column_type: str, v):
    """Floats by bit pattern (-0.0 differs from 0.0, NaN equals NaN); decimals by value and scale."""
    if v is None:
        return None
    if column_type in ("float64", "float32"):
        return "NaN" if math.isnan(v) else struct.pack(">d", v).hex()
    if column_type.startswith("decimal"):
        return str(v)
    return v


# --- random rows, as JSON lines for `unitable write` and as model values ------------------------

def rand_string(rng: random.Random) -> str:
    pieces = ["a", "Z", " ", '"', "\\", "/", "\n", "\t", "\b", "\f", "\r", "\u0000", "\u001f", "\u007f",
              "é", "日本", "\u2028", "🙂", "x y", "{}", "[1]", "null"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))


def rand_datetime(rng: random.Random) -> dt.datetime:
    if rng.random() < 0.15:
        return rng.choice([dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
                           dt.datetime(1582, 10, 4, 23, 59, 59, 999999), dt.datetime(1970, 1, 1),
                           dt.datetime(1969, 12, 31, 23, 59, 59, 999999)])
    base = dt.datetime(1900, 1, 1)
    return base + dt.timedelta(microseconds=rng.randrange(200 * 366 * 86400 * 10 ** 6))


def rand_float(rng: random.Random) -> float:
    if rng.random() < 0.3:
        return rng.choice([math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308,
                           -2.2250738585072014e-308, 0.1, 1e300])
    return rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30)


def rand_float32(rng: random.Random) -> float:
    """A float32 value, as the Python float that holds it exactly."""
    if rng.random() < 0.3:
        return f32(rng.choice([math.nan, math.inf, -math.inf, -0.0, 0.0, 1e-45, 3.4028234663852886e38,
                               -1.1754943508222875e-38, 0.1, 16777217.0]))
    return f32(rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30))


def json_float(x: float):
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def maybe(rng: random.Random, make, p_null: float = 0.2):
    return None if rng.random() < p_null else make()


def rand_row(rng: random.Random, key: tuple, with_tag: bool) -> tuple[dict, dict]:
    """(JSON object for `unitable write`, the row the model expects)."""
    region, id_ = key
    row: dict = {"region": region, "id": id_}
    row["status"] = maybe(rng, lambda: rand_string(rng))
    row["amount"] = maybe(rng, lambda: Decimal(rng.choice(
        [rng.randint(-10 ** 12 + 1, 10 ** 12 - 1), rng.randint(-999, 999), 0])).scaleb(-2))
    row["placed_at"] = maybe(rng, lambda: rand_datetime(rng).replace(tzinfo=UTC))
    row["paid"] = maybe(rng, lambda: rng.random() < 0.5)
    row["note"] = maybe(rng, lambda: rand_string(rng), p_null=0.7)
    row["qty"] = maybe(rng, lambda: rng.choice([-(2 ** 31), 2 ** 31 - 1, rng.randint(-1000, 1000)]))
    row["score"] = maybe(rng, lambda: rand_float(rng))
    row["ratio"] = maybe(rng, lambda: rand_float32(rng))
    row["day"] = maybe(rng, lambda: dt.date.fromordinal(rng.randint(1, dt.date(9999, 12, 31).toordinal())))
    row["local_ts"] = maybe(rng, lambda: rand_datetime(rng))
    row["raw"] = maybe(rng, lambda: rng.randbytes(rng.randint(0, 12)))
    if with_tag:
        row["tag"] = maybe(rng, lambda: rand_string(rng), p_null=0.4)

    line = dict(row)
    if line["amount"] is not None:
        line["amount"] = str(line["amount"])
    if line["placed_at"] is not None:
        ts = row["placed_at"]
        if 1900 <= ts.year <= 2100 and rng.random() < 0.3:  # an offset; unitable writes it as UTC
            line["placed_at"] = ts.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))).isoformat()
        else:
            line["placed_at"] = ts.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    if line["day"] is not None:
        line["day"] = row["day"].isoformat()
    if line["local_ts"] is not None:
        line["local_ts"] = row["local_ts"].isoformat(timespec="microseconds")
    for name in ("score", "ratio"):
        if line[name] is not None:
            line[name] = json_float(line[name])
    if line["raw"] is not None:
        line["raw"] = base64.b64encode(line["raw"]).decode()
    if not with_tag:
        row["tag"] = None  # records written before the column existed lack the member
    return line, row


# --- the Flink job: this file run as a script ---------------------------------------------------

def run_flink_job(spec: dict, workdir: Path) -> dict[str, list[tuple[str, list]]]:
    """Runs the job in a subprocess; returns each query's changelog as (row kind, values)."""
    spec_path, out_path = workdir / "flink-spec.json", workdir / "flink-out.jsonl"
    spec = {**spec, "out": str(out_path)}
    spec_path.write_text(json.dumps(spec, indent=2))
    log_dir = workdir / "flink-log"
    log_dir.mkdir(exist_ok=True)
    env = {
        **os.environ,
        # Only Python UDFs need PyFlink's Beam-based loopback worker; this job has none, and the
        # test venv has no apache-beam (its pins conflict with the interop tests' grpcio/pyarrow).
        "_python_worker_execution_mode": "process",
        # The job's JVM runs the local mini-cluster in-process, so its heap is the cluster's
        # memory (taskmanager.memory.* do not apply); C1 only starts faster for a short job.
        # About 0.5 GB resident.
        "JVM_ARGS": os.environ.get("FLINK_JVM_ARGS",
                                   "-Xmx320m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"),
        "FLINK_LOG_DIR": str(log_dir),
    }
    timeout = float(os.environ.get("FLINK_JOB_TIMEOUT", "240"))
    stdout = workdir / "flink-job.out"
    with stdout.open("w") as out:
        proc = subprocess.Popen([sys.executable, __file__, str(spec_path)], cwd=workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            try:  # the gateway JVM is in the job's process group
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def logs() -> str:
        parts = [f"--- {stdout}\n" + "\n".join(stdout.read_text(errors="replace").splitlines()[-60:])]
        for f in sorted(log_dir.glob("*.log")):
            lines = [l for l in f.read_text(errors="replace").splitlines() if "ERROR" in l or "Exception" in l]
            parts.append(f"--- {f} (ERROR/Exception lines)\n" + "\n".join(lines[-30:]))
        return "\n".join(parts)

    if code != 0:
        what = f"timed out after {timeout}s" if code is None else f"exited with {code}"
        raise AssertionError(f"the Flink job {what}\n{logs()}")
    results: dict[str, list[tuple[str, list]]] = {}
    for line in out_path.read_text().splitlines():
        rec = json.loads(line)
        values = [base64.b64decode(v["b64"]) if isinstance(v, dict) else v for v in rec["row"]]
        results.setdefault(rec["query"], []).append((rec["kind"], values))
    return results


def flink_job_main(spec_path: str) -> None:
    from pyflink.table import EnvironmentSettings, TableEnvironment

    spec = json.loads(Path(spec_path).read_text())
    t0 = time.monotonic()
    # Batch mode rejects upsert sources ("only possible for INSERT-only table sources"): a streaming
    # job over bounded sources ('scan.bounded.mode') reads to the end of the topic and finishes.
    tenv = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = tenv.get_config()
    for k, v in spec["config"].items():
        config.set(k, v)
    for statement in spec["statements"]:
        tenv.execute_sql(statement)
    with open(spec["out"], "w") as out:
        for name, query in spec["queries"].items():
            with tenv.execute_sql(query).collect() as rows:
                for row in rows:
                    values = [{"b64": base64.b64encode(bytes(v)).decode()}
                              if isinstance(v, (bytes, bytearray)) else v for v in row]
                    out.write(json.dumps({"query": name, "kind": str(row.get_row_kind()),
                                          "row": values}) + "\n")
            print(f"query {name} done at {time.monotonic() - t0:.1f}s", flush=True)


def materialize(changelog: list[tuple[str, list]], key_len: int) -> dict[tuple, list]:
    """Applies a Flink changelog (+I, -U, +U, -D) to an empty table."""
    state: dict[tuple, list] = {}
    for kind, values in changelog:
        key = tuple(values[:key_len])
        if kind in ("+I", "+U"):
            assert kind == "+U" or key not in state, f"+I for a present key {key}"
            state[key] = values
        elif kind in ("-U", "-D"):
            assert key in state, f"{kind} for an absent key {key}"
            del state[key]
        else:
            raise AssertionError(f"unknown row kind {kind}")
    return state


# --- the test -----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("changelog_format", ["json-v1", "avro-v1"])
def test_flink_upsert_kafka_materializes_the_model(start_service, kafka, tmp_path: Path,
                                                  changelog_format: str):
    jar = os.environ.get("FLINK_CONNECTOR_JAR", "")
    if not jar or not os.path.isfile(jar):
        pytest.fail(f"FLINK_CONNECTOR_JAR={jar!r} is not a file; scripts/lib/flink-deps.sh "
                    "fetch_flink_jars CACHE_DIR prints the jar to export")
    avro = changelog_format == "avro-v1"
    jars = [jar]
    if avro:
        # avro-v1: Flink's avro-confluent format, beside the connector (fetch_flink_jars).
        found = sorted(Path(jar).parent.glob("flink-sql-avro-confluent-registry-*.jar"))
        if not found:
            pytest.fail(f"no flink-sql-avro-confluent-registry jar beside {jar}; "
                        "scripts/lib/flink-deps.sh fetch_flink_jars fetches it")
        jars.append(str(found[0]))
    try:
        import pyflink  # noqa: F401
    except ImportError:
        pytest.fail("pyflink is not importable; install tests/python/requirements-flink.txt "
                    "with --no-deps (install_flink_python in scripts/lib/flink-deps.sh)")
    types, doc_options = doc_flink_types(), doc_flink_options(1 if avro else 0)
    if avro:
        # The doc's avro-v1 note: Flink 2.2's avro-confluent has only millisecond timestamps, so
        # timestamp columns are declared BIGINT (microseconds since the epoch).
        types = {**types, "timestamptz": "BIGINT", "timestamp": "BIGINT"}

    service = start_service("--kafka-brokers", kafka.bootstrap)
    service.cli("table", "create", TABLE, *[a for c, t, nn in COLUMNS
                                            for a in ("--column", f"{c}:{t}{'!' if nn else ''}")],
                "--primary-key", ",".join(KEY), "--buckets", str(BUCKETS),
                "--changelog-format", changelog_format, check=True)
    uuid = re.search(r"^uuid\s+(\S+)$", service.cli("table", "describe", TABLE, check=True).stdout,
                     re.M)[1]

    # key -> (row, op header, schema id header, earliest and latest ms of the write)
    model: dict[tuple, tuple[dict, str, str, int, int]] = {}
    rng = random.Random(20240501)
    all_keys = [(r, i) for r in REGIONS for i in IDS]
    writes = deletes = 0
    for round_ in range(ROUNDS):
        if round_ == ROUNDS_BEFORE_ADD:
            service.cli("table", "add-column", TABLE, "--column", f"{ADDED[0]}:{ADDED[1]}", check=True)
        with_tag = round_ >= ROUNDS_BEFORE_ADD
        schema_id = "1" if with_tag else "0"
        op = "insert" if round_ == 1 else "upsert"  # on a keyed table, insert = upsert
        keys = rng.sample(all_keys, 45)
        lines, rows = zip(*(rand_row(rng, k, with_tag) for k in keys))
        path = tmp_path / f"round{round_}-{op}.jsonl"
        path.write_text("".join(json.dumps(line, ensure_ascii=rng.random() < 0.5) + "\n" for line in lines))
        t0 = int(time.time() * 1000)
        service.cli("write", TABLE, "--file", str(path), "--op", op, check=True)
        t1 = int(time.time() * 1000)
        for k, row in zip(keys, rows):
            model[k] = (row, op, schema_id, t0, t1)
        writes += len(keys)

        live = sorted(model)
        gone = rng.sample(live, 12) + [k for k in rng.sample(all_keys, 3) if k not in model]
        path = tmp_path / f"round{round_}-delete.jsonl"
        path.write_text("".join(json.dumps({"region": r, "id": i}) + "\n" for r, i in gone))
        service.cli("write", TABLE, "--file", str(path), "--op", "delete", check=True)
        for k in gone:
            model.pop(k, None)
        deletes += len(gone)
    assert 20 < len(model) < len(all_keys), len(model)

    options = {**doc_options, "topic": TOPIC, "properties.bootstrap.servers": kafka.bootstrap,
               "properties.group.id": "flink-upsert-test", "scan.bounded.mode": "latest-offset"}
    if avro:
        assert options["value.format"] == "avro-confluent", options
        options["value.avro-confluent.url"] = f"http://{service.http_addr}"
    narrow_columns = COLUMNS[:3]  # an older reader: unknown members must be ignored
    main_select = ", ".join([select_expr(c, t) for c, t, _ in ALL_COLUMNS] + [
        "CAST(`hdr`['unitable.op'] AS STRING)", "CAST(`hdr`['unitable.schema-id'] AS STRING)",
        "CAST(`hdr`['unitable.table-uuid'] AS STRING)", "CAST(`ts` AS STRING)"])
    spec = {
        "config": {
            "pipeline.jars": ";".join(Path(j).resolve().as_uri() for j in jars),
            "parallelism.default": "1",
            "table.exec.resource.default-parallelism": "1",
            "table.local-time-zone": "UTC",
        },
        "statements": [create_table("src", ALL_COLUMNS, types, options, metadata=True),
                       create_table("src_narrow", narrow_columns, types, options, metadata=False)],
        "queries": {
            "main": f"SELECT {main_select} FROM `src`",
            "narrow": "SELECT " + ", ".join(quote(c) for c, _, _ in narrow_columns) + " FROM `src_narrow`",
        },
    }
    started = time.monotonic()
    results = run_flink_job(spec, tmp_path)
    print(f"flink job: {time.monotonic() - started:.1f}s, {writes} upserts, {deletes} deletes, "
          f"{len(model)} rows, {len(results.get('main', []))} changelog rows")

    got = materialize(results.get("main", []), len(KEY))
    assert set(got) == set(model), (
        f"keys only in Flink: {sorted(set(got) - set(model))[:5]}; "
        f"only in the model: {sorted(set(model) - set(got))[:5]}")
    n = len(ALL_COLUMNS)
    for key, values in got.items():
        row, op, schema_id, t0, t1 = model[key]
        for (name, column_type, _), v in zip(ALL_COLUMNS, values[:n]):
            value = from_micros(column_type, v) if avro else from_flink(column_type, v)
            assert comparable(column_type, value) == \
                comparable(column_type, row[name]), (key, name, v, row[name])
        hdr_op, hdr_schema, hdr_uuid, ts = values[n:]
        assert (hdr_op, hdr_schema, hdr_uuid) == (op, schema_id, uuid), (key, values[n:])
        ms = int(dt.datetime.strptime(ts, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp() * 1000)
        assert t0 - 1000 <= ms <= t1 + 1000, f"record timestamp {ts} outside the write [{t0}, {t1}]"

    narrow = materialize(results.get("narrow", []), len(KEY))
    assert {k: v[2] for k, v in narrow.items()} == {k: m[0]["status"] for k, m in model.items()}


if __name__ == "__main__":
    flink_job_main(sys.argv[1])
