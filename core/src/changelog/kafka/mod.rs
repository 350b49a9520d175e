//! `KafkaChangelog`: the changelog on a Kafka cluster (or any broker speaking its protocol).
//!
//! A table's topic has one partition per bucket. Records go to the partition the caller names
//! (librdkafka's partitioner is never used), keys and values map to Kafka keys and values
//! (`None` to null, so a tombstone is a null value), headers to Kafka headers in order, and
//! `timestamp_ms` to the record's CreateTime.
//!
//! # What it guarantees
//! - **Durability**: an append returns only when every record is acknowledged with `acks=all`,
//!   i.e. written to every in-sync replica. How many replicas that is depends on the topic's
//!   replication factor ([`KafkaConfig::replication_factor`]) and the broker's
//!   `min.insync.replicas`.
//! - **Order and no duplicates from retries**: one idempotent producer
//!   (`enable.idempotence=true`) per changelog; the broker drops a retried batch it already
//!   has, and a partition's records keep their enqueue order through retries.
//! - **Batches in order**: a batch's records are enqueued back to back under a per-partition
//!   lock, so concurrent appends to one partition through one changelog do not interleave and
//!   land at consecutive offsets. Other processes (every serve node accepts writes for every
//!   table) produce into the same partitions, so their records may land between a batch's;
//!   the returned range is then the first and last offset of the batch, spanning them. The
//!   delivery reports are checked to be in the batch's partition at increasing offsets; if not,
//!   the append fails with [`ChangelogError::Corrupt`] instead of returning a false range.
//! - **Bounded waits**: every network operation is bounded by
//!   [`KafkaConfig::request_timeout`]; an unreachable cluster yields a retryable
//!   [`ChangelogError::Unavailable`], never a hang. Blocking librdkafka calls run on tokio's
//!   blocking pool.
//! - **Reads without a consumer group**: readers `assign` one partition at an explicit
//!   offset and never commit; they are pooled and reused by the next read that continues
//!   where one stopped. A read below the high watermark waits up to the request timeout for
//!   the fetch (a slower broker yields an empty batch, and the next read picks up the same
//!   fetch); a read at the high watermark long-polls up to the caller's `wait`.
//!
//! # What it does not do
//! - **No transactions**: a failed append may have written some of its records (the error
//!   says how many); a retry appends them again. Exactly-once must not rest on the log.
//! - **No retention control**: Kafka deletes records by its own time and size retention.
//!   [`Changelog::publish_committed`] only records the committed offsets (see `committed`), so
//!   the topic's retention must outlast the committer's lag; set it with
//!   [`KafkaConfig::topic_config`] or the table's settings (`retention.ms`). Keyed tables'
//!   topics default to `cleanup.policy=compact`, which keeps the latest record of every key
//!   whatever the lag.
//!
//! # Topic settings
//! [`Changelog::create_topic_with`] creates a topic with the table's settings over the
//! server's ([`KafkaConfig::topic_config`], [`KafkaConfig::replication_factor`]); the
//! replication factor defaults to min(3, brokers) and `min.insync.replicas` to 2 from three
//! replicas on (1 below), so one broker can be lost without losing acknowledged records or
//! availability. An existing topic is used only if its partition count, replication and
//! those settings match; otherwise [`ChangelogError::TopicMisconfigured`] names every
//! difference. [`Changelog::describe_topic`] reports them for `table describe`.
//! - **Timestamps**: librdkafka reads a timestamp of `0` as "now", and Kafka rejects negative
//!   ones; use real times.
//!
//! # Broker differences met here
//! - librdkafka's mock cluster has no CreateTopics, DeleteTopics or offsets-for-times:
//!   `create_topic` succeeds for a topic created beforehand with the same count, and reports
//!   a topic it would have to create as unavailable once the request timeout passes (librdkafka
//!   waits for a broker offering the API); `delete_topic` of a missing topic succeeds (it looks
//!   first), of an existing one times out likewise; `offset_for_timestamp` is always `None`.
//! - Some Kafka-compatible brokers (tansu 0.6) answer an offset-for-time query that matches
//!   nothing with offset 0
//!   instead of -1. The answer is therefore checked: the record at the returned offset must be
//!   at or after the time asked for, or there is no such record.

