"""A table with the `avro-v1` changelog format, judged by outside readers only.

unitable serves on an Apache Kafka broker; the SDK creates a table with `changelog_format="avro-v1"`,
writes upserts and deletes of every column type, adds a column and writes again. Then:

- confluent-kafka's own `AvroDeserializer`, pointed at the service's HTTP port as its schema
  registry, decodes every value (the Confluent framing and the registry endpoint are right);
- fastavro decodes every value with a schema this file derives from the Iceberg schema named in
  the record's `unitable.schema-id` header (via PyIceberg), by the rules in
  docs/changelog-format.md alone, and checks the framing's schema id by the doc's formula;
- a value produced here with fastavro (a foreign producer) is read back by unitable: PyIceberg
  sees it once a snapshot covers it;
- PyIceberg's scan of the latest snapshot equals the model of the writes.
"""

from __future__ import annotations

import io
import json
import time
from decimal import Decimal

import fastavro
import pyarrow as pa
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.types import (
    BinaryType, BooleanType, DateType, DecimalType, DoubleType, FloatType, IntegerType, LongType,
    StringType, TimestampType, TimestamptzType,
)

from harness import consume_topic, murmur2
from test_changelog_format import ARROW, ROWS
from test_changelog_format import COLUMNS as FORMAT_COLUMNS

try:
    import unitable
except ImportError as e:
    _MISSING: str | None = str(e)
else:
    _MISSING = None

TABLE = "avro.orders"
TOPIC = "unitable.avro.orders"
BUCKETS = 3
# The rows of test_changelog_format.py: every type, extremes and nulls.
COLUMNS = [f"{name}:{ty}" for name, ty in FORMAT_COLUMNS]
UPDATE = dict(ROWS[0], amount=Decimal("99.99"), note="updated")
DELETED = dict(region="eu", id=7)
# After `qty2:int64` is added.
LATER = dict(ROWS[2], id=8, note="later", qty2=5)
FOREIGN = dict(region="ap", id=500, amount=Decimal("1.50"), placed_at=None, local_ts=None, day=None,
               paid=True, score=None, ratio=None, qty=None, raw=None, note="from fastavro", qty2=None)


@pytest.fixture(autouse=True)
def _sdk_installed() -> None:
    if _MISSING is not None:
        pytest.fail(f"the unitable SDK is not installed ({_MISSING}); scripts/test installs it")


def avro_type(t) -> object:
    """docs/changelog-format.md, "avro-v1": the Avro type of an Iceberg type."""
    if isinstance(t, BooleanType):
        return "boolean"
    if isinstance(t, IntegerType):
        return "int"
    if isinstance(t, LongType):
        return "long"
    if isinstance(t, FloatType):
        return "float"
    if isinstance(t, DoubleType):
        return "double"
    if isinstance(t, DecimalType):
        return {"type": "bytes", "logicalType": "decimal", "precision": t.precision, "scale": t.scale}
    if isinstance(t, StringType):
        return "string"
    if isinstance(t, BinaryType):
        return "bytes"
    if isinstance(t, DateType):
        return {"type": "int", "logicalType": "date"}
    if isinstance(t, TimestamptzType):
        return {"type": "long", "logicalType": "timestamp-micros"}
    if isinstance(t, TimestampType):
        return {"type": "long", "logicalType": "local-timestamp-micros"}
    raise AssertionError(f"no Avro mapping for {t}")


def documented_schema(table: str, iceberg_schema) -> dict:
    """The value schema the doc says a table has, from its Iceberg schema."""
    namespace, name = table.split(".")
    fields = []
    for f in iceberg_schema.fields:
        field = {"name": f.name, "field-id": f.field_id}
        if f.required:
            field["type"] = avro_type(f.field_type)
        else:
            field["type"] = ["null", avro_type(f.field_type)]
            field["default"] = None
        fields.append(field)
    return {"type": "record", "name": name, "namespace": namespace, "fields": fields}


def key_of(row: dict) -> tuple:
    return (row["region"], row["id"])


