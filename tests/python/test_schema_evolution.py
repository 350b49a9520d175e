"""Schema evolution across log and lake, judged against a model and by PyIceberg.

For each changelog format (json-v1, avro-v1): a keyed table takes writes, then one AlterTable
renames a column, widens three (int32 -> int64, float32 -> float64, decimal(10,2) ->
decimal(12,2)), makes a required column optional, moves a column first and drops one, while
records of the old schema may still wait in the changelog for their commit. More writes follow
under the new schema (values only the wider types hold, nulls in the now optional column,
upserts and deletes of old keys). Then:

- PyIceberg reads the current snapshot and every earlier one (field ids kept, old data files
  promoted) and the current one equals the model;
- SNAPSHOT, FRESH, LOOKUP and a STREAM replay from the earliest offset all equal the model,
  before and after a restart and after compaction;
- `unitable verify` (changelog replay against the snapshot) finds no difference;
- changes that would break the changelog key or the partitioning are refused with the column
  named.

Old float32 values are widened exactly (0.1f32 reads as 0.10000000149011612 everywhere), as
Iceberg widens values of old data files.
"""

from __future__ import annotations

import struct
from decimal import Decimal

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

try:
    import unitable
    from unitable import InvalidArgument
except ImportError as e:
    _MISSING: str | None = str(e)
else:
    _MISSING = None

TABLE = "evo.items"
COLUMNS = ["id:int64!", "qty:int32!", "price:float32", "amt:decimal(10,2)", "note:string",
           "tag:string", "extra:string"]
OLD_ARROW = pa.schema([
    pa.field("id", pa.int64(), nullable=False), pa.field("qty", pa.int32(), nullable=False),
    pa.field("price", pa.float32()), pa.field("amt", pa.decimal128(10, 2)), pa.field("note", pa.string()),
    pa.field("tag", pa.string()), pa.field("extra", pa.string()),
])
NEW_ARROW = pa.schema([
    pa.field("tag", pa.string()), pa.field("id", pa.int64(), nullable=False), pa.field("qty", pa.int64()),
    pa.field("price", pa.float64()), pa.field("amt", pa.decimal128(12, 2)), pa.field("memo", pa.string()),
])
NEW_COLUMNS = [f.name for f in NEW_ARROW]


@pytest.fixture(autouse=True)
def _sdk_installed() -> None:
    if _MISSING is not None:
        pytest.fail(f"the unitable SDK is not installed ({_MISSING}); scripts/test installs it")


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def old_row(i: int, round_: int) -> dict:
    return {"id": i, "qty": i * 10 + round_, "price": 0.1 * i + round_, "amt": Decimal(f"{i}.{round_:02d}"),
            "note": f"note {i}/{round_}", "tag": f"t{i % 3}", "extra": "gone"}


def as_new(row: dict) -> dict:
    """An old-schema row as the new schema reads it."""
    return {"tag": row["tag"], "id": row["id"], "qty": row["qty"],
            "price": None if row["price"] is None else f32(row["price"]), "amt": row["amt"],
            "memo": row["note"]}


def new_row(i: int) -> dict:
    return {"tag": "new", "id": i, "qty": None if i % 4 == 0 else 5_000_000_000 + i,
            "price": 0.1 * i, "amt": Decimal("9999999999.99") if i % 2 else Decimal("-1.25"),
            "memo": f"memo {i}"}


def by_id(rows: list[dict], names: list[str] = NEW_COLUMNS) -> dict[int, dict]:
    """Rows keyed by `id`, each with the columns `names`."""
    return {r["id"]: {k: r[k] for k in names} for r in rows}


def replay(client, table: str, names: list[str] = NEW_COLUMNS) -> dict[int, dict]:
    """The table's rows as a STREAM from the earliest offset leaves them (columns `names`)."""
    model: dict[int, dict] = {}
    with client.subscribe(table, start="earliest", follow=False) as sub:
        for change in sub:
            for r in change.batch.to_pylist():
                if r["_op"] == "delete":
                    model.pop(r["id"], None)
                else:
                    model[r["id"]] = {k: r[k] for k in names}
    return model


def check_reads(client, model: dict[int, dict], label: str) -> None:
    snapshot = by_id(client.scan(TABLE, mode="snapshot").to_pylist())
    assert snapshot == model, f"{label}: SNAPSHOT"
    fresh = by_id(client.scan(TABLE, mode="fresh").to_pylist())
    assert fresh == model, f"{label}: FRESH"
    keys = sorted(model) + [10_000]
    found = client.lookup(TABLE, keys)
    assert found.missing == [len(keys) - 1], label
    assert by_id(found.table.to_pylist()) == model, f"{label}: LOOKUP"
    assert replay(client, TABLE) == model, f"{label}: STREAM replay"
    # Filters on a widened and on a renamed column (pushed down only where the snapshot's
    # files have the column under the same name and type).
    for mode in ("snapshot", "fresh"):
        big = by_id(client.scan(TABLE, filter="qty > 3000000000", mode=mode).to_pylist())
        assert big == {k: v for k, v in model.items() if (v["qty"] or 0) > 3_000_000_000}, label
        memo = by_id(client.scan(TABLE, filter="memo = 'note 12/1'", mode=mode).to_pylist())
        assert memo == {k: v for k, v in model.items() if v["memo"] == "note 12/1"}, label
        assert len(memo) == 1, label


