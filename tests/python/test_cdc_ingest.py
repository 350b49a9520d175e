"""CDC ingest from a Debezium JSON topic on Apache Kafka, exactly once through crashes.

A generated Debezium stream (snapshot reads, inserts, updates, deletes with their tombstones,
with and without the Connect schema envelope, every Connect encoding the ingester knows, a
schema-change event and later events carrying a column the table lacks, and bad events) is
produced to a 3-partition topic by confluent-kafka. The table ingests it with
`unitable ingest start`, while the server is SIGKILLed and restarted between and during
production. At the end:

- PyIceberg's scan of the latest snapshot, a FRESH scan and LOOKUPs equal a model that applies
  the good events in source order per key;
- every good source event is in the table's changelog exactly once: the records of each
  ingest batch (request ids `ingest:<topic>:<p>:<first>-<last>:<run>`) are exactly the good
  events of that source range, and no two batches cover the same source offset;
- every bad event is in the dead-letter topic exactly once, naming its source partition,
  offset and field; good events of the same batches are not lost;
- after the last restart, a schema-change event and an unknown column are counted in the
  metrics, and `unitable ingest status` shows the source partitions caught up.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import random
import re
import threading
import time
from decimal import Decimal

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pyiceberg.catalog.sql import SqlCatalog

from harness import consume_topic, http_request

try:
    import unitable
except ImportError as e:
    _MISSING: str | None = str(e)
else:
    _MISSING = None

TABLE = "cdc.orders"
TOPIC = "unitable.cdc.orders"
DLQ = TOPIC + ".dlq"
SOURCE = "dbz.shop.orders"
SOURCE_PARTITIONS = 3
BUCKETS = 3
COLUMNS = ["id:int64", "name:string", "amount:decimal(12,2)", "day:date", "at:timestamp",
           "at_tz:timestamptz", "blob:binary", "qty:int32"]
EPOCH = dt.date(1970, 1, 1)
UTC = dt.timezone.utc


@pytest.fixture(autouse=True)
def _sdk_installed() -> None:
    if _MISSING is not None:
        pytest.fail(f"the unitable SDK is not installed ({_MISSING}); scripts/test installs it")


# --- Debezium encodings (Kafka Connect's JSON converter) --------------------------------------

def connect_decimal(value: Decimal, scale: int) -> str:
    unscaled = int(value.scaleb(scale))
    length = max(1, (unscaled.bit_length() + 8) // 8)
    return base64.b64encode(unscaled.to_bytes(length, "big", signed=True)).decode()


def row_schema(extra: bool) -> list[dict]:
    fields = [
        {"field": "id", "type": "int64", "optional": False},
        {"field": "name", "type": "string", "optional": True},
        {"field": "amount", "type": "bytes", "optional": True,
         "name": "org.apache.kafka.connect.data.Decimal",
         "parameters": {"scale": "2", "connect.decimal.precision": "12"}},
        {"field": "day", "type": "int32", "optional": True, "name": "io.debezium.time.Date"},
        {"field": "at", "type": "int64", "optional": True, "name": "io.debezium.time.MicroTimestamp"},
        {"field": "at_tz", "type": "string", "optional": True,
         "name": "io.debezium.time.ZonedTimestamp"},
        {"field": "blob", "type": "bytes", "optional": True},
        {"field": "qty", "type": "int32", "optional": True},
    ]
    if extra:
        fields.append({"field": "note", "type": "string", "optional": True})
    return fields


def envelope_schema(extra: bool) -> dict:
    row = {"type": "struct", "optional": True, "fields": row_schema(extra),
           "name": "dbz.shop.orders.Value"}
    return {"type": "struct", "name": "dbz.shop.orders.Envelope", "fields": [
        dict(row, field="before"), dict(row, field="after"),
        {"field": "source", "type": "struct", "fields": []},
        {"field": "op", "type": "string", "optional": False},
        {"field": "ts_ms", "type": "int64", "optional": True}]}


def encode_row(row: dict, with_schema: bool, extra: bool) -> dict:
    micros = lambda t: (t - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)  # noqa: E731
    out = {
        "id": row["id"],
        "name": row["name"],
        # With a schema: Connect Decimal bytes; without: decimal.handling.mode=string.
        "amount": None if row["amount"] is None else (
            connect_decimal(row["amount"], 2) if with_schema else str(row["amount"])),
        "day": None if row["day"] is None else (row["day"] - EPOCH).days,
        # Micros either way (the table says timestamp-unit=us for the schemaless events).
        "at": None if row["at"] is None else micros(row["at"]),
        # A zoned text in another zone: the ingest stores the UTC instant.
        "at_tz": None if row["at_tz"] is None else
        row["at_tz"].astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat(),
        "blob": None if row["blob"] is None else base64.b64encode(row["blob"]).decode(),
        "qty": row["qty"],
    }
    if extra:
        out["note"] = "added upstream"
    return out


def event(op: str, before: dict | None, after: dict | None, with_schema: bool,
          extra: bool = False) -> bytes:
    payload = {
        "before": None if before is None else encode_row(before, with_schema, extra),
        "after": None if after is None else encode_row(after, with_schema, extra),
        "source": {"connector": "mysql", "db": "shop", "table": "orders"},
        "op": op, "ts_ms": 1_700_000_000_000,
    }
    if with_schema:
        return json.dumps({"schema": envelope_schema(extra), "payload": payload}).encode()
    return json.dumps(payload).encode()


def key_of(id_: int) -> bytes:
    return json.dumps({"id": id_}).encode()


def random_row(rng: random.Random, id_: int) -> dict:
    maybe = lambda v: None if rng.random() < 0.1 else v  # noqa: E731
    return {
        "id": id_,
        "name": maybe(rng.choice(["ann", "bo", "cy", "dé", ""]) + str(rng.randrange(100))),
        "amount": maybe(Decimal(rng.randrange(-10**9, 10**9)).scaleb(-2)),
        "day": maybe(EPOCH + dt.timedelta(days=rng.randrange(-1000, 30000))),
        "at": maybe(dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=rng.randrange(0, 2**52))),
        "at_tz": maybe(dt.datetime.fromtimestamp(rng.randrange(0, 2**31), UTC)),
        "blob": maybe(rng.randbytes(rng.randrange(0, 12))),
        "qty": maybe(rng.randrange(-2**31, 2**31)),
    }


class Stream:
    """The generated source stream and the model of the table it should produce."""

    def __init__(self, bootstrap: str, seed: int):
        self.rng = random.Random(seed)
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        self.model: dict[int, dict] = {}
        self.next_id = 0
        self.extra = False
        # (partition, offset) -> "good" | ("bad", field) | "skip"
        self.kinds: dict[tuple[int, int], object] = {}
        self.lock = threading.Lock()

    def _send(self, key: bytes | None, value: bytes | None, kind: object,
              partition: int | None = None) -> None:
        def delivered(err, msg) -> None:
            assert err is None, err
            with self.lock:
                self.kinds[(msg.partition(), msg.offset())] = kind

        kwargs = {} if partition is None else {"partition": partition}
        self.producer.produce(SOURCE, key=key, value=value, on_delivery=delivered, **kwargs)
        self.producer.poll(0)

    def snapshot(self, n: int) -> None:
        for _ in range(n):
            row = random_row(self.rng, self.next_id)
            self.next_id += 1
            self.model[row["id"]] = row
            self._send(key_of(row["id"]), event("r", None, row, self.rng.random() < 0.5), "good")

    def changes(self, n: int) -> None:
        for _ in range(n):
            with_schema = self.rng.random() < 0.5
            roll = self.rng.random()
            if roll < 0.3 or not self.model:
                row = random_row(self.rng, self.next_id)
                self.next_id += 1
                self.model[row["id"]] = row
                self._send(key_of(row["id"]), event("c", None, row, with_schema, self.extra), "good")
            elif roll < 0.8:
                id_ = self.rng.choice(sorted(self.model))
                row = random_row(self.rng, id_)
                before, self.model[id_] = self.model[id_], row
                self._send(key_of(id_), event("u", before, row, with_schema, self.extra), "good")
            else:
                id_ = self.rng.choice(sorted(self.model))
                before = self.model.pop(id_)
                self._send(key_of(id_), event("d", before, None, with_schema, self.extra), "good")
                self._send(key_of(id_), None, "skip")  # the tombstone

    def schema_change(self) -> None:
        """Debezium's DDL event, then every later event carries a column the table lacks."""
        ddl = {"source": {"db": "shop"}, "databaseName": "shop",
               "ddl": "ALTER TABLE orders ADD COLUMN note VARCHAR(40)",
               "tableChanges": [{"type": "ALTER", "id": "\"shop\".\"orders\""}]}
        self._send(None, json.dumps(ddl).encode(), "skip", partition=0)
        self.extra = True

    def bad_events(self) -> None:
        """Events that cannot be applied; none changes the model."""
        id_ = 10**6 + self.rng.randrange(1000)
        # Not JSON.
        self._send(key_of(id_), b'{"op": "c", "after": ', ("bad", None))
        # A Decimal that is not base64.
        payload = json.loads(event("c", None, random_row(self.rng, id_), True))
        payload["payload"]["after"]["amount"] = "@@@"
        self._send(key_of(id_), json.dumps(payload).encode(), ("bad", "amount"))
        # A truncate.
        self._send(None, json.dumps({"op": "t", "source": {}, "ts_ms": 1}).encode(), ("bad", "op"),
                   partition=1)
        # An int32 column given 2^40: the write path rejects the row.
        row = dict(random_row(self.rng, id_ + 1), qty=None)
        bad = json.loads(event("c", None, row, False))
        bad["after"]["qty"] = 2**40
        self._send(key_of(id_ + 1), json.dumps(bad).encode(), ("bad", "qty"))
        # A delete without `before` and without a key.
        self._send(None, json.dumps({"op": "d", "before": None, "after": None}).encode(),
                   ("bad", "before"), partition=2)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def same(got: dict, want: dict) -> bool:
    for column, value in want.items():
        g = got[column]
        if column == "at_tz" and value is not None:
            value = value.astimezone(UTC)
            g = g.astimezone(UTC) if g is not None else None
        if g != value:
            return False
    return True


