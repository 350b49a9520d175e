//! Planning checked against iceberg-rust's scan: the rows of every planned data file minus the
//! positions its planned deletes remove must be exactly what the scan returns.

use std::collections::BTreeMap;

use arrow::array::{Int64Array, StringArray};
use iceberg::spec::{ManifestStatus, Struct};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;
use crate::commit::tests::{Fixture, data_file, delete_file, delta, fixture, scan_at};

/// The rows (id, v) of a data file in position order.
pub(crate) async fn file_rows(file_io: &FileIO, path: &str) -> Vec<(i64, String)> {
    let bytes = file_io.new_input(path).unwrap().read().await.unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let vs = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        for i in 0..batch.num_rows() {
            out.push((ids.value(i), vs.value(i).to_string()));
        }
    }
    out
}

/// What the plan of `snapshot` reads as: planned rows minus planned position deletes.
async fn rows_by_plan(f: &Fixture, snapshot: Option<i64>) -> BTreeMap<i64, String> {
    let table = f.catalog.load(&f.name).await.unwrap();
    let io = table.file_io();
    let mut out = BTreeMap::new();
    for planned in plan_files(io, table.metadata(), snapshot).await.unwrap() {
        let deleted = read_position_deletes(io, &planned.deletes).await.unwrap();
        let path = planned.data_file.file_path();
        let gone = deleted.get(path).cloned().unwrap_or_default();
        for (pos, (id, v)) in file_rows(io, path).await.into_iter().enumerate() {
            if !gone.contains(&(pos as i64)) {
                assert!(out.insert(id, v).is_none(), "duplicate id {id}");
            }
        }
    }
    out
}

async fn check_plan_matches_scan(f: &Fixture, snapshot: Option<i64>) {
    assert_eq!(
        rows_by_plan(f, snapshot).await,
        scan_at(f, snapshot).await,
        "plan of {snapshot:?} differs from iceberg-rust's scan"
    );
}

#[tokio::test]
async fn an_empty_table_plans_to_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let table = f.catalog.load(&f.name).await.unwrap();
    assert!(
        plan_files(table.file_io(), table.metadata(), None)
            .await
            .unwrap()
            .is_empty()
    );
    let err = plan_files(table.file_io(), table.metadata(), Some(42))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CommitError::SnapshotNotFound { snapshot_id: 42 }
    ));
}

#[tokio::test]
async fn plans_follow_the_sequence_number_and_target_rules() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let a = data_file(&f, &[(1, "a"), (2, "b"), (3, "c")]).await;
    let c1 = f.commit(vec![a.clone()], vec![], "c1").await;

    // c2: B plus deletes of A@1 and of B@0 in the same snapshot (equal sequence numbers apply).
    let b = data_file(&f, &[(4, "d"), (5, "e")]).await;
    let d_a = delete_file(&f, &[(&a, 1)]).await;
    let d_b = delete_file(&f, &[(&b, 0)]).await;
    let c2 = f
        .committer
        .commit_row_delta(
            &f.name,
            &delta(vec![b.clone()], vec![d_a.clone(), d_b.clone()], "c2"),
        )
        .await
        .unwrap();

    // c3: a multi-file delete (no referenced_data_file) removes A@0 and B@1; c4 adds C.
    let multi = delete_file(&f, &[(&a, 0), (&b, 1)]).await;
    assert_eq!(multi.referenced_data_file(), None);
    let mut d3 = delta(vec![], vec![multi.clone()], "c3");
    d3.deleted_from = [a.file_path(), b.file_path()]
        .into_iter()
        .map(String::from)
        .collect();
    let c3 = f.committer.commit_row_delta(&f.name, &d3).await.unwrap();
    let c = data_file(&f, &[(6, "f")]).await;
    let c4 = f.commit(vec![c.clone()], vec![], "c4").await;
    let io = f.catalog.load(&f.name).await.unwrap().file_io().clone();

    let table = f.catalog.load(&f.name).await.unwrap();
    let plan = plan_files(&io, table.metadata(), None).await.unwrap();
    let deletes_of = |path: &str| -> Vec<String> {
        let p = plan
            .iter()
            .find(|p| p.data_file.file_path() == path)
            .unwrap();
        let mut v: Vec<String> = p
            .deletes
            .iter()
            .map(|d| d.file_path().to_string())
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<&str>| {
        v.sort();
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(plan.len(), 3);
    assert_eq!(
        deletes_of(a.file_path()),
        sorted(vec![d_a.file_path(), multi.file_path()])
    );
    assert_eq!(
        deletes_of(b.file_path()),
        sorted(vec![d_b.file_path(), multi.file_path()])
    );
    assert_eq!(deletes_of(c.file_path()), Vec::<String>::new());
    let seq = |path: &str| {
        plan.iter()
            .find(|p| p.data_file.file_path() == path)
            .unwrap()
            .data_sequence_number
    };
    assert_eq!(seq(a.file_path()), c1.sequence_number);
    assert_eq!(seq(b.file_path()), c2.sequence_number);
    assert_eq!(seq(c.file_path()), c4.sequence_number);

    let read = read_position_deletes(&io, &[multi.clone(), d_a.clone()])
        .await
        .unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[a.file_path()], BTreeSet::from([0, 1]));
    assert_eq!(read[b.file_path()], BTreeSet::from([1]));
    assert!(
        read_position_deletes(&io, std::slice::from_ref(&a))
            .await
            .is_err()
    );

    // Every snapshot, planned and read by hand, equals iceberg-rust's scan of it.
    for s in [&c1, &c2, &c3, &c4] {
        check_plan_matches_scan(&f, Some(s.snapshot_id)).await;
    }
    assert_eq!(
        rows_by_plan(&f, None).await,
        crate::commit::tests::expect(&[(3, "c"), (6, "f")])
    );

    // Entries carry their status and inherited sequence numbers.
    let entries = snapshot_entries(&io, table.metadata(), None).await.unwrap();
    assert_eq!(entries.len(), 6);
    assert!(entries.iter().all(|e| e.status == ManifestStatus::Added));
    let multi_entry = entries
        .iter()
        .find(|e| e.data_file.file_path() == multi.file_path())
        .unwrap();
    assert_eq!(multi_entry.data_sequence_number, c3.sequence_number);
    assert_eq!(multi_entry.file_sequence_number, c3.sequence_number);
    assert_eq!(multi_entry.snapshot_id, c3.snapshot_id);
}

