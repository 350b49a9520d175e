//! Manifest merges and the rewrite's merging, checked against a model and iceberg-rust's scan:
//! fewer manifests, the same live entries with their snapshot ids and sequence numbers, every
//! retained snapshot reading as before, expiration and orphan removal keeping what the merged
//! snapshots need.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use iceberg::spec::{ManifestContentType, ManifestStatus, Operation};

use super::expire::ExpireSnapshots;
use super::merge::{MergeManifests, plan_merge};
use super::orphans::{RemoveOrphanFiles, canonical, remove_orphan_files};
use super::plan::{TrackedFile, manifests_of, plan_files, read_position_deletes, snapshot_entries};
use super::pointer::SqlMetadataPointer;
use super::rewrite_tests::compact;
use super::row_delta::{
    Committer, DEFAULT_MIN_COUNT_TO_MERGE, MANIFEST_MERGE_ENABLED, MANIFEST_MIN_COUNT_TO_MERGE,
    MANIFEST_TARGET_SIZE_BYTES,
};
use super::tests::{Fixture, LosesFirstAnswer, data_file, delete_file, fixture, scan_at};
use crate::catalog::CatalogConfig;
use crate::clock::ManualClock;

/// `commits` row deltas: each inserts two keys and updates one earlier key (a new row plus a
/// position delete of its current copy), with merging on commit off (these tests merge
/// themselves). Returns every snapshot with its model.
async fn many_commits(f: &Fixture, commits: i64) -> Vec<(i64, BTreeMap<i64, String>)> {
    set_commit_merge(f, MANIFEST_MERGE_ENABLED, "false").await;
    row_deltas(f, commits).await
}

async fn set_commit_merge(f: &Fixture, key: &str, value: &str) {
    f.committer
        .commit_properties(
            &f.name,
            None,
            BTreeMap::from([(key.to_string(), value.to_string())]),
            BTreeMap::new(),
        )
        .await
        .unwrap();
}

/// The row deltas of [`many_commits`], with the table's merge settings as they are.
async fn row_deltas(f: &Fixture, commits: i64) -> Vec<(i64, BTreeMap<i64, String>)> {
    let mut history: Vec<(i64, BTreeMap<i64, String>)> = Vec::new();
    for n in 0..commits {
        let next = row_delta_from(f, n, history.last().map(|(_, m)| m)).await;
        history.push(next);
    }
    history
}

async fn head_manifests(f: &Fixture) -> Vec<iceberg::spec::ManifestFile> {
    let table = f.catalog.load(&f.name).await.unwrap();
    let snapshot = table.metadata().current_snapshot().unwrap().clone();
    manifests_of(table.file_io(), table.metadata(), &snapshot)
        .await
        .unwrap()
}

/// The live entries of a snapshot as (path -> (status, snapshot id, data seq, file seq)).
async fn live_entries(f: &Fixture, snapshot: Option<i64>) -> BTreeMap<String, TrackedFile> {
    let table = f.catalog.load(&f.name).await.unwrap();
    snapshot_entries(table.file_io(), table.metadata(), snapshot)
        .await
        .unwrap()
        .into_iter()
        .filter(TrackedFile::is_live)
        .map(|e| (e.data_file.file_path().to_string(), e))
        .collect()
}

fn merge(id: &str) -> MergeManifests {
    MergeManifests {
        commit_id: id.into(),
        ..MergeManifests::default()
    }
}

/// The rows the commit layer's own plan gives (planned rows minus planned position deletes).
async fn planned_rows(f: &Fixture) -> BTreeMap<i64, String> {
    let table = f.catalog.load(&f.name).await.unwrap();
    let io = table.file_io();
    let mut out = BTreeMap::new();
    for p in plan_files(io, table.metadata(), None).await.unwrap() {
        let path = p.data_file.file_path();
        let gone = read_position_deletes(io, &p.deletes).await.unwrap();
        let gone = gone.get(path).cloned().unwrap_or_default();
        for (pos, row) in super::plan::tests::file_rows(io, path)
            .await
            .into_iter()
            .enumerate()
        {
            if !gone.contains(&(pos as i64)) {
                assert!(out.insert(row.0, row.1).is_none(), "duplicate key");
            }
        }
    }
    out
}

