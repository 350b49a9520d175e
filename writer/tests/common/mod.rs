//! Test helpers shared by the writer's integration tests.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use unitable_core::changelog::{
    AppendedRange, ChangeRecord, Changelog, ChangelogError, ChangelogResult, MemoryChangelog,
    StoredRecord, Watermarks,
};
use unitable_core::naming::TopicName;
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};

/// The in-memory changelog, with appends to chosen partitions failing on demand.
#[derive(Debug)]
pub(crate) struct Flaky {
    pub(crate) inner: MemoryChangelog,
    pub(crate) failing: Mutex<BTreeSet<u32>>,
    /// When set, a failing append lands its records anyway before failing (a produce timeout
    /// whose records did reach the broker).
    pub(crate) land_then_fail: AtomicBool,
    /// When set, the next append waits for `release` (after telling `entered`): an append
    /// still under way while something else happens.
    pub(crate) hold_next: AtomicBool,
    pub(crate) entered: tokio::sync::Notify,
    pub(crate) release: tokio::sync::Notify,
}

#[async_trait]
impl Changelog for Flaky {
    fn backend(&self) -> &'static str {
        "flaky-memory"
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
        if self.hold_next.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        let fail = self.failing.lock().unwrap().contains(&partition.0);
        if fail {
            if self.land_then_fail.load(Ordering::SeqCst) {
                self.inner.append(topic, partition, records).await?;
            }
            return Err(ChangelogError::Unavailable {
                backend: "flaky-memory",
                reason: format!("partition {partition} is failing (test)"),
            });
        }
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

impl Flaky {
    /// An in-memory changelog that fails nothing yet.
    pub(crate) fn new() -> Self {
        Self {
            inner: MemoryChangelog::new(),
            failing: Mutex::new(BTreeSet::new()),
            land_then_fail: AtomicBool::new(false),
            hold_next: AtomicBool::new(false),
            entered: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        }
    }
}
