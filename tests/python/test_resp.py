"""LOOKUP over the Redis protocol (`--resp-addr`, docs/resp.md) with an outside client, unchanged:
redis-py reads rows by `NAMESPACE.TABLE:KEY` with GET, MGET, HGET, HMGET, HGETALL and EXISTS,
pipelined or not, and every answer is compared with a Python model of the rows written through
the SDK (committed or only in the changelog). Bad keys, writes and unknown commands get errors
that name what is wrong; with tokens, AUTH, grants and revocation behave as in gRPC.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from harness import free_port, http_request

try:
    import unitable
except ImportError as e:  # scripts/test installs the SDK; say so instead of a collection error
    _MISSING: str | None = str(e)
else:
    _MISSING = None

try:
    import redis
except ImportError as e:
    _NO_REDIS: str | None = str(e)
else:
    _NO_REDIS = None

KV = "rs.kv"
USERS = "rs.users"
PAIRS = "rs.pairs"


@pytest.fixture(autouse=True)
def _clients_installed() -> None:
    if _MISSING is not None:
        pytest.fail(f"the unitable SDK is not installed ({_MISSING}); run scripts/test")
    if _NO_REDIS is not None:
        pytest.fail(f"redis-py is not installed ({_NO_REDIS}); it is pinned in "
                    "tests/python/requirements.txt (scripts/test installs it)")


def start_with_resp(start_service, *args: str, anonymous: bool = True):
    port = free_port()
    service = start_service("--resp-addr", f"127.0.0.1:{port}", "--commit-interval", "300ms",
                            *args, anonymous=anonymous)
    return service, port


def write_round(sdk, rng: random.Random, model: dict[int, dict], keys: int, tag: str,
                wait: str) -> None:
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
            n = None if rng.random() < 0.1 else rng.randrange(100)
            upserts[key] = {"id": key, "v": f"{tag}-{rng.randrange(1000)}", "n": n}
    sdk.write(KV, list(upserts.values()), op="upsert", wait=wait if not deletes else "changelog")
    if deletes:
        sdk.write(KV, [{"id": k} for k in sorted(deletes)], op="delete", wait=wait)
    model.update(upserts)
    for key in deletes:
        model.pop(key, None)


def test_resp_reads_match_the_model(start_service):
    service, port = start_with_resp(start_service)
    rng = random.Random(23)
    model: dict[int, dict] = {}
    with unitable.connect(service.grpc_url) as sdk:
        sdk.tables.create(KV, ["id:int64!", "v:string", "n:int64"], primary_key=["id"],
                          buckets=4)
        sdk.tables.create(USERS, ["name:string!", "score:float64", "active:bool"],
                          primary_key=["name"])
        sdk.tables.create(PAIRS, ["a:int64!", "b:string!", "w:int64"], primary_key=["a", "b"])
        users = {"alice": {"name": "alice", "score": 1.5, "active": True},
                 "bob:1": {"name": "bob:1", "score": None, "active": False}}
        sdk.write(USERS, list(users.values()), wait="snapshot")
        sdk.write(PAIRS, [{"a": 1, "b": "x", "w": 10}, {"a": 1, "b": "y", "w": 11}],
                  wait="changelog")

        r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        assert r.ping() is True
        # Snapshots, then writes acknowledged in the changelog only: every read sees them all.
        for round_ in range(6):
            write_round(sdk, rng, model, 400, f"r{round_}",
                        wait="snapshot" if round_ < 3 else "changelog")
            for key in range(400):
                got = r.get(f"{KV}:{key}")
                want = model.get(key)
                assert (json.loads(got) if got is not None else None) == want, (round_, key)

        # MGET across tables, in request order, with missing keys and a key asked twice.
        keys = [f"{KV}:{k}" for k in range(0, 400, 7)] + [f"{USERS}:alice", f"{USERS}:carol",
                                                          f"{KV}:3", f"{USERS}:bob:1"]
        want = [model.get(k) for k in range(0, 400, 7)] + [users["alice"], None, model.get(3),
                                                             users["bob:1"]]
        got = [json.loads(v) if v is not None else None for v in r.mget(keys)]
        assert got == want

        # Hash reads: columns as text, null values and unknown columns absent.
        live = next(k for k in sorted(model) if model[k]["n"] is not None)
        row = model[live]
        assert r.hget(f"{KV}:{live}", "v") == row["v"]
        assert r.hmget(f"{KV}:{live}", ["n", "nope", "id"]) == [str(row["n"]), None, str(live)]
        assert r.hgetall(f"{KV}:{live}") == {"id": str(live), "v": row["v"], "n": str(row["n"])}
        assert r.hgetall(f"{USERS}:bob:1") == {"name": "bob:1", "active": "false"}
        assert r.hgetall(f"{KV}:100000") == {}
        assert r.hget(f"{KV}:100000", "v") is None
        assert r.exists(f"{KV}:100000", f"{USERS}:alice", f"{KV}:{live}") == 2

        # A composite key is a JSON object of its columns.
        assert json.loads(r.get(PAIRS + ':{"a":1,"b":"y"}')) == {"a": 1, "b": "y", "w": 11}
        assert r.get(PAIRS + ':{"b":"x","a":1}') == '{"a":1,"b":"x","w":10}'
        assert r.get(PAIRS + ':{"a":2,"b":"x"}') is None

        # A pipeline of many commands: every reply in order.
        pipe = r.pipeline(transaction=False)
        for key in range(400):
            pipe.get(f"{KV}:{key}")
        replies = pipe.execute()
        assert [json.loads(v) if v else None for v in replies] == [model.get(k) for k in range(400)]

        # The reads went through the lookup path, counted by command.
        status, body = http_request("GET", f"http://{service.http_addr}/metrics")
        assert status == 200
        text = body.decode()
        assert 'unitable_resp_commands_total{command="GET"}' in text, text[:2000]
        assert "unitable_lookup_seconds" in text


def test_resp_errors_name_the_key_and_field(start_service):
    service, port = start_with_resp(start_service)
    with unitable.connect(service.grpc_url) as sdk:
        sdk.tables.create(KV, ["id:int64!", "v:string", "n:int64"], primary_key=["id"])
        sdk.tables.create(PAIRS, ["a:int64!", "b:string!", "w:int64"], primary_key=["a", "b"])
        sdk.write(KV, [{"id": 1, "v": "one", "n": 1}], wait="changelog")
    r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    with pytest.raises(redis.ResponseError, match=r"key 'rs\.kv:abc':.*`id`"):
        r.get(f"{KV}:abc")
    with pytest.raises(redis.ResponseError, match="names no table"):
        r.get("just-a-key")
    with pytest.raises(redis.ResponseError, match="rs.nope"):
        r.get("rs.nope:1")
    with pytest.raises(redis.ResponseError, match="JSON object"):
        r.get(f"{PAIRS}:1")
    with pytest.raises(redis.ResponseError, match="read-only.*Write API"):
        r.set(f"{KV}:1", "x")
    with pytest.raises(redis.ResponseError, match="unknown command 'ZADD'"):
        r.zadd("z", {"a": 1})
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'hget'"):
        r.execute_command("HGET", f"{KV}:1")
    with pytest.raises(redis.ResponseError, match="out of range"):
        r.execute_command("SELECT", "1")
    # The connection still answers after errors.
    assert json.loads(r.get(f"{KV}:1")) == {"id": 1, "v": "one", "n": 1}
    # A protocol error closes the connection after saying why; a new connection works.
    import socket
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"*1\r\n+PING\r\n")
        assert s.recv(1000).startswith(b"-ERR Protocol error")
        assert s.recv(1000) == b""
    assert r.ping() is True


def test_resp_needs_a_token_and_a_grant(start_service, tmp_path: Path):
    token_file = tmp_path / "admin.token"
    service, port = start_with_resp(start_service, "--bootstrap-admin-token-file",
                                    str(token_file), anonymous=False)
    admin_token = token_file.read_text().strip()
    admin = unitable.connect(service.grpc_url, token=admin_token)
    admin.tables.create(KV, ["id:int64!", "v:string", "n:int64"], primary_key=["id"])
    admin.write(KV, [{"id": 7, "v": "seven", "n": 7}], wait="changelog")
    bob = admin.access.create_token("bob", "resp test")

    anonymous = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    with pytest.raises(redis.AuthenticationError, match="NOAUTH|Authentication required"):
        anonymous.get(f"{KV}:7")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port, password="ut_bad_token").get(f"{KV}:7")
    with pytest.raises(redis.AuthenticationError):
        # The admin's token under bob's name.
        redis.Redis(host="127.0.0.1", port=port, username="bob", password=admin_token).ping()

    as_admin = redis.Redis(host="127.0.0.1", port=port, password=admin_token,
                           decode_responses=True)
    assert json.loads(as_admin.get(f"{KV}:7"))["v"] == "seven"

    as_bob = redis.Redis(host="127.0.0.1", port=port, username="bob", password=bob.token,
                         decode_responses=True)
    with pytest.raises(redis.exceptions.NoPermissionError, match="lacks `read` on table rs.kv"):
        as_bob.get(f"{KV}:7")
    admin.access.grant("read", table=KV, user="bob")
    assert as_bob.hget(f"{KV}:7", "v") == "seven"
    # Revoked: the same open connection is refused at its next command.
    admin.access.revoke_token(bob.token_id)
    with pytest.raises(redis.AuthenticationError, match="revoked"):
        as_bob.hget(f"{KV}:7", "v")
    admin.close()


def test_sdk_lookups_over_resp_equal_grpc(start_service, tmp_path: Path):
    """`unitable.connect(..., resp=HOST:PORT)` sends lookups as `UT.LOOKUP` over RESP: every
    answer (rows with their types, missing keys, AsOf; fresh and as of an instant) equals the
    gRPC answer and the model, and errors are the same exceptions naming table and field."""
    token_file = tmp_path / "admin.token"
    service, port = start_with_resp(start_service, "--bootstrap-admin-token-file",
                                    str(token_file), anonymous=False)
    token = token_file.read_text().strip()
    grpc_sdk = unitable.connect(service.grpc_url, token=token)
    resp_sdk = unitable.connect(service.grpc_url, token=token, resp=f"127.0.0.1:{port}")
    grpc_sdk.tables.create("rs.typed", ["id:int64!", "at:timestamptz", "day:date",
                                        "amount:decimal(12,2)", "blob:binary", "v:string"],
                           primary_key=["id"], buckets=3)
    rng = random.Random(41)
    model: dict[int, dict] = {}
    import datetime as dt
    from decimal import Decimal
    for step in range(5):
        rows = []
        for _ in range(40):
            key = rng.randrange(200)
            rows.append({
                "id": key,
                "at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
                + dt.timedelta(microseconds=rng.randrange(10**12)),
                "day": dt.date(2026, 1, 1) + dt.timedelta(days=rng.randrange(300)),
                "amount": Decimal(rng.randrange(-10**6, 10**6)) / 100,
                "blob": bytes(rng.randrange(256) for _ in range(rng.randrange(5))),
                "v": None if rng.random() < 0.2 else f"s{step}",
            })
        grpc_sdk.write("rs.typed", rows, op="upsert",
                       wait="snapshot" if step % 2 else "changelog")
        for row in rows:
            model[row["id"]] = row
    keys = list(range(0, 220, 3))
    over_resp = resp_sdk.lookup("rs.typed", keys)
    over_grpc = grpc_sdk.lookup("rs.typed", keys)
    assert over_resp.table.equals(over_grpc.table)
    assert over_resp.missing == over_grpc.missing == [i for i, k in enumerate(keys)
                                                      if k not in model]
    assert over_resp.as_of == over_grpc.as_of
    assert over_resp.to_pylist() == [model[k] for k in keys if k in model]
    # Projection, dict keys, Arrow keys and more keys than one request takes.
    assert resp_sdk.lookup("rs.typed", [{"id": k} for k in keys], columns=["v", "id"]) \
        .to_pylist() == [{"v": model[k]["v"], "id": k} for k in keys if k in model]
    many = list(range(-10_100, 200))
    assert resp_sdk.lookup("rs.typed", many).missing == grpc_sdk.lookup("rs.typed", many).missing
    # As of an instant: the same rows and AsOf either way.
    at = resp_sdk.lookup("rs.typed", keys).as_of
    grpc_sdk.write("rs.typed", [{"id": 0, "v": "later"}], op="upsert")
    then_resp = resp_sdk.lookup("rs.typed", keys, as_of=at)
    then_grpc = grpc_sdk.lookup("rs.typed", keys, as_of=at)
    assert then_resp.table.equals(then_grpc.table)
    # lag_ms is the age of the oldest change not reflected, measured at each call.
    assert dataclasses.replace(then_resp.as_of, lag_ms=0) == \
        dataclasses.replace(then_grpc.as_of, lag_ms=0)
    assert resp_sdk.lookup("rs.typed", [0]).to_pylist()[0]["v"] == "later"

    with pytest.raises(unitable.InvalidArgument) as bad_key:
        resp_sdk.lookup("rs.typed", [{"id": "x"}])
    assert (bad_key.value.table, bad_key.value.field) == ("rs.typed", "id")
    with pytest.raises(unitable.TableNotFound) as unknown:
        resp_sdk.lookup("rs.nope", [1])
    assert unknown.value.table == "rs.nope"
    bob = grpc_sdk.access.create_token("bob", "resp sdk test")
    as_bob = unitable.connect(service.grpc_url, token=bob.token, resp=f"127.0.0.1:{port}")
    with pytest.raises(unitable.PermissionDenied, match="lacks `read` on table rs.typed"):
        as_bob.lookup("rs.typed", [1])
    with pytest.raises(unitable.Unauthenticated):
        unitable.connect(service.grpc_url, token="ut_bad_token",
                         resp=f"127.0.0.1:{port}").lookup("rs.typed", [1])
    with pytest.raises(unitable.InvalidArgument, match="resp"):
        unitable.connect(service.grpc_url, resp="no-port")
    # A server gone: UNAVAILABLE after the retries, as over gRPC.
    closed = unitable.connect(service.grpc_url, token=token, resp=f"127.0.0.1:{free_port()}",
                              retries=1)
    with pytest.raises(unitable.Unavailable, match="RESP endpoint"):
        closed.lookup("rs.typed", [1])
    for c in (grpc_sdk, resp_sdk, as_bob, closed):
        c.close()
