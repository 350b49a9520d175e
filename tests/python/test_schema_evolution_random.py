"""Random column changes interleaved with writes, deletes, compactions and restarts, against a
model that keeps every value by Iceberg field id.

Each step is one of: upsert a batch (some keys new, some old; nulls where a column allows them),
delete keys, change the columns (add, rename, widen, make optional, move or drop, chosen among the
changes valid at that point), compact, restart the server. After every change of columns, every
compaction and restart, and at the end: SNAPSHOT, FRESH, LOOKUP of every key and a STREAM replay
from the earliest offset equal the model under the current names, and PyIceberg's current
snapshot does too. Runs once per changelog format, with a fixed seed each
(UNITABLE_EVOLVE_SEED=N explores others).
"""

from __future__ import annotations

import os
import random
import struct
from decimal import Decimal

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from test_schema_evolution import by_id, replay

try:
    import unitable
except ImportError as e:
    _MISSING: str | None = str(e)
else:
    _MISSING = None

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("UNITABLE_EVOLVE_SEED", "20261205"))
STEPS = 28
TABLE = "evo.random"
ARROW_TYPES = {"int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(), "float64": pa.float64(),
               "string": pa.string(), "decimal(10,2)": pa.decimal128(10, 2),
               "decimal(14,2)": pa.decimal128(14, 2)}
WIDER = {"int32": "int64", "float32": "float64", "decimal(10,2)": "decimal(14,2)"}


@pytest.fixture(autouse=True)
def _sdk_installed() -> None:
    if _MISSING is not None:
        pytest.fail(f"the unitable SDK is not installed ({_MISSING}); scripts/test installs it")


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


class Model:
    """Columns (field id, name, type, required) and rows by key, values by field id."""

    def __init__(self) -> None:
        self.columns = [[1, "id", "int64", True], [2, "a", "int32", True], [3, "b", "float32", False],
                        [4, "c", "string", False], [5, "d", "decimal(10,2)", False]]
        self.next_id = 6
        self.rows: dict[int, dict[int, object]] = {}

    def value(self, rng: random.Random, ty: str, required: bool):
        if not required and rng.random() < 0.2:
            return None
        if ty == "int32":
            return rng.randint(-2**31, 2**31 - 1)
        if ty == "int64":
            return rng.randint(-2**63, 2**63 - 1)
        if ty == "float32":
            return f32(rng.uniform(-1e6, 1e6))
        if ty == "float64":
            return rng.uniform(-1e12, 1e12)
        if ty.startswith("decimal"):
            digits = 8 if ty == "decimal(10,2)" else 12
            return Decimal(rng.randint(-10**digits + 1, 10**digits - 1)).scaleb(-2)
        return rng.choice(["x", "y", "é", "", "long " * 5]) + str(rng.randint(0, 99))

    def arrow(self, rows: list[dict[int, object]]) -> pa.Table:
        fields = [pa.field(name, ARROW_TYPES[ty], nullable=not req) for _, name, ty, req in self.columns]
        data = {name: [r.get(fid) for r in rows] for fid, name, _, _ in self.columns}
        return pa.Table.from_pydict(data, schema=pa.schema(fields))

    def expected(self) -> dict[int, dict[str, object]]:
        return {k: {name: row.get(fid) for fid, name, _, _ in self.columns} for k, row in self.rows.items()}

    def names(self) -> list[str]:
        return [c[1] for c in self.columns]


def check_as_of(client, model: Model, past: list, rng: random.Random, label: str) -> None:
    """A LOOKUP as of an earlier check's offsets returns that check's rows, under today's
    columns (renamed, widened; null for columns added since; dropped ones gone)."""
    offsets, rows = rng.choice(past)
    keys = sorted(set(rows) | set(model.rows) | {999})
    found = client.lookup(TABLE, keys, as_of=offsets)
    want = {k: {name: row.get(fid) for fid, name, _, _ in model.columns} for k, row in rows.items()}
    assert by_id(found.table.to_pylist(), model.names()) == want, f"{label}: lookup as of {offsets}"
    assert [keys[i] for i in found.missing] == [k for k in keys if k not in rows], label


def check(client, catalog, model: Model, label: str) -> None:
    want, names = model.expected(), model.names()
    for mode in ("snapshot", "fresh"):
        got = by_id(client.scan(TABLE, mode=mode).to_pylist(), names)
        assert got == want, f"{label}: {mode}"
    if want:
        found = client.lookup(TABLE, sorted(want))
        assert found.missing == [], label
        assert by_id(found.table.to_pylist(), names) == want, f"{label}: lookup"
    assert replay(client, TABLE, names) == want, f"{label}: stream replay"
    table = catalog.load_table(TABLE)
    assert [f.name for f in table.schema().fields] == names, label
    assert by_id(table.scan().to_arrow().to_pylist(), names) == want, f"{label}: PyIceberg"


