//! STREAM behaviour that needs a changelog we control: the server-side buffer stays bounded
//! when the client stops reading, and offsets removed by retention give a clear error.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use unitable_core::admin::TableAdmin;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::changelog::{
    AppendedRange, ChangeRecord, Changelog, ChangelogError, ChangelogResult, MemoryChangelog,
    StoredRecord, Watermarks,
};
use unitable_core::naming::{TableName, TopicName};
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_core::record::{ChangeOp, RecordCodec};
use unitable_core::table::{Column, TableDef, TableSpec};

use super::*;

/// A memory changelog that counts the records it hands out and can pretend retention removed
/// everything below `low`.
#[derive(Debug, Default)]
struct Watched {
    inner: MemoryChangelog,
    records_read: AtomicU64,
    low: AtomicI64,
}

#[async_trait]
impl Changelog for Watched {
    fn backend(&self) -> &'static str {
        "watched"
    }
    async fn create_topic(&self, topic: &TopicName, partitions: u32) -> ChangelogResult<()> {
        self.inner.create_topic(topic, partitions).await
    }
    async fn delete_topic(&self, topic: &TopicName) -> ChangelogResult<()> {
        self.inner.delete_topic(topic).await
    }
    async fn partition_count(&self, topic: &TopicName) -> ChangelogResult<u32> {
        self.inner.partition_count(topic).await
    }
    async fn append(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        records: Vec<ChangeRecord>,
    ) -> ChangelogResult<AppendedRange> {
        self.inner.append(topic, partition, records).await
    }
    async fn read(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        from: Offset,
        max_records: usize,
        wait: Duration,
    ) -> ChangelogResult<Vec<StoredRecord>> {
        let w = self.watermarks(topic, partition).await?;
        if from < w.low {
            return Err(ChangelogError::OffsetOutOfRange {
                topic: topic.clone(),
                partition,
                offset: from,
                low: w.low,
                high: w.high,
            });
        }
        let records = self
            .inner
            .read(topic, partition, from, max_records, wait)
            .await?;
        self.records_read
            .fetch_add(records.len() as u64, Ordering::SeqCst);
        Ok(records)
    }
    async fn offset_for_timestamp(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> ChangelogResult<Option<Offset>> {
        self.inner
            .offset_for_timestamp(topic, partition, timestamp_ms)
            .await
    }
    async fn watermarks(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> ChangelogResult<Watermarks> {
        let w = self.inner.watermarks(topic, partition).await?;
        let low = Offset(self.low.load(Ordering::SeqCst))
            .max(w.low)
            .min(w.high);
        Ok(Watermarks { low, high: w.high })
    }
    async fn publish_committed(
        &self,
        topic: &TopicName,
        offsets: &PartitionOffsets,
    ) -> ChangelogResult<()> {
        self.inner.publish_committed(topic, offsets).await
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    changelog: Arc<Watched>,
    reader: Reader,
    table: TableName,
}

/// A `t.kv` table (`id` key, `v`) with `rows` upserts in its changelog and no snapshot.
async fn fixture(rows: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let catalog = TableCatalog::open(CatalogConfig::embedded(dir.path()))
        .await
        .unwrap();
    let changelog = Arc::new(Watched::default());
    let table: TableName = "t.kv".parse().unwrap();
    let def = TableDef::new(
        table.clone(),
        TableSpec {
            columns: vec![
                Column::parse("id:int64!").unwrap(),
                Column::parse("v:string").unwrap(),
            ],
            primary_key: vec!["id".into()],
            buckets: Some(4),
            ..TableSpec::default()
        },
    )
    .unwrap();
    let state = TableAdmin::new(catalog.clone(), changelog.clone())
        .create_table(&def)
        .await
        .unwrap();
    let loaded = catalog.load(&table).await.unwrap();
    let codec = RecordCodec::new(
        &state.def,
        &loaded.metadata().uuid().to_string(),
        loaded.metadata().current_schema_id(),
    )
    .unwrap();
    let lines: String = (0..rows)
        .map(|i| format!("{{\"id\":{i},\"v\":\"value number {i}\"}}\n"))
        .collect();
    let (parsed, errors) = codec.parse_json_rows(ChangeOp::Upsert, lines.as_bytes(), 0);
    assert!(errors.is_empty());
    let (encoded, errors) = codec.encode(ChangeOp::Upsert, &parsed.batch, 1).unwrap();
    assert!(errors.is_empty());
    let mut by_partition: std::collections::BTreeMap<PartitionId, Vec<ChangeRecord>> =
        Default::default();
    for row in encoded {
        by_partition
            .entry(row.partition)
            .or_default()
            .push(row.record);
    }
    for (p, records) in by_partition {
        changelog
            .append(&def.changelog.topic, p, records)
            .await
            .unwrap();
    }
    let reader = Reader::new(catalog, changelog.clone());
    Fixture {
        _dir: dir,
        changelog,
        reader,
        table,
    }
}

fn read_of(f: &Fixture, start: StreamStart) -> StreamRead {
    StreamRead {
        table: f.table.clone(),
        columns: Vec::new(),
        filter: None,
        start,
        limit: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_stops_the_server_reading() {
    let f = fixture(200_000).await;
    let mut stream = f
        .reader
        .stream(&read_of(&f, StreamStart::Earliest))
        .await
        .unwrap();
    let first = stream.changes.next().await.unwrap().unwrap();
    assert!(first.batch.num_rows() > 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read = f.changelog.records_read.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        f.changelog.records_read.load(Ordering::SeqCst),
        read,
        "the server kept reading for a client that does not read"
    );
    // The channel (2 batches per partition), one batch blocked in each partition task and the
    // batch handed out: that is all the server holds (plus the one record per partition the
    // lag report peeks at).
    let bound = (2 * 4 + 4 + 1) * CHUNK as u64 + 4;
    assert!(read <= bound, "{read} records read ahead (bound {bound})");
    // Reading on resumes where it stopped, and everything arrives once.
    let mut seen = first.batch.num_rows();
    while seen < 200_000 {
        seen += stream
            .changes
            .next()
            .await
            .unwrap()
            .unwrap()
            .batch
            .num_rows();
    }
    assert_eq!(seen, 200_000);
    drop(stream);
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_removed_by_retention_are_a_clear_error() {
    let f = fixture(40_000).await;
    f.changelog.low.store(10, Ordering::SeqCst);
    let mut offsets = PartitionOffsets::default();
    offsets.set(PartitionId(0), Offset(5));
    let err = f
        .reader
        .stream(&read_of(&f, StreamStart::Offsets(offsets)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::OffsetsRemoved {
                partition: 0,
                offset: 5,
                earliest: 10,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("start from a snapshot"), "{err}");

    // Retention overtaking a running stream ends it with the same error.
    f.changelog.low.store(0, Ordering::SeqCst);
    let mut stream = f
        .reader
        .stream(&read_of(&f, StreamStart::Earliest))
        .await
        .unwrap();
    stream.changes.next().await.unwrap().unwrap();
    f.changelog.low.store(9_000, Ordering::SeqCst);
    let mut failed = None;
    while let Some(item) = stream.changes.next().await {
        if let Err(e) = item {
            failed = Some(e);
            break;
        }
    }
    let err = failed.expect("the stream ended without an error");
    assert!(
        matches!(
            err,
            ReadError::OffsetsRemoved {
                earliest: 9_000,
                ..
            }
        ),
        "{err}"
    );
}