#[tokio::test]
async fn a_merge_lists_one_manifest_per_content_and_keeps_entries_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let history = many_commits(&f, 24).await;
    let before = head_manifests(&f).await;
    assert_eq!(
        before.len(),
        24 + 23,
        "one data manifest per commit, one delete manifest per update"
    );
    let entries_before = live_entries(&f, None).await;
    let (head_before, model) = history.last().unwrap().clone();

    let merged = f
        .committer
        .merge_manifests(&f.name, &merge("m1"))
        .await
        .unwrap()
        .expect("a merge");
    assert_eq!((merged.manifests_before, merged.manifests_after), (47, 2));

    // The manifest list: one data and one delete manifest, all EXISTING, counts right.
    let after = head_manifests(&f).await;
    assert_eq!(after.len(), 2);
    let data = after
        .iter()
        .find(|m| m.content == ManifestContentType::Data)
        .unwrap();
    let deletes = after
        .iter()
        .find(|m| m.content == ManifestContentType::Deletes)
        .unwrap();
    for (m, files) in [(data, 24u32), (deletes, 23)] {
        assert_eq!(m.added_files_count, Some(0));
        assert_eq!(m.existing_files_count, Some(files));
        assert_eq!(m.deleted_files_count, Some(0));
        assert_eq!(m.added_snapshot_id, merged.committed.snapshot_id);
        assert_eq!(m.sequence_number, merged.committed.sequence_number);
        // Unpartitioned: a summary per partition field, i.e. none.
        assert_eq!(m.partitions.as_deref(), Some(&[][..]));
    }
    let data_rows: u64 = entries_before
        .values()
        .filter(|e| e.data_file.content_type() == iceberg::spec::DataContentType::Data)
        .map(|e| e.data_file.record_count())
        .sum();
    assert_eq!(data.existing_rows_count, Some(data_rows));
    // The oldest live data file has sequence number 1.
    assert_eq!(data.min_sequence_number, 1);
    assert_eq!(deletes.min_sequence_number, 2);

    // Entries: same files, EXISTING, original snapshot ids and both sequence numbers.
    let entries_after = live_entries(&f, None).await;
    assert_eq!(
        entries_after.keys().collect::<Vec<_>>(),
        entries_before.keys().collect::<Vec<_>>()
    );
    for (path, e) in &entries_after {
        let old = &entries_before[path];
        assert_eq!(e.status, ManifestStatus::Existing, "{path}");
        assert_eq!(
            (
                e.snapshot_id,
                e.data_sequence_number,
                e.file_sequence_number
            ),
            (
                old.snapshot_id,
                old.data_sequence_number,
                old.file_sequence_number
            ),
            "{path}"
        );
    }

    // Summary: replace, nothing added or removed, totals and changelog offsets kept.
    let table = f.catalog.load(&f.name).await.unwrap();
    let snapshot = table.metadata().current_snapshot().unwrap();
    assert_eq!(snapshot.parent_snapshot_id(), Some(head_before));
    let summary = snapshot.summary();
    assert_eq!(summary.operation, Operation::Replace);
    let parent = table
        .metadata()
        .snapshot_by_id(head_before)
        .unwrap()
        .summary();
    for key in [
        "total-records",
        "total-data-files",
        "total-delete-files",
        "total-position-deletes",
        "total-files-size",
        "unitable.changelog-offsets",
    ] {
        assert_eq!(
            summary.additional_properties.get(key),
            parent.additional_properties.get(key),
            "{key}"
        );
    }
    let s = &summary.additional_properties;
    for (k, v) in [
        ("added-data-files", "0"),
        ("manifests-created", "2"),
        ("manifests-replaced", "47"),
        ("manifests-kept", "0"),
        ("entries-processed", "47"),
        ("unitable.commit-id", "m1"),
    ] {
        assert_eq!(s.get(k).map(String::as_str), Some(v), "{k}: {s:?}");
    }

    // Reads: the head, its plan, and every earlier snapshot (time travel) as before.
    assert_eq!(scan_at(&f, None).await, model);
    assert_eq!(planned_rows(&f).await, model);
    for (id, rows) in &history {
        assert_eq!(&scan_at(&f, Some(*id)).await, rows, "snapshot {id}");
    }

    // Nothing more to merge; a lower bound than the count is respected.
    assert!(
        f.committer
            .merge_manifests(&f.name, &merge("m2"))
            .await
            .unwrap()
            .is_none()
    );

    // Commits and rewrites after the merge read right.
    let extra = data_file(&f, &[(1000, "x")]).await;
    let first_file = entries_after
        .values()
        .find(|e| e.data_sequence_number == 1)
        .unwrap()
        .data_file
        .clone();
    let d = delete_file(&f, &[(&first_file, 0)]).await;
    f.commit(vec![extra], vec![d], "after").await;
    let mut model = model;
    model.insert(1000, "x".into());
    model.remove(&0);
    assert_eq!(scan_at(&f, None).await, model);
    let head = f
        .catalog
        .load(&f.name)
        .await
        .unwrap()
        .metadata()
        .current_snapshot_id()
        .unwrap();
    let live = live_entries(&f, None).await;
    let victims: Vec<&str> = live
        .values()
        .filter(|e| e.data_file.content_type() == iceberg::spec::DataContentType::Data)
        .map(|e| e.data_file.file_path())
        .take(5)
        .collect();
    let rewrite = compact(&f, &victims, head, "r1").await;
    f.committer.commit_rewrite(&f.name, &rewrite).await.unwrap();
    assert_eq!(scan_at(&f, None).await, model);
    assert_eq!(planned_rows(&f).await, model);
}