mod admin;
mod committed;
mod config;
mod context;
mod errors;
mod lookup;
mod produce;
mod read;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::AdminClient;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::BaseConsumer;
use tracing::{debug, info};

pub use self::config::KafkaConfig;

use self::admin::Admin;
use self::committed::Committed;
use self::context::LogContext;
use self::errors::unavailable;
use self::lookup::Lookup;
use self::produce::Appender;
use self::read::Readers;
use super::{
    AppendedRange, ChangeRecord, Changelog, ChangelogError, ChangelogResult, StoredRecord,
    TopicInfo, TopicSettings, Watermarks,
};
use crate::naming::TopicName;
use crate::offsets::{Offset, PartitionId, PartitionOffsets};

/// How long [`KafkaChangelog::connect`] tries to open a TCP connection to each bootstrap
/// address before asking for metadata.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A changelog on a Kafka cluster. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct KafkaChangelog {
    brokers: String,
    lookup: Lookup,
    admin: Admin,
    appender: Appender,
    readers: Readers,
    committed: Committed,
}

impl std::fmt::Debug for KafkaChangelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaChangelog")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaChangelog {
    /// Connects to the cluster: checks that a bootstrap broker accepts TCP connections and
    /// answers a metadata request within [`KafkaConfig::request_timeout`]. Fails with a
    /// retryable [`ChangelogError::Unavailable`] saying what could not be reached. An invalid
    /// client setting is reported as `Unavailable` too (naming the setting), since
    /// [`ChangelogError`] has no configuration variant.
    pub async fn connect(config: KafkaConfig) -> ChangelogResult<Self> {
        probe(&config.brokers, PROBE_TIMEOUT.min(config.request_timeout)).await?;
        let timeout = config.request_timeout;
        let context = LogContext::default();
        let invalid = |what: &str, err: rdkafka::error::KafkaError| {
            unavailable(format!("cannot create the Kafka {what} client: {err}"))
        };
        let lookup = Lookup::new(
            BaseConsumer::from_config_and_context(&config.lookup(), context.clone())
                .map_err(|err| invalid("look-up", err))?,
            context.clone(),
            timeout,
        );
        let admin = Admin::new(
            AdminClient::from_config_and_context(&config.admin(), context.clone())
                .map_err(|err| invalid("admin", err))?,
            context.clone(),
            timeout,
            config.replication_factor,
            config.topic_config.clone(),
        );
        let appender = Appender::new(config.producer(), context.clone(), timeout)?;
        let readers = Readers::new(
            config.reader(),
            context.clone(),
            timeout,
            config.max_idle_readers,
        );
        let brokers = lookup.brokers(&config.brokers).await?;
        info!(bootstrap = %config.brokers, brokers, "connected to Kafka");
        Ok(Self {
            brokers: config.brokers.clone(),
            lookup,
            admin,
            appender,
            readers,
            committed: Committed::new(config, context),
        })
    }

    /// The latest offsets published through [`Changelog::publish_committed`] for `topic` by
    /// this instance (per partition, never moving backwards).
    pub fn committed_offsets(&self, topic: &TopicName) -> Option<PartitionOffsets> {
        self.committed.get(topic)
    }
}

