//! The changelog seam: an ordered, durable, partitioned log of keyed change records per table.
//!
//! Every backend (in-memory here, the local segment log and Kafka elsewhere) implements
//! [`Changelog`]. A table's topic has one partition per bucket; a record's partition is chosen
//! by the caller ([`crate::bucket::bucket_of`]), never by the backend. Offsets are dense per
//! partition, starting at 0, and an append returns only once the records are durable.

#[cfg(any(test, feature = "test-utils"))]
pub mod conformance;
mod kafka;
mod local;
mod memory;
mod routed;
pub mod routes;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use kafka::{KafkaChangelog, KafkaConfig};
pub use local::{LocalChangelog, LocalConfig};
pub use memory::MemoryChangelog;
pub use routed::{Clusters, LOCAL_CLUSTER, RoutedChangelog, valid_cluster_name};

use crate::naming::TopicName;
use crate::offsets::{Offset, PartitionId, PartitionOffsets};

/// Result alias for changelog operations.
pub type ChangelogResult<T> = std::result::Result<T, ChangelogError>;

/// One change as appended: a Kafka-shaped record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    /// The encoded primary key (`None` for append-only tables).
    pub key: Option<Bytes>,
    /// The encoded row (`None` is a delete tombstone).
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the epoch.
    pub timestamp_ms: i64,
}

/// A record read back from a partition, with its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its offset in the partition.
    pub offset: Offset,
    /// The record.
    pub record: ChangeRecord,
}

/// The offsets an append was given: its records are in `first..=last`, in order. With one
/// writing process they are exactly that range; with several (Kafka, several serve nodes)
/// other processes' records may lie in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedRange {
    /// Offset of the first appended record.
    pub first: Offset,
    /// Offset of the last appended record.
    pub last: Offset,
}

impl AppendedRange {
    /// The range of `count` records starting at `first`; an empty batch is `first..=first`
    /// (the high watermark it was appended at).
    pub fn of_batch(first: Offset, count: usize) -> Self {
        let last = if count == 0 {
            first
        } else {
            Offset(first.0 + count as i64 - 1)
        };
        Self { first, last }
    }
}

/// Whether records an append returned for are part of the table (see
/// [`Changelog::append_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendStatus {
    /// They are: acknowledge them.
    Durable,
    /// The table's changelog is moving to another cluster and the records may lie past the
    /// end the move closes the old topic at: ask again once the move is done.
    Pending,
    /// The move closed the old topic before them: they are not part of the table and must be
    /// written again.
    Lost {
        /// Why, for the writer's client.
        reason: String,
    },
}

/// The readable range of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// The oldest offset still stored (retention may have removed older ones).
    pub low: Offset,
    /// The offset the next appended record will get.
    pub high: Offset,
}

/// How a table's topic is to be set up, beyond its partition count. Backends without such
/// settings (the local and in-memory changelogs) ignore them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicSettings {
    /// Replicas per partition; `None`: the backend's default.
    pub replication_factor: Option<i32>,
    /// Topic-level configuration (Kafka names: `cleanup.policy`, `min.insync.replicas`,
    /// `retention.ms`, ...), over the backend's defaults.
    pub configs: BTreeMap<String, String>,
}

/// What a backend reports about an existing topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicInfo {
    /// Partitions.
    pub partitions: u32,
    /// The smallest replica count of any partition; `None` where replication does not apply.
    pub replication_factor: Option<i32>,
    /// The topic's effective configuration for the keys unitable sets (empty where configs do
    /// not apply).
    pub configs: BTreeMap<String, String>,
    /// How the topic differs from what unitable would create it with, one sentence each.
    pub problems: Vec<String>,
}