#[tokio::test]
async fn a_rewrite_merges_the_manifests_it_touches_and_deleted_entries_stay_in_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let history = many_commits(&f, 12).await;
    let (head, model) = history.last().unwrap().clone();
    let live = live_entries(&f, None).await;
    // Rewrite the data files of the first six commits: six data manifests are touched.
    let mut victims: Vec<&TrackedFile> = live
        .values()
        .filter(|e| {
            e.data_file.content_type() == iceberg::spec::DataContentType::Data
                && e.data_sequence_number <= 6
        })
        .collect();
    victims.sort_by_key(|e| e.data_sequence_number);
    let paths: Vec<&str> = victims.iter().map(|e| e.data_file.file_path()).collect();
    assert_eq!(paths.len(), 6);
    let before = head_manifests(&f).await.len();
    let rewrite = compact(&f, &paths, head, "r1").await;
    let r = f.committer.commit_rewrite(&f.name, &rewrite).await.unwrap();
    let after = head_manifests(&f).await;
    // Six touched data manifests -> one of DELETED entries; delete manifests whose files only
    // targeted the rewritten files -> one of DELETED entries; the kept delete entries of
    // touched delete manifests (none here) would be one EXISTING manifest.
    let deleted_only: Vec<_> = after
        .iter()
        .filter(|m| m.added_files_count == Some(0) && m.existing_files_count == Some(0))
        .collect();
    assert!(!deleted_only.is_empty());
    for m in &deleted_only {
        assert_eq!(m.added_snapshot_id, r.snapshot_id);
    }
    assert!(
        after.len() < before,
        "{} manifests, {before} before",
        after.len()
    );
    assert_eq!(scan_at(&f, None).await, model);
    // The DELETED entries are in the rewrite's snapshot only: the next commit drops them.
    let table = f.catalog.load(&f.name).await.unwrap();
    let deleted_in_rewrite: Vec<TrackedFile> =
        snapshot_entries(table.file_io(), table.metadata(), Some(r.snapshot_id))
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.status == ManifestStatus::Deleted)
            .collect();
    assert!(
        deleted_in_rewrite
            .iter()
            .any(|e| paths.contains(&e.data_file.file_path()))
    );
    for e in &deleted_in_rewrite {
        assert_eq!(e.snapshot_id, r.snapshot_id);
    }
    let extra = data_file(&f, &[(5000, "y")]).await;
    f.commit(vec![extra], vec![], "next").await;
    let table = f.catalog.load(&f.name).await.unwrap();
    let entries = snapshot_entries(table.file_io(), table.metadata(), None)
        .await
        .unwrap();
    assert!(entries.iter().all(|e| e.status != ManifestStatus::Deleted));
    for (id, rows) in &history {
        assert_eq!(&scan_at(&f, Some(*id)).await, rows, "snapshot {id}");
    }
}

