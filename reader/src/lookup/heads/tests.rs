//! Fresh lookups with and without `max_staleness`, on a changelog that counts its high-watermark
//! reads: a strict lookup reads the watermark every time and sees every acknowledged write; a
//! lookup that accepts some staleness reads it only when the last read is too old (in the
//! background past half the age), and still sees every write acknowledged before that read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, StringArray};
use async_trait::async_trait;
use unitable_core::admin::TableAdmin;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::changelog::{
    AppendedRange, ChangeRecord, Changelog, ChangelogResult, MemoryChangelog, StoredRecord,
    Watermarks,
};
use unitable_core::naming::{TableName, TopicName};
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_core::record::{ChangeOp, RecordCodec};

use crate::Reader;
use crate::error::ReadError;
use crate::lookup::{LookupAsOf, LookupKeys, LookupRequest, LookupResponse};

/// A memory changelog that counts `watermarks` calls.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryChangelog,
    watermark_reads: AtomicU64,
}

#[async_trait]
impl Changelog for Counting {
    fn backend(&self) -> &'static str {
        "counting"
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
        self.inner
            .read(topic, partition, from, max_records, wait)
            .await
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
        self.watermark_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.watermarks(topic, partition).await
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
    reader: Reader,
    table: TableName,
    topic: TopicName,
    codec: RecordCodec,
    changelog: Arc<Counting>,
}

impl Fixture {
    /// `t.kv` in one bucket (every key in partition 0), nothing written.
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let catalog = TableCatalog::open(CatalogConfig::embedded(dir.path()))
            .await
            .unwrap();
        let changelog = Arc::new(Counting::default());
        let def = crate::testing::kv_table(1);
        let state = TableAdmin::new(catalog.clone(), changelog.clone())
            .create_table(&def)
            .await
            .unwrap();
        let loaded = catalog.load(&def.name).await.unwrap();
        let codec = RecordCodec::new(
            &state.def,
            &loaded.metadata().uuid().to_string(),
            loaded.metadata().current_schema_id(),
        )
        .unwrap();
        Fixture {
            _dir: dir,
            reader: Reader::new(catalog, changelog.clone()),
            table: def.name,
            topic: def.changelog.topic,
            codec,
            changelog,
        }
    }

    /// Appends (acknowledges) an upsert of `id`.
    async fn write(&self, id: i64, v: &str) {
        let line = format!("{{\"id\":{id},\"v\":\"{v}\"}}\n");
        let (parsed, errors) = self
            .codec
            .parse_json_rows(ChangeOp::Upsert, line.as_bytes(), 0);
        assert!(errors.is_empty());
        let (mut encoded, errors) = self
            .codec
            .encode(ChangeOp::Upsert, &parsed.batch, 0)
            .unwrap();
        assert!(errors.is_empty());
        let row = encoded.pop().unwrap();
        self.changelog
            .append(&self.topic, row.partition, vec![row.record])
            .await
            .unwrap();
    }

    fn reads(&self) -> u64 {
        self.changelog.watermark_reads.load(Ordering::SeqCst)
    }

    async fn lookup(
        &self,
        id: i64,
        max_staleness: Option<Duration>,
        as_of: Option<LookupAsOf>,
    ) -> Result<LookupResponse, ReadError> {
        self.reader
            .lookup(&LookupRequest {
                table: self.table.clone(),
                keys: LookupKeys::JsonLines(format!("{{\"id\":{id}}}").into_bytes()),
                columns: Vec::new(),
                as_of,
                max_staleness,
            })
            .await
    }

    /// The value of `id` a fresh lookup answers, and the answer's `lag_ms`.
    async fn value(&self, id: i64, max_staleness: Option<Duration>) -> (Option<String>, i64) {
        let answer = self.lookup(id, max_staleness, None).await.unwrap();
        let v = answer
            .rows
            .column_by_name("v")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        let value = (v.len() == 1).then(|| v.value(0).to_string());
        (value, answer.as_of.lag_ms)
    }

    /// Waits until no watermark read is under way: the count holds still for 100 ms.
    async fn settled_reads(&self) -> u64 {
        let mut last = self.reads();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.reads();
            if now == last {
                return now;
            }
            last = now;
        }
    }
}