/// A changelog backend.
#[async_trait]
pub trait Changelog: Debug + Send + Sync + 'static {
    /// A short name for logs and metrics (`memory`, `local`, `kafka`).
    fn backend(&self) -> &'static str;

    /// Creates `topic` with `partitions` partitions. Creating a topic that already exists with
    /// the same partition count succeeds; with another count it fails with
    /// [`ChangelogError::TopicExists`].
    async fn create_topic(&self, topic: &TopicName, partitions: u32) -> ChangelogResult<()>;

    /// Creates `topic` like [`Changelog::create_topic`], with `settings`. An existing topic
    /// whose settings differ fails with [`ChangelogError::TopicMisconfigured`] instead of being
    /// used as it is. By default the settings are ignored.
    async fn create_topic_with(
        &self,
        topic: &TopicName,
        partitions: u32,
        settings: &TopicSettings,
    ) -> ChangelogResult<()> {
        let _ = settings;
        self.create_topic(topic, partitions).await
    }

    /// What the backend knows of `topic`, compared with `settings` (the table's wanted
    /// settings); `None` when the topic does not exist.
    async fn describe_topic(
        &self,
        topic: &TopicName,
        settings: &TopicSettings,
    ) -> ChangelogResult<Option<TopicInfo>> {
        let _ = settings;
        match self.partition_count(topic).await {
            Ok(partitions) => Ok(Some(TopicInfo {
                partitions,
                ..TopicInfo::default()
            })),
            Err(ChangelogError::TopicNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes `topic` and its records. Deleting a missing topic succeeds.
    async fn delete_topic(&self, topic: &TopicName) -> ChangelogResult<()>;

    /// The number of partitions of `topic`.
    async fn partition_count(&self, topic: &TopicName) -> ChangelogResult<u32>;

    /// Appends `records` in order to one partition and returns their offsets once they are
    /// durable. An empty batch is an error-free no-op that returns the high watermark twice.
    async fn append(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        records: Vec<ChangeRecord>,
    ) -> ChangelogResult<AppendedRange>;

    /// Whether the records an append returned `range` for count, given what this process
    /// knows of the table's changelog now: a writer asks after checking the table's metadata
    /// again, before it acknowledges. Only changelogs whose tables can move between clusters
    /// ([`RoutedChangelog`]) answer anything but [`AppendStatus::Durable`].
    fn append_status(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        range: AppendedRange,
    ) -> AppendStatus {
        let _ = (topic, partition, range);
        AppendStatus::Durable
    }

    /// Reads up to `max_records` records starting at `from`. When `from` is the high watermark,
    /// waits up to `wait` for an append (returning early when one lands) and returns an empty
    /// batch if none does. `from` outside `low..=high` is [`ChangelogError::OffsetOutOfRange`].
    async fn read(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        from: Offset,
        max_records: usize,
        wait: Duration,
    ) -> ChangelogResult<Vec<StoredRecord>>;

    /// The first offset whose timestamp is at or after `timestamp_ms`; `None` when every record
    /// is older (the caller then starts at the high watermark).
    async fn offset_for_timestamp(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> ChangelogResult<Option<Offset>>;

    /// The low and high watermarks of a partition.
    async fn watermarks(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> ChangelogResult<Watermarks>;

    /// Tells the backend which offsets the Iceberg committer has committed (exclusive ends):
    /// retention never removes a record at or after these offsets.
    async fn publish_committed(
        &self,
        topic: &TopicName,
        offsets: &PartitionOffsets,
    ) -> ChangelogResult<()>;
}

/// Changelog failures.
#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    /// The topic does not exist.
    #[error("changelog topic `{topic}` does not exist")]
    TopicNotFound {
        /// The topic.
        topic: TopicName,
    },
    /// The topic exists with a different partition count.
    #[error("changelog topic `{topic}` already exists with {partitions} partitions")]
    TopicExists {
        /// The topic.
        topic: TopicName,
        /// Its existing partition count.
        partitions: u32,
    },
    /// The partition is not in the topic.
    #[error(
        "changelog topic `{topic}` has {partitions} partitions; partition {partition} does not exist"
    )]
    PartitionNotFound {
        /// The topic.
        topic: TopicName,
        /// The partition asked for.
        partition: PartitionId,
        /// The topic's partition count.
        partitions: u32,
    },
    /// The offset is before the low watermark (removed by retention) or after the high one.
    #[error("offset {offset} of `{topic}` partition {partition} is out of range {low}..={high}")]
    OffsetOutOfRange {
        /// The topic.
        topic: TopicName,
        /// The partition.
        partition: PartitionId,
        /// The offset asked for.
        offset: Offset,
        /// The low watermark.
        low: Offset,
        /// The high watermark.
        high: Offset,
    },
    /// The backend cannot be reached or refused the request for now.
    #[error("changelog backend `{backend}` is unavailable: {reason}")]
    Unavailable {
        /// The backend.
        backend: &'static str,
        /// What failed.
        reason: String,
    },
    /// The stored log is damaged beyond the torn tail that recovery repairs.
    #[error("changelog data at `{location}` is corrupt: {reason}")]
    Corrupt {
        /// File or partition.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The topic exists with settings other than the table asks for.
    #[error(
        "changelog topic `{topic}` already exists with other settings: {problems}; delete the \
         topic, or change it with the cluster's tools (kafka-configs.sh --alter, \
         kafka-reassign-partitions.sh), then retry"
    )]
    TopicMisconfigured {
        /// The topic.
        topic: TopicName,
        /// The differences, joined.
        problems: String,
    },
    /// A new table's topic already exists and has been written to: its records belong to
    /// another table (a dropped one whose topic was kept, or one of another catalog sharing
    /// the cluster) and must not become the new table's contents.
    #[error(
        "changelog topic `{topic}` already exists and has been written to ({written} records \
         written, {records} still stored): it belongs to another table of this name (a dropped table whose \
         topic was not deleted, or a table of another catalog on the same cluster); a new table \
         starts empty, so delete the topic (kafka-topics.sh --delete --topic {topic}) or choose \
         another table name, then retry"
    )]
    TopicInUse {
        /// The topic.
        topic: TopicName,
        /// Records still stored, over all partitions.
        records: u64,
        /// Records ever written (the sum of the partitions' high watermarks).
        written: u64,
    },
    /// One record is larger than a changelog batch can hold; nothing of the append was written.
    #[error(
        "record {index} of the append is {bytes} bytes, more than the changelog's limit of {limit} bytes per record; split the row or store the large value elsewhere"
    )]
    RecordTooLarge {
        /// The record's index in the append.
        index: usize,
        /// Its encoded size.
        bytes: usize,
        /// The largest encoded record accepted.
        limit: usize,
    },
    /// A local I/O operation failed.
    #[error("changelog I/O on `{path}` failed: {source}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ChangelogError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ChangelogError::Unavailable { .. } | ChangelogError::Io { .. } => true,
            ChangelogError::TopicNotFound { .. }
            | ChangelogError::TopicExists { .. }
            | ChangelogError::PartitionNotFound { .. }
            | ChangelogError::OffsetOutOfRange { .. }
            | ChangelogError::Corrupt { .. }
            | ChangelogError::TopicMisconfigured { .. }
            | ChangelogError::TopicInUse { .. }
            | ChangelogError::RecordTooLarge { .. } => false,
        }
    }
}