#[tokio::test]
async fn expiration_and_orphan_removal_after_a_merge_keep_what_snapshots_need() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let history = many_commits(&f, 16).await;
    let (_, model) = history.last().unwrap().clone();
    let old_manifests: BTreeSet<String> = head_manifests(&f)
        .await
        .into_iter()
        .map(|m| canonical(&m.manifest_path))
        .collect();
    f.committer
        .merge_manifests(&f.name, &merge("m1"))
        .await
        .unwrap()
        .unwrap();
    let merged: BTreeSet<String> = head_manifests(&f)
        .await
        .into_iter()
        .map(|m| canonical(&m.manifest_path))
        .collect();
    let extra = data_file(&f, &[(9000, "z")]).await;
    f.commit(vec![extra], vec![], "after").await;
    let mut model = model;
    model.insert(9000, "z".into());

    // Orphan removal four days later: the merged manifests are referenced, so they stay.
    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis() + 4 * 24 * 3_600_000);
    let report = remove_orphan_files(&f.catalog, &f.name, &RemoveOrphanFiles::default(), &clock)
        .await
        .unwrap();
    let removed: BTreeSet<String> = report.removed.iter().map(|p| canonical(p)).collect();
    assert!(removed.is_disjoint(&merged), "removed a merged manifest");
    assert!(
        removed.is_disjoint(&old_manifests),
        "removed a manifest older snapshots list"
    );
    for p in &merged {
        assert!(std::path::Path::new(p).exists(), "{p}");
    }
    assert_eq!(scan_at(&f, None).await, model);

    // Expire everything but the head: the replaced manifests go, the merged ones stay, every
    // file the head reads exists and the head reads the model.
    let report = f
        .committer
        .expire_snapshots(
            &f.name,
            &ExpireSnapshots {
                older_than_ms: i64::MAX,
                retain_last: 1,
                dry_run: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(report.expired_snapshot_ids.len(), 17);
    let deleted: BTreeSet<String> = report.deleted_files.iter().map(|p| canonical(p)).collect();
    assert!(deleted.is_disjoint(&merged));
    assert!(
        old_manifests.is_subset(&deleted),
        "replaced manifests were deleted"
    );
    for p in &merged {
        assert!(std::path::Path::new(p).exists(), "{p}");
    }
    for e in live_entries(&f, None).await.values() {
        assert!(
            std::path::Path::new(&canonical(e.data_file.file_path())).exists(),
            "{} is gone",
            e.data_file.file_path()
        );
    }
    assert_eq!(scan_at(&f, None).await, model);
    assert_eq!(planned_rows(&f).await, model);
}

#[tokio::test]
async fn a_small_target_packs_manifests_into_several_and_a_threshold_skips_the_merge() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let history = many_commits(&f, 10).await;
    let (_, model) = history.last().unwrap().clone();
    let manifests = head_manifests(&f).await;
    assert_eq!(manifests.len(), 19);

    // At or below the threshold: nothing happens.
    let skip = MergeManifests {
        max_manifests: 19,
        ..merge("m0")
    };
    assert!(
        f.committer
            .merge_manifests(&f.name, &skip)
            .await
            .unwrap()
            .is_none()
    );

    // A target of about three manifests: bins of three (data: 10 -> 4, deletes: 9 -> 3).
    let largest = manifests.iter().map(|m| m.manifest_length).max().unwrap() as u64;
    let target = 3 * largest;
    let plan = plan_merge(&manifests, target);
    let packed = plan.manifests_after();
    assert!((4..19).contains(&packed), "{packed}");
    let small = MergeManifests {
        max_manifests: 2,
        target_manifest_bytes: target,
        ..merge("m1")
    };
    let merged = f
        .committer
        .merge_manifests(&f.name, &small)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(merged.manifests_after, packed);
    assert_eq!(head_manifests(&f).await.len(), packed);
    assert_eq!(scan_at(&f, None).await, model);
    for (id, rows) in &history {
        assert_eq!(&scan_at(&f, Some(*id)).await, rows);
    }
}