def canonical_key(row: dict) -> bytes:
    return json.dumps({"region": row["region"], "id": row["id"]}, separators=(",", ":")).encode()


def same(got: dict, want: dict) -> bool:
    """Row equality with NaN-free floats compared exactly and missing columns as null."""
    return all(got.get(k) == want.get(k) for k in set(got) | set(want))


def test_avro_changelog_read_by_confluent_fastavro_and_pyiceberg(start_service, kafka):
    service = start_service("--kafka-brokers", kafka.bootstrap, "--commit-interval", "200ms")

    bad = service.cli("table", "create", "avro.bad", "--column", "id:int64!", "--changelog-format", "protobuf")
    assert bad.returncode != 0
    assert "unknown changelog format `protobuf`; use json-v1 or avro-v1" in bad.stderr, bad.stderr

    with unitable.connect(service.grpc_url) as client:
        info = client.tables.create(TABLE, COLUMNS, primary_key=["region", "id"], buckets=BUCKETS,
                                    changelog_format="avro-v1")
        assert info.changelog_format == "avro-v1"
        client.write(TABLE, pa.Table.from_pylist(ROWS, schema=ARROW), op="upsert")
        client.write(TABLE, pa.Table.from_pylist([UPDATE], schema=ARROW), op="upsert")
        client.delete(TABLE, [DELETED])
        client.tables.add_column(TABLE, "qty2:int64")
        client.write(TABLE, [LATER], op="upsert", wait="snapshot")

    history = [("upsert", r) for r in ROWS] + [("upsert", UPDATE), ("delete", DELETED), ("upsert", LATER)]
    model = {}
    for op, row in history:
        if op == "delete":
            model.pop(key_of(row), None)
        else:
            model[key_of(row)] = row

    catalog = SqlCatalog("unitable", uri=f"sqlite:///{service.data_dir}/catalog.db",
                         warehouse=f"file://{service.data_dir}/warehouse")
    table = catalog.load_table(TABLE)
    schemas = table.schemas()
    assert len(schemas) == 2, "one schema before and one after the added column"

    registry = SchemaRegistryClient({"url": f"http://{service.http_addr}"})
    deserializer = AvroDeserializer(registry)
    records = consume_topic(kafka.bootstrap, TOPIC, BUCKETS, "avro-reader")
    assert len(records) == len(history)
    seen: dict[tuple, list] = {}
    for msg in records:
        headers = {k: v.decode() for k, v in (msg.headers() or [])}
        assert msg.key() is not None
        key = json.loads(msg.key())
        # Keys are json-v1's canonical JSON, and pick the partition exactly as in json-v1.
        assert msg.key() == canonical_key(key)
        assert msg.partition() == (murmur2(msg.key()) & 0x7FFFFFFF) % BUCKETS
        if headers["unitable.op"] == "delete":
            assert msg.value() is None
            seen.setdefault(key_of(key), []).append(("delete", key))
            continue
        value = msg.value()
        assert value[0] == 0, "Confluent framing: magic byte 0"
        schema_id = int(headers["unitable.schema-id"])
        frame_id = int.from_bytes(value[1:5], "big")
        want_id = murmur2(f"{info.table_uuid}/{schema_id}".encode()) & 0x7FFFFFFF or 1
        assert frame_id == want_id, (frame_id, want_id)

        # fastavro, from the doc alone.
        schema = documented_schema(TABLE, schemas[schema_id])
        body = io.BytesIO(value[5:])
        by_doc = fastavro.schemaless_reader(body, fastavro.parse_schema(schema), None)
        assert body.tell() == len(value) - 5, "the value holds exactly one record"

        # confluent-kafka's deserializer, schema from the service's registry endpoint.
        by_registry = deserializer(value, SerializationContext(TOPIC, MessageField.VALUE))
        assert by_registry == by_doc
        assert json.loads(registry.get_schema(frame_id).schema_str) == schema
        seen.setdefault(key_of(by_doc), []).append(("upsert", by_doc))

    # Per key, the changes in the order they were written.
    want: dict[tuple, list] = {}
    for op, row in history:
        want.setdefault(key_of(row), []).append((op, row))
    assert seen.keys() == want.keys()
    for k in want:
        assert len(seen[k]) == len(want[k]), k
        for (got_op, got), (want_op, row) in zip(seen[k], want[k]):
            assert got_op == want_op, k
            if got_op == "upsert":
                assert same(got, row), (got, row)

    # A schema id nobody has is the registry's 404.
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    with pytest.raises(SchemaRegistryError) as missing:
        registry.get_schema(1)
    assert missing.value.http_status_code == 404

    # Subjects (topic name strategy): the table's schemas as versions 1 and 2.
    subject = f"{TOPIC}-value"
    assert registry.get_subjects() == [subject]
    assert registry.get_versions(subject) == [1, 2]
    for version, schema_id in ((1, 0), (2, 1)):
        got = registry.get_version(subject, version)
        assert got.version == version
        assert got.schema_id == (murmur2(f"{info.table_uuid}/{schema_id}".encode()) & 0x7FFFFFFF or 1)
        assert json.loads(got.schema.schema_str) == documented_schema(TABLE, schemas[schema_id])
    latest = registry.get_latest_version(subject)
    assert (latest.version, latest.schema_id) == (2, registry.get_version(subject, 2).schema_id)
    with pytest.raises(SchemaRegistryError) as missing:
        registry.get_versions("unitable.avro.nope-value")
    assert missing.value.http_status_code == 404 and missing.value.error_code == 40401

    # A foreign producer: fastavro-encoded value, framed by hand, under the current schema.
    current = table.schema()
    frame = b"\x00" + (murmur2(f"{info.table_uuid}/{current.schema_id}".encode()) & 0x7FFFFFFF or 1) \
        .to_bytes(4, "big")
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(documented_schema(TABLE, current)), FOREIGN)
    key = canonical_key(FOREIGN)
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(TOPIC, key=key, value=frame + out.getvalue(),
                     partition=(murmur2(key) & 0x7FFFFFFF) % BUCKETS,
                     headers=[("unitable.op", b"upsert")])
    assert producer.flush(10) == 0
    model[key_of(FOREIGN)] = FOREIGN

    # PyIceberg: the latest snapshot equals the model once it covers the foreign record.
    deadline = time.monotonic() + 30
    while True:
        rows = catalog.load_table(TABLE).scan().to_arrow().to_pylist()
        if len(rows) == len(model) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    got = {key_of(r): r for r in rows}
    assert got.keys() == model.keys()
    for k, row in model.items():
        assert same(got[k], row), (got[k], row)


