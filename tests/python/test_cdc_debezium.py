"""Real Debezium: PostgreSQL -> Debezium's PostgreSQL connector (in Kafka Connect, from the
Kafka distribution) -> Apache Kafka -> `unitable ingest` -> the table, judged against
PostgreSQL's own rows.

PostgreSQL runs with logical decoding; Debezium (pgoutput, an initial snapshot, the JSON
converter with schemas) writes the `orders` table's changes to `pg.public.orders`. The table is
written before the connector starts (snapshot `r` events), then updated, deleted from, inserted
into, altered (a column added at the source, then to the unitable table), all while the ingest
runs. At the end the rows PostgreSQL holds (`row_to_json`) equal unitable's FRESH scan, its
LOOKUPs and PyIceberg's scan of the latest snapshot; the connector's tombstones and the added
column's early events are accounted for in the metrics, not rejected.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from pyiceberg.catalog.sql import SqlCatalog

from conftest import track
from harness import KafkaConnect
from test_cdc_ingest import eventually, metric

try:
    import unitable
except ImportError as e:
    _MISSING: str | None = str(e)
else:
    _MISSING = None

TABLE = "cdc.pg_orders"
SOURCE = "pg.public.orders"
UTC = dt.timezone.utc


@pytest.fixture(autouse=True)
def _sdk_installed() -> None:
    if _MISSING is not None:
        pytest.fail(f"the unitable SDK is not installed ({_MISSING}); scripts/test installs it")


def postgres_rows(postgres) -> dict[int, dict]:
    """PostgreSQL's rows, as Python values of the unitable column types."""
    out = {}
    text = postgres.sql("SELECT row_to_json(o) FROM orders o")
    for line in text.splitlines():
        r = json.loads(line, parse_float=Decimal)
        out[r["id"]] = {
            "id": r["id"],
            "name": r["name"],
            "amount": None if r["amount"] is None else Decimal(r["amount"]).quantize(Decimal("0.01")),
            "day": None if r["day"] is None else dt.date.fromisoformat(r["day"]),
            "at": None if r["at"] is None else dt.datetime.fromisoformat(r["at"]),
            "at_tz": None if r["at_tz"] is None else dt.datetime.fromisoformat(r["at_tz"]),
            "blob": None if r["blob"] is None else bytes.fromhex(r["blob"][2:]),
            "qty": r["qty"],
            "note": r.get("note"),
        }
    return out


def same(got: dict, want: dict) -> bool:
    for column, value in want.items():
        g = got.get(column)
        if column == "at_tz" and value is not None and g is not None:
            value, g = value.astimezone(UTC), g.astimezone(UTC)
        if g != value:
            return False
    return True


def check(rows: list[dict], want: dict[int, dict], what: str) -> None:
    got = {r["id"]: r for r in rows}
    assert len(got) == len(rows), f"{what}: duplicate keys"
    assert got.keys() == want.keys(), \
        f"{what}: missing {sorted(want.keys() - got.keys())[:5]}, extra {sorted(got.keys() - want.keys())[:5]}"
    wrong = [k for k in want if not same(got[k], want[k])]
    assert not wrong, f"{what}: {len(wrong)} rows differ, e.g. {got[wrong[0]]} != {want[wrong[0]]}"