#[tokio::test]
async fn a_merge_whose_answer_was_lost_is_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let history = many_commits(&f, 4).await;
    let pointer = LosesFirstAnswer {
        inner: SqlMetadataPointer::connect(&CatalogConfig::embedded(dir.path()))
            .await
            .unwrap(),
        lost: AtomicBool::new(false),
    };
    let lossy = Committer::new(f.catalog.clone(), Arc::new(pointer));
    let merged = lossy
        .merge_manifests(&f.name, &merge("m1"))
        .await
        .unwrap()
        .unwrap();
    assert!(merged.committed.already_committed);
    let table = f.catalog.load(&f.name).await.unwrap();
    assert_eq!(table.metadata().snapshots().count(), 5);
    assert_eq!(scan_at(&f, None).await, history.last().unwrap().1);
}

/// Merging on commit (the default): 40 row deltas with upserts. Every head lists fewer than
/// the merge count plus one commit's manifests; the merged snapshots say what they merged;
/// every live entry keeps the snapshot that added it and that snapshot's sequence number (so
/// the deletes apply as before); and every snapshot reads its model in iceberg-rust's scan
/// and the commit layer's own plan.
#[tokio::test]
async fn row_deltas_merge_small_manifests_once_the_head_lists_the_merge_count() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let mut heads = Vec::new();
    let mut history = Vec::new();
    for round in 0..40 {
        // One commit at a time, so every head is seen.
        let (id, model) = row_delta_from(&f, round, history.last().map(|(_, m)| m)).await;
        heads.push(head_manifests(&f).await.len());
        history.push((id, model));
    }
    let most = *heads.iter().max().unwrap();
    assert!(
        most < DEFAULT_MIN_COUNT_TO_MERGE + 2,
        "a head listed {most} manifests: {heads:?}"
    );
    let table = f.catalog.load(&f.name).await.unwrap();
    let metadata = table.metadata();
    let merged: Vec<_> = metadata
        .snapshots()
        .filter(|s| {
            s.summary()
                .additional_properties
                .contains_key("manifests-created")
        })
        .collect();
    assert!(merged.len() >= 2, "merges: {}", merged.len());
    for s in &merged {
        assert_ne!(
            s.summary().operation,
            Operation::Replace,
            "merged in the row delta itself"
        );
    }
    let entries = live_entries(&f, None).await;
    let data = entries
        .values()
        .filter(|e| e.data_file.content_type() == iceberg::spec::DataContentType::Data)
        .count();
    assert_eq!(data, 40, "every data file is still live");
    assert_eq!(entries.len(), 40 + 39, "and every delete file");
    for e in entries.values() {
        let added = metadata
            .snapshot_by_id(e.snapshot_id)
            .expect("the adding snapshot");
        assert_eq!(
            e.data_sequence_number,
            added.sequence_number(),
            "{} keeps its sequence number",
            e.data_file.file_path()
        );
        assert!(history.iter().any(|(id, _)| *id == e.snapshot_id));
    }
    for (id, model) in &history {
        assert_eq!(&scan_at(&f, Some(*id)).await, model, "snapshot {id}");
    }
    assert_eq!(planned_rows(&f).await, history.last().unwrap().1);

    // A larger count set on the table is honoured.
    set_commit_merge(&f, MANIFEST_MIN_COUNT_TO_MERGE, "1000").await;
    let before = head_manifests(&f).await.len();
    let mut model = history.last().unwrap().1.clone();
    for round in 40..46 {
        model = row_delta_from(&f, round, Some(&model)).await.1;
    }
    assert_eq!(head_manifests(&f).await.len(), before + 12);
    assert_eq!(planned_rows(&f).await, model);

    // An invalid setting does not stop commits: the default count applies again.
    set_commit_merge(&f, MANIFEST_MIN_COUNT_TO_MERGE, "many").await;
    model = row_delta_from(&f, 46, Some(&model)).await.1;
    let merged_again = head_manifests(&f).await.len();
    assert!(merged_again < DEFAULT_MIN_COUNT_TO_MERGE + 2);
    assert_eq!(planned_rows(&f).await, model);

    // Manifests of the target size do not count: with a 1-byte target every manifest is full,
    // so nothing is merged however many there are.
    set_commit_merge(&f, MANIFEST_TARGET_SIZE_BYTES, "1").await;
    for round in 47..63 {
        model = row_delta_from(&f, round, Some(&model)).await.1;
    }
    assert_eq!(head_manifests(&f).await.len(), merged_again + 32);
    assert_eq!(planned_rows(&f).await, model);
}

