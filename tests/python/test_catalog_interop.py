"""Tables made with the `unitable` CLI are ordinary Iceberg tables to PyIceberg.

The service keeps its catalog in SQLite at DATA_DIR/catalog.db with the warehouse at
DATA_DIR/warehouse. PyIceberg's SqlCatalog reads the same catalog tables, so every DDL step
done through the CLI (create, add column, drop) must be visible to it, with the types,
required-ness, identifier fields, partition spec and properties the CLI was given.
"""

from __future__ import annotations

import json
import re
from typing import Iterator

import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.transforms import DayTransform
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    StringType,
    TimestampType,
    TimestamptzType,
)

from harness import Service, http_request

TABLE = "shop.orders"

# (name, type as written to --column and printed by `table describe`, required, Iceberg type)
ORDERS_COLUMNS: list[tuple[str, str, bool, IcebergType]] = [
    ("id", "int64", True, LongType()),
    ("customer", "string", False, StringType()),
    ("amount", "decimal(12,2)", False, DecimalType(12, 2)),
    ("placed_at", "timestamptz", True, TimestamptzType()),
    ("day", "date", False, DateType()),
    ("flag", "bool", False, BooleanType()),
    ("score", "float64", False, DoubleType()),
    ("raw", "binary", False, BinaryType()),
    ("n", "int32", False, IntegerType()),
    ("ts", "timestamp", False, TimestampType()),
    ("f", "float32", False, FloatType()),
]
COLUMN_NAMES = [name for name, _, _, _ in ORDERS_COLUMNS]


def create_orders_args() -> list[str]:
    args = ["table", "create", TABLE]
    for name, type_name, required, _ in ORDERS_COLUMNS:
        args += ["--column", f"{name}:{type_name}{'!' if required else ''}"]
    args += ["--primary-key", "id", "--buckets", "4", "--partition-by", "day(placed_at)",
             "--property", "owner=growth"]
    return args


def create_orders(service: Service) -> None:
    service.cli(*create_orders_args(), check=True)


def open_catalog(service: Service) -> SqlCatalog:
    return SqlCatalog(
        "unitable",
        uri=f"sqlite:///{service.data_dir}/catalog.db",
        warehouse=f"file://{service.data_dir}/warehouse",
    )


def listed_tables(service: Service) -> str:
    return service.cli("table", "list", check=True).stdout


def describe_json(service: Service, table: str = TABLE) -> dict:
    out = service.cli("table", "describe", table, "--format", "json", check=True).stdout
    try:
        return json.loads(out)
    except json.JSONDecodeError as err:
        raise AssertionError(f"`table describe --format json` printed invalid JSON ({err}):\n{out}")


def test_created_table_is_an_iceberg_table_to_pyiceberg(service: Service) -> None:
    create_orders(service)

    catalog = open_catalog(service)
    assert ("shop",) in catalog.list_namespaces()
    assert ("shop", "orders") in catalog.list_tables("shop")
    table = catalog.load_table(TABLE)

    schema = table.schema()
    assert [field.name for field in schema.fields] == COLUMN_NAMES
    for name, type_name, required, iceberg_type in ORDERS_COLUMNS:
        field = schema.find_field(name)
        assert field.field_type == iceberg_type, f"{name}:{type_name} became {field.field_type}"
        assert field.required is required, f"{name}: required should be {required}"
    assert list(schema.identifier_field_ids) == [schema.find_field("id").field_id]

    properties = table.properties
    assert properties.get("owner") == "growth", properties
    assert properties.get("unitable.primary-key") == "id", properties
    assert properties.get("unitable.buckets") == "4", properties
    assert properties.get("unitable.changelog.topic") == "unitable.shop.orders", properties

    spec = table.spec()
    assert len(spec.fields) == 1, spec
    partition_field = spec.fields[0]
    assert isinstance(partition_field.transform, DayTransform), spec
    assert partition_field.source_id == schema.find_field("placed_at").field_id, spec

    assert table.current_snapshot() is None
    rows = table.scan().to_arrow()
    assert rows.num_rows == 0
    assert rows.schema.names == COLUMN_NAMES


def test_list_and_describe_match_the_catalog_and_survive_a_restart(service: Service) -> None:
    create_orders(service)
    assert TABLE in listed_tables(service)

    described = describe_json(service)
    table = open_catalog(service).load_table(TABLE)
    assert described["table"] == TABLE
    columns = described["columns"]
    assert [column["name"] for column in columns] == COLUMN_NAMES
    for column, (name, type_name, required, _) in zip(columns, ORDERS_COLUMNS):
        assert column["type"] == type_name, column
        assert column["required"] is required, column
        assert column["field_id"] == table.schema().find_field(name).field_id, column
    assert described["primary_key"] == ["id"]
    assert described["buckets"] == 4
    assert described["partition_by"] == ["day(placed_at)"]
    changelog = described["changelog"]
    assert changelog["topic"] == "unitable.shop.orders"
    assert isinstance(changelog["partitions"], int) and changelog["partitions"] >= 1, changelog
    assert changelog["format"], changelog
    assert described["properties"].get("owner") == "growth", described["properties"]
    assert described["current_snapshot_id"] is None
    assert described["location"].rstrip("/") == table.location().rstrip("/")

    service.restart()  # SIGKILL, then start on the same data dir
    assert TABLE in listed_tables(service)
    assert describe_json(service)["columns"] == columns