fn tracked(file: DataFile, seq: i64) -> TrackedFile {
    TrackedFile {
        data_file: file,
        spec_id: 0,
        status: ManifestStatus::Added,
        snapshot_id: 1,
        data_sequence_number: seq,
        file_sequence_number: seq,
        manifest_path: "m.avro".into(),
    }
}

fn file(content: DataContentType, path: &str, referenced: Option<&str>) -> DataFile {
    let mut b = iceberg::spec::DataFileBuilder::default();
    b.content(content)
        .file_path(path.into())
        .file_format(iceberg::spec::DataFileFormat::Parquet)
        .partition(Struct::empty())
        .record_count(1)
        .file_size_in_bytes(1)
        .referenced_data_file(referenced.map(String::from));
    if content == DataContentType::EqualityDeletes {
        b.equality_ids(Some(vec![1]));
    }
    b.build().unwrap()
}

/// The sequence-number rules on their own. A position delete older than a data file of the
/// same path cannot arise from real commits (unitable never reuses a path, and a row delta
/// refuses deletes against files that are not live), so it is checked here directly.
#[tokio::test]
async fn sequence_numbers_decide_which_deletes_apply() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let metadata = f.catalog.load(&f.name).await.unwrap().metadata().clone();
    let pos = DataContentType::PositionDeletes;
    let live = vec![
        tracked(file(DataContentType::Data, "d", None), 5),
        tracked(file(pos, "older-pos", Some("d")), 4),
        tracked(file(pos, "same-seq-pos", Some("d")), 5),
        tracked(file(pos, "newer-pos", Some("d")), 6),
        tracked(file(pos, "other-file-pos", Some("e")), 6),
        tracked(
            file(DataContentType::EqualityDeletes, "same-seq-eq", None),
            5,
        ),
        tracked(file(DataContentType::EqualityDeletes, "newer-eq", None), 6),
    ];
    let plan = plan_live(&metadata, &live);
    assert_eq!(plan.len(), 1);
    let mut got: Vec<&str> = plan[0].deletes.iter().map(|d| d.file_path()).collect();
    got.sort();
    assert_eq!(got, ["newer-eq", "newer-pos", "same-seq-pos"]);
}

#[test]
fn bounds_rule_out_paths_outside_them() {
    let delete = |lower: &str, upper: &str, referenced: Option<&str>| {
        iceberg::spec::DataFileBuilder::default()
            .content(DataContentType::PositionDeletes)
            .file_path("d.parquet".into())
            .file_format(iceberg::spec::DataFileFormat::Parquet)
            .partition(Struct::empty())
            .record_count(1)
            .file_size_in_bytes(1)
            .lower_bounds(HashMap::from([(
                DELETE_FILE_PATH_FIELD_ID,
                iceberg::spec::Datum::string(lower),
            )]))
            .upper_bounds(HashMap::from([(
                DELETE_FILE_PATH_FIELD_ID,
                iceberg::spec::Datum::string(upper),
            )]))
            .referenced_data_file(referenced.map(String::from))
            .build()
            .unwrap()
    };
    let d = delete("s3://b/t/data/b", "s3://b/t/data/d", None);
    assert!(position_delete_may_target(&d, "s3://b/t/data/b"));
    assert!(position_delete_may_target(&d, "s3://b/t/data/c1.parquet"));
    assert!(position_delete_may_target(&d, "s3://b/t/data/d"));
    assert!(!position_delete_may_target(&d, "s3://b/t/data/a.parquet"));
    assert!(!position_delete_may_target(&d, "s3://b/t/data/e.parquet"));
    // A truncated upper bound still admits longer paths with that prefix.
    assert!(position_delete_may_target(&d, "s3://b/t/data/d0.parquet"));
    let r = delete("a", "z", Some("s3://b/t/data/x.parquet"));
    assert!(position_delete_may_target(&r, "s3://b/t/data/x.parquet"));
    assert!(!position_delete_may_target(&r, "s3://b/t/data/y.parquet"));
}
