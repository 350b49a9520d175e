"""unitable's Iceberg commit layer read by PyIceberg: after random row deltas (new data files plus
position deletes for updated and deleted rows), after sequences mixing in rewrites (`replace`
snapshots with DELETED entries and carried deletes), manifest merges and snapshot expirations,
and after compaction runs of the compactor (rewrites, then a manifest merge), every retained
snapshot scans to the model's rows, and the metadata tables (snapshots, files, manifests) open
without errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog


def oracle_bin(unitable_bin: str) -> str:
    path = Path(unitable_bin).parent / "iceberg-oracle"
    if not path.exists():
        pytest.fail(f"{path} is missing; scripts/test builds it with `cargo build --workspace --all-targets`")
    return str(path)


@pytest.mark.parametrize("seed", [5, 41])
def test_every_snapshot_reads_as_the_model_in_pyiceberg(unitable_bin, tmp_path, seed):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    out = subprocess.run([oracle_bin(unitable_bin), str(data_dir), str(seed), "20"],
                         capture_output=True, text=True, timeout=300, check=True)
    steps = json.loads(out.stdout)
    assert len(steps) == 20

    catalog = SqlCatalog("unitable", uri=f"sqlite:///{data_dir}/catalog.db",
                         warehouse=f"file://{data_dir}/warehouse")
    table = catalog.load_table("oracle.items")
    for i, step in enumerate(steps):
        arrow = table.scan(snapshot_id=step["snapshot_id"]).to_arrow()
        got = dict(zip(arrow.column("id").to_pylist(), arrow.column("v").to_pylist()))
        assert len(got) == arrow.num_rows, f"step {i}: duplicate ids"
        want = {int(k): v for k, v in step["rows"].items()}
        assert got == want, f"seed {seed} step {i}: PyIceberg differs from the model"

    snapshots = table.inspect.snapshots()
    assert snapshots.num_rows == 20
    summaries = snapshots.column("summary").to_pylist()
    assert all(dict(s).get("unitable.changelog-offsets") for s in summaries)
    files = table.inspect.files()
    contents = set(files.column("content").to_pylist())
    assert 0 in contents and 1 in contents, "expected data files (0) and position-delete files (1)"
    manifests = table.inspect.manifests()
    assert manifests.num_rows > 0
    # The current snapshot's summary totals agree with what PyIceberg counts.
    current = table.current_snapshot()
    assert int(current.summary["total-records"]) == sum(
        f.record_count for f in table.scan().plan_files() for f in [f.file])


@pytest.mark.parametrize("seed", [13, 77])
def test_rewrites_and_expirations_read_as_the_model_in_pyiceberg(unitable_bin, tmp_path, seed):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    out = subprocess.run([oracle_bin(unitable_bin), str(data_dir), str(seed), "30", "mixed"],
                         capture_output=True, text=True, timeout=300, check=True)
    steps = json.loads(out.stdout)
    assert len(steps) == 30
    assert any(s["op"] == "rewrite" for s in steps), "no rewrite in this sequence"
    assert any(s["expired"] for s in steps), "no expiration in this sequence"

    catalog = SqlCatalog("unitable", uri=f"sqlite:///{data_dir}/catalog.db",
                         warehouse=f"file://{data_dir}/warehouse")
    table = catalog.load_table("oracle.items")
    retained = [s for s in steps if not s["expired"]]
    known = {s.snapshot_id for s in table.snapshots()}
    assert known == {s["snapshot_id"] for s in retained}
    for i, step in enumerate(steps):
        if step["expired"]:
            continue
        arrow = table.scan(snapshot_id=step["snapshot_id"]).to_arrow()
        got = dict(zip(arrow.column("id").to_pylist(), arrow.column("v").to_pylist()))
        assert len(got) == arrow.num_rows, f"step {i}: duplicate ids"
        want = {int(k): v for k, v in step["rows"].items()}
        assert got == want, f"seed {seed} step {i} ({step['op']}): PyIceberg differs from the model"

    snapshots = table.inspect.snapshots()
    assert snapshots.num_rows == len(retained)
    assert snapshots.column("operation").to_pylist().count("replace") == sum(
        1 for s in retained if s["op"] in ("rewrite", "merge"))
    assert all(dict(s).get("unitable.changelog-offsets")
               for s in snapshots.column("summary").to_pylist())
    table.inspect.files()
    assert table.inspect.manifests().num_rows > 0
    current = table.current_snapshot()
    assert int(current.summary["total-records"]) == sum(
        t.file.record_count for t in table.scan().plan_files())


@pytest.mark.parametrize("seed", [9, 52])
def test_compacted_and_merged_tables_read_as_the_model_in_pyiceberg(unitable_bin, tmp_path, seed):
    """Rounds of 8 row deltas each ended by a compaction run (bin-packing, then a manifest merge):
    the snapshot after each run lists at most one data and one delete manifest, fewer than the
    snapshot before the run, and every snapshot (before and after each run) reads as its model."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rounds = 4
    out = subprocess.run([oracle_bin(unitable_bin), str(data_dir), str(seed), str(rounds),
                          "compacted"],
                         capture_output=True, text=True, timeout=300, check=True)
    steps = json.loads(out.stdout)
    compactions = [i for i, s in enumerate(steps) if s["op"] == "compact"]
    assert len(compactions) == rounds

    catalog = SqlCatalog("unitable", uri=f"sqlite:///{data_dir}/catalog.db",
                         warehouse=f"file://{data_dir}/warehouse")
    table = catalog.load_table("oracle.items")
    for i, step in enumerate(steps):
        arrow = table.scan(snapshot_id=step["snapshot_id"]).to_arrow()
        got = dict(zip(arrow.column("id").to_pylist(), arrow.column("v").to_pylist()))
        assert len(got) == arrow.num_rows, f"step {i}: duplicate ids"
        want = {int(k): v for k, v in step["rows"].items()}
        assert got == want, f"seed {seed} step {i} ({step['op']}): PyIceberg differs from the model"

    def manifests(snapshot_id: int) -> list:
        return table.snapshot_by_id(snapshot_id).manifests(table.io)

    for i in compactions:
        before = manifests(steps[i - 1]["snapshot_id"])
        merged = manifests(steps[i]["snapshot_id"])
        assert len(merged) < len(before), f"step {i}: {len(merged)} manifests, {len(before)} before"
        contents = [m.content for m in merged]
        assert len(contents) == len(set(contents)) <= 2, f"step {i}: {contents}"
        # DELETED entries stay in the snapshots that deleted the files: the merge drops them.
        assert all(m.deleted_files_count == 0 for m in merged), f"step {i}: {merged}"
        summary = table.snapshot_by_id(steps[i]["snapshot_id"]).summary
        assert summary.operation.value == "replace"
        assert summary["unitable.changelog-offsets"]
    # The current snapshot's totals agree with PyIceberg's plan; the metadata tables open.
    current = table.current_snapshot()
    assert int(current.summary["total-records"]) == sum(
        t.file.record_count for t in table.scan().plan_files())
    table.inspect.files()
    assert table.inspect.manifests().num_rows > 0
