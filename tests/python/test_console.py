"""The web console in a real browser: headless Chromium (Debian's `chromium`, driven by
`playwright-core` from npm through tests/console/console.mjs) against a server that requires
tokens, with data made through the SDK and the CLI.

What the pages show is compared with outside sources: the snapshot timeline and row counts with
PyIceberg reading the same catalog, the freshness with a SNAPSHOT read's AsOf over gRPC, the
consumer group's lag with `unitable consumer-group describe`, the rejected row with the write's
own error. Every page must load without a browser console error; login is required; a user
sees only the tables granted to them. Screenshots are kept under target/console-screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog

from harness import Process

try:
    import unitable
except ImportError as e:  # scripts/test installs it
    _MISSING: str | None = str(e)
else:
    _MISSING = None

REPO = Path(__file__).resolve().parents[2]
CONSOLE_DIR = REPO / "tests" / "console"
ORDERS = "shop.orders"
EVENTS = "shop.events"
GROUP = "console-readers"


def _chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("Chromium is missing: install Debian's chromium package (scripts/test does) "
                    "or set CHROMIUM to a Chromium binary")
    return found


def _node_ready() -> None:
    if not shutil.which("node"):
        pytest.fail("node is missing; install Node.js 20 or newer")
    if not (CONSOLE_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.fail("playwright-core is missing: run `npm ci` in tests/console (scripts/test does)")


def _get_json(service, path: str, token: str) -> dict:
    request = urllib.request.Request(f"http://{service.http_addr}{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _screens_dir() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "console-screenshots"


def test_console_pages_show_what_the_api_and_pyiceberg_say(start_service, tmp_path: Path):
    if _MISSING is not None:
        pytest.fail(f"the unitable SDK is not installed ({_MISSING}); scripts/test installs it")
    chromium = _chromium()
    _node_ready()
    token_file = tmp_path / "admin.token"
    service = start_service("--bootstrap-admin-token-file", str(token_file),
                            "--commit-interval", "200ms", "--console-sample-interval", "300ms",
                            anonymous=False)
    admin_token = token_file.read_text().strip()
    admin = unitable.connect(service.grpc_url, token=admin_token)

    # --- data: a keyed table with upserts, deletes and a rejected row; an append-only one.
    admin.tables.create(ORDERS, ["id:int64!", "customer:string", "amount:float64"],
                        primary_key=["id"], buckets=2,
                        properties={"unitable.write.dead-letter": "true"})
    admin.tables.create(EVENTS, ["seq:int64!", "kind:string"], buckets=2)
    admin.write(ORDERS, [{"id": i, "customer": f"c{i % 7}", "amount": i * 1.5}
                         for i in range(30)], wait="snapshot")
    admin.write(ORDERS, [{"id": i, "customer": "again", "amount": 99.0} for i in range(10)],
                wait="snapshot")
    admin.delete(ORDERS, [{"id": i} for i in (3, 4, 5)], wait="snapshot")
    rejected = admin.write(ORDERS, [{"id": 100, "customer": "x", "amount": "lots"},
                                    {"id": 101, "customer": "ok", "amount": 1.0}])
    assert rejected.rows_written == 1 and len(rejected.errors) == 1, rejected
    bad = rejected.errors[0]
    assert bad.field == "amount", bad
    admin.write(EVENTS, [{"seq": i, "kind": "click" if i % 2 else "view"} for i in range(12)],
                wait="snapshot")

    # A consumer group reads every change of ORDERS, then 3 more rows arrive: lag 3.
    env = dict(os.environ, UNITABLE_TOKEN=admin_token)
    changes = 30 + 10 + 3 + 1
    sub = subprocess.run([service.bin, "--server", service.grpc_url, "subscribe", ORDERS,
                          "--from", "earliest", "--group", GROUP, "--limit", str(changes)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0, sub.stderr
    assert len(sub.stdout.splitlines()) == changes
    admin.write(ORDERS, [{"id": 200 + i, "customer": "late", "amount": 2.0} for i in range(3)],
                wait="snapshot")
    described = subprocess.run([service.bin, "--server", service.grpc_url, "consumer-group",
                                "describe", ORDERS, GROUP, "--format", "json"],
                               env=env, capture_output=True, text=True, timeout=60)
    assert described.returncode == 0, described.stderr
    group_lag = json.loads(described.stdout)["lag_records"]
    assert group_lag == 3

    # A STREAM open on EVENTS while the browser looks.
    follower = Process("subscriber", [service.bin, "--server", service.grpc_url, "subscribe",
                                      EVENTS, "--from", "latest"], tmp_path, env)

    reader_token = admin.access.create_token("rita", "console test").token
    admin.access.grant("read", table=EVENTS, user="rita")
    nogrant_token = admin.access.create_token("nora", "console test").token

    # Let the commits settle so the numbers shown and the numbers checked are of one state.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(admin.read(t, mode="snapshot").as_of.lag_records == 0 for t in (ORDERS, EVENTS)):
            break
        time.sleep(0.2)
    time.sleep(1)  # a freshness sample of the settled state
    expected = {}
    for t in (ORDERS, EVENTS):
        scan = admin.read(t, mode="snapshot")
        expected[t] = {"rows": scan.table.num_rows, "as_of": scan.as_of,
                       "info": admin.tables.describe(t)}

    try:
        run = subprocess.run(
            ["node", str(CONSOLE_DIR / "console.mjs")], cwd=CONSOLE_DIR,
            env=dict(os.environ, CONSOLE_URL=f"http://{service.http_addr}", CHROMIUM=chromium,
                     SHOTS_DIR=str(_screens_dir()), ADMIN_TOKEN=admin_token,
                     READER_TOKEN=reader_token, NOGRANT_TOKEN=nogrant_token,
                     TABLES=f"{ORDERS},{EVENTS}",
                     SQL=f"SELECT count(*) AS n FROM {ORDERS}"),
            capture_output=True, text=True, timeout=300)
    finally:
        follower.kill()
    assert run.returncode == 0, f"console.mjs failed:\n{run.stderr}\n{run.stdout[-3000:]}"
    seen = json.loads(run.stdout)

    # --- every page loaded without a browser console error.
    assert seen["console_errors"] == [], seen["console_errors"]

    # --- login is required; a wrong token is refused; signing out asks again.
    assert seen["login_required"] and seen["nav_hidden"]
    assert seen["api_without_token"] == 401
    assert "not valid" in seen["bad_token_error"]
    assert seen["signed_out"]

    # --- the tables page: the admin's tables, each with the API's numbers.
    assert seen["admin_user"] == "admin"
    listed = {row["table"]: row for row in seen["admin_tables"]}
    assert sorted(listed) == sorted(admin.tables.list()) == sorted([ORDERS, EVENTS])
    for t, row in listed.items():
        info = expected[t]["info"]
        assert row["current_snapshot_id"] == str(info.current_snapshot_id), (t, row)
        assert row["columns"] == str(len(info.columns)), (t, row)
        assert row["rows"] == str(expected[t]["rows"]), (t, row)
        assert row["lag_records"] == "0", (t, row)

    # --- each table's page against PyIceberg and the gRPC API.
    catalog = SqlCatalog("unitable", uri=f"sqlite:///{service.data_dir}/catalog.db",
                         warehouse=f"file://{service.data_dir}/warehouse")
    for t in (ORDERS, EVENTS):
        page = seen["pages"][t]
        info = expected[t]["info"]
        as_of = expected[t]["as_of"]
        iceberg = catalog.load_table(t)
        assert page["name"] == t
        assert page["snapshot_id"] == str(iceberg.current_snapshot().snapshot_id)
        assert page["snapshot_id"] == str(as_of.snapshot_id)
        assert page["lag_records"] == "0"
        assert page["covered"] == ",".join(f"{p}:{o}" for p, o in sorted(as_of.offsets.items()))
        assert page["covered"] == \
            iceberg.current_snapshot().summary.additional_properties["unitable.changelog-offsets"]
        snapshots = {s.snapshot_id: s for s in iceberg.snapshots()}
        assert page["snapshot_count"] == str(len(snapshots))
        assert sorted(int(s["snapshot_id"]) for s in page["snapshots"]) == sorted(snapshots)
        assert page["snapshot_bars"] == len(snapshots)
        for shown in page["snapshots"]:
            summary = snapshots[int(shown["snapshot_id"])].summary
            assert shown["operation"] == summary.operation.value, shown
            assert shown["added_records"] == summary.additional_properties.get(
                "added-records", "–"), shown
            assert shown["position_deletes"] == summary.additional_properties.get(
                "added-position-deletes", "–"), shown
            assert shown["offsets"] == summary.additional_properties.get(
                "unitable.changelog-offsets", "–"), shown
        assert [c[0] for c in page["columns"]] == [c.name for c in info.columns]
        assert [c[1] for c in page["columns"]] == [str(c.type) for c in info.columns]
        assert page["topic"] == info.changelog_topic
        assert page["changelog_partitions"] == "2"
        raw_compaction = info.raw.compaction
        assert page["compaction"]["data_files"] == str(raw_compaction.data_files)
        assert page["compaction"]["delete_files"] == str(raw_compaction.delete_files)
        assert page["compaction"]["pending_tasks"] == str(raw_compaction.pending_tasks)

    # The freshness history the chart starts from: sampled by the server while the data was
    # made, the newest sample showing the settled state.
    for t in (ORDERS, EVENTS):
        history = _get_json(service, f"/api/v1/tables/{t}/freshness", admin_token)
        assert history["interval_ms"] == 300
        samples = history["samples"]
        assert len(samples) >= 5, samples
        assert [s["time_ms"] for s in samples] == sorted(s["time_ms"] for s in samples)
        assert samples[-1]["snapshot_id"] == str(expected[t]["as_of"].snapshot_id)
        assert samples[-1]["lag_records"] == 0
        assert seen["pages"][t]["chart_points_at_load"] >= 5
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get_json(service, f"/api/v1/tables/{ORDERS}/freshness", reader_token)
    assert refused.value.code == 403

    orders, events = seen["pages"][ORDERS], seen["pages"][EVENTS]
    # The workload replaced 10 existing keys and deleted 3: 13 position deletes in all.
    assert sum(int(s["position_deletes"]) for s in orders["snapshots"]
               if s["position_deletes"] != "–") == 13
    assert orders["primary_key"] == "id" and events["primary_key"] == "(append-only)"
    # Position deletes from the upserts and the deletes are on ORDERS only.
    assert int(orders["compaction"]["delete_files"]) > 0
    assert events["compaction"]["delete_files"] == "0"
    assert orders["groups"] == [{"group": GROUP, "lag_records": str(group_lag)}]
    assert events["groups"] == []
    assert len(events["streams"]) >= 1, events
    assert orders["dead_letters"] == [{"field": bad.field, "reason": bad.reason}]
    assert events["dead_letters"] == []
    assert "read ON TABLE shop.events TO USER rita" in events["grants"]

    # --- SQL through the console equals SQL through the API; non-queries are refused.
    assert seen["sql"]["error"] is None, seen["sql"]
    assert seen["sql"]["header"] == ["n"]
    n = admin.sql(f"SELECT count(*) AS n FROM {ORDERS}", mode="snapshot").column("n")[0].as_py()
    assert seen["sql"]["rows"] == [[str(n)]] and seen["sql"]["count"] == "1"
    assert n == expected[ORDERS]["rows"]
    assert "INVALID_ARGUMENT" in seen["sql_drop_error"], seen["sql_drop_error"]
    assert ORDERS in admin.tables.list()

    # --- grants decide what a user sees.
    rita = unitable.connect(service.grpc_url, token=reader_token)
    assert seen["reader_user"] == "rita"
    assert [r["table"] for r in seen["reader_tables"]] == rita.tables.list() == [EVENTS]
    assert seen["nogrant_tables"] == 0
    assert seen["nogrant_table_error"] == "PERMISSION_DENIED", seen["nogrant_page_text"]
    assert "nora" in seen["nogrant_page_text"]
    for name in ("01-login", "03-tables", f"04-table-{ORDERS}", "05-sql", "08-nogrant-refused"):
        assert (_screens_dir() / f"{name}.png").stat().st_size > 0
