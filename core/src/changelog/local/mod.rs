//! `LocalChangelog`: the durable changelog of the single-machine default.
//!
//! Layout under the root directory (by default `DATA_DIR/changelog`):
//!
//! ```text
//! <topic>/topic.json                  {"partitions": N}
//! <topic>/<partition>/<base>.log      segments: checksummed batches (see `format`)
//! ```
//!
//! Guarantees: an append returns only after its batch is fsynced (concurrent appends share
//! fsyncs); offsets are dense per partition; readers see only durable records and are woken by
//! appends; on open, a torn or corrupt tail of the active segment is truncated to the last valid
//! batch and logged; retention removes whole old segments by age or size but never one holding
//! records the Iceberg committer has not committed (see [`Changelog::publish_committed`]).

mod format;
mod partition;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::info;

use self::partition::PartitionLog;
use super::{
    AppendedRange, ChangeRecord, Changelog, ChangelogError, ChangelogResult, StoredRecord,
    Watermarks,
};
use crate::clock::{Clock, SystemClock};
use crate::naming::TopicName;
use crate::offsets::{Offset, PartitionId, PartitionOffsets};

/// Settings of a local changelog.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Root directory; one sub-directory per topic.
    pub root: PathBuf,
    /// Segment size at which a new segment starts.
    pub segment_bytes: u64,
    /// Remove committed segments whose newest record is older than this.
    pub retention: Option<Duration>,
    /// Remove the oldest committed segments while a partition is larger than this.
    pub retention_bytes: Option<u64>,
    /// Time source for retention.
    pub clock: Arc<dyn Clock>,
}

impl LocalConfig {
    /// Defaults: 64 MiB segments, 7 days retention, no size limit.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            segment_bytes: 64 * 1024 * 1024,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: None,
            clock: Arc::new(SystemClock),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    partitions: u32,
}

#[derive(Debug)]
struct TopicLog {
    partitions: Vec<Arc<PartitionLog>>,
}

/// A changelog in local segment files.
#[derive(Debug)]
pub struct LocalChangelog {
    config: LocalConfig,
    topics: RwLock<HashMap<TopicName, Arc<TopicLog>>>,
    /// Serialises topic creation and deletion.
    admin: tokio::sync::Mutex<()>,
}

fn io_err(path: &Path, source: std::io::Error) -> ChangelogError {
    ChangelogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ChangelogResult<T> + Send + 'static,
) -> ChangelogResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ChangelogError::Unavailable {
            backend: "local",
            reason: format!("a changelog I/O task failed: {e}"),
        })?
}

fn topic_dir_name(topic: &TopicName) -> ChangelogResult<&str> {
    let name = topic.as_str();
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(name)
    } else {
        Err(ChangelogError::Corrupt {
            location: name.to_string(),
            reason: "not a valid topic name for a local changelog".into(),
        })
    }
}

impl LocalChangelog {
    /// Opens the changelog at `config.root`, recovering every existing topic.
    pub async fn open(config: LocalConfig) -> ChangelogResult<Self> {
        let root = config.root.clone();
        let segment_bytes = config.segment_bytes;
        let topics = blocking(move || {
            std::fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
            let mut topics = HashMap::new();
            for entry in std::fs::read_dir(&root).map_err(|e| io_err(&root, e))? {
                let entry = entry.map_err(|e| io_err(&root, e))?;
                let dir = entry.path();
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if !dir.join("topic.json").exists() {
                    continue;
                }
                let topic = TopicName::new(name);
                let log = open_topic(&dir, segment_bytes)?;
                topics.insert(topic, Arc::new(log));
            }
            Ok(topics)
        })
        .await?;
        info!(root = %config.root.display(), topics = topics.len(), "opened the local changelog");
        Ok(Self {
            config,
            topics: RwLock::new(topics),
            admin: tokio::sync::Mutex::new(()),
        })
    }

    fn topic(&self, topic: &TopicName) -> ChangelogResult<Arc<TopicLog>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()
            .ok_or_else(|| ChangelogError::TopicNotFound {
                topic: topic.clone(),
            })
    }

    fn partition(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> ChangelogResult<Arc<PartitionLog>> {
        let log = self.topic(topic)?;
        log.partitions
            .get(partition.0 as usize)
            .cloned()
            .ok_or_else(|| ChangelogError::PartitionNotFound {
                topic: topic.clone(),
                partition,
                partitions: log.partitions.len() as u32,
            })
    }
}

fn open_topic(dir: &Path, segment_bytes: u64) -> ChangelogResult<TopicLog> {
    let meta_path = dir.join("topic.json");
    let text = std::fs::read_to_string(&meta_path).map_err(|e| io_err(&meta_path, e))?;
    let meta: TopicMeta = serde_json::from_str(&text).map_err(|e| ChangelogError::Corrupt {
        location: meta_path.display().to_string(),
        reason: e.to_string(),
    })?;
    let partitions = (0..meta.partitions)
        .map(|p| PartitionLog::open(dir.join(p.to_string()), segment_bytes).map(Arc::new))
        .collect::<ChangelogResult<_>>()?;
    Ok(TopicLog { partitions })
}

