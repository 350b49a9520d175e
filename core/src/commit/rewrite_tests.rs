//! Rewrites checked against iceberg-rust's scan and a model: merged files keep exactly the live
//! rows, concurrent deletes are carried over or refused, never lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use iceberg::spec::{ManifestStatus, Operation};

use super::CommitError;
use super::plan::tests::file_rows;
use super::plan::{plan_files, read_position_deletes, snapshot_entries};
use super::pointer::SqlMetadataPointer;
use super::rewrite::{PositionMap, RewriteFiles};
use super::row_delta::Committer;
use super::tests::{
    Fixture, LosesFirstAnswer, data_file, delete_file, delta, expect, fixture, scan_at,
};
use crate::catalog::CatalogConfig;

/// A compaction of `paths` as of snapshot `start`: their live rows (deletes applied) in one new
/// file, with the position map.
pub(crate) async fn compact(f: &Fixture, paths: &[&str], start: i64, id: &str) -> RewriteFiles {
    let table = f.catalog.load(&f.name).await.unwrap();
    let io = table.file_io();
    let plan = plan_files(io, table.metadata(), Some(start)).await.unwrap();
    let mut rows = Vec::new();
    let mut sources = Vec::new();
    let mut removed = Vec::new();
    for p in plan
        .iter()
        .filter(|p| paths.contains(&p.data_file.file_path()))
    {
        let path = p.data_file.file_path();
        let deleted = read_position_deletes(io, &p.deletes).await.unwrap();
        let gone = deleted.get(path).cloned().unwrap_or_default();
        for (pos, row) in file_rows(io, path).await.into_iter().enumerate() {
            if !gone.contains(&(pos as i64)) {
                rows.push(row);
                sources.push((path.to_string(), pos as i64));
            }
        }
        removed.push(p.data_file.clone());
    }
    assert_eq!(removed.len(), paths.len(), "all files live at {start}");
    let refs: Vec<(i64, &str)> = rows.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let new = data_file(f, &refs).await;
    let new_path: Arc<str> = Arc::from(new.file_path());
    let mut map = PositionMap::new();
    for (i, (old, pos)) in sources.iter().enumerate() {
        map.insert(old, *pos, new_path.clone(), i as i64);
    }
    RewriteFiles {
        removed_data_files: removed,
        added_data_files: vec![new],
        starting_snapshot_id: Some(start),
        position_map: Some(Arc::new(map)),
        commit_id: id.to_string(),
        ..RewriteFiles::default()
    }
}

fn summary_of(f_table: &iceberg::table::Table) -> BTreeMap<String, String> {
    let s = f_table.metadata().current_snapshot().unwrap().summary();
    assert_eq!(s.operation, Operation::Replace);
    s.additional_properties
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[tokio::test]
async fn a_rewrite_merges_files_applying_their_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let a = data_file(&f, &[(1, "a"), (2, "b"), (3, "c")]).await;
    let c1 = f.commit(vec![a.clone()], vec![], "c1").await;
    let b = data_file(&f, &[(4, "d"), (5, "e")]).await;
    let d_a = delete_file(&f, &[(&a, 1)]).await;
    f.commit(vec![b.clone()], vec![d_a], "c2").await;
    let c = data_file(&f, &[(6, "f")]).await;
    let c3 = f.commit(vec![c], vec![], "c3").await;
    let before = scan_at(&f, None).await;
    assert_eq!(
        before,
        expect(&[(1, "a"), (3, "c"), (4, "d"), (5, "e"), (6, "f")])
    );

    let rewrite = compact(&f, &[a.file_path(), b.file_path()], c3.snapshot_id, "r1").await;
    let new_path = rewrite.added_data_files[0].file_path().to_string();
    let r = f.committer.commit_rewrite(&f.name, &rewrite).await.unwrap();
    assert_eq!(scan_at(&f, None).await, before);
    assert_eq!(scan_at(&f, Some(c3.snapshot_id)).await, before);

    let table = f.catalog.load(&f.name).await.unwrap();
    let s = summary_of(&table);
    for (k, v) in [
        ("added-data-files", "1"),
        ("added-records", "4"),
        ("deleted-data-files", "2"),
        ("deleted-records", "5"),
        ("removed-delete-files", "1"),
        ("removed-position-deletes", "1"),
        ("total-data-files", "2"),
        ("total-delete-files", "0"),
        ("total-position-deletes", "0"),
        ("total-records", "5"),
        ("unitable.changelog-offsets", "0:c3"),
        ("unitable.commit-id", "r1"),
    ] {
        assert_eq!(s.get(k).map(String::as_str), Some(v), "summary {k}: {s:?}");
    }
    // Entries: the new file carries the starting snapshot's data sequence number; removed
    // files are DELETED with their original sequence numbers.
    let entries = snapshot_entries(table.file_io(), table.metadata(), None)
        .await
        .unwrap();
    let entry = |p: &str| {
        entries
            .iter()
            .find(|e| e.data_file.file_path() == p)
            .unwrap()
    };
    let new = entry(&new_path);
    assert_eq!(new.status, ManifestStatus::Added);
    assert_eq!(new.data_sequence_number, c3.sequence_number);
    assert_eq!(new.file_sequence_number, r.sequence_number);
    let old = entry(a.file_path());
    assert_eq!(old.status, ManifestStatus::Deleted);
    assert_eq!(old.snapshot_id, r.snapshot_id);
    assert_eq!(old.data_sequence_number, c1.sequence_number);
    assert_eq!(old.file_sequence_number, c1.sequence_number);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.status == ManifestStatus::Deleted)
            .count(),
        3
    );

    // Later row deltas delete from the new file as usual.
    let first_row = file_rows(table.file_io(), &new_path).await[0].0;
    let d_new = delete_file(&f, &[(&rewrite.added_data_files[0], 0)]).await;
    f.commit(vec![], vec![d_new], "c4").await;
    let mut want = before;
    want.remove(&first_row);
    assert_eq!(scan_at(&f, None).await, want);
}

