"""Writes to a partitioned table (day(placed_at)) read back by PyIceberg: an upsert that moves a
row to another day deletes the old copy with a position-delete file in the old row's partition,
and each data file holds only its own day."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
from pyiceberg.catalog.sql import SqlCatalog

TABLE = "shop.orders"


def test_partitioned_upserts_read_back_by_pyiceberg(service, tmp_path: Path):
    service.cli("table", "create", TABLE, "--column", "id:int64!", "--column", "customer:string",
                "--column", "amount:decimal(12,2)", "--column", "placed_at:timestamptz!",
                "--primary-key", "id", "--partition-by", "day(placed_at)", check=True)
    first = tmp_path / "first.jsonl"
    first.write_text(
        '{"id":1,"customer":"a","amount":"1.50","placed_at":"2024-05-01T10:00:00Z"}\n'
        '{"id":2,"customer":"b","amount":2,"placed_at":"2024-05-02T23:59:59.999999Z"}\n'
        '{"id":3,"customer":"c","amount":"3.00","placed_at":"2024-05-01T00:00:00+02:00"}\n')
    service.cli("write", TABLE, "--file", str(first), "--wait", "snapshot", check=True)
    moved = tmp_path / "moved.jsonl"
    moved.write_text('{"id":1,"customer":"a2","amount":"1.75","placed_at":"2024-05-03T10:00:00Z"}\n')
    service.cli("write", TABLE, "--file", str(moved), "--wait", "snapshot", check=True)

    catalog = SqlCatalog("unitable", uri=f"sqlite:///{service.data_dir}/catalog.db",
                         warehouse=f"file://{service.data_dir}/warehouse")
    table = catalog.load_table(TABLE)
    rows = {r["id"]: (r["customer"], r["amount"], r["placed_at"].date())
            for r in table.scan().to_arrow().to_pylist()}
    assert rows == {
        1: ("a2", Decimal("1.75"), dt.date(2024, 5, 3)),
        2: ("b", Decimal("2.00"), dt.date(2024, 5, 2)),
        3: ("c", Decimal("3.00"), dt.date(2024, 4, 30)),
    }
    for f in table.inspect.files().to_pylist():
        day = f["partition"]["placed_at_day"]
        if f["content"] == 0:
            path = f["file_path"]
            data = table.io.new_input(path)
            with data.open() as stream:
                days = {v.date() for v in pq.read_table(stream).column("placed_at").to_pylist()}
            assert days == {day}, (path, days, day)
        else:
            assert f["content"] == 1 and day == dt.date(2024, 5, 1), f
    # Day filter prunes by partition and still applies the delete.
    got = table.scan(row_filter="placed_at < '2024-05-02T00:00:00+00:00'").to_arrow().to_pylist()
    assert sorted(r["id"] for r in got) == [3]