#[async_trait]
impl Changelog for KafkaChangelog {
    fn backend(&self) -> &'static str {
        errors::BACKEND
    }

    async fn create_topic(&self, topic: &TopicName, partitions: u32) -> ChangelogResult<()> {
        self.create_topic_with(topic, partitions, &TopicSettings::default())
            .await
    }

    async fn create_topic_with(
        &self,
        topic: &TopicName,
        partitions: u32,
        settings: &TopicSettings,
    ) -> ChangelogResult<()> {
        self.admin
            .create_topic(&self.lookup, topic, partitions, settings)
            .await
    }

    async fn describe_topic(
        &self,
        topic: &TopicName,
        settings: &TopicSettings,
    ) -> ChangelogResult<Option<TopicInfo>> {
        self.admin
            .describe_topic(&self.lookup, topic, settings)
            .await
    }

    async fn delete_topic(&self, topic: &TopicName) -> ChangelogResult<()> {
        self.readers.forget(topic);
        self.appender.forget(topic);
        self.committed.forget(topic);
        self.admin.delete_topic(&self.lookup, topic).await
    }

    async fn partition_count(&self, topic: &TopicName) -> ChangelogResult<u32> {
        self.lookup
            .fresh_partition_count(topic)
            .await?
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
        self.lookup.check_partition(topic, partition).await?;
        if records.is_empty() {
            let high = self.lookup.watermarks(topic, partition).await?.high;
            return Ok(AppendedRange::of_batch(high, 0));
        }
        let appended = self.appender.append(topic, partition, &records).await;
        if let Err(ChangelogError::TopicNotFound { .. }) = &appended {
            self.lookup.forget(topic);
        }
        appended
    }

    async fn read(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        from: Offset,
        max_records: usize,
        wait: Duration,
    ) -> ChangelogResult<Vec<StoredRecord>> {
        self.lookup.check_partition(topic, partition).await?;
        self.readers
            .read(&self.lookup, topic, partition, from, max_records, wait)
            .await
    }

    async fn offset_for_timestamp(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> ChangelogResult<Option<Offset>> {
        self.lookup.check_partition(topic, partition).await?;
        let Some(answer) = self
            .lookup
            .offset_for_time(topic, partition, timestamp_ms)
            .await?
        else {
            return Ok(None);
        };
        // Check the broker's answer (see the module docs): the first record at or after the
        // answer must be at or after the time. The read waits for the fetch, not for appends.
        match self
            .readers
            .read(
                &self.lookup,
                topic,
                partition,
                Offset(answer),
                1,
                Duration::ZERO,
            )
            .await
        {
            Ok(records) => {
                let found = records
                    .first()
                    .filter(|r| r.record.timestamp_ms >= timestamp_ms)
                    .map(|r| r.offset);
                if found.is_none() {
                    debug!(%topic, %partition, timestamp_ms, answer,
                        "the broker's offset for the time holds an older record: none matches");
                }
                Ok(found)
            }
            Err(ChangelogError::OffsetOutOfRange { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn watermarks(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> ChangelogResult<Watermarks> {
        self.lookup.check_partition(topic, partition).await?;
        self.lookup.watermarks(topic, partition).await
    }

    async fn publish_committed(
        &self,
        topic: &TopicName,
        offsets: &PartitionOffsets,
    ) -> ChangelogResult<()> {
        for partition in offsets.0.keys() {
            self.lookup.check_partition(topic, *partition).await?;
        }
        if offsets.0.is_empty() {
            self.lookup.partition_count(topic).await?;
        }
        self.committed.publish(topic, offsets).await;
        Ok(())
    }
}

/// Fails fast, and clearly, when no bootstrap address accepts a TCP connection: librdkafka
/// itself would only retry quietly until the metadata request times out.
async fn probe(brokers: &str, limit: Duration) -> ChangelogResult<()> {
    let addresses: Vec<&str> = brokers
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| a.split_once("://").map_or(a, |(_, rest)| rest))
        .collect();
    if addresses.is_empty() {
        return Err(unavailable("no Kafka bootstrap servers are configured"));
    }
    let attempts = addresses.iter().map(|address| async move {
        let address = if address.contains(':') && !address.ends_with(']') {
            address.to_string()
        } else {
            format!("{address}:9092")
        };
        match tokio::time::timeout(limit, tokio::net::TcpStream::connect(&address)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(format!("{address}: {err}")),
            Err(_) => Err(format!("{address}: no answer within {limit:?}")),
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    if outcomes.iter().any(Result::is_ok) {
        return Ok(());
    }
    let failures: Vec<String> = outcomes.into_iter().filter_map(Result::err).collect();
    Err(unavailable(format!(
        "cannot reach any Kafka bootstrap server of `{brokers}`: {}",
        failures.join("; ")
    )))
}
