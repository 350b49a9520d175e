"""The writer on Kafka, seen by outside clients only.

`unitable serve --kafka-brokers` on an Apache Kafka broker takes upserts and deletes through the CLI.
A plain confluent-kafka consumer must then see every acknowledged change, per key in the order
it was acknowledged, in the format of docs/changelog-format.md; rejected rows must be in the
dead-letter topic with their reasons; and PyIceberg must read the latest value of every key
from the Iceberg table once a snapshot covers the writes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pyiceberg.catalog.sql import SqlCatalog

from harness import consume_topic

TABLE = "w.events"
TOPIC = "unitable.w.events"
BUCKETS = 3


def test_kafka_consumer_and_pyiceberg_see_every_acknowledged_write(start_service, kafka, tmp_path: Path):
    service = start_service("--kafka-brokers", kafka.bootstrap, "--commit-interval", "200ms")
    service.cli("table", "create", TABLE, "--column", "id:int64!", "--column", "v:string",
                "--primary-key", "id", "--buckets", str(BUCKETS),
                "--property", "unitable.write.dead-letter=true", check=True)

    rng = random.Random(7)
    history: dict[int, list[tuple[str, str | None]]] = {}
    latest: dict[int, str] = {}
    for batch in range(12):
        op = "delete" if batch % 4 == 3 else "upsert"
        ids = rng.sample(range(40), 8)
        path = tmp_path / f"batch{batch}.jsonl"
        lines = []
        for i, k in enumerate(ids):
            if op == "delete":
                lines.append(json.dumps({"id": k}))
            else:
                lines.append(json.dumps({"id": k, "v": f"b{batch}-{i}"}))
        path.write_text("\n".join(lines) + "\n")
        service.cli("write", TABLE, "--file", str(path), "--op", op, check=True)
        for k, line in zip(ids, lines):
            value = json.loads(line).get("v")
            history.setdefault(k, []).append((op, value))
            if op == "delete":
                latest.pop(k, None)
            else:
                latest[k] = value

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "nope", "v": "x"}\n{"id": 100, "v": "ok"}\n{"id": 101, "w": 1}\n')
    result = service.cli("write", TABLE, "--file", str(bad), "--wait", "snapshot")
    assert result.returncode == 1, result
    assert "row 0, field `id`" in result.stderr and "row 2, field `w`" in result.stderr, result.stderr
    history.setdefault(100, []).append(("upsert", "ok"))
    latest[100] = "ok"

    # Every acknowledged change, per key in order, in the documented format.
    seen: dict[int, list[tuple[str, str | None]]] = {}
    for msg in consume_topic(kafka.bootstrap, TOPIC, BUCKETS, "writer-test"):
        headers = dict(msg.headers())
        key = json.loads(msg.key())
        assert list(key) == ["id"], key
        op = headers["unitable.op"].decode()
        value = None if msg.value() is None else json.loads(msg.value())
        if op == "delete":
            assert value is None, "a delete is a tombstone"
        else:
            assert value["id"] == key["id"]
        seen.setdefault(key["id"], []).append((op, None if value is None else value["v"]))
    assert seen == history

    # Rejected rows, with their reasons, in the dead-letter topic.
    dead = [json.loads(m.value()) for m in consume_topic(kafka.bootstrap, TOPIC + ".dlq", 1, "writer-test")]
    assert [(d["row"], d["field"]) for d in dead] == [(0, "id"), (2, "w")], dead
    assert "not an integer" in dead[0]["reason"]
    assert json.loads(dead[1]["input"]) == {"id": 101, "w": 1}

    # The Iceberg table holds the latest value of every key.
    catalog = SqlCatalog("unitable", uri=f"sqlite:///{service.data_dir}/catalog.db",
                         warehouse=f"file://{service.data_dir}/warehouse")
    rows = catalog.load_table(TABLE).scan().to_arrow().to_pylist()
    assert {r["id"]: r["v"] for r in rows} == latest
    assert len(rows) == len(latest), "no key twice"