def test_schema_registry_endpoint_requires_a_token_and_a_grant(start_service, tmp_path):
    """On a server requiring tokens: no credentials is 401; a token as the basic-auth password
    (what registry clients send) or as a bearer token reads the schema; a user without a grant
    on the table does not see its schema (404, as for a missing id)."""
    token_file = tmp_path / "admin.token"
    service = start_service("--bootstrap-admin-token-file", str(token_file), anonymous=False)
    admin_token = token_file.read_text().strip()
    with unitable.connect(service.grpc_url, token=admin_token) as admin:
        info = admin.tables.create("avro.secret", ["id:int64!", "v:string"], primary_key=["id"],
                                   changelog_format="avro-v1")
        stranger = admin.access.create_token("sam", "registry test").token
    schema_id = murmur2(f"{info.table_uuid}/{info.schema_id}".encode()) & 0x7FFFFFFF or 1
    url = f"http://{service.http_addr}"

    import urllib.error
    import urllib.request

    def get(path: str, auth: str | None) -> tuple[int, dict]:
        req = urllib.request.Request(url + path, headers={"Authorization": auth} if auth else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, body = get(f"/schemas/ids/{schema_id}", None)
    assert status == 401 and body["error_code"] == 40101, body
    status, body = get(f"/schemas/ids/{schema_id}", f"Bearer {admin_token}")
    assert status == 200, body
    want = {"type": "record", "name": "secret", "namespace": "avro", "fields": [
        {"name": "id", "type": "long", "field-id": 1},
        {"name": "v", "type": ["null", "string"], "default": None, "field-id": 2}]}
    assert json.loads(body["schema"]) == want
    status, body = get(f"/schemas/ids/{schema_id}/schema", f"Bearer {admin_token}")
    assert status == 200 and body == want
    status, body = get(f"/schemas/ids/{schema_id}", f"Bearer {stranger}")
    assert status == 404 and body["error_code"] == 40403, body

    registry = SchemaRegistryClient({"url": url, "basic.auth.user.info": f"admin:{admin_token}"})
    assert json.loads(registry.get_schema(schema_id).schema_str) == want
    assert registry.get_subjects() == ["unitable.avro.secret-value"]
    status, body = get("/subjects", f"Bearer {stranger}")
    assert status == 200 and body == [], body
    status, body = get("/subjects/unitable.avro.secret-value/versions", f"Bearer {stranger}")
    assert status == 404 and body["error_code"] == 40401, body


def test_a_table_switches_its_changelog_format(start_service, kafka):
    """`table alter --set unitable.changelog.format=...` switches the format of the records
    written from then on; the topic then holds both, and every reader decodes both."""
    service = start_service("--kafka-brokers", kafka.bootstrap, "--commit-interval", "200ms")
    table, topic = "avro.switch", "unitable.avro.switch"
    with unitable.connect(service.grpc_url) as client:
        info = client.tables.create(table, ["id:int64!", "v:string"], primary_key=["id"], buckets=1)
        assert info.changelog_format == "json-v1"
        client.write(table, [{"id": 1, "v": "json"}, {"id": 2, "v": "json"}], op="upsert")
        bad = service.cli("table", "alter", table, "--set", "unitable.changelog.format=xml")
        assert bad.returncode != 0 and "unknown changelog format `xml`" in bad.stderr, bad.stderr
        service.cli("table", "alter", table, "--set", "unitable.changelog.format=avro-v1", check=True)
        assert client.tables.describe(table).changelog_format == "avro-v1"
        client.write(table, [{"id": 2, "v": "avro"}, {"id": 3, "v": "avro"}], op="upsert")
        client.tables.alter(table, set={"unitable.changelog.format": "json-v1"})
        client.write(table, [{"id": 4, "v": "json again"}], op="upsert", wait="snapshot")
        model = {1: "json", 2: "avro", 3: "avro", 4: "json again"}
        assert {r["id"]: r["v"] for r in client.scan(table, mode="fresh").to_pylist()} == model
        with client.subscribe(table, start="earliest", follow=False) as sub:
            replayed = [(r["id"], r["v"]) for change in sub for r in change.batch.to_pylist()]
        assert replayed == [(1, "json"), (2, "json"), (2, "avro"), (3, "avro"), (4, "json again")]

    deserializer = AvroDeserializer(SchemaRegistryClient({"url": f"http://{service.http_addr}"}))
    seen = []
    for msg in consume_topic(kafka.bootstrap, topic, 1, "switch-reader"):
        value = msg.value()
        if value[0] == 0:
            row = deserializer(value, SerializationContext(topic, MessageField.VALUE))
            seen.append(("avro", row["id"], row["v"]))
        else:
            row = json.loads(value)
            seen.append(("json", row["id"], row["v"]))
    assert seen == [("json", 1, "json"), ("json", 2, "json"), ("avro", 2, "avro"), ("avro", 3, "avro"),
                    ("json", 4, "json again")]
    catalog = SqlCatalog("unitable", uri=f"sqlite:///{service.data_dir}/catalog.db",
                         warehouse=f"file://{service.data_dir}/warehouse")
    rows = catalog.load_table(table).scan().to_arrow().to_pylist()
    assert {r["id"]: r["v"] for r in rows} == model