fn write_file_durably(path: &Path, contents: &[u8]) -> ChangelogResult<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    file.write_all(contents).map_err(|e| io_err(&tmp, e))?;
    file.sync_all().map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

#[async_trait]
impl Changelog for LocalChangelog {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn create_topic(&self, topic: &TopicName, partitions: u32) -> ChangelogResult<()> {
        let _admin = self.admin.lock().await;
        if let Ok(existing) = self.topic(topic) {
            let existing = existing.partitions.len() as u32;
            return if existing == partitions {
                Ok(())
            } else {
                Err(ChangelogError::TopicExists {
                    topic: topic.clone(),
                    partitions: existing,
                })
            };
        }
        let dir = self.config.root.join(topic_dir_name(topic)?);
        let segment_bytes = self.config.segment_bytes;
        let log = blocking(move || {
            // A directory left by an interrupted create or delete is replaced.
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            }
            std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            for p in 0..partitions {
                PartitionLog::open(dir.join(p.to_string()), segment_bytes)?;
            }
            let meta = serde_json::to_vec(&TopicMeta { partitions }).unwrap_or_default();
            // topic.json last: a topic exists once it is durable.
            write_file_durably(&dir.join("topic.json"), &meta)?;
            open_topic(&dir, segment_bytes)
        })
        .await?;
        self.topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.clone(), Arc::new(log));
        Ok(())
    }

    async fn delete_topic(&self, topic: &TopicName) -> ChangelogResult<()> {
        let _admin = self.admin.lock().await;
        let removed = self
            .topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
        if removed.is_none() {
            return Ok(());
        }
        let dir = self.config.root.join(topic_dir_name(topic)?);
        blocking(move || {
            // Remove topic.json first so a crash mid-way leaves no half-topic behind.
            let meta = dir.join("topic.json");
            match std::fs::remove_file(&meta) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&meta, e)),
            }
            std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))
        })
        .await
    }

    async fn partition_count(&self, topic: &TopicName) -> ChangelogResult<u32> {
        Ok(self.topic(topic)?.partitions.len() as u32)
    }

    async fn append(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        records: Vec<ChangeRecord>,
    ) -> ChangelogResult<AppendedRange> {
        let log = self.partition(topic, partition)?;
        let count = records.len();
        let first = blocking(move || log.append(&records)).await?;
        Ok(AppendedRange::of_batch(Offset(first), count))
    }

    async fn read(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        from: Offset,
        max_records: usize,
        wait: Duration,
    ) -> ChangelogResult<Vec<StoredRecord>> {
        let log = self.partition(topic, partition)?;
        let mut high_rx = log.subscribe();
        let high = *high_rx.borrow_and_update();
        let low = log.low();
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
            if wait.is_zero() {
                return Ok(Vec::new());
            }
            // Woken by the next durable append, or give up at the deadline.
            if tokio::time::timeout(wait, high_rx.changed()).await.is_err() {
                return Ok(Vec::new());
            }
        }
        blocking(move || log.read(from.0, max_records)).await
    }

    async fn offset_for_timestamp(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> ChangelogResult<Option<Offset>> {
        let log = self.partition(topic, partition)?;
        let found = blocking(move || log.offset_for_timestamp(timestamp_ms)).await?;
        Ok(found.map(Offset))
    }

    async fn watermarks(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> ChangelogResult<Watermarks> {
        let log = self.partition(topic, partition)?;
        Ok(Watermarks {
            low: Offset(log.low()),
            high: Offset(log.high()),
        })
    }

    async fn publish_committed(
        &self,
        topic: &TopicName,
        offsets: &PartitionOffsets,
    ) -> ChangelogResult<()> {
        let log = self.topic(topic)?;
        let keep_newer_than = self
            .config
            .retention
            .map(|r| self.config.clock.now_ms() - r.as_millis() as i64);
        let keep_bytes = self.config.retention_bytes;
        let work: Vec<(Arc<PartitionLog>, i64)> = offsets
            .0
            .iter()
            .filter_map(|(p, o)| log.partitions.get(p.0 as usize).map(|l| (l.clone(), o.0)))
            .collect();
        let removed = blocking(move || {
            let mut removed = 0;
            for (partition, committed) in work {
                removed += partition.publish_committed(committed, keep_newer_than, keep_bytes)?;
            }
            Ok(removed)
        })
        .await?;
        if removed > 0 {
            info!(%topic, segments = removed, "changelog retention removed committed segments");
        }
        Ok(())
    }
}