def write_and_evolve(client, changelog_format: str) -> dict[int, dict]:
    """Creates TABLE, writes under the old schema, changes the columns while old records may
    still wait for their commit, writes under the new schema; returns the model (new columns)."""
    client.tables.create(TABLE, COLUMNS, primary_key=["id"], buckets=2,
                         changelog_format=changelog_format)
    first = [old_row(i, 0) for i in range(20)]
    client.write(TABLE, pa.Table.from_pylist(first, schema=OLD_ARROW), op="upsert", wait="snapshot")
    # Old-schema records still in the changelog when the schema changes (the commit
    # interval is longer than the time to the change).
    second = [old_row(i, 1) for i in range(10, 30)]
    client.write(TABLE, pa.Table.from_pylist(second, schema=OLD_ARROW), op="upsert")
    client.delete(TABLE, [{"id": 0}, {"id": 1}])
    model = {r["id"]: as_new(r) for r in first}
    model.update({r["id"]: as_new(r) for r in second})
    del model[0], model[1]

    info = client.tables.alter_columns(
        TABLE, rename={"note": "memo"}, widen={"qty": "int64", "price": "float64", "amt": "decimal(12,2)"},
        make_optional=["qty"], move={"tag": None}, drop=["extra"])
    assert [c.name for c in info.columns] == NEW_COLUMNS
    assert [c.field_id for c in info.raw.definition.columns] == [6, 1, 2, 3, 4, 5], "field ids kept"
    assert not info.columns[2].required

    third = [new_row(i) for i in range(25, 40)]
    client.write(TABLE, pa.Table.from_pylist(third, schema=NEW_ARROW), op="upsert")
    client.delete(TABLE, [{"id": 2}, {"id": 26}], wait="snapshot")
    model.update(by_id(third))
    del model[2], model[26]
    return model


@pytest.mark.parametrize("changelog_format", ["json-v1", "avro-v1"])
def test_columns_change_across_log_and_lake(start_service, changelog_format):
    service = start_service("--commit-interval", "1500ms")
    catalog = SqlCatalog("unitable", uri=f"sqlite:///{service.data_dir}/catalog.db",
                         warehouse=f"file://{service.data_dir}/warehouse")
    with unitable.connect(service.grpc_url) as client:
        model = write_and_evolve(client, changelog_format)
        check_reads(client, model, "after the change")

        # PyIceberg: every snapshot reads; the current one is the model.
        table = catalog.load_table(TABLE)
        assert [f.name for f in table.schema().fields] == NEW_COLUMNS
        for snap in table.snapshots():
            table.scan(snapshot_id=snap.snapshot_id).to_arrow()
        assert by_id(table.scan().to_arrow().to_pylist()) == model

        # Changes that would break the key or need a guess are refused, naming the column.
        refused = [
            (dict(rename={"id": "ident"}), "`id`"),
            (dict(widen={"memo": "int64"}), "string cannot be widened to int64"),
            (dict(drop=["nope"]), "there is no such column"),
            (dict(rename={"memo": "tag"}), "column `tag` already exists"),
            (dict(make_optional=["id"]), "primary-key column"),
        ]
        for kwargs, text in refused:
            with pytest.raises(InvalidArgument) as err:
                client.tables.alter_columns(TABLE, **kwargs)
            assert text in str(err.value), (kwargs, str(err.value))

    verified = service.cli("verify", TABLE)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    service.restart()
    with unitable.connect(service.grpc_url) as client:
        check_reads(client, model, "after a restart")
        client.compact(TABLE)
        check_reads(client, model, "after compaction")
    assert by_id(catalog.load_table(TABLE).scan().to_arrow().to_pylist()) == model

    # The CLI makes the same changes: a rename and a move, then a refused widening.
    moved = service.cli("table", "alter", TABLE, "--rename-column", "memo=remark",
                        "--move-column", "remark=after:id", check=True)
    assert "remark:string" in moved.stdout, moved.stdout
    schema = catalog.load_table(TABLE).schema()
    assert [f.name for f in schema.fields] == ["tag", "id", "remark", "qty", "price", "amt"]
    assert schema.find_field("remark").field_id == 5
    refused = service.cli("table", "alter", TABLE, "--widen-column", "qty:int32")
    assert refused.returncode != 0
    assert "cannot widen `qty` to int32: int64 cannot be widened to int32" in refused.stderr, refused.stderr
    with unitable.connect(service.grpc_url) as client:
        rows = client.scan(TABLE, mode="fresh").to_pylist()
    assert {r["id"]: r["remark"] for r in rows} == {k: v["memo"] for k, v in model.items()}

    # Two columns swap names: a filter on the new name must not prune by the old column of
    # that name in the snapshot's files.
    with unitable.connect(service.grpc_url) as client:
        client.tables.alter_columns(TABLE, rename={"tag": "t0"})
        client.tables.alter_columns(TABLE, rename={"remark": "tag"})
        client.tables.alter_columns(TABLE, rename={"t0": "remark"})
        for mode in ("snapshot", "fresh"):
            rows = client.scan(TABLE, filter="tag = 'note 12/1'", mode=mode).to_pylist()
            assert [r["id"] for r in rows] == [12], (mode, rows)
            assert rows[0]["remark"] == model[12]["tag"]
