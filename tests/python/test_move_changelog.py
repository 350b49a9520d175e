"""Moving a table's changelog between two Apache Kafka clusters under load, through crashes.

Two one-broker Kafka clusters `a` and `b`. A writer thread upserts and deletes rows through the
SDK with request ids (retrying each batch under its id until it is acknowledged); a STREAM
subscriber follows the table and resumes from its `next_offsets` whenever the server goes away.
Meanwhile the changelog moves a -> b (the server is SIGKILLed right before the switch commit,
so the next start finishes the move), the server is SIGKILLed once more under load, and the
changelog moves b -> a. At the end:

- PyIceberg's scan of the latest snapshot equals the model (0 lost, 0 duplicated rows);
- the live subscriber and a fresh subscription from the start each saw every acknowledged
  change exactly once and in order per key, across both moves;
- a plain confluent-kafka consumer that reads the Kafka topics `table positions` names, in
  order and up to each generation's end, sees the same;
- `unitable verify` passes, the snapshot summary names the Kafka positions per cluster, and
  the table describes its three generations.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pyiceberg.catalog.sql import SqlCatalog

from harness import Kafka, http_request

try:
    import unitable
except ImportError as e:
    _MISSING: str | None = str(e)
else:
    _MISSING = None

TABLE = "mv.items"
BUCKETS = 3


@pytest.fixture(autouse=True)
def _sdk_installed() -> None:
    if _MISSING is not None:
        pytest.fail(f"the unitable SDK is not installed ({_MISSING}); scripts/test installs it")


class Load:
    """Writes batches of upserts and deletes, each under its own request id, retried under
    that id until acknowledged; `history` is the model: per key, the changes in order."""

    def __init__(self, url: str):
        # No retries in the SDK: this loop retries, so the pauses show in `retried`.
        self.client = unitable.connect(url, retries=0)
        self.history: dict[int, list[tuple[str, Any]]] = {}
        self.live: dict[int, str] = {}
        self.batches = 0
        self.retried = 0
        self.partial = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.rng = random.Random(41)

    def _send(self, request_id: str, rows: list[dict[str, Any]], op: str) -> None:
        while True:
            try:
                result = self.client.write(TABLE, rows, op=op, request_id=request_id)
            except (unitable.Unavailable, unitable.Aborted, unitable.DeadlineExceeded):
                # The server is down or the changelog is switching: the same id again.
                self.retried += 1
                time.sleep(0.3)
                continue
            if not result.errors:
                return
            # Rows a changelog partition did not take (a move switched under the append) are
            # written by a retry under the same id; any other rejection is a bug.
            assert all("not written" in e.reason for e in result.errors), result.errors
            self.retried += 1
            self.partial += 1
            time.sleep(0.3)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                n = self.batches
                if n % 4 == 3 and len(self.live) > 5:
                    keys = self.rng.sample(sorted(self.live), 3)
                    self._send(f"load-{n}", [{"id": k} for k in keys], "delete")
                    for k in keys:
                        self.history[k].append(("delete", None))
                        self.live.pop(k)
                else:
                    rows = {}
                    for i in range(12):
                        k = self.rng.randint(0, 200)
                        rows[k] = {"id": k, "v": f"b{n}-{i}"}
                    self._send(f"load-{n}", list(rows.values()), "upsert")
                    for r in rows.values():
                        self.history.setdefault(r["id"], []).append(("upsert", r["v"]))
                        self.live[r["id"]] = r["v"]
                self.batches += 1
                time.sleep(0.01)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def changes(self) -> int:
        return sum(len(h) for h in self.history.values())


class Follower:
    """A STREAM subscriber that resumes from its last next_offsets after any failure."""

    def __init__(self, url: str):
        self.client = unitable.connect(url, retries=1)
        self.seen: list[dict[str, Any]] = []
        self.resume: dict[int, int] | None = None
        self.reconnects = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                sub = (self.client.subscribe(TABLE, from_offsets=self.resume)
                       if self.resume is not None else self.client.subscribe(TABLE))
                with sub:
                    for batch in sub:
                        self.seen += batch.to_pylist()
                        self.resume = dict(batch.next_offsets)
                        if self.stop.is_set():
                            return
            except unitable.UnitableError:
                self.reconnects += 1
                time.sleep(0.3)


def per_key(changes: list[dict[str, Any]]) -> dict[int, list[tuple[str, Any]]]:
    out: dict[int, list[tuple[str, Any]]] = {}
    for c in changes:
        out.setdefault(c["id"], []).append((c["_op"], c["v"]))
    return out


def wait_for(what: str, check, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def kafka_changes(client, bootstrap_of: dict[str, str]) -> dict[int, list[tuple[str, Any]]]:
    """What a plain Kafka client reads by following `changelog_positions` from the start."""
    changes: list[tuple[int, int, int, dict[str, Any]]] = []
    for position in client.tables.changelog_positions(TABLE):
        for seq, segment in enumerate(position.segments):
            # The server reports its bootstrap servers; they are the clusters started here.
            assert segment.bootstrap_servers == bootstrap_of[segment.cluster], segment
            consumer = Consumer({"bootstrap.servers": segment.bootstrap_servers,
                                 "group.id": f"plain-{segment.topic}-{position.partition}",
                                 "enable.auto.commit": False, "enable.partition.eof": True})
            tp = TopicPartition(segment.topic, position.partition, segment.from_offset)
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            end = segment.end_offset if segment.end_offset is not None else high
            consumer.assign([tp])
            offset = segment.from_offset
            while offset < end:
                msg = consumer.poll(10.0)
                assert msg is not None, f"timed out reading {segment}"
                if msg.error():
                    assert msg.error().code() == -191, msg.error()
                    break
                offset = msg.offset() + 1
                if msg.offset() >= end:
                    break  # past a closed generation's end: not part of the table
                headers = dict(msg.headers() or [])
                op = headers["unitable.op"].decode()
                key = json.loads(msg.key())
                value = json.loads(msg.value()) if msg.value() is not None else None
                changes.append((position.partition, seq, msg.offset(),
                                {"id": key["id"], "_op": op,
                                 "v": value["v"] if value else None}))
            consumer.close()
    changes.sort(key=lambda c: c[:3])
    return per_key([c[3] for c in changes])


def commits(service) -> float:
    """The node's count of snapshots committed for TABLE (0 when it does not commit it)."""
    status, body = http_request("GET", f"http://{service.http_addr}/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith("unitable_committer_commits_total") and f'table="{TABLE}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def group_read(service, n: int) -> list[dict[str, Any]]:
    """`n` changes read by a member of the consumer group `g` (`unitable subscribe --group`),
    which commits its positions as it goes."""
    out = service.cli("subscribe", TABLE, "--from", "earliest", "--group", "g",
                      "--limit", str(n), check=True).stdout
    changes = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(changes) == n, out[-2000:]
    return changes


def test_move_changelog_between_kafka_clusters_under_load(kafka_home, start_service,
                                                          tmp_path_factory):
    a = Kafka(kafka_home, tmp_path_factory.mktemp("kafka-a"))
    b = Kafka(kafka_home, tmp_path_factory.mktemp("kafka-b"))
    try:
        run(a, b, start_service, tmp_path_factory)
    finally:
        a.kill()
        b.kill()


def run(a: Kafka, b: Kafka, start_service, tmp_path_factory) -> None:
    crash = tmp_path_factory.mktemp("crash") / "armed"
    service = start_service(
        "--kafka-cluster", f"a={a.bootstrap}", "--kafka-cluster", f"b={b.bootstrap}",
        "--default-cluster", "a",
        env={"UNITABLE_CRASH_POINT": "before-move-switch", "UNITABLE_CRASH_FILE": str(crash)})
    admin = unitable.connect(service.grpc_url)
    admin.tables.create(TABLE, ["id:int64!", "v:string"], primary_key=["id"], buckets=BUCKETS,
                        properties={"unitable.commit.interval-ms": "300"})
    info = admin.tables.describe(TABLE)
    assert (info.changelog_cluster, info.changelog_generation) == ("a", 0)
    with pytest.raises(unitable.InvalidArgument) as unknown:
        admin.tables.move_changelog(TABLE, "nowhere")
    assert "nowhere" in str(unknown.value) and "a, b" in str(unknown.value)
    with pytest.raises(unitable.InvalidArgument) as same:
        admin.tables.move_changelog(TABLE, "a")
    assert "already on cluster `a`" in str(same.value)

    # A table can be created on another cluster; an unknown one is refused.
    admin.tables.create("mv.on_b", ["id:int64!"], primary_key=["id"],
                        properties={"unitable.changelog.cluster": "b"})
    assert admin.tables.describe("mv.on_b").changelog_cluster == "b"
    assert "unitable.mv.on_b" in AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(
        timeout=10).topics
    assert "unitable.mv.on_b" not in AdminClient({"bootstrap.servers": a.bootstrap}).list_topics(
        timeout=10).topics
    with pytest.raises(unitable.InvalidArgument) as unknown_cluster:
        admin.tables.create("mv.nowhere", ["id:int64!"], primary_key=["id"],
                            properties={"unitable.changelog.cluster": "c"})
    assert "unitable.changelog.cluster=c" in str(unknown_cluster.value)

    # A CDC source on the other cluster (`unitable.ingest.cluster`) feeds a table on a.
    admin.tables.create("mv.cdc", ["id:int64!", "name:string"], primary_key=["id"])
    b_admin = AdminClient({"bootstrap.servers": b.bootstrap})
    for future in b_admin.create_topics([NewTopic("dbz.src", 1, 1)]).values():
        future.result(30)
    source = Producer({"bootstrap.servers": b.bootstrap})
    for i, op in [(1, "c"), (2, "c"), (1, "u"), (2, "d")]:
        after = None if op == "d" else {"id": i, "name": f"{op}{i}"}
        before = {"id": i, "name": "old"} if op in ("u", "d") else None
        source.produce("dbz.src", key=json.dumps({"id": i}),
                       value=json.dumps({"before": before, "after": after, "op": op,
                                         "ts_ms": 0}))
    assert source.flush(10) == 0
    del source, b_admin  # no client left talking to b once its broker is gone
    admin.tables.start_ingest("mv.cdc", "dbz.src", cluster="b")

    def ingested() -> bool:
        found = admin.lookup("mv.cdc", [1, 2]).table.to_pylist()
        return [(r["id"], r["name"]) for r in found] == [(1, "u1")]

    wait_for("the ingest from cluster b", ingested)

    def positions_recorded() -> bool:  # recorded after the rows are visible
        status = admin.tables.ingest_status("mv.cdc")
        assert status is not None and status.partitions[0].high_watermark == 4
        return status.lag == 0

    wait_for("the ingest positions to catch up", positions_recorded)
    admin.tables.stop_ingest("mv.cdc")

    load = Load(service.grpc_url)
    follower = Follower(service.grpc_url)
    load.thread.start()
    follower.thread.start()
    wait_for("some load", lambda: load.batches >= 40)
    # A consumer group member reads the first changes (and commits its positions) on a.
    group_first = group_read(service, 100)

    # Move a -> b; the server dies right before the switch commit; the next start finishes.
    crash.touch()
    admin.tables.move_changelog(TABLE, "b", wait=False)
    wait_for("the crash before the switch", lambda: not service.process.running())
    assert not crash.exists()
    service.restart()
    wait_for("the move to b", lambda: admin.tables.describe(TABLE).changelog_generation == 1)
    moved = admin.tables.describe(TABLE)
    assert (moved.changelog_cluster, moved.changelog_moving) == ("b", "")
    at_first_move = load.batches
    wait_for("load on b", lambda: load.batches >= at_first_move + 40)

    # A plain crash under load, then the move back b -> a, waiting for it.
    service.kill()
    time.sleep(0.5)
    service.restart()
    wait_for("load after the crash", lambda: load.batches >= at_first_move + 80)
    back = admin.tables.move_changelog(TABLE, "a", timeout=90)
    assert (back.changelog_cluster, back.changelog_generation) == ("a", 2)
    at_second_move = load.batches
    wait_for("load on a again", lambda: load.batches >= at_second_move + 40)

    load.stop.set()
    load.thread.join(60)
    assert not load.thread.is_alive() and load.error is None, load.error
    final = admin.write(TABLE, [{"id": 100_000, "v": "last"}], op="upsert",
                        request_id="final", wait="snapshot")
    load.history.setdefault(100_000, []).append(("upsert", "last"))
    load.live[100_000] = "last"
    assert load.retried > 0, "the load never had to retry: the moves paused nothing?"
    print(f"batches={load.batches} retried={load.retried} partial={load.partial} "
          f"follower_reconnects={follower.reconnects}")

    # Iceberg: the latest snapshot equals the model.
    catalog = SqlCatalog("unitable", uri=f"sqlite:///{service.data_dir / 'catalog.db'}",
                         warehouse=f"file://{service.data_dir / 'warehouse'}")
    table = catalog.load_table(TABLE)
    rows = table.scan().to_arrow().to_pylist()
    assert {r["id"]: r["v"] for r in rows} == load.live
    assert len(rows) == len(load.live)
    summary = table.current_snapshot().summary
    positions = summary["unitable.changelog-positions"]
    assert positions.startswith("a/unitable.mv.items.g2@"), positions
    assert final.as_of is not None

    # STREAM: the live follower and a fresh subscription saw every change once, in order.
    total = load.changes()
    wait_for("the follower to catch up", lambda: len(follower.seen) >= total)
    follower.stop.set()
    assert per_key(follower.seen) == load.history
    assert len(follower.seen) == total
    offsets = [(c["_partition"], c["_offset"]) for c in follower.seen]
    assert len(set(offsets)) == len(offsets)
    generations = {o >> 40 for _, o in offsets}
    assert generations == {0, 1, 2}, generations
    fresh = []
    for batch in admin.subscribe(TABLE, follow=False):
        fresh += batch.to_pylist()
    assert per_key(fresh) == load.history

    # The consumer group resumes from positions it committed before both moves.
    group_rest = group_read(service, total - len(group_first))
    group_seen = [(c["partition"], c["offset"]) for c in group_first + group_rest]
    assert sorted(group_seen) == sorted(offsets), "the group lost or repeated changes"

    # A start by time: from a change in generation 1, every partition from its first change
    # at or after that time.
    pivot = next(c for c in follower.seen if c["_offset"] >> 40 == 1)
    since = [c for batch in admin.subscribe(TABLE, start=pivot["_timestamp"], follow=False)
             for c in batch.to_pylist()]
    for p in range(BUCKETS):
        mine = [c for c in follower.seen if c["_partition"] == p]
        first = next(i for i, c in enumerate(mine) if c["_timestamp"] >= pivot["_timestamp"])
        assert [c["_offset"] for c in since if c["_partition"] == p] == \
            [c["_offset"] for c in mine[first:]]

    # A plain Kafka client following `table positions` reads the same.
    bootstrap_of = {"a": a.bootstrap, "b": b.bootstrap}
    assert kafka_changes(admin, bootstrap_of) == load.history

    # A position from the first generation maps onto the later topics.
    mapped = admin.tables.changelog_positions(TABLE, {0: 0})
    assert [s.cluster for s in mapped[0].segments] == ["a", "b", "a"]
    assert [s.topic for s in mapped[0].segments] == [
        "unitable.mv.items", "unitable.mv.items.g1", "unitable.mv.items.g2"]
    end0 = mapped[0].segments[0].end_offset
    by_kafka = admin.tables.changelog_positions(TABLE, {0: end0}, kafka_topic="unitable.mv.items")
    assert by_kafka[0].offset == 1 << 40 and by_kafka[0].segments[0].topic == "unitable.mv.items.g1"

    # verify replays the changelog (three generations) against the snapshot.
    verify = service.cli("verify", TABLE)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    described = service.cli("table", "describe", TABLE, check=True).stdout
    assert "generation 2" in described and "earlier    generation 0 on a" in described
    assert "earlier    generation 1 on b" in described
    status, body = http_request("GET", f"http://{service.http_addr}/metrics")
    assert status == 200
    moves = [line for line in body.decode().splitlines()
             if line.startswith("unitable_committer_changelog_moves_total")]
    assert moves, "no changelog move metric"


def test_a_stream_on_either_node_follows_a_move(kafka_home, start_service, tmp_path_factory):
    """Two nodes on one catalog: STREAMs opened on each node before a move (one of them on
    the node that does not commit the table, which reloads nothing by itself) go on with the
    new topic after the switch, each change once."""
    a = Kafka(kafka_home, tmp_path_factory.mktemp("kafka-a"))
    b = Kafka(kafka_home, tmp_path_factory.mktemp("kafka-b"))
    try:
        clusters = ("--kafka-cluster", f"a={a.bootstrap}", "--kafka-cluster", f"b={b.bootstrap}",
                    "--default-cluster", "a", "--committer-lease", "2s",
                    # The console's sampler reloads every table every 10 s by default, which
                    # would move routes by itself: here only route following may.
                    "--console-sample-interval", "1h")
        first = start_service("--node-id", "node-1", *clusters)
        shared = ("--catalog", f"sqlite://{first.data_dir}/catalog.db",
                  "--warehouse", f"file://{first.data_dir}/warehouse")
        second = start_service("--node-id", "node-2", *shared, *clusters)
        admin = unitable.connect(first.grpc_url)
        admin.tables.create(TABLE, ["id:int64!", "v:string"], primary_key=["id"],
                            buckets=BUCKETS, properties={"unitable.commit.interval-ms": "300"})
        admin.write(TABLE, [{"id": -1, "v": "first"}], op="upsert", request_id="first",
                    wait="snapshot")
        nodes = {"node-1": first, "node-2": second}
        committing = [n for n, s in nodes.items() if commits(s) > 0]
        assert len(committing) == 1, committing
        # Writes go to the committing node: the other one then reloads the table only through
        # its route following.
        followers = [Follower(first.grpc_url), Follower(second.grpc_url)]
        for f in followers:
            f.thread.start()
        load = Load(nodes[committing[0]].grpc_url)
        load.history[-1] = [("upsert", "first")]
        load.thread.start()
        wait_for("some load", lambda: load.batches >= 30)
        moved = admin.tables.move_changelog(TABLE, "b", timeout=90)
        assert moved.changelog_generation == 1
        at_move = load.batches
        wait_for("load after the move", lambda: load.batches >= at_move + 30)
        load.stop.set()
        load.thread.join(60)
        assert load.error is None, load.error
        total = load.changes()
        for node, f in zip(("node-1", "node-2"), followers):
            wait_for(f"the STREAM on {node} to catch up", lambda f=f: len(f.seen) >= total)
            f.stop.set()
            assert per_key(f.seen) == load.history, node
            assert len(f.seen) == total, node
            assert {c["_offset"] >> 40 for c in f.seen} == {0, 1}, node
    finally:
        a.kill()
        b.kill()
