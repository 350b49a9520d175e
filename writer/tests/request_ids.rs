//! Idempotent writes in process, on the in-memory changelog and a SQLite catalog with its
//! request log: a retried request id writes nothing twice, a retry after a partial failure
//! appends exactly what the first attempt did not, and ids are per table. The oracle is the
//! changelog itself: every row must be there exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use unitable_core::admin::TableAdmin;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::changelog::{Changelog, MemoryChangelog};
use unitable_core::commit::pointer::SqlMetadataPointer;
use unitable_core::commit::row_delta::Committer;
use unitable_core::naming::TableName;
use unitable_core::offsets::{Offset, PartitionId};
use unitable_core::record::ChangeOp;
use unitable_core::requests::RequestLog;
use unitable_core::table::{Column, TableDef, TableSpec};
use unitable_core::types::ColumnType;
use unitable_writer::{Rows, WriteError, WriteRequest, Writer, WriterConfig};

mod common;
use common::Flaky;

struct Fixture {
    _dir: tempfile::TempDir,
    changelog: Arc<Flaky>,
    writer: Writer,
    defs: Vec<TableDef>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = CatalogConfig::embedded(dir.path());
    let catalog = TableCatalog::open(config.clone()).await.unwrap();
    let changelog = Arc::new(Flaky::new());
    let admin = TableAdmin::new(catalog.clone(), changelog.clone());
    let mut defs = Vec::new();
    for (name, key) in [
        ("idem.events", false),
        ("idem.other", false),
        ("idem.keyed", true),
    ] {
        // Append-only tables: a duplicated row would stay a duplicate. The keyed one spreads a
        // request over partitions. Either way the changelog must hold each row once.
        let def = TableDef::new(
            name.parse().unwrap(),
            TableSpec {
                columns: vec![
                    Column::new("id", ColumnType::Int64, true),
                    Column::new("v", ColumnType::String, false),
                ],
                primary_key: if key { vec!["id".into()] } else { Vec::new() },
                buckets: Some(4),
                partition_by: Vec::new(),
                properties: BTreeMap::new(),
                changelog_format: Default::default(),
            },
        )
        .unwrap();
        defs.push(admin.create_table(&def).await.unwrap().def);
    }
    let pointer = SqlMetadataPointer::connect(&config).await.unwrap();
    let writer = Writer::new(
        catalog.clone(),
        changelog.clone(),
        Committer::new(catalog, Arc::new(pointer)),
        WriterConfig {
            commit_interval: Duration::from_secs(3600),
            requests: RequestLog::connect(&config).await.unwrap(),
            ..WriterConfig::default()
        },
    );
    Fixture {
        _dir: dir,
        changelog,
        writer,
        defs,
    }
}

fn request(table: &TableName, ids: std::ops::Range<i64>, request_id: Option<&str>) -> WriteRequest {
    let lines: String = ids
        .map(|id| format!("{{\"id\":{id},\"v\":\"v{id}\"}}\n"))
        .collect();
    WriteRequest {
        table: table.clone(),
        op: ChangeOp::Insert,
        rows: Rows::JsonLines(lines.into_bytes().into()),
        first_row: 0,
        wait_for_snapshot: false,
        request_id: request_id.map(str::to_string),
    }
}

impl Fixture {
    /// How often each id is in the table's changelog, over all partitions.
    async fn ids(&self, def: &TableDef) -> BTreeMap<i64, usize> {
        let mut out = BTreeMap::new();
        for p in 0..def.changelog.partitions {
            let records = self
                .changelog
                .read(
                    &def.changelog.topic,
                    PartitionId(p),
                    Offset(0),
                    1_000_000,
                    Duration::ZERO,
                )
                .await
                .unwrap();
            for r in records {
                let value = r.record.value.expect("an insert has a value");
                let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
                *out.entry(v["id"].as_i64().unwrap()).or_default() += 1;
            }
        }
        out
    }
}

fn once(ids: std::ops::Range<i64>) -> BTreeMap<i64, usize> {
    ids.map(|id| (id, 1)).collect()
}

#[tokio::test]
async fn a_retried_request_id_writes_nothing_twice() {
    let f = fixture().await;
    let (events, other) = (&f.defs[0], &f.defs[1]);
    let first = f
        .writer
        .write(request(&events.name, 0..20, Some("batch-1")))
        .await
        .unwrap();
    assert_eq!(first.rows_written, 20);
    let retry = f
        .writer
        .write(request(&events.name, 0..20, Some("batch-1")))
        .await
        .unwrap();
    assert_eq!(
        retry.rows_written, 20,
        "the retry reports the first outcome"
    );
    assert_eq!(retry.last_offsets, first.last_offsets);
    assert_eq!(f.ids(events).await, once(0..20));

    // Without an id every call writes.
    for _ in 0..2 {
        f.writer
            .write(request(&events.name, 100..101, None))
            .await
            .unwrap();
    }
    assert_eq!(f.ids(events).await[&100], 2);

    // The same id on another table is another request.
    let o = f
        .writer
        .write(request(&other.name, 0..5, Some("batch-1")))
        .await
        .unwrap();
    assert_eq!(o.rows_written, 5);
    assert_eq!(f.ids(other).await, once(0..5));

    // Bad ids are refused before anything is written.
    let err = f
        .writer
        .write(request(&events.name, 200..201, Some("")))
        .await
        .unwrap_err();
    assert!(matches!(err, WriteError::InvalidRequestId { .. }), "{err}");
    assert!(!f.ids(events).await.contains_key(&200));
}