#[tokio::test]
async fn deletes_committed_during_a_rewrite_are_carried_over_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let a = data_file(&f, &[(1, "a"), (2, "b"), (3, "c"), (4, "d")]).await;
    f.commit(vec![a.clone()], vec![], "c1").await;
    let d_first = delete_file(&f, &[(&a, 3)]).await;
    let c2 = f.commit(vec![], vec![d_first], "c2").await;
    // The rewrite reads c2 (id 4 already deleted) ...
    let rewrite = compact(&f, &[a.file_path()], c2.snapshot_id, "r1").await;
    // ... while a row delta deletes id 1 and updates id 2 (new copy + delete of A@1).
    let b = data_file(&f, &[(2, "B")]).await;
    let d_late = delete_file(&f, &[(&a, 0), (&a, 1)]).await;
    f.commit(vec![b], vec![d_late], "c3").await;
    let want = expect(&[(2, "B"), (3, "c")]);
    assert_eq!(scan_at(&f, None).await, want);

    // Without a position map the late deletes cannot be placed: a conflict, nothing committed.
    let mut blind = rewrite.clone();
    blind.position_map = None;
    blind.commit_id = "r0".into();
    let err = f
        .committer
        .commit_rewrite(&f.name, &blind)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommitError::RewriteConflict { reason, .. } if reason.contains("no position map")),
        "{err}"
    );
    assert!(!err.is_retryable());

    // With it, they are carried onto the new file in the same snapshot.
    f.committer.commit_rewrite(&f.name, &rewrite).await.unwrap();
    assert_eq!(scan_at(&f, None).await, want);
    let table = f.catalog.load(&f.name).await.unwrap();
    let s = summary_of(&table);
    assert_eq!(
        s.get("added-position-deletes").map(String::as_str),
        Some("2")
    );
    // Both old delete files targeted only A: both are gone; one carried file remains.
    let plan = plan_files(table.file_io(), table.metadata(), None)
        .await
        .unwrap();
    let deletes: Vec<_> = plan.iter().flat_map(|p| p.deletes.iter()).collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(
        deletes[0].referenced_data_file().as_deref(),
        Some(rewrite.added_data_files[0].file_path())
    );
    assert_eq!(s.get("total-delete-files").map(String::as_str), Some("1"));
    assert_eq!(s.get("removed-delete-files").map(String::as_str), Some("2"));
}

