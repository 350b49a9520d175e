use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use async_trait::async_trait;
use futures::TryStreamExt;
use iceberg::spec::{DataFile, Struct};

use super::files::{PositionDelete, write_data_file, write_position_deletes};
use super::pointer::{MetadataPointer, SqlMetadataPointer, SwapOutcome};
use super::row_delta::{Committer, RowDelta};
use super::{CommitError, CommitResult};
use crate::catalog::{CatalogConfig, TableCatalog};
use crate::naming::TableName;
use crate::table::{Column, TableDef, TableSpec};

pub(crate) struct Fixture {
    pub(crate) catalog: TableCatalog,
    pub(crate) committer: Committer,
    pub(crate) name: TableName,
}

pub(crate) async fn fixture(dir: &Path) -> Fixture {
    let config = CatalogConfig::embedded(dir);
    let catalog = TableCatalog::open(config.clone()).await.unwrap();
    let name: TableName = "t.items".parse().unwrap();
    let def = TableDef::new(
        name.clone(),
        TableSpec {
            columns: vec![
                Column::parse("id:int64!").unwrap(),
                Column::parse("v:string").unwrap(),
            ],
            primary_key: vec!["id".into()],
            ..TableSpec::default()
        },
    )
    .unwrap();
    catalog.create(&def).await.unwrap();
    let pointer = Arc::new(SqlMetadataPointer::connect(&config).await.unwrap());
    Fixture {
        committer: Committer::new(catalog.clone(), pointer),
        catalog,
        name,
    }
}

pub(crate) async fn data_file(f: &Fixture, rows: &[(i64, &str)]) -> DataFile {
    let table = f.catalog.load(&f.name).await.unwrap();
    let path = format!(
        "{}/data/{}.parquet",
        table.metadata().location(),
        uuid::Uuid::now_v7()
    );
    data_file_at(f, &path, rows).await
}

/// Writes `rows` as a data file at `path`.
pub(crate) async fn data_file_at(f: &Fixture, path: &str, rows: &[(i64, &str)]) -> DataFile {
    let table = f.catalog.load(&f.name).await.unwrap();
    let schema = table.metadata().current_schema().clone();
    let arrow_schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema).unwrap());
    let batch = RecordBatch::try_new(
        arrow_schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .unwrap();
    write_data_file(table.file_io(), path, schema, &batch, Struct::empty(), 0)
        .await
        .unwrap()
}

pub(crate) async fn delete_file(f: &Fixture, deletes: &[(&DataFile, i64)]) -> DataFile {
    let table = f.catalog.load(&f.name).await.unwrap();
    let path = format!(
        "{}/data/{}-deletes.parquet",
        table.metadata().location(),
        uuid::Uuid::now_v7()
    );
    let deletes = deletes
        .iter()
        .map(|(file, pos)| PositionDelete {
            file_path: file.file_path().to_string(),
            pos: *pos,
        })
        .collect();
    write_position_deletes(table.file_io(), &path, deletes, Struct::empty(), 0)
        .await
        .unwrap()
}

/// All rows of a snapshot (the current one for `None`) as read by iceberg-rust's planner and
/// Arrow reader (through [`crate::scan::read_scan`]), deletes applied.
pub(crate) async fn scan_at(f: &Fixture, snapshot: Option<i64>) -> BTreeMap<i64, String> {
    let table = f.catalog.load(&f.name).await.unwrap();
    let mut scan = table.scan();
    if let Some(id) = snapshot {
        scan = scan.snapshot_id(id);
    }
    let scan = scan.build().unwrap();
    let batches: Vec<RecordBatch> = crate::scan::read_scan(&table, &scan, Default::default())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for b in batches {
        let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let vs = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            assert!(
                out.insert(ids.value(i), vs.value(i).to_string()).is_none(),
                "duplicate id {}",
                ids.value(i)
            );
        }
    }
    out
}