/// A partition fails (its records did or did not land); the retry with the same id appends
/// exactly the missing records, whichever way it went.
#[tokio::test]
async fn a_retry_after_a_partial_failure_appends_only_what_is_missing() {
    for land in [false, true] {
        let f = fixture().await;
        let events = &f.defs[2];
        f.changelog.land_then_fail.store(land, Ordering::SeqCst);
        f.changelog.failing.lock().unwrap().insert(1);
        let first = f
            .writer
            .write(request(&events.name, 0..40, Some("partial")))
            .await
            .unwrap();
        assert!(
            first.rows_written > 0 && first.rows_written < 40,
            "{first:?}"
        );
        assert_eq!(first.rows_written + first.rows_rejected, 40);
        assert!(
            first
                .errors
                .iter()
                .all(|e| e.reason.contains("partition 1")),
            "{:?}",
            first.errors
        );
        // A retry while the partition still fails: still partial, still nothing twice.
        let again = f
            .writer
            .write(request(&events.name, 0..40, Some("partial")))
            .await
            .unwrap();
        let counts = f.ids(events).await;
        assert!(counts.values().all(|&n| n == 1), "land={land}: {counts:?}");
        if land {
            assert_eq!(
                again.rows_written, 40,
                "the landed records were found: {again:?}"
            );
        } else {
            assert_eq!(again.rows_written, first.rows_written, "{again:?}");
        }

        f.changelog.failing.lock().unwrap().clear();
        let done = f
            .writer
            .write(request(&events.name, 0..40, Some("partial")))
            .await
            .unwrap();
        assert_eq!(done.rows_written, 40, "land={land}: {done:?}");
        assert!(done.errors.is_empty(), "{:?}", done.errors);
        assert_eq!(f.ids(events).await, once(0..40), "land={land}");
        // And now it is done: one more retry changes nothing.
        let replay = f
            .writer
            .write(request(&events.name, 0..40, Some("partial")))
            .await
            .unwrap();
        assert_eq!(replay.rows_written, 40);
        assert_eq!(replay.last_offsets, done.last_offsets);
        assert_eq!(f.ids(events).await, once(0..40));
    }
}

/// A writer without a request log refuses request ids instead of silently ignoring them.
#[tokio::test]
async fn request_ids_need_the_request_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = CatalogConfig::embedded(dir.path());
    let catalog = TableCatalog::open(config.clone()).await.unwrap();
    let changelog = Arc::new(MemoryChangelog::new());
    let admin = TableAdmin::new(catalog.clone(), changelog.clone());
    let def = TableDef::new(
        "idem.t".parse().unwrap(),
        TableSpec {
            columns: vec![Column::new("id", ColumnType::Int64, true)],
            primary_key: Vec::new(),
            buckets: Some(1),
            partition_by: Vec::new(),
            properties: BTreeMap::new(),
            changelog_format: Default::default(),
        },
    )
    .unwrap();
    let def = admin.create_table(&def).await.unwrap().def;
    let pointer = SqlMetadataPointer::connect(&config).await.unwrap();
    let writer = Writer::new(
        catalog.clone(),
        changelog.clone(),
        Committer::new(catalog, Arc::new(pointer)),
        WriterConfig::default(),
    );
    let mut r = request(&def.name, 0..1, Some("x"));
    r.rows = Rows::JsonLines(b"{\"id\":1}\n".to_vec().into());
    let err = writer.write(r).await.unwrap_err();
    assert!(matches!(err, WriteError::NoRequestLog), "{err}");
}

/// An append-only request goes to one partition; when that append fails after its records
/// landed (a delivery timeout), the retry finds them all and appends nothing.
#[tokio::test]
async fn a_failed_append_whose_records_landed_is_not_repeated() {
    let f = fixture().await;
    let events = &f.defs[0];
    f.changelog.land_then_fail.store(true, Ordering::SeqCst);
    f.changelog.failing.lock().unwrap().extend(0..4);
    let err = f
        .writer
        .write(request(&events.name, 0..10, Some("timed-out")))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(f.ids(events).await, once(0..10), "the records landed once");
    f.changelog.failing.lock().unwrap().clear();
    let retry = f
        .writer
        .write(request(&events.name, 0..10, Some("timed-out")))
        .await
        .unwrap();
    assert_eq!(retry.rows_written, 10, "{retry:?}");
    assert_eq!(f.ids(events).await, once(0..10));
}
