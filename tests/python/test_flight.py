"""Arrow Flight and Flight SQL (docs/api.md "Arrow Flight") with outside clients, unchanged:
`pyarrow.flight` for table reads (every endpoint of SNAPSHOT and FRESH, time travel,
projection and filter, clear errors) and `adbc-driver-flightsql` for SQL (queries in both read
modes, prepared statements, GetInfo, GetObjects); both with tokens (bearer header and
user/password handshake) and refused without a grant.

Every read is compared with a Python model of the rows written through the SDK.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

try:
    import unitable
except ImportError as e:  # scripts/test installs the SDK; say so instead of a collection error
    _MISSING: str | None = str(e)
else:
    _MISSING = None

try:
    import adbc_driver_flightsql
    import adbc_driver_flightsql.dbapi as flightsql
    import adbc_driver_manager
except ImportError as e:
    _NO_ADBC: str | None = str(e)
else:
    _NO_ADBC = None

TABLE = "fl.kv"


@pytest.fixture(autouse=True)
def _clients_installed() -> None:
    if _MISSING is not None:
        pytest.fail(f"the unitable SDK is not installed ({_MISSING}); run scripts/test")
    if _NO_ADBC is not None:
        pytest.fail(f"adbc-driver-flightsql is not installed ({_NO_ADBC}); it is pinned in "
                    "tests/python/requirements.txt (scripts/test installs it)")


def flight_uri(service) -> str:
    return f"grpc://127.0.0.1:{service.grpc_port}"


def rows_of(table: pa.Table) -> dict[int, tuple[str, int]]:
    out: dict[int, tuple[str, int]] = {}
    for r in table.to_pylist():
        assert r["id"] not in out, f"id {r['id']} read twice"
        out[r["id"]] = (r["v"], r["n"])
    return out


def read_all(client: flight.FlightClient, descriptor: flight.FlightDescriptor,
             options: flight.FlightCallOptions | None = None):
    """Every endpoint of a read, each on its own DoGet; the FlightInfo and the joined table."""
    options = options or flight.FlightCallOptions()
    info = client.get_flight_info(descriptor, options)
    parts = [client.do_get(e.ticket, options).read_all() for e in info.endpoints]
    for part in parts:
        assert part.schema.equals(info.schema), (part.schema, info.schema)
    return info, pa.concat_tables(parts) if parts else info.schema.empty_table()


def command(**read) -> flight.FlightDescriptor:
    return flight.FlightDescriptor.for_command(json.dumps(read).encode())


def write_round(client, rng: random.Random, model: dict, keys: int, tag: str, *,
                wait: str = "changelog") -> None:
    """Random upserts and deletes of ids 0..keys, applied to the model."""
    upserts: dict[int, dict] = {}
    deletes: set[int] = set()
    for _ in range(rng.randint(20, 60)):
        key = rng.randrange(keys)
        if key in upserts or key in deletes:
            continue
        if rng.random() < 0.2 and key in model:
            deletes.add(key)
        else:
            upserts[key] = {"id": key, "v": f"{tag}-{rng.randrange(1000)}", "n": rng.randrange(100)}
    client.write(TABLE, list(upserts.values()), op="upsert",
                 wait=wait if not deletes else "changelog")
    if deletes:
        client.write(TABLE, [{"id": k} for k in sorted(deletes)], op="delete", wait=wait)
    for key, row in upserts.items():
        model[key] = (row["v"], row["n"])
    for key in deletes:
        model.pop(key, None)


def test_flight_reads_match_the_model(start_service):
    service = start_service("--commit-interval", "300ms")
    rng = random.Random(17)
    model: dict[int, tuple[str, int]] = {}
    with unitable.connect(service.grpc_url) as sdk:
        sdk.tables.create(TABLE, ["id:int64!", "v:string", "n:int64"], primary_key=["id"],
                          buckets=4)
        # Several snapshots, so several data files (and position deletes between them).
        for round_ in range(4):
            write_round(sdk, rng, model, 300, f"s{round_}", wait="snapshot")
        committed = dict(model)
        client = flight.connect(flight_uri(service))

        # ListFlights: the table, by path, with its schema.
        [listed] = list(client.list_flights())
        assert listed.descriptor.path == [TABLE.encode()]
        assert listed.schema.names == ["id", "v", "n"]

        # SNAPSHOT by path: the latest snapshot, read in parallel-able parts.
        info, table = read_all(client, flight.FlightDescriptor.for_path(TABLE))
        assert len(info.endpoints) > 1, "a table of several files is one endpoint"
        assert rows_of(table) == committed
        as_of = json.loads(info.app_metadata)
        snapshot_id = as_of["snapshot_id"]
        assert isinstance(snapshot_id, int)
        assert rows_of(sdk.scan(TABLE, mode="snapshot")) == committed

        # FRESH: every acknowledged write, committed or not yet.
        for round_ in range(3):
            write_round(sdk, rng, model, 300, f"f{round_}")
        assert model != committed
        info, table = read_all(client, command(table=TABLE, mode="fresh"))
        assert len(info.endpoints) > 1
        assert rows_of(table) == model
        fresh_as_of = json.loads(info.app_metadata)
        assert sum(fresh_as_of["offsets"].values()) > sum(as_of["offsets"].values())

        # Time travel, projection and filter, endpoint count.
        sdk.write(TABLE, [{"id": 5000, "v": "late", "n": 1}], wait="snapshot")
        model[5000] = ("late", 1)
        info, table = read_all(client, command(table=TABLE, snapshot_id=snapshot_id,
                                               max_endpoints=2))
        assert len(info.endpoints) == 2
        assert rows_of(table) == committed
        info, table = read_all(client, command(table=TABLE, mode="fresh", columns=["n", "id"],
                                               filter="n >= 50 AND id < 200"))
        assert table.column_names == ["n", "id"]
        want = {k: n for k, (_, n) in model.items() if n >= 50 and k < 200}
        got = dict(zip(table.column("id").to_pylist(), table.column("n").to_pylist()))
        assert got == want and len(got) == table.num_rows
        _, table = read_all(client, command(table=TABLE, limit=7))
        assert table.num_rows == 7

        # A ticket fetched twice gives the same rows (it pins the read).
        info = client.get_flight_info(command(table=TABLE, mode="fresh"))
        first = [client.do_get(e.ticket).read_all() for e in info.endpoints]
        sdk.write(TABLE, [{"id": 1, "v": "after", "n": 2}])
        again = [client.do_get(e.ticket).read_all() for e in info.endpoints]
        assert [rows_of(t) for t in first] == [rows_of(t) for t in again]

        # Errors name what is wrong, with the gRPC code pyarrow maps to its error classes.
        with pytest.raises(pa.lib.ArrowKeyError, match="table `fl.no_such` does not exist"):
            client.get_flight_info(flight.FlightDescriptor.for_path("fl.no_such"))
        with pytest.raises(pa.ArrowInvalid, match="nope"):
            client.get_flight_info(command(table=TABLE, filter="nope > 1"))
        with pytest.raises(pa.ArrowInvalid, match="colums"):
            client.get_flight_info(command(table=TABLE, colums=["id"]))
        with pytest.raises(pa.ArrowInvalid, match="ticket"):
            client.do_get(flight.Ticket(b"\xff\xfe not a ticket")).read_all()
        with pytest.raises(pa.ArrowNotImplementedError, match="read-only"):
            writer, _ = client.do_put(flight.FlightDescriptor.for_path(TABLE),
                                      pa.schema([("id", pa.int64())]))
            writer.close()


def test_adbc_flight_sql_queries(start_service):
    service = start_service("--commit-interval", "300ms")
    rng = random.Random(29)
    model: dict[int, tuple[str, int]] = {}
    sdk = unitable.connect(service.grpc_url)
    sdk.tables.create(TABLE, ["id:int64!", "v:string", "n:int64"], primary_key=["id"])
    write_round(sdk, rng, model, 100, "a", wait="snapshot")
    committed = dict(model)

    with flightsql.connect(flight_uri(service), autocommit=True) as conn:
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "unitable"
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, v, n FROM {TABLE}")
            assert rows_of(cur.fetch_arrow_table()) == committed
            cur.execute(f"SELECT count(*) AS c, sum(n) AS s FROM {TABLE} WHERE n < 50")
            c, s = cur.fetchone()
            low = [n for _, n in committed.values() if n < 50]
            assert (c, s or 0) == (len(low), sum(low))
            with pytest.raises(adbc_driver_manager.Error, match="not a query"):
                cur.execute(f"DELETE FROM {TABLE}")
            with pytest.raises(adbc_driver_manager.Error, match="missing"):
                cur.execute("SELECT * FROM fl.missing")
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = [(schema["db_schema_name"], t["table_name"])
                  for catalog in objects for schema in catalog["catalog_db_schemas"] or []
                  for t in schema["db_schema_tables"] or []]
        assert tables == [("fl", "kv")]
        assert conn.adbc_get_table_schema("kv", db_schema_filter="fl").names == ["id", "v", "n"]

    # FRESH through a call header: every acknowledged write.
    write_round(sdk, rng, model, 100, "b")
    fresh = {"adbc.flight.sql.rpc.call_header.unitable-read-mode": "fresh"}
    with flightsql.connect(flight_uri(service), db_kwargs=fresh, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {TABLE} ORDER BY id")
            assert rows_of(cur.fetch_arrow_table()) == model
            # A prepared statement (ADBC prepares when asked, and when given parameters).
            cur.adbc_prepare(f"SELECT id, v, n FROM {TABLE} WHERE id < 10")
            cur.execute(f"SELECT id, v, n FROM {TABLE} WHERE id < 10")
            assert rows_of(cur.fetch_arrow_table()) == {k: r for k, r in model.items() if k < 10}


def test_flight_and_flight_sql_need_a_token_and_a_grant(start_service, tmp_path: Path):
    token_file = tmp_path / "admin.token"
    service = start_service("--bootstrap-admin-token-file", str(token_file))
    admin_token = token_file.read_text().strip()
    admin = unitable.connect(service.grpc_url, token=admin_token)
    admin.tables.create(TABLE, ["id:int64!", "v:string", "n:int64"], primary_key=["id"])
    admin.write(TABLE, [{"id": i, "v": f"x{i}", "n": i} for i in range(20)], wait="snapshot")
    want = {i: (f"x{i}", i) for i in range(20)}
    bob = admin.access.create_token("bob", "flight test").token
    uri = flight_uri(service)

    def bearer(token: str) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])

    client = flight.connect(uri)
    # (The harness starts servers with --allow-anonymous; the Rust test covers no credentials.)
    with pytest.raises(flight.FlightUnauthenticatedError, match="unknown, malformed or revoked"):
        client.get_flight_info(flight.FlightDescriptor.for_path(TABLE), bearer("ut_bogus"))
    _, table = read_all(client, flight.FlightDescriptor.for_path(TABLE), bearer(admin_token))
    assert rows_of(table) == want
    # Bob has no grant: refused, and a ticket made for the admin does not help him.
    assert list(client.list_flights(options=bearer(bob))) == []
    with pytest.raises(flight.FlightUnauthorizedError, match="bob"):
        client.get_flight_info(flight.FlightDescriptor.for_path(TABLE), bearer(bob))
    info = client.get_flight_info(command(table=TABLE, mode="fresh"), bearer(admin_token))
    with pytest.raises(flight.FlightUnauthorizedError, match="lacks `read`"):
        client.do_get(info.endpoints[0].ticket, bearer(bob)).read_all()
    # The user/password handshake: the password is a token; later calls carry it as bearer.
    basic = flight.connect(uri)
    header = basic.authenticate_basic_token("admin", admin_token)
    assert header == (b"authorization", f"Bearer {admin_token}".encode())
    _, table = read_all(basic, flight.FlightDescriptor.for_path(TABLE),
                        flight.FlightCallOptions(headers=[header]))
    assert rows_of(table) == want
    with pytest.raises(flight.FlightUnauthenticatedError, match="token is `admin`'s"):
        flight.connect(uri).authenticate_basic_token("bob", admin_token)

    sql = f"SELECT * FROM {TABLE}"
    with flightsql.connect(uri, db_kwargs={
            adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value:
                f"Bearer {admin_token}"}, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)
        assert rows_of(cur.fetch_arrow_table()) == want
    with flightsql.connect(uri, db_kwargs={"username": "bob", "password": bob},
                           autocommit=True) as conn, \
            conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error, match="lacks `read` on table fl.kv"):
            cur.execute(sql)
    admin.access.grant("read", table=TABLE, user="bob")
    with flightsql.connect(uri, db_kwargs={"username": "bob", "password": bob},
                           autocommit=True) as conn, \
            conn.cursor() as cur:
        cur.execute(sql)
        assert rows_of(cur.fetch_arrow_table()) == want