#[tokio::test]
async fn strict_lookups_read_the_high_watermark_every_time() {
    let f = Fixture::new().await;
    for round in 0..5 {
        let v = format!("v{round}");
        f.write(1, &v).await;
        let before = f.reads();
        // The reader's default (zero), then zero asked for explicitly.
        let staleness = [None, Some(Duration::ZERO)][round % 2];
        let (got, lag) = f.value(1, staleness).await;
        assert_eq!(got.as_deref(), Some(v.as_str()), "round {round}");
        assert_eq!(lag, 0);
        assert_eq!(f.reads(), before + 1, "round {round}: one watermark read");
    }
}

#[tokio::test]
async fn stale_lookups_reuse_a_recent_watermark_and_reflect_every_write_before_it() {
    let f = Fixture::new().await;
    let hour = Some(Duration::from_secs(3600));
    f.write(1, "a").await;
    // No watermark read yet: the first lookup reads one, whatever staleness it accepts.
    let before = f.reads();
    assert_eq!(f.value(1, hour).await.0.as_deref(), Some("a"));
    let reads = f.settled_reads().await;
    assert_eq!(reads, before + 1);
    // Within the hour no lookup reads the watermark again.
    f.write(1, "b").await;
    f.write(2, "x").await;
    for _ in 0..20 {
        let (got, lag) = f.value(1, hour).await;
        // Either value is allowed: "b" was acknowledged after the watermark in use was read.
        assert!(matches!(got.as_deref(), Some("a" | "b")), "{got:?}");
        assert!((0..3_600_000).contains(&lag), "lag {lag}");
    }
    assert_eq!(f.reads(), reads, "no watermark read within the allowed age");
    // A strict lookup reads the watermark, which stale lookups then use: every write
    // acknowledged before that read is reflected by them.
    assert_eq!(f.value(1, None).await.0.as_deref(), Some("b"));
    let reads = f.reads();
    f.write(1, "c").await;
    for id in [1, 2] {
        let (got, _) = f.value(id, hour).await;
        let want: &[&str] = if id == 1 { &["b", "c"] } else { &["x"] };
        assert!(
            got.as_deref().is_some_and(|g| want.contains(&g)),
            "id {id}: {got:?}, want one of {want:?}"
        );
    }
    assert_eq!(f.reads(), reads);
}

#[tokio::test]
async fn a_watermark_past_half_the_age_is_read_again_in_the_background_and_past_it_by_the_lookup() {
    let f = Fixture::new().await;
    // Generous against a loaded machine: the steps below must each take well under a second.
    let age = Duration::from_secs(2);
    f.write(1, "a").await;
    f.value(1, None).await;
    let read_at = Instant::now();
    let reads = f.settled_reads().await;
    // Past half the age: the lookup is answered from the kept watermark and starts a
    // background read.
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(read_at.elapsed())).await;
    let (got, lag) = f.value(1, Some(age)).await;
    assert_eq!(got.as_deref(), Some("a"));
    assert!(
        lag >= 1000,
        "answered from the kept watermark, {lag} ms old"
    );
    assert_eq!(f.settled_reads().await, reads + 1, "one background read");
    // Past the whole age, with no lookup meanwhile to refresh it: the lookup reads it itself.
    tokio::time::sleep(age + Duration::from_millis(50)).await;
    let before = f.reads();
    f.write(1, "b").await;
    let (got, lag) = f.value(1, Some(age)).await;
    assert_eq!(got.as_deref(), Some("b"));
    assert_eq!(lag, 0);
    assert_eq!(f.reads(), before + 1);
}

#[tokio::test]
async fn max_staleness_is_refused_for_lookups_as_of_an_instant() {
    let f = Fixture::new().await;
    f.write(1, "a").await;
    let err = f
        .lookup(
            1,
            Some(Duration::from_secs(1)),
            Some(LookupAsOf::Timestamp(i64::MAX)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ReadError::BadRequest { reason } if reason.contains("max_staleness")),
        "{err}"
    );
}