#[tokio::test]
async fn a_map_that_drops_a_live_row_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let a = data_file(&f, &[(1, "a"), (2, "b")]).await;
    let c1 = f.commit(vec![a.clone()], vec![], "c1").await;
    let mut rewrite = compact(&f, &[a.file_path()], c1.snapshot_id, "r1").await;
    // A buggy compactor whose map forgets row 1.
    let new: Arc<str> = Arc::from(rewrite.added_data_files[0].file_path());
    let mut map = PositionMap::new();
    map.insert(a.file_path(), 0, new, 0);
    rewrite.position_map = Some(Arc::new(map));
    let d = delete_file(&f, &[(&a, 1)]).await;
    f.commit(vec![], vec![d], "c2").await;
    let err = f
        .committer
        .commit_rewrite(&f.name, &rewrite)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommitError::RewriteConflict { reason, .. } if reason.contains("does not place")),
        "{err}"
    );
    assert_eq!(scan_at(&f, None).await, expect(&[(1, "a")]));
}

#[tokio::test]
async fn rewrites_and_row_deltas_refuse_files_already_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let a = data_file(&f, &[(1, "a"), (2, "b")]).await;
    let c1 = f.commit(vec![a.clone()], vec![], "c1").await;
    let first = compact(&f, &[a.file_path()], c1.snapshot_id, "r1").await;
    let second = compact(&f, &[a.file_path()], c1.snapshot_id, "r2").await;
    f.committer.commit_rewrite(&f.name, &first).await.unwrap();
    let err = f
        .committer
        .commit_rewrite(&f.name, &second)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommitError::RewriteConflict { reason, .. } if reason.contains("no longer live")),
        "{err}"
    );
    // A writer still pointing at A must rebuild its index: its delete would miss the new copy.
    let d = delete_file(&f, &[(&a, 0)]).await;
    let err = f
        .committer
        .commit_row_delta(&f.name, &delta(vec![], vec![d], "c2"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommitError::DataFileRemoved { path, .. } if path == a.file_path()),
        "{err}"
    );
    assert_eq!(scan_at(&f, None).await, expect(&[(1, "a"), (2, "b")]));
    let table = f.catalog.load(&f.name).await.unwrap();
    assert_eq!(table.metadata().snapshots().count(), 2);
}

#[tokio::test]
async fn a_rewrite_whose_answer_was_lost_is_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let a = data_file(&f, &[(1, "a")]).await;
    let b = data_file(&f, &[(2, "b")]).await;
    let c1 = f.commit(vec![a.clone(), b.clone()], vec![], "c1").await;
    let rewrite = compact(&f, &[a.file_path(), b.file_path()], c1.snapshot_id, "r1").await;
    let pointer = LosesFirstAnswer {
        inner: SqlMetadataPointer::connect(&CatalogConfig::embedded(dir.path()))
            .await
            .unwrap(),
        lost: AtomicBool::new(false),
    };
    let lossy = Committer::new(f.catalog.clone(), Arc::new(pointer));
    let r = lossy.commit_rewrite(&f.name, &rewrite).await.unwrap();
    assert!(r.already_committed);
    assert_eq!(scan_at(&f, None).await, expect(&[(1, "a"), (2, "b")]));
    let table = f.catalog.load(&f.name).await.unwrap();
    assert_eq!(table.metadata().snapshots().count(), 2);
}

#[test]
fn position_map_stores_runs_and_answers_every_position() {
    let a: Arc<str> = Arc::from("new-a");
    let b: Arc<str> = Arc::from("new-b");
    let mut map = PositionMap::new();
    // old-1: rows 0..100 live except 10 and 50; 0..60 go to new-a, the rest to new-b.
    let mut expected = Vec::new();
    let mut next_a = 0;
    let mut next_b = 0;
    for pos in (0..100).filter(|p| *p != 10 && *p != 50) {
        let (path, new_pos) = if pos < 60 {
            next_a += 1;
            (a.clone(), next_a - 1)
        } else {
            next_b += 1;
            (b.clone(), next_b - 1)
        };
        map.insert("old-1", pos, path.clone(), new_pos);
        expected.push((pos, path, new_pos));
    }
    // old-2 inserted out of order.
    for pos in [5, 3, 4, 0] {
        map.insert("old-2", pos, b.clone(), 100 + pos);
    }
    assert_eq!(map.runs(), 4 + 4);
    for (pos, path, new_pos) in expected {
        assert_eq!(map.get("old-1", pos), Some((path.as_ref(), new_pos)));
    }
    for pos in [10, 50, 100, -1] {
        assert_eq!(map.get("old-1", pos), None);
    }
    for pos in [0, 3, 4, 5] {
        assert_eq!(map.get("old-2", pos), Some(("new-b", 100 + pos)));
    }
    for pos in [1, 2, 6] {
        assert_eq!(map.get("old-2", pos), None);
    }
    assert_eq!(map.get("old-3", 0), None);
}
