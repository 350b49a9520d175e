"""The Python SDK (python/, `pip install ./python`) against a running `unitable serve`.

Every call is checked against a Python model of the table: rows written as dicts, pyarrow and
pandas are read back with scan, SQL and lookup and compared with the model; a subscription
replays exactly the changes written, and resuming from `next_offsets` yields exactly the rest.
Errors are checked to be the right exception class, naming the table and, where the server names
one, the row and field.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

try:
    import pandas as pd
    import unitable
    from unitable import Column, PartitionField
except ImportError as e:  # scripts/test installs both; say so instead of a collection error
    _MISSING: str | None = str(e)
else:
    _MISSING = None

TABLE = "sdk.orders"
GROUP_TABLE = "sdk.events"
COLUMNS = [
    "id:int64!", "region:string", "amount:decimal(12,2)", "score:float64", "qty:int32",
    "paid:bool", "day:date", "at:timestamp", "at_tz:timestamptz", "blob:binary",
]
NAMES = [c.split(":")[0] for c in COLUMNS]
UTC = dt.timezone.utc


@pytest.fixture(autouse=True)
def _sdk_installed() -> None:
    if _MISSING is not None:
        pytest.fail(f"the unitable SDK or pandas is not installed ({_MISSING}); "
                    "run `pip install ./python pandas` into the test venv (scripts/test does)")


@pytest.fixture
def client(service):
    with unitable.connect(service.grpc_url) as c:
        yield c


def random_row(rng: random.Random, key: int) -> dict[str, Any]:
    """A row with every column type, some values null."""
    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.15 else value

    return {
        "id": key,
        "region": maybe(rng.choice(["eu", "us", "apac", "näh \"q\""])),
        "amount": maybe(Decimal(rng.randint(-10**6, 10**6)) / 100),
        "score": maybe(rng.choice(
            [rng.uniform(-1e6, 1e6), 0.1, -0.0, 1e300, math.inf, -math.inf])),
        "qty": maybe(rng.randint(-2**31, 2**31 - 1)),
        "paid": maybe(rng.random() < 0.5),
        "day": maybe(dt.date(2024, 1, 1) + dt.timedelta(days=rng.randint(0, 900))),
        "at": maybe(dt.datetime(2024, 5, 1, 9, 30)
                    + dt.timedelta(microseconds=rng.randint(0, 10**12))),
        "at_tz": maybe(dt.datetime(2024, 5, 1, tzinfo=UTC)
                       + dt.timedelta(microseconds=rng.randint(0, 10**12))),
        "blob": maybe(bytes(rng.randrange(256) for _ in range(rng.randint(0, 6)))),
    }


def arrow_of(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def by_id(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def model_rows(model: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{c: model[k][c] for c in NAMES} for k in sorted(model)]


def test_tables_admin(client):
    info = client.tables.create(
        "sdk.items", ["id:int64!", "name:string", Column("price", "decimal(10,2)", doc="EUR")],
        primary_key=["id"], buckets=2, partition_by=["bucket[4](id)"],
        properties={"owner": "ml"})
    assert info.name == "sdk.items"
    assert info.columns == [Column("id", "int64", True), Column("name", "string"),
                            Column("price", "decimal(10,2)", doc="EUR")]
    assert (info.primary_key, info.buckets) == (["id"], 2)
    assert info.partition_by == [PartitionField("id", "bucket", 4)]
    assert info.properties["owner"] == "ml"
    assert info.changelog_topic == "unitable.sdk.items"
    assert info.current_snapshot_id is None
    assert info.arrow_schema == pa.schema([
        pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string()),
        pa.field("price", pa.decimal128(10, 2))])

    events = client.tables.create("sdk.events", pa.schema([
        pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False), pa.field("kind", pa.string()),
        pa.field("n", pa.int16())]))
    assert events.columns == [Column("at", "timestamptz", True), Column("kind", "string"),
                              Column("n", "int32")]
    assert events.primary_key == []
    assert client.tables.list() == ["sdk.events", "sdk.items"]
    assert client.tables.list("sdk") == ["sdk.events", "sdk.items"]
    assert client.tables.list("other") == []
    assert client.tables.describe("sdk.items").table_uuid == info.table_uuid
    assert client.tables.exists("sdk.items") and not client.tables.exists("sdk.nope")

    with pytest.raises(unitable.AlreadyExists) as exists:
        client.tables.create("sdk.items", ["id:int64!"], primary_key=["id"])
    assert exists.value.table == "sdk.items" and "sdk.items" in str(exists.value)
    again = client.tables.create("sdk.items", ["id:int64!"], primary_key=["id"], exist_ok=True)
    assert again.table_uuid == info.table_uuid

    after = client.tables.add_column("sdk.items", "note:string")
    assert after.columns[-1] == Column("note", "string") and after.schema_id > info.schema_id
    with pytest.raises(unitable.InvalidArgument) as required:
        client.tables.add_column("sdk.items", "must:int32!")
    assert "sdk.items" in str(required.value)
    altered = client.tables.alter("sdk.items", set={"owner": "ml", "tier": "gold"})
    assert altered.properties["owner"] == "ml" and altered.properties["tier"] == "gold"
    altered = client.tables.alter("sdk.items", unset=["tier", "never-set"])
    assert "tier" not in altered.properties and altered.properties["owner"] == "ml"
    assert client.tables.describe("sdk.items").properties == altered.properties
    with pytest.raises(unitable.InvalidArgument) as managed:
        client.tables.alter("sdk.items", set={"unitable.buckets": "8"})
    assert "unitable.buckets" in str(managed.value) and "sdk.items" in str(managed.value)
    # A key column given without `!` is made required (a primary key implies NOT NULL).
    keyed = client.tables.create("sdk.keyed", ["id:int64", "v:string"], primary_key=["id"])
    assert keyed.columns[0] == Column("id", "int64", required=True)
    client.tables.drop("sdk.keyed")

    with pytest.raises(unitable.InvalidArgument) as bad_type:
        client.tables.create("sdk.bad", ["id:varchar!"])
    assert bad_type.value.field == "id" and "varchar" in str(bad_type.value)
    with pytest.raises(unitable.InvalidArgument) as float_key:
        client.tables.create("sdk.bad", ["x:float64!"], primary_key=["x"])
    assert float_key.value.table == "sdk.bad" and "sdk.bad" in str(float_key.value)

    client.tables.drop("sdk.events")
    assert client.tables.list() == ["sdk.items"]
    with pytest.raises(unitable.TableNotFound) as gone:
        client.tables.drop("sdk.events")
    assert gone.value.table == "sdk.events" and "sdk.events" in str(gone.value)
    client.tables.drop("sdk.events", missing_ok=True)


def test_write_dicts_arrow_pandas_and_read_back(client):
    rng = random.Random(7)
    client.tables.create(TABLE, COLUMNS, primary_key=["id"], buckets=3)
    schema = client.tables.describe(TABLE).arrow_schema
    model: dict[int, dict[str, Any]] = {}

    # dicts (JSON lines), two requests of 20 rows, waiting for the snapshot.
    rows = [random_row(rng, k) for k in range(40)]
    first = client.write(TABLE, rows, batch_rows=20, wait="snapshot")
    assert (first.rows_written, first.rows_rejected, first.errors) == (40, 0, [])
    assert len(first.request_ids) == 2 and first.ok
    assert sum(o + 1 for o in first.last_offsets.values()) == 40
    model.update({r["id"]: r for r in rows})
    snapshot_1 = first.as_of.snapshot_id
    assert snapshot_1 is not None and first.as_of.commit_time is not None
    model_1 = dict(model)

    # pyarrow: upserts of 30..59, some columns absent (null), narrower integer types.
    rows = [random_row(rng, k) for k in range(30, 60)]
    partial = ["id", "region", "qty", "at_tz"]
    arrow = pa.table({
        "id": pa.array([r["id"] for r in rows], pa.int32()),
        "region": pa.array([r["region"] for r in rows], pa.large_string()),
        "qty": pa.array([None if r["qty"] is None else r["qty"] % 30000 for r in rows], pa.int16()),
        "at_tz": pa.array([r["at_tz"] for r in rows], pa.timestamp("ns", tz="Europe/Paris")),
    })
    result = client.write(TABLE, arrow, op="upsert")
    assert (result.rows_written, result.errors) == (30, [])
    for r, q in zip(rows, arrow.column("qty").to_pylist()):
        model[r["id"]] = {c: None for c in NAMES} | {c: r[c] for c in partial} | {"qty": q}

    # A RecordBatch.
    rows = [random_row(rng, k) for k in range(60, 70)]
    assert client.write(TABLE, arrow_of(rows, schema).to_batches()[0]).rows_written == 10
    model.update({r["id"]: r for r in rows})

    # pandas: an integer column with a missing value is float in pandas; datetimes are ns.
    rows = [random_row(rng, k) for k in range(65, 80)]
    for r in rows:
        r["blob"] = None
    df = pd.DataFrame({
        "id": [r["id"] for r in rows],
        "qty": [float("nan") if r["qty"] is None else float(r["qty"] % 2**24) for r in rows],
        "score": [r["score"] for r in rows],
        "at": pd.to_datetime([r["at"] for r in rows]),
        "region": [r["region"] for r in rows],
    })
    result = client.write(TABLE, df)
    assert (result.rows_written, result.errors) == (15, [])
    for r in rows:
        qty = None if r["qty"] is None else r["qty"] % 2**24
        model[r["id"]] = {c: None for c in NAMES} | {
            "id": r["id"], "qty": qty, "score": r["score"], "at": r["at"], "region": r["region"]}

    # Deletes: keys as dicts and as Arrow.
    deleted = client.delete(TABLE, [{"id": k} for k in range(0, 5)])
    assert deleted.rows_written == 5
    assert client.delete(TABLE, pa.table({"id": [45, 46, 999]})).rows_written == 3
    for k in [0, 1, 2, 3, 4, 45, 46]:
        model.pop(k)

    # FRESH scan, SQL and lookups all equal the model.
    assert by_id(client.scan(TABLE)) == model_rows(model)
    read = client.read(TABLE)
    assert read.as_of is not None and read.as_of.lag_records == 0
    got = client.sql(f"SELECT * FROM {TABLE} ORDER BY id")
    assert got.to_pylist() == model_rows(model)
    stats = client.sql(f"SELECT count(*) AS n, sum(qty) AS total FROM {TABLE} WHERE paid IS NULL")
    live = [r for r in model.values() if r["paid"] is None]
    assert stats.to_pylist() == [{"n": len(live), "total": sum(r["qty"] or 0 for r in live)
                                  if any(r["qty"] is not None for r in live) else None}]
    query = client.query(f"SELECT id FROM {TABLE}")
    assert set(query.as_of) == {TABLE} and query.table.num_rows == len(model)

    # Projection and filter.
    got = client.scan(TABLE, columns=["amount", "id"], filter="qty > 1000 AND region = 'eu'")
    assert got.column_names == ["amount", "id"]
    want = [{"amount": r["amount"], "id": r["id"]} for r in model_rows(model)
            if r["qty"] is not None and r["qty"] > 1000 and r["region"] == "eu"]
    assert by_id(got) == want
    assert client.scan(TABLE, limit=3).num_rows == 3

    keys = [10, 3, 999, 10, 65, 46]
    found = client.lookup(TABLE, keys)
    present = [k for k in keys if k in model]
    assert found.to_pylist() == [model[k] for k in present]
    assert found.missing == [i for i, k in enumerate(keys) if k not in model]
    assert found.missing_keys == [{"id": k} for k in keys if k not in model]
    assert len(found) == len(present)
    assert found.as_of is not None and found.as_of.lag_records == 0
    projected = client.lookup(TABLE, [{"id": 12, "region": "ignored"}], columns=["qty", "id"])
    assert projected.table.column_names == ["qty", "id"]
    assert projected.to_pylist() == [{"qty": model[12]["qty"], "id": 12}]
    by_arrow = client.lookup(TABLE, pa.table({"id": pa.array([66, 1], pa.int64())}))
    assert by_arrow.to_pylist() == [model[66]] and by_arrow.missing_keys == [{"id": 1}]
    by_frame = client.lookup(TABLE, pd.DataFrame({"id": [70, 71]}))
    assert by_frame.to_pandas()["id"].tolist() == [70, 71]
    # More keys than one request takes: split, missing indexes across the pieces.
    many = list(range(-12_000, 100))
    split = client.lookup(TABLE, many)
    assert [r["id"] for r in split.to_pylist()] == [k for k in many if k in model]
    assert split.missing == [i for i, k in enumerate(many) if k not in model]

    # Time travel: the first snapshot, by id and by time, in scan and lookup.
    assert by_id(client.scan(TABLE, snapshot_id=snapshot_1)) == model_rows(model_1)
    assert by_id(client.scan(TABLE, as_of=first.as_of.commit_time)) == model_rows(model_1)
    old = client.lookup(TABLE, [35, 0], snapshot_id=snapshot_1)
    assert old.to_pylist() == [model_1[35], model_1[0]] and old.missing == []
    assert model[35] != model_1[35] and 0 not in model
    old_read = client.read(TABLE, snapshot_id=snapshot_1)
    assert old_read.as_of.snapshot_id == snapshot_1

    # A snapshot that holds every write; SNAPSHOT reads and SQL equal the model.
    last = client.write(TABLE, [random_row(rng, 200)], wait="snapshot")
    model[200] = last_row = client.lookup(TABLE, [200]).to_pylist()[0]
    assert last_row["id"] == 200
    snap = client.read(TABLE, mode="snapshot")
    assert snap.as_of.snapshot_id == last.as_of.snapshot_id
    assert by_id(snap.table) == model_rows(model)
    assert client.sql(f"SELECT * FROM {TABLE} ORDER BY id", mode="snapshot").to_pylist() == \
        model_rows(model)

    # NaN goes as the string "NaN" in JSON and comes back as NaN.
    client.write(TABLE, [{"id": 300, "score": math.nan}])
    assert math.isnan(client.lookup(TABLE, [300]).to_pylist()[0]["score"])
    client.delete(TABLE, [{"id": 300}])

    # pandas out.
    frame = client.scan(TABLE, columns=["id", "qty"]).to_pandas()
    assert sorted(frame["id"].tolist()) == sorted(model)

    # Compaction through the SDK; the data stays the same.
    plan = client.compact(TABLE, dry_run=True)
    assert not plan.executed
    client.compact(TABLE)
    assert by_id(client.scan(TABLE)) == model_rows(model)


def test_small_lookups_as_json_rows_give_what_arrow_gives(client):
    """Lookups of a few keys get their rows as JSON arrays (`json_rows`); every value must come
    back as the Arrow answer gives it: same values, same Python types (Decimal, bytes, date,
    naive and aware datetimes), and the same Arrow table when one is asked for. Rows with a
    value JSON cannot carry (NaN, infinities) come as Arrow; the result is the same."""
    name = "sdk.json_rows"
    client.tables.create(name, COLUMNS + ["f32:float32"], primary_key=["id"])
    rng = random.Random(7)
    rows = [random_row(rng, k) | {
        "score": rng.choice([None, rng.uniform(-1e6, 1e6), 0.1, -0.0, 1e300, -5e-324]),
        "f32": rng.choice([None, 1.1, -3.4e38, 0.0, 7.25, 1e-45])} for k in range(120)]
    # Values JSON cannot carry (a float32 too large is an infinity).
    rows[5]["score"], rows[6]["score"], rows[40]["f32"] = math.nan, -math.inf, 4e38
    assert client.write(name, rows).rows_written == len(rows)
    keys = list(range(-3, 123))
    # More keys than JSON_ROWS_MAX_KEYS: one Arrow answer, the oracle.
    assert len(keys) > unitable._client.JSON_ROWS_MAX_KEYS
    arrow = client.lookup(name, keys)
    assert arrow._rows is None
    by_key = {r["id"]: r for r in arrow.to_pylist()}
    assert sorted(by_key) == list(range(120))

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) and math.isnan(a):
            return isinstance(b, float) and math.isnan(b)
        return type(a) is type(b) and a == b and repr(a) == repr(b)

    json_answers = 0
    for i in range(0, len(keys), 5):
        chunk = keys[i:i + 5]
        small = client.lookup(name, chunk)
        finite = all(by_key[k][c] is None or math.isfinite(by_key[k][c])
                     for k in chunk if k in by_key for c in ("score", "f32"))
        assert (small._rows is not None) == finite, chunk
        json_answers += small._rows is not None
        want = [by_key[k] for k in chunk if k in by_key]
        got = small.to_pylist()
        assert len(got) == len(want) == len(small)
        for g, w in zip(got, want):
            assert list(g) == list(w)
            for column in w:
                assert same(g[column], w[column]), (chunk, column, g[column], w[column])
        assert small.missing == [j for j, k in enumerate(chunk) if k not in by_key]
        if small._rows is None:
            continue  # NaN != NaN in Table.equals; its values matched above
        # The Arrow table built from JSON rows equals the Arrow answer's rows.
        want_table = arrow.table.filter(
            pc.is_in(arrow.table["id"], pa.array([k for k in chunk if k in by_key])))
        want_table = want_table.take(pc.sort_indices(
            pc.index_in(want_table["id"], pa.array(chunk))))
        assert small.table.equals(want_table), chunk
        assert small.table.schema == arrow.table.schema
        assert small.as_of is not None and small.as_of.lag_records == 0
    assert json_answers == len(range(0, len(keys), 5)) - 2
    # A projection, and a lookup that finds nothing.
    projected = client.lookup(name, [{"id": 9}], columns=["blob", "at_tz"])
    assert projected._rows is not None and projected.table.column_names == ["blob", "at_tz"]
    assert projected.to_pylist() == [{"blob": by_key[9]["blob"], "at_tz": by_key[9]["at_tz"]}]
    # Keys as Arrow and as a DataFrame take the same path.
    for ids, keys in (([3, 1000, 9], pa.table({"id": pa.array([3, 1000, 9], pa.int64())})),
                      ([9, 3], pd.DataFrame({"id": [9, 3]}))):
        answer = client.lookup(name, keys)
        assert answer._rows is not None
        want = [by_key[k] for k in ids if k in by_key]
        assert [[repr(v) for v in r.values()] for r in answer.to_pylist()] == \
            [[repr(v) for v in r.values()] for r in want]
    none = client.lookup(name, [1000, 1001])
    assert none.to_pylist() == [] and none.missing == [0, 1] and len(none) == 0
    assert none.table.num_rows == 0 and none.table.schema == arrow.table.schema


def test_lookup_by_plain_values_follows_a_recreated_table(client):
    """Plain-value lookups remember the table's key column; a table dropped and created
    again with another key is looked up by the new one, not refused."""
    name = "sdk.rekeyed"
    client.tables.create(name, ["id:int64!", "code:string!", "v:string"], primary_key=["id"])
    client.write(name, [{"id": 1, "code": "a", "v": "by id"}])
    assert client.lookup(name, [1]).to_pylist() == [{"id": 1, "code": "a", "v": "by id"}]
    client.tables.drop(name)
    client.tables.create(name, ["id:int64!", "code:string!", "v:string"], primary_key=["code"])
    client.write(name, [{"id": 2, "code": "b", "v": "by code"}])
    found = client.lookup(name, ["b", "zz"])
    assert found.to_pylist() == [{"id": 2, "code": "b", "v": "by code"}]
    assert found.missing_keys == [{"code": "zz"}]
    client.tables.drop(name)


def test_lookup_with_max_staleness_reflects_every_write_before_its_watermark(client):
    """A lookup that accepts some staleness may miss writes acknowledged after the last
    high-watermark read, never one acknowledged before it; a strict lookup misses none."""
    name = "sdk.stale"
    client.tables.create(name, ["id:int64!", "v:string"], primary_key=["id"])
    hour = dt.timedelta(hours=1)
    for i in range(5):
        client.write(name, [{"id": 1, "v": f"w{i}"}])
        allowed = {f"w{i - 1}", f"w{i}"} if i else {"w0"}
        # Lenient first: it may still use the watermark the previous strict lookup read.
        stale = client.lookup(name, [1], max_staleness=hour)
        assert stale.to_pylist()[0]["v"] in allowed, (i, stale.to_pylist())
        assert 0 <= stale.as_of.lag_ms < 3_600_000
        strict = client.lookup(name, [1], max_staleness=0)
        assert strict.to_pylist() == [{"id": 1, "v": f"w{i}"}]
        assert strict.as_of.lag_ms == 0
        # The strict lookup's watermark covers w{i}: lenient lookups now see it too.
        again = client.lookup(name, [1], max_staleness=3600.0)
        assert again.to_pylist() == [{"id": 1, "v": f"w{i}"}]
    for bad in (-1, "1s", True):
        with pytest.raises(unitable.InvalidArgument) as e:
            client.lookup(name, [1], max_staleness=bad)
        assert e.value.table == name and e.value.field == "max_staleness", e.value
    with pytest.raises(unitable.InvalidArgument) as e:
        client.lookup(name, [1], max_staleness=hour, as_of=0)
    assert "max_staleness" in str(e.value)
    client.tables.drop(name)


def test_rejected_rows_name_row_and_field(client):
    client.tables.create(TABLE, COLUMNS, primary_key=["id"])
    rows: list[dict[str, Any]] = [
        {"id": 1, "qty": "many"},          # 0: not an int
        {"id": 2, "amount": "1.50"},       # 1: fine
        {"region": "eu"},                  # 2: no key
        {"id": 4, "amount": "1.234"},      # 3: too many fraction digits
        {"id": 5, "day": "2024-02-30"},    # 4: no such day
        {"id": 6, "qty": 2**40},           # 5: overflows int32
    ]
    result = client.write(TABLE, rows, batch_rows=4)
    assert (result.rows_written, result.rows_rejected, result.ok) == (1, 5, False)
    assert [(e.row, e.field) for e in result.errors] == [
        (0, "qty"), (2, "id"), (3, "amount"), (4, "day"), (5, "qty")]
    assert all(e.reason for e in result.errors)
    assert "row 3, field `amount`" in str(result.errors[2])
    assert client.scan(TABLE, columns=["id"]).to_pylist() == [{"id": 2}]

    with pytest.raises(unitable.WriteRejected) as rejected:
        client.write(TABLE, [{"id": 10}, {"id": 11, "paid": "perhaps"}], strict=True)
    err = rejected.value
    assert (err.table, err.row, err.field) == (TABLE, 1, "paid")
    assert TABLE in str(err) and "row 1" in str(err) and err.result.rows_written == 1

    # Arrow: a value that does not fit rejects its row; a column the table lacks, the request.
    narrow = client.write(TABLE, pa.table({"id": pa.array([20, 21], pa.int64()),
                                           "qty": pa.array([1, 2**33], pa.int64())}))
    assert [(e.row, e.field) for e in narrow.errors] == [(1, "qty")]
    with pytest.raises(unitable.InvalidArgument) as bogus:
        client.write(TABLE, pa.table({"id": [1], "bogus": [1]}))
    assert (bogus.value.table, bogus.value.field) == (TABLE, "bogus")
    assert TABLE in str(bogus.value)

    # Caught before sending: a value with no column type, a row that is not a dict, a
    # fraction in an integer column of a DataFrame.
    with pytest.raises(unitable.InvalidArgument) as odd:
        client.write(TABLE, [{"id": 1}, {"id": 2, "region": object()}])
    assert (odd.value.row, odd.value.field, odd.value.table) == (1, "region", TABLE)
    with pytest.raises(unitable.InvalidArgument) as not_dict:
        client.write(TABLE, [{"id": 1}, (2, "x")])
    assert not_dict.value.row == 1
    with pytest.raises(unitable.InvalidArgument) as fraction:
        client.write(TABLE, pd.DataFrame({"id": [1, 2], "qty": [1.0, 2.5]}))
    assert fraction.value.field == "qty" and TABLE in str(fraction.value)
    with pytest.raises(unitable.InvalidArgument):
        client.write(TABLE, "id=1")
    with pytest.raises(unitable.InvalidArgument) as append_only:
        client.tables.create("sdk.log", ["seq:int64!", "msg:string"])
        client.write("sdk.log", [{"seq": 1}], op="upsert")
    assert append_only.value.table == "sdk.log"


def test_request_ids_make_writes_idempotent(client):
    client.tables.create("sdk.log", ["seq:int64!", "msg:string"])
    rows = [{"seq": i, "msg": f"m{i}"} for i in range(5)]
    first = client.write("sdk.log", rows, request_id="load-1", batch_rows=2)
    assert first.request_ids == ["load-1:0", "load-1:1", "load-1:2"]
    again = client.write("sdk.log", rows, request_id="load-1", batch_rows=2)
    assert (again.rows_written, again.last_offsets) == (5, first.last_offsets)
    assert client.scan("sdk.log").num_rows == 5, "a repeated request id writes nothing twice"
    client.write("sdk.log", rows)
    got = sorted((r["seq"], r["msg"]) for r in client.scan("sdk.log").to_pylist())
    assert got == sorted([(r["seq"], r["msg"]) for r in rows] * 2)


def changes_of(batches) -> list[dict[str, Any]]:
    return [row for b in batches for row in b.to_pylist()]


def test_subscribe_reads_every_change_and_resumes(client):
    client.tables.create(TABLE, ["id:int64!", "v:string", "n:int32"], primary_key=["id"], buckets=3)
    rng = random.Random(11)
    history: dict[int, list[tuple[str, Any, Any]]] = {}
    live: dict[int, tuple[Any, Any]] = {}
    total = 0
    for step in range(6):
        rows = [{"id": rng.randint(0, 30), "v": f"s{step}-{i}", "n": rng.randint(0, 9)}
                for i in range(15)]
        client.write(TABLE, rows, op="upsert")
        for r in rows:
            history.setdefault(r["id"], []).append(("upsert", r["v"], r["n"]))
            live[r["id"]] = (r["v"], r["n"])
        doomed = sorted(rng.sample(sorted(live), 3))
        client.delete(TABLE, [{"id": k} for k in doomed])
        for k in doomed:
            history[k].append(("delete", None, None))
            live.pop(k)
        total += len(rows) + len(doomed)

    # Everything up to now, then stop.
    with client.subscribe(TABLE, follow=False) as sub:
        assert sub.as_of is not None and set(sub.as_of.offsets) == {0, 1, 2}
        batches = list(sub)
    changes = changes_of(batches)
    assert len(changes) == total
    assert list(changes[0])[:4] == ["_op", "_partition", "_offset", "_timestamp"]
    per_partition: dict[int, list[int]] = {}
    for c in changes:
        per_partition.setdefault(c["_partition"], []).append(c["_offset"])
    assert all(sorted(o) == list(range(len(o))) for o in per_partition.values())
    replay: dict[int, list[tuple[str, Any, Any]]] = {}
    for c in sorted(changes, key=lambda c: (c["_partition"], c["_offset"])):
        replay.setdefault(c["id"], []).append((c["_op"], c["v"], c["n"]))
    assert replay == history
    assert sub.next_offsets == {p: len(o) for p, o in per_partition.items()}
    assert batches[-1].next_offsets == sub.next_offsets

    # Starting at a time: everything since 2000, nothing from an hour ahead.
    since = changes_of(client.subscribe(TABLE, start=dt.datetime(2000, 1, 1), follow=False))
    assert len(since) == total
    ahead = dt.datetime.now(UTC) + dt.timedelta(hours=1)
    assert changes_of(client.subscribe(TABLE, start=ahead, follow=False)) == []

    # Stop after some changes (limit), resume from next_offsets: exactly the rest.
    with client.subscribe(TABLE, limit=37) as head:
        first_part = changes_of(head)
        resume = head.next_offsets
    assert len(first_part) == 37
    rest = changes_of(client.subscribe(TABLE, from_offsets=resume, follow=False))
    seen = [(c["_partition"], c["_offset"]) for c in first_part + rest]
    assert len(seen) == len(set(seen)) == total

    # Resume after one batch taken by hand.
    sub = client.subscribe(TABLE, columns=["v"])
    one = next(sub)
    sub.close()
    assert set(one.batch.schema.names) == {"_op", "_partition", "_offset", "_timestamp", "id", "v"}
    after = changes_of(client.subscribe(TABLE, from_offsets=one.next_offsets, follow=False))
    assert len(one) + len(after) == total

    # Partition subsets add up to the whole stream.
    parts = [changes_of(client.subscribe(TABLE, partitions=[p], follow=False)) for p in range(3)]
    assert all({c["_partition"] for c in part} <= {p} for p, part in enumerate(parts))
    assert sorted((c["_partition"], c["_offset"]) for part in parts for c in part) == sorted(seen)

    # Following the tail: new writes arrive.
    with client.subscribe(TABLE, start="latest") as tail:
        client.write(TABLE, [{"id": 100 + i, "v": "new"} for i in range(4)])
        fresh: list[dict[str, Any]] = []
        for batch in tail:
            fresh += batch.to_pylist()
            if len(fresh) >= 4:
                break
    assert sorted(c["id"] for c in fresh) == [100, 101, 102, 103]
    assert {c["_op"] for c in fresh} == {"insert"}

    # A snapshot start: the snapshot's rows as inserts with no offset, then changes.
    for i in range(4):
        live[100 + i] = ("new", None)
    client.write(TABLE, [{"id": 500, "v": "x"}], wait="snapshot")
    live[500] = ("x", None)
    with client.subscribe(TABLE, start="snapshot") as snap:
        assert snap.as_of.snapshot_id is not None
        rows: list[dict[str, Any]] = []
        for batch in snap:
            rows += batch.to_pylist()
            if len(rows) >= len(live):
                break
    assert all(r["_op"] == "insert" and r["_offset"] is None for r in rows)
    assert {r["id"]: (r["v"], r["n"]) for r in rows} == live

    with pytest.raises(unitable.InvalidArgument):
        client.subscribe(TABLE, start="snapshot", follow=False)
    with pytest.raises(unitable.InvalidArgument) as bad_partition:
        client.subscribe(TABLE, partitions=[7])
    assert TABLE in str(bad_partition.value)


class GroupMember:
    """A consumer group member iterating in a thread (commit mode "next"): it records every
    change, and leaves the group cleanly (committing what it processed) once told to stop and
    handed one more batch."""

    def __init__(self, client, member: str):
        self.sub = client.subscribe(GROUP_TABLE, group="g", member=member)
        self.seen: list[dict[str, Any]] = []
        self.assignments: list[unitable.GroupAssignment] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.sub:
                for batch in self.sub:
                    if self.sub.assignment not in self.assignments[-1:]:
                        self.assignments.append(self.sub.assignment)
                    self.seen += batch.to_pylist()
                    if self.stop.is_set():
                        break
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def leave(self, client, poke: Callable[[], None]) -> None:
        self.stop.set()
        while self.thread.is_alive():
            poke()
            self.thread.join(1)
        assert self.error is None, self.error


def test_consumer_group_members_share_the_table_and_carry_on_across_rebalances(client):
    """Members of one group split the partitions; a member joining and one leaving rebalance
    the group, and the members reconnect by themselves; with positions committed per batch
    every change reaches exactly one member once. The server's positions then resume a new
    member where the group stopped, and manual commits decide what is read again."""
    client.tables.create(GROUP_TABLE, ["id:int64!", "v:string"], primary_key=["id"], buckets=4)
    written: list[tuple[int, str]] = []
    step = [0]

    def write(n: int) -> None:
        step[0] += 1
        rows = [{"id": k, "v": f"w{step[0]}"} for k in range(n)]
        client.write(GROUP_TABLE, rows, op="upsert")
        written.extend((r["id"], r["v"]) for r in rows)

    def every(member_list: list[GroupMember]) -> list[dict[str, Any]]:
        return [c for m in member_list for c in m.seen]

    def wait_for(what: str, check) -> None:
        deadline = time.monotonic() + 60
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    write(40)
    a = GroupMember(client, "a")
    wait_for("member a to read the first writes", lambda: len(a.seen) >= 40)
    assert a.assignments[0].partitions == [0, 1, 2, 3]
    b = GroupMember(client, "b")
    wait_for("the rebalance", lambda: b.sub.assignment is not None and a.sub.rebalances >= 1)
    for _ in range(5):
        write(40)
    members = [a, b]
    wait_for("both members to read everything", lambda: len(every(members)) >= len(written))
    assert b.assignments and a.assignments[-1].generation == b.assignments[-1].generation
    shares = [set(a.assignments[-1].partitions), set(b.assignments[-1].partitions)]
    assert shares[0] and shares[1] and not shares[0] & shares[1]
    assert shares[0] | shares[1] == {0, 1, 2, 3}
    b.leave(client, lambda: write(40))
    rebalances = a.sub.rebalances
    wait_for("a to take b's partitions", lambda: a.sub.rebalances > rebalances
             and a.sub.assignment is not None and a.sub.assignment.partitions == [0, 1, 2, 3])
    write(40)
    wait_for("a to read the rest", lambda: len(every(members)) >= len(written))
    # A member committing per batch has committed everything it was handed once it waits
    # for more: closing it then (from another thread) loses nothing.
    wait_for("a's last commit",
             lambda: client.consumer_groups(GROUP_TABLE, "g")[0].lag_records == 0)
    a.sub.close()
    a.thread.join(10)
    assert not a.thread.is_alive() and a.error is None, a.error

    # Each change once, at most one member per change: the model is every row written.
    seen = every(members)
    positions = [(c["_partition"], c["_offset"]) for c in seen]
    assert len(positions) == len(set(positions)), "a change was delivered twice"
    assert sorted((c["id"], c["v"]) for c in seen) == sorted(written)

    # The group's positions are the heads: nothing left to read, and a new member of the
    # group starts there (an earliest start applies only where the group has no position).
    [group] = client.consumer_groups(GROUP_TABLE, "g")
    assert group.lag_records == 0
    wait_for("a to leave", lambda: client.consumer_groups(GROUP_TABLE, "g")[0].members == [])
    heads = {p: max(o for q, o in positions if q == p) + 1 for p in range(4)}
    assert {p.partition: p.committed_offset for p in group.partitions} == heads
    with client.subscribe(GROUP_TABLE, group="g", start="earliest") as late:
        assert late.assignment is not None and late.assignment.member
        client.write(GROUP_TABLE, [{"id": 1000, "v": "late"}])
        batch = next(late)
        assert [(c["id"], c["v"]) for c in batch.to_pylist()] == [(1000, "late")]

    # Manual commits: what was not committed is read again, what was is not.
    with client.subscribe(GROUP_TABLE, group="m", commit="manual") as m:
        first = {(c["_partition"], c["_offset"]) for c in next(m).to_pylist()}
    with client.subscribe(GROUP_TABLE, group="m", commit="manual") as m:
        again: set[tuple[int, int]] = set()
        for batch in m:
            again |= {(c["_partition"], c["_offset"]) for c in batch.to_pylist()}
            if first <= again:
                break
        m.commit()
        committed = m.next_offsets
    with client.subscribe(GROUP_TABLE, group="m", commit="manual") as m:
        assert m.next_offsets == committed
    [manual] = client.consumer_groups(GROUP_TABLE, "m")
    assert {p.partition: p.committed_offset for p in manual.partitions
            if p.committed_offset is not None} == committed

    with pytest.raises(unitable.InvalidArgument) as mixed:
        client.subscribe(GROUP_TABLE, group="g", partitions=[0])
    assert mixed.value.field == "partitions"
    with pytest.raises(unitable.InvalidArgument):
        client.subscribe(GROUP_TABLE, member="x")
    plain = client.subscribe(GROUP_TABLE)
    with pytest.raises(unitable.InvalidArgument):
        plain.commit()
    plain.close()
    with pytest.raises(unitable.NotFound) as unknown:
        client.consumer_groups(GROUP_TABLE, "nobody")
    assert GROUP_TABLE in str(unknown.value)


def test_lookup_as_of_an_instant_matches_a_changelog_replay(client):
    """lookup(as_of=...) with a time, offsets and an earlier AsOf equals a replay of the
    changelog (read with subscribe) up to that instant; bad instants raise InvalidArgument
    naming the table and the field."""
    name = "sdk.asof"
    client.tables.create(name, ["id:int64!", "v:string"], primary_key=["id"], buckets=3)
    rng = random.Random(5)
    for step in range(8):
        rows = [{"id": rng.randint(0, 40), "v": f"a{step}-{i}"} for i in range(12)]
        client.write(name, rows, wait="snapshot" if step % 3 == 1 else "changelog")
        client.delete(name, [{"id": rng.randint(0, 40)} for _ in range(3)])
    with client.subscribe(name, follow=False) as sub:
        changes = changes_of(sub)
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    log: dict[int, list[tuple[int, int, str, Any]]] = {}
    for c in sorted(changes, key=lambda c: (c["_partition"], c["_offset"])):
        ms = (c["_timestamp"] - epoch) // dt.timedelta(milliseconds=1)
        log.setdefault(c["_partition"], []).append((c["_offset"], ms, c["_op"], c))

    def replay(ends: dict[int, int]) -> dict[int, dict[str, Any]]:
        state: dict[int, dict[str, Any]] = {}
        for p, records in log.items():
            for offset, _, op, c in records:
                if offset >= ends.get(p, 0):
                    break
                if op == "delete":
                    state.pop(c["id"], None)
                else:
                    state[c["id"]] = {"id": c["id"], "v": c["v"]}
        return state

    def ends_at(ms: int) -> dict[int, int]:
        # Each partition up to its first change stamped after the time.
        return {p: next((o for o, t, _, _ in records if t > ms), len(records))
                for p, records in log.items()}

    def check(found, ends: dict[int, int], keys: list[int]) -> None:
        state = replay(ends)
        assert found.to_pylist() == [state[k] for k in keys if k in state]
        assert found.missing == [i for i, k in enumerate(keys) if k not in state]
        partitions = {p for p in found.as_of.offsets}
        assert found.as_of.offsets == {p: ends[p] for p in partitions}

    keys = list(range(45))
    times = sorted(t for records in log.values() for _, t, _, _ in records)
    for t in [times[0] - 1, times[len(times) // 3], times[-1] - 1, times[-1]]:
        when = epoch + dt.timedelta(milliseconds=t)
        check(client.lookup(name, keys, as_of=when), ends_at(t), keys)
        check(client.lookup(name, keys, as_of=t), ends_at(t), keys)
    heads = {p: len(records) for p, records in log.items()}
    for _ in range(6):
        ends = {p: rng.randint(0, h) for p, h in heads.items()}
        found = client.lookup(name, keys, as_of=ends)
        check(found, ends, keys)
        # The AsOf of an answer names its instant: asking again gives the same rows.
        again = client.lookup(name, keys, as_of=found.as_of)
        assert again.to_pylist() == found.to_pylist() and again.missing == found.missing

    # More keys than one request takes: every piece at the same instant, offsets united.
    many = list(range(-10_500, 45))
    ends = {p: rng.randint(0, h) for p, h in heads.items()}
    split = client.lookup(name, many, as_of=ends)
    check(split, ends, many)
    assert split.as_of.offsets == ends

    with pytest.raises(unitable.InvalidArgument) as missing_partition:
        client.lookup(name, keys, as_of={0: 0})
    assert (missing_partition.value.table, missing_partition.value.field) == \
        (name, "as_of_offsets")
    assert name in str(missing_partition.value)
    with pytest.raises(unitable.InvalidArgument) as past:
        client.lookup(name, [1], as_of={p: h + 10 for p, h in heads.items()})
    assert (past.value.table, past.value.field) == (name, "as_of_offsets")
    with pytest.raises(unitable.InvalidArgument) as both:
        client.lookup(name, [1], snapshot_id=1, as_of=0)
    assert (both.value.table, both.value.field) == (name, "as_of")
    with pytest.raises(unitable.InvalidArgument) as wrong_type:
        client.lookup(name, [1], as_of="yesterday")  # type: ignore[arg-type]
    assert (wrong_type.value.table, wrong_type.value.field) == (name, "as_of")


def test_lookup_as_of_with_a_composite_key_reads_the_snapshot_by_key(client):
    """A composite key (string, int) as of the heads: keys last changed before the snapshot
    come from the key-filtered snapshot read, the others from the changelog; the answer equals
    a fresh lookup."""
    name = "sdk.asof2"
    client.tables.create(name, ["region:string!", "id:int64!", "v:string"],
                         primary_key=["region", "id"], buckets=2)
    rng = random.Random(3)
    keys = [{"region": r, "id": i} for r in ["eu", "us", "näh \"q\""] for i in range(15)]
    client.write(name, [{**k, "v": f"first-{k['id']}"} for k in keys], wait="snapshot")
    after_first = client.read(name, mode="fresh").as_of
    client.write(name, [{**k, "v": f"then-{k['id']}"} for k in rng.sample(keys, 10)])
    client.delete(name, rng.sample(keys, 5))
    asked = keys + [{"region": "eu", "id": 99}]
    first = client.read(name, mode="fresh").as_of
    # No lookup has built a key index for the table yet: the snapshot part is a scan.
    as_of = client.lookup(name, asked, as_of=first.offsets)
    fresh = client.lookup(name, asked)
    assert as_of.to_pylist() == fresh.to_pylist() and as_of.missing == fresh.missing
    assert as_of.as_of.snapshot_id is not None
    # As of the end of the first write (which its snapshot covers): every key as first
    # written.
    old = client.lookup(name, keys, as_of=after_first)
    assert [r["v"] for r in old.to_pylist()] == [f"first-{k['id']}" for k in keys]


def test_training_set_matches_a_changelog_replay(client, tmp_path):
    """training_set joins entity rows (dicts, a Parquet file, a unitable table) with features
    as of each row's time, equal to a replay of the changelog; with a TTL older values are
    null; errors name the table and field."""
    name = "sdk.feat"
    client.tables.create(name, ["id:int64!", "v:string", "n:int64"], primary_key=["id"],
                         buckets=3)
    rng = random.Random(9)
    for step in range(8):
        rows = [{"id": rng.randint(0, 30), "v": f"f{step}-{i}", "n": i} for i in range(10)]
        client.write(name, rows, wait="snapshot" if step % 3 == 1 else "changelog")
        client.delete(name, [{"id": rng.randint(0, 30)} for _ in range(2)])
    with client.subscribe(name, follow=False) as sub:
        changes = changes_of(sub)
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    log: dict[int, list[tuple[int, str, dict[str, Any]]]] = {}
    for c in sorted(changes, key=lambda c: (c["_partition"], c["_offset"])):
        ms = (c["_timestamp"] - epoch) // dt.timedelta(milliseconds=1)
        log.setdefault(c["_partition"], []).append((ms, c["_op"], c))
    part_of = {c["id"]: c["_partition"] for c in changes}

    def want(key: int, t: int, ttl: int | None) -> tuple[Any, Any, int | None]:
        """(v, n, end offset) of `key` at time `t`; the offset None when the key is unknown."""
        p = part_of.get(key)
        if p is None:
            return None, None, None
        records = log[p]
        end = next((i for i, (ts, _, _) in enumerate(records) if ts > t), len(records))
        last = next((r for r in reversed(records[:end]) if r[2]["id"] == key), None)
        if last is None or last[1] == "delete" or (ttl is not None and last[0] <= t - ttl):
            return None, None, end
        return last[2]["v"], last[2]["n"], end

    times = sorted(ts for records in log.values() for ts, _, _ in records)
    entity = [{"id": rng.randint(0, 33),
               "at": epoch + dt.timedelta(milliseconds=rng.choice(times) + rng.randint(-1, 1)),
               "label": i} for i in range(300)]
    entity[0]["at"] = epoch

    def check(got: pa.Table, ttl: int | None) -> None:
        assert got.column("label").to_pylist() == list(range(300))
        for row in got.to_pylist():
            t = (row["at"] - epoch) // dt.timedelta(milliseconds=1)
            v, n, end = want(row["id"], t, ttl)
            assert (row[f"{name}.v"], row[f"{name}.n"]) == (v, n), row
            if end is not None:
                assert row[f"{name}._offset"] == end and row[f"{name}._partition"] == \
                    part_of[row["id"]]

    features = [f"{name}.v", f"{name}.n"]
    check(client.training_set(entity, features, timestamp_column="at"), None)
    check(client.training_set(entity, features, timestamp_column="at", ttl=30), 30)
    path = tmp_path / "entities.parquet"
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(entity), path)
    check(client.training_set(path, features, timestamp_column="at",
                              ttl=dt.timedelta(milliseconds=30)), 30)
    client.tables.create("sdk.labels", ["id:int64!", "at:timestamptz", "label:int64!"],
                         primary_key=["label"])
    client.write("sdk.labels", entity)
    from_table = client.training_set("sdk.labels", features, timestamp_column="at")
    check(from_table.sort_by("label"), None)

    # As a stream: a RecordBatchReader over the file's rows, read as they are sent.
    stream = client.training_set_reader(path, features, timestamp_column="at")
    assert isinstance(stream, pa.RecordBatchReader)
    check(stream.read_all(), None)

    # More rows than one request message carries: one call of several messages, the same
    # answers in order.
    small = client.training_set(entity, features, timestamp_column="at")
    copies = 700
    big_rows = pa.concat_tables([pa.Table.from_pylist(entity)] * copies)
    big_rows = big_rows.set_column(big_rows.schema.get_field_index("label"), "label",
                                   pa.array(range(big_rows.num_rows), pa.int64()))
    assert big_rows.nbytes > 4 << 20
    big = client.training_set(big_rows, features, timestamp_column="at")
    assert big.num_rows == big_rows.num_rows
    assert big.column("label").to_pylist() == list(range(big_rows.num_rows))
    for column in [f"{name}.v", f"{name}.n", f"{name}._offset"]:
        assert big.column(column).combine_chunks().equals(
            pa.concat_arrays([small.column(column).combine_chunks()] * copies))

    with pytest.raises(unitable.InvalidArgument) as no_time:
        client.training_set(entity, features, timestamp_column="when")
    assert (no_time.value.field, no_time.value.table) == ("timestamp_column", name)
    with pytest.raises(unitable.InvalidArgument) as no_key:
        client.training_set([{"k": 1, "at": epoch}], features, timestamp_column="at")
    assert (no_key.value.field, no_key.value.table) == ("id", name)
    assert name in str(no_key.value)
    with pytest.raises(unitable.TableNotFound) as missing:
        client.training_set(entity, ["sdk.nope.v"], timestamp_column="at")
    assert missing.value.table == "sdk.nope"

    # Entity files that cannot be read: a wrong kind fails before the call; a CSV whose rows
    # stop fitting the types read from its first block fails while it is sent, and the call
    # is cancelled (no answer for the rows sent so far), with the reader's error.
    (tmp_path / "rows.json").write_text("{}")
    with pytest.raises(unitable.InvalidArgument) as wrong_kind:
        client.training_set(tmp_path / "rows.json", features, timestamp_column="at")
    assert (wrong_kind.value.field, wrong_kind.value.table) == ("entities", name)
    bad_csv = tmp_path / "late-error.csv"
    with bad_csv.open("w") as f:
        f.write("id,at\n")
        f.writelines(f"{i % 30},{i}\n" for i in range(200_000))
        f.write("not-a-number,5\n")
    with pytest.raises(unitable.InvalidArgument) as late:
        client.training_set(bad_csv, features, timestamp_column="at")
    assert (late.value.field, late.value.table) == ("entities", name)
    assert "reading the entity rows failed" in str(late.value), late.value


def test_errors_name_the_table(client):
    missing = "sdk.nope"
    calls = {
        "describe": lambda: client.tables.describe(missing),
        "drop": lambda: client.tables.drop(missing),
        "add_column": lambda: client.tables.add_column(missing, "x:int32"),
        "alter": lambda: client.tables.alter(missing, set={"a": "b"}),
        "write": lambda: client.write(missing, [{"id": 1}]),
        "scan": lambda: client.scan(missing),
        "scan snapshot": lambda: client.scan(missing, mode="snapshot"),
        "sql": lambda: client.sql(f"SELECT * FROM {missing}"),
        "lookup": lambda: client.lookup(missing, [{"id": 1}]),
        "subscribe": lambda: client.subscribe(missing),
        "compact": lambda: client.compact(missing),
    }
    for name, call in calls.items():
        with pytest.raises(unitable.NotFound) as err:
            call()
        assert isinstance(err.value, unitable.TableNotFound), (name, err.value)
        assert err.value.table == missing and missing in str(err.value), (name, err.value)

    client.tables.create(TABLE, ["id:int64!", "v:string"], primary_key=["id"])
    client.write(TABLE, [{"id": 1, "v": "a"}], wait="snapshot")
    with pytest.raises(unitable.InvalidArgument) as bad_key:
        client.lookup(TABLE, [{"id": 1}, {"id": "one"}])
    assert (bad_key.value.row, bad_key.value.field, bad_key.value.table) == (1, "id", TABLE)
    with pytest.raises(unitable.InvalidArgument) as late_key:
        client.lookup(TABLE, [{"id": k} for k in range(10_003)] + [{"v": "no id"}])
    assert late_key.value.row == 10_003, "key indexes count across split requests"
    with pytest.raises(unitable.InvalidArgument) as bad_column:
        client.scan(TABLE, columns=["nope"])
    assert TABLE in str(bad_column.value) and "nope" in str(bad_column.value)
    with pytest.raises(unitable.InvalidArgument) as bad_filter:
        client.scan(TABLE, filter="nope > 1")
    assert TABLE in str(bad_filter.value) and bad_filter.value.field == "nope"
    with pytest.raises(unitable.InvalidArgument) as bad_sql_column:
        client.sql(f"SELECT nope FROM {TABLE}")
    assert bad_sql_column.value.table == TABLE and bad_sql_column.value.field == "nope"
    with pytest.raises(unitable.InvalidArgument) as bad_sql:
        client.sql(f"SELEKT * FROM {TABLE}")
    assert TABLE in str(bad_sql.value)
    with pytest.raises(unitable.InvalidArgument):
        client.scan(TABLE, mode="fresh", snapshot_id=1)
    with pytest.raises(unitable.NotFound) as no_snapshot:
        client.scan(TABLE, snapshot_id=12345)
    assert not isinstance(no_snapshot.value, unitable.TableNotFound)
    assert TABLE in str(no_snapshot.value)
    with pytest.raises(unitable.InvalidArgument) as past_end:
        client.subscribe(TABLE, from_offsets={0: 10**9})
    assert TABLE in str(past_end.value)


def test_unreachable_server_is_unavailable():
    from harness import free_port

    client = unitable.connect(f"127.0.0.1:{free_port()}", retries=0, timeout=5)
    with pytest.raises(unitable.Unavailable) as err:
        client.scan("sdk.t")
    assert "sdk.t" in str(err.value) and err.value.table == "sdk.t"
    client.close()


def test_writes_retry_through_a_server_restart(service):
    """A write sent while the server is down is retried (same request id) until it is back,
    and its rows are written once."""
    import threading
    import time

    client = unitable.connect(service.grpc_url, retries=8)
    client.tables.create("sdk.log", ["seq:int64!", "msg:string"])
    client.write("sdk.log", [{"seq": 0, "msg": "before"}])
    service.kill()
    outcome: dict[str, Any] = {}

    def write() -> None:
        try:
            outcome["result"] = client.write(
                "sdk.log", [{"seq": i, "msg": "during"} for i in range(1, 4)], request_id="r1")
        except Exception as e:  # reported below
            outcome["error"] = e

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(1.0)  # the first attempt meets the dead server
    assert writer.is_alive(), outcome
    service.restart()
    writer.join(timeout=120)
    assert not writer.is_alive() and "error" not in outcome, outcome
    assert outcome["result"].rows_written == 3 and outcome["result"].request_ids == ["r1:0"]
    got = sorted((r["seq"], r["msg"]) for r in client.scan("sdk.log").to_pylist())
    assert got == [(0, "before"), (1, "during"), (2, "during"), (3, "during")]
    client.close()
