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
use unitable_core::table::TableDef;

use super::*;

/// A memory changelog that counts the records it hands out and can pretend retention removed
/// everything below `low`.
#[derive(Debug, Default)]
pub(super) struct Watched {
    inner: MemoryChangelog,
    records_read: AtomicU64,
    low: AtomicI64,
    /// Per partition, how many reads of more than one record were made (the partition tasks'
    /// reads; the lag report reads one record).
    pub(super) chunk_reads: std::sync::Mutex<std::collections::BTreeMap<u32, u64>>,
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
        if max_records > 1 {
            *self
                .chunk_reads
                .lock()
                .unwrap()
                .entry(partition.0)
                .or_default() += 1;
        }
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
    let def = crate::testing::kv_table(4);
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
        partitions: Vec::new(),
        resume: PartitionOffsets::default(),
        subscriber: "test".into(),
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

/// Reads a stream of `partitions` until it has `rows` changes; returns (partition, id) of each.
async fn collect_subset(f: &Fixture, partitions: Vec<u32>, rows: usize) -> Vec<(i32, i64)> {
    let mut read = read_of(f, StreamStart::Earliest);
    read.partitions = partitions.clone();
    read.limit = Some(rows as u64);
    let mut stream = f.reader.stream(&read).await.unwrap();
    let mut wanted: Vec<PartitionId> = partitions.iter().map(|p| PartitionId(*p)).collect();
    wanted.sort();
    assert_eq!(
        stream.as_of.offsets.0.keys().copied().collect::<Vec<_>>(),
        wanted,
        "the start offsets name the subset only"
    );
    let mut out = Vec::new();
    while let Some(change) = stream.changes.next().await {
        let change = change.unwrap();
        assert!(
            change.next_offsets.0.keys().all(|p| wanted.contains(p)),
            "resume offsets outside the subset: {}",
            change.next_offsets
        );
        let b = &change.batch;
        let parts = b
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::Int32Array>()
            .unwrap();
        let ids = b
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        for i in 0..b.num_rows() {
            out.push((parts.value(i), ids.value(i)));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_subset_reads_only_its_partitions() {
    let rows = 4_000;
    let f = fixture(rows).await;
    let topic = TableDef::from_iceberg(
        f.table.clone(),
        f.reader.catalog.load(&f.table).await.unwrap().metadata(),
    )
    .unwrap()
    .changelog
    .topic;
    let mut sizes = Vec::new();
    for p in 0..4 {
        sizes.push(
            f.changelog
                .watermarks(&topic, PartitionId(p))
                .await
                .unwrap()
                .high
                .0 as usize,
        );
    }
    let before = f.changelog.records_read.load(Ordering::SeqCst);
    let odd = collect_subset(&f, vec![3, 1], sizes[1] + sizes[3]).await;
    let read = f.changelog.records_read.load(Ordering::SeqCst) - before;
    assert!(
        odd.iter().all(|(p, _)| *p == 1 || *p == 3),
        "a change of another partition"
    );
    // Only the subset's records were read (plus at most one per partition for the lag).
    assert!(
        read as usize <= sizes[1] + sizes[3] + 4,
        "{read} records read for a subset of {}",
        sizes[1] + sizes[3]
    );
    let even = collect_subset(&f, vec![0, 2], sizes[0] + sizes[2]).await;
    assert!(even.iter().all(|(p, _)| *p == 0 || *p == 2));
    // Two workers' subsets make the whole stream, each change once.
    let mut ids: Vec<i64> = odd.iter().chain(&even).map(|(_, id)| *id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..rows as i64).collect::<Vec<_>>());

    // A partition that does not exist, and a snapshot start, are refused clearly.
    let mut bad = read_of(&f, StreamStart::Earliest);
    bad.partitions = vec![0, 7];
    let err = f.reader.stream(&bad).await.unwrap_err().to_string();
    assert!(
        err.contains("no partition 7") && err.contains("4 changelog partitions"),
        "{err}"
    );
    let mut snap = read_of(&f, StreamStart::Snapshot(None));
    snap.partitions = vec![1];
    let err = f.reader.stream(&snap).await.unwrap_err().to_string();
    assert!(err.contains("cannot start from a snapshot"), "{err}");
}