impl Fixture {
    /// Commits a row delta of `data` and `deletes` with commit id `id`; panics on failure.
    pub(crate) async fn commit(
        &self,
        data: Vec<DataFile>,
        deletes: Vec<DataFile>,
        id: &str,
    ) -> super::row_delta::Committed {
        self.committer
            .commit_row_delta(&self.name, &delta(data, deletes, id))
            .await
            .unwrap()
    }
}

pub(crate) fn delta(data: Vec<DataFile>, deletes: Vec<DataFile>, id: &str) -> RowDelta {
    RowDelta {
        data_files: data,
        delete_files: deletes,
        properties: BTreeMap::from([("unitable.changelog-offsets".into(), format!("0:{id}"))]),
        commit_id: id.to_string(),
        ..RowDelta::default()
    }
}

pub(crate) fn expect(rows: &[(i64, &str)]) -> BTreeMap<i64, String> {
    rows.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

#[tokio::test]
async fn row_deltas_apply_position_deletes_and_record_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let first = data_file(&f, &[(1, "a"), (2, "b"), (3, "c")]).await;
    let c1 = f.commit(vec![first.clone()], vec![], "c1").await;
    assert!(!c1.already_committed);
    assert_eq!(
        scan_at(&f, None).await,
        expect(&[(1, "a"), (2, "b"), (3, "c")])
    );

    // Upsert 2 -> "B" and delete 3: a new data file plus position deletes of the old rows.
    let second = data_file(&f, &[(2, "B")]).await;
    let deletes = delete_file(&f, &[(&first, 2), (&first, 1)]).await;
    assert_eq!(
        deletes.referenced_data_file().as_deref(),
        Some(first.file_path())
    );
    let c2 = f.commit(vec![second], vec![deletes], "c2").await;
    assert_eq!(c2.sequence_number, c1.sequence_number + 1);
    assert_eq!(scan_at(&f, None).await, expect(&[(1, "a"), (2, "B")]));

    let table = f.catalog.load(&f.name).await.unwrap();
    let snapshot = table.metadata().current_snapshot().unwrap();
    assert_eq!(snapshot.snapshot_id(), c2.snapshot_id);
    assert_eq!(snapshot.parent_snapshot_id(), Some(c1.snapshot_id));
    let s = &snapshot.summary().additional_properties;
    assert_eq!(
        snapshot.summary().operation,
        iceberg::spec::Operation::Overwrite
    );
    for (k, v) in [
        ("added-data-files", "1"),
        ("added-records", "1"),
        ("added-delete-files", "1"),
        ("added-position-deletes", "2"),
        ("total-records", "4"),
        ("total-data-files", "2"),
        ("total-delete-files", "1"),
        ("total-position-deletes", "2"),
        ("unitable.changelog-offsets", "0:c2"),
        ("unitable.commit-id", "c2"),
    ] {
        assert_eq!(s.get(k).map(String::as_str), Some(v), "summary {k}: {s:?}");
    }
    // The first snapshot still reads as it was (time travel).
    assert_eq!(
        scan_at(&f, Some(c1.snapshot_id)).await,
        expect(&[(1, "a"), (2, "b"), (3, "c")])
    );
}

/// A pointer whose first swap succeeds but reports failure, like a lost response.
#[derive(Debug)]
pub(crate) struct LosesFirstAnswer {
    pub(crate) inner: SqlMetadataPointer,
    pub(crate) lost: AtomicBool,
}

#[async_trait]
impl MetadataPointer for LosesFirstAnswer {
    async fn swap(
        &self,
        table: &TableName,
        expected: &str,
        new: &str,
    ) -> CommitResult<SwapOutcome> {
        let outcome = self.inner.swap(table, expected, new).await?;
        if !self.lost.swap(true, Ordering::SeqCst) {
            return Err(CommitError::CatalogDatabase {
                operation: "swap".into(),
                reason: "connection reset after the update (injected)".into(),
            });
        }
        Ok(outcome)
    }

