//! An in-memory [`Changelog`] for tests and for roles tested alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{
    AppendedRange, ChangeRecord, Changelog, ChangelogError, ChangelogResult, StoredRecord,
    Watermarks,
};
use crate::naming::TopicName;
use crate::offsets::{Offset, PartitionId, PartitionOffsets};

/// A changelog held in process memory; nothing survives the process.
#[derive(Debug, Default, Clone)]
pub struct MemoryChangelog {
    topics: Arc<Mutex<HashMap<TopicName, Vec<Arc<Partition>>>>>,
    /// Calls of `watermarks` so far (see [`MemoryChangelog::watermark_reads`]).
    watermark_reads: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug)]
struct Partition {
    records: Mutex<Vec<ChangeRecord>>,
    /// The low watermark: records below it are gone (see [`MemoryChangelog::remove_before`]).
    low: std::sync::atomic::AtomicI64,
    /// The high watermark; readers wait on it.
    high: watch::Sender<i64>,
}

impl MemoryChangelog {
    /// An empty changelog.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times the watermarks of a partition were asked for, by anyone holding this
    /// changelog or a clone of it: for tests of callers that should not ask (with Kafka each
    /// ask is a round trip to a broker).
    pub fn watermark_reads(&self) -> u64 {
        self.watermark_reads
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Removes the records of `partition` below `offset`, as retention would: reads below it
    /// fail with [`ChangelogError::OffsetOutOfRange`] and the low watermark moves there.
    pub fn remove_before(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        offset: Offset,
    ) -> ChangelogResult<()> {
        let part = self.partition(topic, partition)?;
        let high = *part.high.borrow();
        part.low
            .fetch_max(offset.0.min(high), std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn partition(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> ChangelogResult<Arc<Partition>> {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let parts = topics
            .get(topic)
            .ok_or_else(|| ChangelogError::TopicNotFound {
                topic: topic.clone(),
            })?;
        parts
            .get(partition.0 as usize)
            .cloned()
            .ok_or_else(|| ChangelogError::PartitionNotFound {
                topic: topic.clone(),
                partition,
                partitions: parts.len() as u32,
            })
    }
}

#[async_trait]
impl Changelog for MemoryChangelog {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn create_topic(&self, topic: &TopicName, partitions: u32) -> ChangelogResult<()> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = topics.get(topic) {
            let existing = existing.len() as u32;
            return if existing == partitions {
                Ok(())
            } else {
                Err(ChangelogError::TopicExists {
                    topic: topic.clone(),
                    partitions: existing,
                })
            };
        }
        let parts = (0..partitions)
            .map(|_| {
                Arc::new(Partition {
                    records: Mutex::new(Vec::new()),
                    low: std::sync::atomic::AtomicI64::new(0),
                    high: watch::channel(0).0,
                })
            })
            .collect();
        topics.insert(topic.clone(), parts);
        Ok(())
    }

    async fn delete_topic(&self, topic: &TopicName) -> ChangelogResult<()> {
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
        Ok(())
    }

    async fn partition_count(&self, topic: &TopicName) -> ChangelogResult<u32> {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics
            .get(topic)
            .map(|p| p.len() as u32)
            .ok_or_else(|| ChangelogError::TopicNotFound {
                topic: topic.clone(),
            })
    }

    async fn append(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        records: Vec<ChangeRecord>,
    ) -> ChangelogResult<AppendedRange> {
        let part = self.partition(topic, partition)?;
        let mut stored = part.records.lock().unwrap_or_else(|e| e.into_inner());
        let first = stored.len() as i64;
        let count = records.len() as i64;
        stored.extend(records);
        let high = stored.len() as i64;
        part.high.send_replace(high);
        let first = if count == 0 { high } else { first };
        Ok(AppendedRange::of_batch(Offset(first), count as usize))
    }

    async fn read(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        from: Offset,
        max_records: usize,
        wait: Duration,
    ) -> ChangelogResult<Vec<StoredRecord>> {
        let part = self.partition(topic, partition)?;
        let mut high_rx = part.high.subscribe();
        let high = *high_rx.borrow_and_update();
        let low = part.low.load(std::sync::atomic::Ordering::SeqCst);
        if from.0 < low || from.0 > high {
            return Err(ChangelogError::OffsetOutOfRange {
                topic: topic.clone(),
                partition,
                offset: from,
                low: Offset(low),
                high: Offset(high),
            });
        }
        if from.0 == high {
            // Wait for an append (or the deadline); a dropped sender cannot happen while
            // `part` is alive, so a changed() error just ends the wait.
            let _ = tokio::time::timeout(wait, high_rx.changed()).await;
        }
        let stored = part.records.lock().unwrap_or_else(|e| e.into_inner());
        Ok(stored
            .iter()
            .enumerate()
            .skip(from.0 as usize)
            .take(max_records)
            .map(|(i, r)| StoredRecord {
                offset: Offset(i as i64),
                record: r.clone(),
            })
            .collect())
    }

    async fn offset_for_timestamp(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> ChangelogResult<Option<Offset>> {
        let part = self.partition(topic, partition)?;
        let low = part.low.load(std::sync::atomic::Ordering::SeqCst);
        let stored = part.records.lock().unwrap_or_else(|e| e.into_inner());
        Ok(stored
            .iter()
            .enumerate()
            .skip(low as usize)
            .find(|(_, r)| r.timestamp_ms >= timestamp_ms)
            .map(|(i, _)| Offset(i as i64)))
    }

    async fn watermarks(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> ChangelogResult<Watermarks> {
        self.watermark_reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let part = self.partition(topic, partition)?;
        let high = *part.high.borrow();
        Ok(Watermarks {
            low: Offset(part.low.load(std::sync::atomic::Ordering::SeqCst)),
            high: Offset(high),
        })
    }

    async fn publish_committed(
        &self,
        topic: &TopicName,
        _offsets: &PartitionOffsets,
    ) -> ChangelogResult<()> {
        // Memory changelogs keep everything; only check the topic exists.
        self.partition_count(topic).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        super::super::conformance::run_all(Arc::new(MemoryChangelog::new()), "memory").await;
    }

    use bytes::Bytes;

    use super::*;

    fn rec(v: &str, ts: i64) -> ChangeRecord {
        ChangeRecord {
            key: Some(Bytes::from(format!("k{v}"))),
            value: Some(Bytes::from(v.to_string())),
            headers: vec![("unitable.op".into(), Bytes::from_static(b"upsert"))],
            timestamp_ms: ts,
        }
    }

    #[tokio::test]
    async fn appends_reads_and_wakes_tailers() {
        let log = MemoryChangelog::new();
        let t = TopicName::new("unitable.a.b");
        log.create_topic(&t, 2).await.unwrap();
        log.create_topic(&t, 2).await.unwrap();
        assert!(matches!(
            log.create_topic(&t, 3).await,
            Err(ChangelogError::TopicExists { partitions: 2, .. })
        ));
        let r = log
            .append(&t, PartitionId(1), vec![rec("a", 10), rec("b", 20)])
            .await
            .unwrap();
        assert_eq!((r.first, r.last), (Offset(0), Offset(1)));
        let got = log
            .read(&t, PartitionId(1), Offset(1), 10, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].offset, Offset(1));
        assert_eq!(got[0].record, rec("b", 20));
        assert_eq!(
            log.offset_for_timestamp(&t, PartitionId(1), 15)
                .await
                .unwrap(),
            Some(Offset(1))
        );
        assert_eq!(
            log.offset_for_timestamp(&t, PartitionId(1), 25)
                .await
                .unwrap(),
            None
        );
        assert!(matches!(
            log.read(&t, PartitionId(1), Offset(3), 10, Duration::ZERO)
                .await,
            Err(ChangelogError::OffsetOutOfRange { .. })
        ));
        assert!(matches!(
            log.read(&t, PartitionId(2), Offset(0), 10, Duration::ZERO)
                .await,
            Err(ChangelogError::PartitionNotFound { .. })
        ));

        let tailer = {
            let log = log.clone();
            let t = t.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let got = log
                    .read(&t, PartitionId(1), Offset(2), 10, Duration::from_secs(30))
                    .await
                    .unwrap();
                (got, start.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.append(&t, PartitionId(1), vec![rec("c", 30)])
            .await
            .unwrap();
        let (got, waited) = tailer.await.unwrap();
        assert_eq!(got.len(), 1);
        assert!(waited < Duration::from_secs(10), "tailer was not woken");

        log.delete_topic(&t).await.unwrap();
        assert!(matches!(
            log.partition_count(&t).await,
            Err(ChangelogError::TopicNotFound { .. })
        ));
    }
}