def column_change(rng: random.Random, model: Model, client) -> str:
    """Makes one random valid change to the columns, in the model and in the table."""
    rest = [c for c in model.columns if c[1] != "id"]
    choices = ["add", "rename", "move"]
    if any(c[2] in WIDER for c in rest):
        choices.append("widen")
    if any(c[3] for c in rest):
        choices.append("optional")
    if len(rest) > 2:
        choices.append("drop")
    kind = rng.choice(choices)
    if kind == "add":
        ty = rng.choice(["int32", "float32", "string", "decimal(10,2)"])
        name = f"n{model.next_id}"
        client.tables.add_column(TABLE, f"{name}:{ty}")
        model.columns.append([model.next_id, name, ty, False])
        model.next_id += 1
        return f"add {name}:{ty}"
    if kind == "rename":
        col = rng.choice(rest)
        new = f"r{rng.randint(0, 10**6)}"
        client.tables.alter_columns(TABLE, rename={col[1]: new})
        old, col[1] = col[1], new
        return f"rename {old} -> {new}"
    if kind == "move":
        col = rng.choice(model.columns)
        model.columns.remove(col)
        others = [c[1] for c in model.columns]
        after = rng.choice([None] + others)
        client.tables.alter_columns(TABLE, move={col[1]: after})
        model.columns.insert(0 if after is None else others.index(after) + 1, col)
        return f"move {col[1]} after {after}"
    if kind == "widen":
        col = rng.choice([c for c in rest if c[2] in WIDER])
        client.tables.alter_columns(TABLE, widen={col[1]: WIDER[col[2]]})
        col[2] = WIDER[col[2]]
        return f"widen {col[1]} to {col[2]}"
    if kind == "optional":
        col = rng.choice([c for c in rest if c[3]])
        client.tables.alter_columns(TABLE, make_optional=[col[1]])
        col[3] = False
        return f"make {col[1]} optional"
    col = rng.choice(rest)
    client.tables.alter_columns(TABLE, drop=[col[1]])
    model.columns.remove(col)
    for row in model.rows.values():
        row.pop(col[0], None)
    return f"drop {col[1]}"


def settle(client, model: Model) -> None:
    """Writes one row again (the model does not change) and waits for a snapshot holding it,
    so that the snapshot covers every earlier write."""
    row = model.rows.get(min(model.rows)) if model.rows else None
    if row is None:
        row = {fid: None for fid, _, _, _ in model.columns}
        row.update({fid: 0 for fid, _, _, req in model.columns if req})
        row[1] = 1000
        model.rows[1000] = row
    client.write(TABLE, model.arrow([row]), op="upsert", wait="snapshot")


@pytest.mark.parametrize("changelog_format", ["json-v1", "avro-v1"])
def test_random_column_changes_keep_every_read_equal_to_the_model(start_service, changelog_format):
    rng = random.Random(f"{SEED}-{changelog_format}")
    service = start_service("--commit-interval", "300ms")
    catalog = SqlCatalog("unitable", uri=f"sqlite:///{service.data_dir}/catalog.db",
                         warehouse=f"file://{service.data_dir}/warehouse")
    model = Model()
    client = unitable.connect(service.grpc_url)
    try:
        client.tables.create(TABLE, [f"{n}:{t}{'!' if r else ''}" for _, n, t, r in model.columns],
                             primary_key=["id"], buckets=3, changelog_format=changelog_format)
        log = []
        # (offsets of a FRESH read, the rows by field id then), for lookups as of them later.
        past: list = []
        for step in range(STEPS):
            roll = rng.random()
            if roll < 0.45 or not model.rows:
                keys = [rng.randint(0, 60) for _ in range(rng.randint(1, 15))]
                rows = {}
                for k in keys:
                    row = {fid: model.value(rng, ty, req) for fid, _, ty, req in model.columns}
                    row[1] = k
                    rows[k] = row
                client.write(TABLE, model.arrow(list(rows.values())), op="upsert")
                model.rows.update(rows)
                log.append(f"upsert {sorted(rows)}")
                continue
            if roll < 0.6:
                gone = rng.sample(sorted(model.rows), min(len(model.rows), rng.randint(1, 4)))
                client.delete(TABLE, [{"id": k} for k in gone])
                for k in gone:
                    del model.rows[k]
                log.append(f"delete {gone}")
                continue
            if roll < 0.85:
                log.append(column_change(rng, model, client))
            elif roll < 0.95:
                client.compact(TABLE)
                log.append("compact")
            else:
                client.close()
                service.restart()
                client = unitable.connect(service.grpc_url)
                log.append("restart")
            settle(client, model)
            label = f"step {step} ({'; '.join(log[-4:])})"
            check(client, catalog, model, label)
            if past:
                check_as_of(client, model, past, rng, label)
            fresh = client.read(TABLE, mode="fresh")
            past.append((dict(fresh.as_of.offsets), {k: dict(v) for k, v in model.rows.items()}))
        settle(client, model)
        check(client, catalog, model, f"the end ({'; '.join(log)})")
    finally:
        client.close()