    async fn current(&self, table: &TableName) -> CommitResult<Option<String>> {
        self.inner.current(table).await
    }
}

#[tokio::test]
async fn a_commit_whose_answer_was_lost_is_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let pointer = LosesFirstAnswer {
        inner: SqlMetadataPointer::connect(&CatalogConfig::embedded(dir.path()))
            .await
            .unwrap(),
        lost: AtomicBool::new(false),
    };
    let committer = Committer::new(f.catalog.clone(), Arc::new(pointer));
    let file = data_file(&f, &[(7, "x")]).await;
    let c = committer
        .commit_row_delta(&f.name, &delta(vec![file.clone()], vec![], "once"))
        .await
        .unwrap();
    assert!(c.already_committed, "the retry must find the landed commit");
    // Retrying again by hand (e.g. after a crash) finds it too.
    let again = f.commit(vec![file], vec![], "once").await;
    assert!(again.already_committed);
    assert_eq!(again.snapshot_id, c.snapshot_id);
    let table = f.catalog.load(&f.name).await.unwrap();
    assert_eq!(table.metadata().snapshots().count(), 1);
    assert_eq!(scan_at(&f, None).await, expect(&[(7, "x")]));
}

#[tokio::test]
async fn racing_committers_rebase_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let f = Arc::new(fixture(dir.path()).await);
    let per_task = 15;
    let mut tasks = Vec::new();
    for t in 0..3i64 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let id = t * 1000 + i;
                let file = data_file(&f, &[(id, "v")]).await;
                f.commit(vec![file], vec![], &format!("t{t}-{i}")).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let rows = scan_at(&f, None).await;
    assert_eq!(rows.len(), 3 * per_task as usize);
    let table = f.catalog.load(&f.name).await.unwrap();
    assert_eq!(table.metadata().snapshots().count(), 3 * per_task as usize);
    let summary = &table
        .metadata()
        .current_snapshot()
        .unwrap()
        .summary()
        .additional_properties;
    assert_eq!(summary.get("total-records").map(String::as_str), Some("45"));
}

#[tokio::test]
async fn rejects_malformed_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let file = data_file(&f, &[(1, "a")]).await;
    let err = f
        .committer
        .commit_row_delta(&f.name, &delta(vec![], vec![file.clone()], "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, CommitError::Invalid { .. }), "{err}");
    let err = f
        .committer
        .commit_row_delta(&f.name, &delta(vec![file], vec![], ""))
        .await
        .unwrap_err();
    assert!(matches!(err, CommitError::Invalid { .. }), "{err}");
    assert!(
        f.catalog
            .load(&f.name)
            .await
            .unwrap()
            .metadata()
            .current_snapshot()
            .is_none()
    );
}

/// The offsets recorded by the `i`-th commit of [`committed_fixture`].
pub(crate) fn expect_offsets(i: usize) -> crate::offsets::PartitionOffsets {
    format!("0:{},1:{}", i * 10, i * 10 + 5).parse().unwrap()
}

/// A table with `n` committed snapshots (one row each), recording [`expect_offsets`]; returns
/// the catalog, the table name and the snapshot ids in commit order.
pub(crate) async fn committed_fixture(dir: &Path, n: usize) -> (TableCatalog, TableName, Vec<i64>) {
    let f = fixture(dir).await;
    let mut ids = Vec::new();
    for i in 0..n {
        let file = data_file(&f, &[(i as i64, "v")]).await;
        let mut d = delta(vec![file], vec![], &format!("fixture-{i}"));
        d.properties.insert(
            crate::naming::summary::CHANGELOG_OFFSETS.into(),
            expect_offsets(i).to_string(),
        );
        ids.push(
            f.committer
                .commit_row_delta(&f.name, &d)
                .await
                .unwrap()
                .snapshot_id,
        );
        // Distinct commit times, so time travel has something to tell apart.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    (f.catalog, f.name, ids)
}