def test_debezium_postgres_connector_feeds_a_table(start_service, kafka, postgres, debezium_home,
                                                    tmp_path, request):
    postgres.sql("""
        CREATE TABLE orders (id bigint PRIMARY KEY, name text, amount numeric(12,2), day date,
                             at timestamp(6), at_tz timestamptz, blob bytea, qty integer);
        ALTER TABLE orders REPLICA IDENTITY FULL;
        INSERT INTO orders
        SELECT i, 'name ' || i, (i * 1.25 - 100)::numeric(12,2), DATE '2024-01-01' + i,
               TIMESTAMP '2024-05-01 09:30:00.123456' + i * INTERVAL '1 minute',
               TIMESTAMPTZ '2024-05-01 09:30:00.5+02' + i * INTERVAL '1 hour',
               decode(lpad(to_hex(i), 4, '0'), 'hex'), i * 10
        FROM generate_series(1, 200) AS i;
        UPDATE orders SET name = NULL, amount = NULL, day = NULL WHERE id % 50 = 0;
    """)

    service = start_service("--kafka-brokers", kafka.bootstrap, "--commit-interval", "300ms")
    with unitable.connect(service.grpc_url) as client:
        client.tables.create(TABLE, ["id:int64", "name:string", "amount:decimal(12,2)", "day:date",
                                     "at:timestamp", "at_tz:timestamptz", "blob:binary", "qty:int32"],
                             primary_key=["id"], buckets=3)
        # The ingest waits for the topic Debezium is about to create.
        client.tables.start_ingest(TABLE, SOURCE)

    connect = KafkaConnect(debezium_home, tmp_path, kafka.bootstrap, {
        "name": "pg",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "database.hostname": "127.0.0.1",
        "database.port": str(postgres.port),
        "database.user": "unitable",
        "database.password": "",
        "database.dbname": "postgres",
        "topic.prefix": "pg",
        "table.include.list": "public.orders",
        "plugin.name": "pgoutput",
        "slot.name": "unitable_test",
        "publication.autocreate.mode": "filtered",
        "snapshot.mode": "initial",
        "topic.creation.default.partitions": "3",
        "topic.creation.default.replication.factor": "1",
    })
    track(request.node, connect.process)
    try:
        connect.wait_running("pg")
        with unitable.connect(service.grpc_url) as client:
            eventually(lambda: check(client.scan(TABLE, mode="fresh").to_pylist(),
                                     postgres_rows(postgres), "after the snapshot"), 120)

            # Live changes: updates, deletes (with their tombstones), inserts.
            postgres.sql("""
                UPDATE orders SET qty = qty + 1, at = at + INTERVAL '1 second' WHERE id % 3 = 0;
                DELETE FROM orders WHERE id % 7 = 0;
                INSERT INTO orders VALUES (1000, 'big', 1234567890.12, DATE '1969-12-31',
                    TIMESTAMP '1900-01-01 00:00:00', TIMESTAMPTZ '2100-01-01 00:00:00+00',
                    '\\x00ff'::bytea, -2147483648);
                INSERT INTO orders (id) VALUES (1001);
                UPDATE orders SET amount = -0.01, name = 'é ✓' WHERE id = 1001;
                DELETE FROM orders WHERE id = 1000;
                INSERT INTO orders (id, name) VALUES (1000, 'again');
            """)
            eventually(lambda: check(client.scan(TABLE, mode="fresh").to_pylist(),
                                     postgres_rows(postgres), "after live changes"), 60)

            # A column added at the source: ignored (and counted) until the table has it too.
            postgres.sql("""
                ALTER TABLE orders ADD COLUMN note text;
                UPDATE orders SET note = 'n' || id WHERE id <= 5;
            """)
            want = postgres_rows(postgres)
            without_note = {k: {c: v for c, v in r.items() if c != "note"} for k, r in want.items()}
            # The rows do not change for the table (the note is all that changed), so wait for
            # the five events to be counted.

            def notes_counted() -> None:
                assert metric(service, "unitable_ingest_unknown_columns_total", table=TABLE,
                              column="note") >= 5

            eventually(notes_counted, 60)
            check(client.scan(TABLE, mode="fresh").to_pylist(), without_note,
                  "after the source added a column")
            client.tables.add_column(TABLE, "note:string")
            postgres.sql("UPDATE orders SET note = 'm' || id WHERE id > 5 AND id <= 20;")
            # Rows 1..5 got their note before the table had the column: it stays null there.
            want = postgres_rows(postgres)
            for k in range(1, 6):
                want[k]["note"] = None
            eventually(lambda: check(client.scan(TABLE, mode="fresh").to_pylist(), want,
                                     "after the table added the column"), 60)

            keys = sorted(want)[::17]
            check(client.lookup(TABLE, keys).table.to_pylist(), {k: want[k] for k in keys}, "LOOKUP")
            # The rows are visible before the batch's source positions are recorded.
            def caught_up() -> None:
                status = client.tables.ingest_status(TABLE)
                assert status.lag == 0, status
                assert all(p.pending_last is None for p in status.partitions), status
            eventually(caught_up, 30)

        # Nothing was rejected; the deletes' tombstones were skipped.
        assert metric(service, "unitable_ingest_rejected_total", table=TABLE) == 0
        assert metric(service, "unitable_ingest_events_total", table=TABLE, outcome="tombstone") >= 29

        catalog = SqlCatalog("unitable", uri=f"sqlite:///{service.data_dir}/catalog.db",
                             warehouse=f"file://{service.data_dir}/warehouse")
        eventually(lambda: check(catalog.load_table(TABLE).scan().to_arrow().to_pylist(), want,
                                 "PyIceberg"), 60)
    finally:
        connect.kill()