/// Commit number `n` of [`row_deltas`] on top of `model`: inserts keys 2n and 2n+1 and, after
/// the first, updates key (7n mod 2n) by a new row and a position delete of its current copy.
async fn row_delta_from(
    f: &Fixture,
    n: i64,
    model: Option<&BTreeMap<i64, String>>,
) -> (i64, BTreeMap<i64, String>) {
    let mut model = model.cloned().unwrap_or_default();
    let mut rows = vec![(2 * n, format!("c{n}")), (2 * n + 1, format!("c{n}"))];
    let mut deletes = Vec::new();
    if n > 0 {
        let key = (n * 7) % (2 * n);
        rows.push((key, format!("c{n}-upd")));
        let (file, pos) = current_copy(f, key).await;
        deletes.push((file, pos));
    }
    rows.sort();
    let refs: Vec<(i64, &str)> = rows.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let file = data_file(f, &refs).await;
    let delete = if deletes.is_empty() {
        vec![]
    } else {
        let targets: Vec<(&iceberg::spec::DataFile, i64)> =
            deletes.iter().map(|(d, p)| (d, *p)).collect();
        vec![delete_file(f, &targets).await]
    };
    let c = f.commit(vec![file], delete, &format!("c{n}")).await;
    for (k, v) in rows {
        model.insert(k, v);
    }
    (c.snapshot_id, model)
}

/// The live data file holding `key`'s live row, and its position there.
async fn current_copy(f: &Fixture, key: i64) -> (iceberg::spec::DataFile, i64) {
    let table = f.catalog.load(&f.name).await.unwrap();
    let io = table.file_io();
    for p in plan_files(io, table.metadata(), None).await.unwrap() {
        let path = p.data_file.file_path();
        let gone = read_position_deletes(io, &p.deletes).await.unwrap();
        let gone = gone.get(path).cloned().unwrap_or_default();
        let rows = super::plan::tests::file_rows(io, path).await;
        for (pos, row) in rows.into_iter().enumerate() {
            if row.0 == key && !gone.contains(&(pos as i64)) {
                return (p.data_file.clone(), pos as i64);
            }
        }
    }
    panic!("key {key} has no live row");
}