def check_rows(rows: list[dict], model: dict[int, dict], what: str) -> None:
    got = {r["id"]: r for r in rows}
    assert len(got) == len(rows), f"{what}: duplicate keys"
    missing = sorted(model.keys() - got.keys())[:5]
    extra = sorted(got.keys() - model.keys())[:5]
    assert not missing and not extra, f"{what}: missing {missing}, extra {extra}"
    wrong = [k for k in model if not same(got[k], model[k])]
    assert not wrong, f"{what}: {len(wrong)} wrong rows, e.g. {got[wrong[0]]} != {model[wrong[0]]}"


def metric(service, name: str, **labels: str) -> float:
    status, body = http_request("GET", f"http://{service.http_addr}/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def eventually(check, timeout: float) -> None:
    """Runs `check` until it stops raising AssertionError; re-raises after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def wait_fresh(client, model: dict[int, dict], timeout: float = 90) -> None:
    eventually(lambda: check_rows(client.scan(TABLE, mode="fresh").to_pylist(), model, "FRESH"),
               timeout)


def audit_exactly_once(bootstrap: str, stream: Stream, group: str) -> None:
    """The records of each ingest batch (request ids `ingest:<topic>:<p>:<first>-<last>:<run>`)
    are exactly the good events of its source range, and the batches together cover every
    good event once (read from the table's topic by a plain consumer)."""
    good = {pos for pos, kind in stream.kinds.items() if kind == "good"}
    id_pattern = re.compile(rf"^ingest:{re.escape(SOURCE)}:(\d+):(\d+)-(\d+):(\d+)$")
    per_batch: dict[tuple[int, int, int], int] = {}
    for msg in consume_topic(bootstrap, TOPIC, BUCKETS, group):
        headers = dict(msg.headers() or [])
        request_id = headers.get("unitable.request-id", b"").decode()
        match = id_pattern.match(request_id)
        assert match, f"a changelog record not from the ingest: {headers}"
        batch = tuple(map(int, match.groups()[:3]))
        per_batch[batch] = per_batch.get(batch, 0) + 1
    covered: set[tuple[int, int]] = set()
    for (p, first, last), count in per_batch.items():
        in_range = {(p, o) for o in range(first, last + 1)} & good
        assert count == len(in_range), f"batch {p}:{first}-{last}: {count} records for {len(in_range)} events"
        assert not covered & in_range, f"batch {p}:{first}-{last} overlaps another"
        covered |= in_range
    assert covered == good, f"{len(good - covered)} good events never reached the changelog"


def audit_dead_letters(bootstrap: str, stream: Stream, group: str) -> None:
    """Every bad event is in the dead-letter topic once, with its source position and field."""
    bad_events = {pos: kind[1] for pos, kind in stream.kinds.items() if isinstance(kind, tuple)}
    seen: dict[tuple[int, int], dict] = {}
    if bad_events:
        for msg in consume_topic(bootstrap, DLQ, 1, group):
            value = json.loads(msg.value())
            assert value["source_topic"] == SOURCE
            pos = (value["source_partition"], value["source_offset"])
            assert pos not in seen, f"event {pos} dead-lettered twice"
            seen[pos] = value
    assert seen.keys() == bad_events.keys()
    for pos, field in bad_events.items():
        assert seen[pos]["field"] == field, seen[pos]
        assert seen[pos]["reason"], seen[pos]


def wait_pyiceberg(data_dir, model: dict[int, dict], timeout: float = 60) -> None:
    catalog = SqlCatalog("unitable", uri=f"sqlite:///{data_dir}/catalog.db",
                         warehouse=f"file://{data_dir}/warehouse")
    eventually(lambda: check_rows(catalog.load_table(TABLE).scan().to_arrow().to_pylist(), model,
                                  "PyIceberg"), timeout)


def create_source(bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(SOURCE, SOURCE_PARTITIONS, 1)]).values():
        f.result()


def test_debezium_topic_ingested_exactly_once_through_crashes(start_service, kafka):
    service = start_service("--kafka-brokers", kafka.bootstrap, "--commit-interval", "300ms")
    create_source(kafka.bootstrap)
    with unitable.connect(service.grpc_url) as client:
        client.tables.create(TABLE, COLUMNS, primary_key=["id"], buckets=BUCKETS)

    # Bad settings are refused, naming the property.
    bad = service.cli("ingest", "start", TABLE, "--topic", SOURCE, "--timestamp-unit", "s")
    assert bad.returncode != 0 and "timestamp-unit" in bad.stderr, bad.stderr
    bad = service.cli("ingest", "start", "cdc.missing", "--topic", SOURCE)
    assert bad.returncode != 0 and "cdc.missing" in bad.stderr, bad.stderr

    stream = Stream(kafka.bootstrap, seed=20261205)
    stream.snapshot(80)
    stream.flush()
    service.cli("ingest", "start", TABLE, "--topic", SOURCE, "--timestamp-unit", "us", check=True)

    # Production goes on while the server is killed at random moments.
    rng = random.Random(7)
    for round_ in range(4):
        producing = threading.Thread(target=lambda: (stream.changes(250), stream.flush()))
        producing.start()
        if round_ == 1:
            stream.flush()
            stream.bad_events()
        if round_ == 2:
            producing.join()
            stream.schema_change()
            producing = threading.Thread(target=lambda: (stream.changes(100), stream.flush()))
            producing.start()
        time.sleep(rng.uniform(0.2, 1.5))
        service.kill()
        producing.join()
        service.restart()
    stream.flush()

    with unitable.connect(service.grpc_url) as client:
        wait_fresh(client, stream.model)
        keys = rng.sample(sorted(stream.model), 20)
        found = client.lookup(TABLE, keys).table.to_pylist()
        check_rows(found, {k: stream.model[k] for k in keys}, "LOOKUP")
        deleted = [k for k in range(stream.next_id) if k not in stream.model][:10]
        assert client.lookup(TABLE, deleted).table.num_rows == 0

    # The Iceberg side, judged by PyIceberg, once a snapshot covers everything.
    wait_pyiceberg(service.data_dir, stream.model)

    audit_exactly_once(kafka.bootstrap, stream, "cdc-audit")
    audit_dead_letters(kafka.bootstrap, stream, "cdc-dlq")

    # After the last restart: a schema change and an unknown column are counted.
    stream.schema_change()
    stream.changes(5)
    stream.flush()
    with unitable.connect(service.grpc_url) as client:
        wait_fresh(client, stream.model)
    assert metric(service, "unitable_ingest_events_total", table=TABLE,
                  outcome="schema_change") >= 1
    assert metric(service, "unitable_ingest_unknown_columns_total", table=TABLE,
                  column="note") >= 1

    # A batch's rows are visible before its source positions are recorded: wait for those too.
    def caught_up_cli() -> None:
        status = service.cli("ingest", "status", TABLE, "--format", "json", check=True)
        info = json.loads(status.stdout)
        assert info["topic"] == SOURCE
        assert len(info["partitions"]) == SOURCE_PARTITIONS
        for p in info["partitions"]:
            assert p["pending"] is None, p
            assert p["lag"] == 0, p
    eventually(caught_up_cli, 30)

    # Stopping the ingest: later source events are not applied.
    service.cli("ingest", "stop", TABLE, check=True)
    time.sleep(2)
    before = copy.deepcopy(stream.model)
    stream.changes(20)
    stream.flush()
    time.sleep(3)
    with unitable.connect(service.grpc_url) as client:
        check_rows(client.scan(TABLE, mode="fresh").to_pylist(), before, "FRESH after stop")

    # Starting again resumes from the recorded positions; --reset reads the source again from
    # its start (a new generation): either way the table ends equal to the model.
    service.cli("ingest", "start", TABLE, "--topic", SOURCE, "--timestamp-unit", "us",
                "--reset", check=True)
    with unitable.connect(service.grpc_url) as client:
        wait_fresh(client, stream.model)
        assert client.tables.describe(TABLE).properties["unitable.ingest.generation"] == "1"
        def caught_up() -> None:
            status = client.tables.ingest_status(TABLE)
            assert status.lag == 0, status
            assert all(p.next_offset == p.high_watermark for p in status.partitions), status
        eventually(caught_up, 30)


def test_ingest_moves_to_the_node_that_takes_the_table_over(start_service, kafka):
    """Two nodes on one catalog: the table's ingest runs on the node holding its committer
    lease; SIGKILL that node while the source is being produced, and the other node takes the
    lease and the ingest over, recovering the dead node's pending batch exactly once."""
    lease = ("--commit-interval", "300ms", "--committer-lease", "2s",
             "--kafka-brokers", kafka.bootstrap)
    first = start_service("--node-id", "node-a", *lease)
    shared = ("--catalog", f"sqlite://{first.data_dir}/catalog.db",
              "--warehouse", f"file://{first.data_dir}/warehouse")
    second = start_service("--node-id", "node-b", *shared, *lease)
    nodes = {"node-a": first, "node-b": second}
    create_source(kafka.bootstrap)
    with unitable.connect(first.grpc_url) as client:
        client.tables.create(TABLE, COLUMNS, primary_key=["id"], buckets=BUCKETS)
    stream = Stream(kafka.bootstrap, seed=99)
    stream.snapshot(50)
    stream.flush()
    # Through the Python SDK this time.
    with unitable.connect(first.grpc_url) as client:
        with pytest.raises(unitable.InvalidArgument, match="timestamp-unit"):
            client.tables.start_ingest(TABLE, SOURCE, timestamp_unit="seconds")
        assert client.tables.ingest_status(TABLE) is None
        client.tables.start_ingest(TABLE, SOURCE, timestamp_unit="us")

    def ingesting() -> list[str]:
        return [name for name, node in nodes.items()
                if node.process.running() and metric(node, "unitable_ingest_running", table=TABLE) == 1]

    deadline = time.monotonic() + 30
    while len(ingesting()) != 1:
        assert time.monotonic() < deadline, "no node started the ingest"
        time.sleep(0.2)
    owner = ingesting()[0]
    survivor = next(name for name in nodes if name != owner)

    producing = threading.Thread(target=lambda: (stream.changes(600), stream.flush()))
    producing.start()
    time.sleep(0.5)
    nodes[owner].kill()
    producing.join()
    stream.bad_events()
    stream.changes(50)
    stream.flush()

    deadline = time.monotonic() + 30
    while ingesting() != [survivor]:
        assert time.monotonic() < deadline, f"{survivor} did not take the ingest over"
        time.sleep(0.2)
    with unitable.connect(nodes[survivor].grpc_url) as client:
        wait_fresh(client, stream.model)
        # The rows are visible before the batch's source positions are recorded.
        def caught_up() -> None:
            status = client.tables.ingest_status(TABLE)
            assert status.topic == SOURCE and status.source_exists
            assert status.lag == 0 and len(status.partitions) == SOURCE_PARTITIONS, status
            assert all(p.pending_last is None and p.next_offset == p.high_watermark
                       for p in status.partitions), status
        eventually(caught_up, 30)
        client.tables.stop_ingest(TABLE)
        assert client.tables.ingest_status(TABLE) is None
    wait_pyiceberg(first.data_dir, stream.model)
    audit_exactly_once(kafka.bootstrap, stream, "cdc-failover-audit")
    audit_dead_letters(kafka.bootstrap, stream, "cdc-failover-dlq")
