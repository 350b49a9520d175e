"""A plain Kafka consumer (confluent-kafka) reads a topic written by unitable's KafkaChangelog on a
Kafka broker, and decodes every record using only docs/changelog-format.md.

The rows are stated here (pyarrow), written to an Arrow IPC file, and handed to
`changelog-producer`, which encodes them with unitable's record codec and appends them through
KafkaChangelog to the key's bucket. The decoder below is written from the doc, not the code."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from harness import consume_topic, murmur2

TABLE = "shop.orders"
TOPIC = "unitable.shop.orders"
BUCKETS = 4
COLUMNS = [
    ("region", "string!"), ("id", "int64!"), ("amount", "decimal(12,2)"), ("placed_at", "timestamptz"),
    ("local_ts", "timestamp"), ("day", "date"), ("paid", "bool"), ("score", "float64"),
    ("ratio", "float32"), ("qty", "int32"), ("raw", "binary"), ("note", "string"),
]
ARROW = pa.schema([
    pa.field("region", pa.string(), nullable=False), pa.field("id", pa.int64(), nullable=False),
    pa.field("amount", pa.decimal128(12, 2)), pa.field("placed_at", pa.timestamp("us", tz="UTC")),
    pa.field("local_ts", pa.timestamp("us")), pa.field("day", pa.date32()), pa.field("paid", pa.bool_()),
    pa.field("score", pa.float64()), pa.field("ratio", pa.float32()), pa.field("qty", pa.int32()),
    pa.field("raw", pa.binary()), pa.field("note", pa.string()),
])
UTC = dt.timezone.utc
ROWS = [
    dict(region="eu", id=42, amount=Decimal("12.30"), placed_at=dt.datetime(2024, 5, 1, 9, 30, tzinfo=UTC),
         local_ts=dt.datetime(2023, 11, 14, 22, 13, 20, 123456), day=dt.date(2024, 5, 1), paid=True,
         score=1e300, ratio=0.5, qty=-7, raw=bytes([0, 1, 254, 255]), note='gift "wrap" \u00e9\n'),
    dict(region="us", id=-9223372036854775808, amount=Decimal("-0.05"),
         placed_at=dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), local_ts=None,
         day=dt.date(1900, 1, 1), paid=False, score=float("-inf"), ratio=None, qty=2147483647, raw=b"",
         note=None),
    dict(region="eu", id=7, amount=None, placed_at=None, local_ts=None, day=None, paid=None, score=None,
         ratio=None, qty=None, raw=None, note="plain"),
]
UPDATE = [dict(ROWS[0], amount=Decimal("99.99"), note="updated")]
DELETE_KEYS = [dict(region="eu", id=7)]


def decode_value(column_type: str, v):
    """JSON value -> Python value, by the doc's type table."""
    if v is None:
        return None
    t = column_type.rstrip("!")
    if t.startswith("decimal"):
        return Decimal(v)
    if t in ("float64", "float32"):
        return float(v)  # numbers, or the strings "NaN" / "Infinity" / "-Infinity"
    if t == "binary":
        return base64.b64decode(v)
    if t == "date":
        return dt.date.fromisoformat(v)
    if t == "timestamp":
        return dt.datetime.strptime(v, "%Y-%m-%dT%H:%M:%S.%f")
    if t == "timestamptz":
        assert v.endswith("Z"), v
        return dt.datetime.strptime(v[:-1], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
    return v  # bool, int32, int64, string


def producer(unitable_bin: str) -> str:
    path = Path(unitable_bin).parent / "changelog-producer"
    if not path.exists():
        pytest.fail(f"{path} is missing; scripts/test builds it")
    return str(path)


def produce(bin_path: str, brokers: str, op: str, rows: list[dict], schema: pa.Schema, tmp: Path) -> list[dict]:
    ipc = tmp / f"{op}-{len(list(tmp.iterdir()))}.arrows"
    with pa.OSFile(str(ipc), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    args = [bin_path, brokers, TABLE, op, str(ipc), "--primary-key", "region,id", "--buckets", str(BUCKETS)]
    for name, ty in COLUMNS:
        args += ["--column", f"{name}:{ty}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_plain_kafka_consumer_decodes_the_topic_by_the_doc(unitable_bin, kafka, tmp_path):
    bin_path = producer(unitable_bin)
    acks = produce(bin_path, kafka.bootstrap, "insert", ROWS, ARROW, tmp_path)
    acks += produce(bin_path, kafka.bootstrap, "upsert", UPDATE, ARROW, tmp_path)
    key_schema = pa.schema([ARROW.field("region"), ARROW.field("id")])
    acks += produce(bin_path, kafka.bootstrap, "delete", DELETE_KEYS, key_schema, tmp_path)
    assert len(acks) == 5

    records = consume_topic(kafka.bootstrap, TOPIC, BUCKETS, "outside-reader")
    assert len(records) == 5

    types = dict(COLUMNS)
    by_key: dict[tuple, list] = {}
    for msg in records:
        headers = {k: v.decode() for k, v in (msg.headers() or [])}
        assert headers["unitable.schema-id"] == "0"
        assert headers["unitable.table-uuid"]
        key = json.loads(msg.key())
        assert list(key) == ["region", "id"], "key columns in primary-key order"
        assert msg.key() == json.dumps(key, separators=(",", ":"), ensure_ascii=False).encode()
        assert msg.partition() == (murmur2(msg.key()) & 0x7FFFFFFF) % BUCKETS, "partition = murmur2(key)"
        if headers["unitable.op"] == "delete":
            assert msg.value() is None, "a delete is a tombstone"
            row = None
        else:
            raw = json.loads(msg.value())
            assert list(raw) == [name for name, _ in COLUMNS], "value has every column in schema order"
            row = {name: decode_value(types[name], raw[name]) for name, _ in COLUMNS}
        by_key.setdefault((key["region"], key["id"]), []).append((msg.offset(), headers["unitable.op"], row))

    # Per-key order: each key's changes are in one partition, in the order they were written.
    expected = {
        ("eu", 42): [("insert", ROWS[0]), ("upsert", UPDATE[0])],
        ("us", -9223372036854775808): [("insert", ROWS[1])],
        ("eu", 7): [("insert", ROWS[2]), ("delete", None)],
    }
    assert set(by_key) == set(expected)
    for key, changes in expected.items():
        got = sorted(by_key[key], key=lambda c: c[0])
        assert [(op, row) for _, op, row in got] == changes, key
