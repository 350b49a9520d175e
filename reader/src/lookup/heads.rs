//! What a FRESH lookup waits for: the high watermark of each changelog partition its keys live
//! in. By default it is read for the lookup (with Kafka, a ListOffsets request to the
//! partition's leader). A caller that accepts answers up to some age (`max_staleness`) waits
//! instead for the last watermark read, when that read began at most that long ago: no
//! changelog round trip per lookup.
//!
//! A watermark read that began at instant `T` is above every record acknowledged before `T`
//! (a write is acknowledged once its records are durable, so below the watermark). A lookup
//! that waits for its follower to pass a watermark read at most `S` ago therefore reflects
//! every write acknowledged at least `S` before it (and, the followers being milliseconds
//! behind, usually all of them). A watermark older than half the allowed age is read again in
//! the background, so steady traffic keeps finding a recent one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use unitable_core::changelog::{Changelog, ChangelogResult};
use unitable_core::naming::TopicName;
use unitable_core::offsets::{Offset, PartitionId};

/// The last high watermarks read of a table's changelog partitions.
#[derive(Debug)]
pub(crate) struct Heads {
    changelog: Arc<dyn Changelog>,
    topic: TopicName,
    partitions: Vec<Arc<Head>>,
}

/// One partition's last high watermark read.
#[derive(Debug, Default)]
struct Head {
    /// The watermark, and when the read that gave it began.
    seen: Mutex<Option<(Offset, Instant)>>,
    /// Whether a background read is under way.
    refreshing: AtomicBool,
}

impl Head {
    /// Keeps `high` unless a read that began later is kept already.
    fn note(&self, high: Offset, asked: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.is_none_or(|(_, at)| at < asked) {
            *seen = Some((high, asked));
        }
    }

    /// The kept watermark and its age, if it is at most `max` old.
    fn recent(&self, max: Duration) -> Option<(Offset, Duration)> {
        let seen = *self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let (high, asked) = seen?;
        let age = asked.elapsed();
        (age <= max).then_some((high, age))
    }

    /// Reads the watermark now and keeps it.
    async fn read(
        &self,
        changelog: &dyn Changelog,
        topic: &TopicName,
        partition: PartitionId,
    ) -> ChangelogResult<Offset> {
        let asked = Instant::now();
        let high = changelog.watermarks(topic, partition).await?.high;
        self.note(high, asked);
        Ok(high)
    }
}

/// Clears [`Head::refreshing`] when the background read ends, however it ends.
struct Refreshing(Arc<Head>);

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}

impl Heads {
    /// No watermark read yet of the `partitions` partitions of `topic`.
    pub(crate) fn new(changelog: Arc<dyn Changelog>, topic: TopicName, partitions: u32) -> Self {
        Self {
            changelog,
            topic,
            partitions: (0..partitions).map(|_| Arc::default()).collect(),
        }
    }

    /// The high watermark of `partition` to wait for, and its age: read now (age zero), or,
    /// when `max_staleness` is not zero, the last one read if that read began at most
    /// `max_staleness` ago.
    pub(crate) async fn high(
        &self,
        partition: PartitionId,
        max_staleness: Duration,
    ) -> ChangelogResult<(Offset, Duration)> {
        let head = &self.partitions[partition.0 as usize];
        if !max_staleness.is_zero()
            && let Some((high, age)) = head.recent(max_staleness)
        {
            if age > max_staleness / 2 && !head.refreshing.swap(true, Ordering::AcqRel) {
                let refreshing = Refreshing(head.clone());
                let changelog = self.changelog.clone();
                let topic = self.topic.clone();
                tokio::spawn(async move {
                    // A failed read leaves the kept watermark to age out: the first lookup past
                    // the allowed age reads it itself and reports the error.
                    if let Err(e) = refreshing.0.read(&*changelog, &topic, partition).await {
                        tracing::debug!(%topic, %partition, "background high-watermark read failed: {e}");
                    }
                    drop(refreshing);
                });
            }
            return Ok((high, age));
        }
        let high = head.read(&*self.changelog, &self.topic, partition).await?;
        Ok((high, Duration::ZERO))
    }
}

#[cfg(test)]
mod tests;