def test_added_column_and_dropped_table_are_seen_by_pyiceberg(service: Service) -> None:
    create_orders(service)
    before = open_catalog(service).load_table(TABLE).schema()

    service.cli("table", "add-column", TABLE, "--column", "note:string", check=True)
    schema = open_catalog(service).load_table(TABLE).schema()
    assert [field.name for field in schema.fields] == COLUMN_NAMES + ["note"]
    note = schema.find_field("note")
    assert note.field_type == StringType()
    assert note.required is False
    assert note.field_id not in {field.field_id for field in before.fields}
    assert list(schema.identifier_field_ids) == list(before.identifier_field_ids)
    assert describe_json(service)["columns"][-1]["name"] == "note"

    service.cli("table", "drop", TABLE, check=True)
    catalog = open_catalog(service)
    assert not catalog.table_exists(TABLE)
    with pytest.raises(NoSuchTableError):
        catalog.load_table(TABLE)
    assert TABLE not in listed_tables(service)


def test_altered_properties_are_seen_by_pyiceberg_and_the_writer(service: Service) -> None:
    create_orders(service)
    out = service.cli("table", "alter", TABLE, "--set", "owner=ml", "--set", "tier=gold",
                      "--set", "unitable.write.dead-letter=true", check=True).stdout
    assert "owner=ml" in out and "tier=gold" in out
    props = open_catalog(service).load_table(TABLE).properties
    assert props["owner"] == "ml" and props["tier"] == "gold"
    assert props["unitable.write.dead-letter"] == "true"
    assert describe_json(service)["properties"]["tier"] == "gold"

    # The writer takes the change at once: a rejected row now goes to the dead-letter topic
    # (read back through the console's JSON API).
    bad = service.workdir / "bad.jsonl"
    bad.write_text('{"id": 1, "placed_at": "2026-01-01T00:00:00Z", "n": "many"}\n')
    service.cli("write", TABLE, "--file", str(bad))
    status, body = http_request(
        "GET", f"http://{service.http_addr}/api/v1/tables/{TABLE}/dead-letters")
    assert status == 200, body
    letters = json.loads(body)["dead_letters"]
    assert [d["record"]["field"] for d in letters] == ["n"], letters

    service.cli("table", "alter", TABLE, "--unset", "tier", "--unset", "never-set", check=True)
    props = open_catalog(service).load_table(TABLE).properties
    assert "tier" not in props and props["owner"] == "ml"

    # Keys unitable manages cannot be changed; a key cannot be both set and unset.
    for args, mention in ((["--set", "unitable.primary-key=customer"], "unitable.primary-key"),
                          (["--unset", "unitable.changelog.topic"], "unitable.changelog.topic"),
                          (["--set", "a=1", "--unset", "a"], "`a`"),
                          ([], "nothing to alter")):
        result = service.cli("table", "alter", TABLE, *args)
        assert result.returncode == 1, result
        assert mention in result.stderr, result.stderr
    assert open_catalog(service).load_table(TABLE).properties["owner"] == "ml"


# --- errors: exit code 1 and one line on stderr that names the problem ---------------------------

@pytest.fixture(scope="module")
def orders_service(unitable_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service with shop.orders, shared by the error cases (none of which changes it)."""
    service = Service(unitable_bin, tmp_path_factory.mktemp("service-errors"))
    try:
        create_orders(service)
        yield service
    finally:
        service.kill()


# (id, CLI args, patterns: the stderr line must match every one, case-insensitively)
ERROR_CASES = [
    ("bad-table-name",
     ["table", "create", "Bad-Name", "--column", "id:int64!", "--primary-key", "id"],
     [r"Bad-Name"]),
    ("unknown-type",
     ["table", "create", "shop.weird", "--column", "x:uuidish"],
     [r"uuidish"]),
    ("float-primary-key",
     ["table", "create", "shop.floaty", "--column", "s:float64!", "--primary-key", "s"],
     [r"float|double", r"\bkey\b|primary"]),
    ("duplicate-column",
     ["table", "create", "shop.dup", "--column", "id:int64!", "--column", "id:string",
      "--primary-key", "id"],
     [r"\bid\b", r"duplicate|twice|more than once|already"]),
    ("existing-table",
     create_orders_args(),
     [re.escape(TABLE), r"exist"]),
    ("missing-table",
     ["table", "describe", "shop.missing"],
     [re.escape("shop.missing"), r"not found|not exist|no such|unknown"]),
]


@pytest.mark.parametrize("args,mentions", [(args, mentions) for _, args, mentions in ERROR_CASES],
                         ids=[case_id for case_id, _, _ in ERROR_CASES])
def test_cli_error_is_one_line_and_exit_code_1(orders_service: Service, args: list[str],
                                               mentions: list[str]) -> None:
    tables_before = listed_tables(orders_service)

    result = orders_service.cli(*args)

    assert result.returncode == 1, (
        f"`unitable {' '.join(args)}` exited with {result.returncode}, want 1\n"
        f"stderr:\n{result.stderr}\nstdout:\n{result.stdout}")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"want exactly one line on stderr, got:\n{result.stderr}"
    for pattern in mentions:
        assert re.search(pattern, lines[0], re.IGNORECASE), (
            f"stderr should match /{pattern}/: {lines[0]}")
    assert listed_tables(orders_service) == tables_before, "a failed command changed the table list"
