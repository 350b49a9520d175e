//! Metadata, watermark and offset-for-time look-ups, and the cache of partition counts that
//! appends and reads check against.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};

use super::super::{ChangelogError, ChangelogResult, Watermarks};
use super::context::LogContext;
use super::errors::{blocking, is_unknown_topic, on_topic, unavailable};
use crate::naming::TopicName;
use crate::offsets::{Offset, PartitionId};

/// How long a partition count is trusted before metadata is asked again. Counts change only
/// when a topic is deleted and re-created (or grown by an operator); a deletion through this
/// changelog forgets the count at once.
const COUNT_TTL: Duration = Duration::from_secs(60);

/// Pause before asking again while a partition's leadership moves.
const LEADER_RETRY: Duration = Duration::from_millis(100);

/// Errors that mean a partition's leader is moving or not known yet.
fn is_leader_change(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::FencedLeaderEpoch
                | RDKafkaErrorCode::UnknownLeaderEpoch
        )
    )
}

/// A topic's shape as metadata reports it.
#[derive(Debug, Clone, Copy)]
pub(super) struct TopicLayout {
    pub(super) partitions: u32,
    /// The smallest replica count of any partition.
    pub(super) replication_factor: i32,
    /// Brokers in the cluster.
    pub(super) brokers: usize,
    /// Whether every partition has a leader (a new topic's partitions get theirs a moment
    /// after metadata lists them).
    pub(super) leaders: bool,
}

/// Look-ups through one client that never consumes.
pub(super) struct Lookup {
    client: Arc<BaseConsumer<LogContext>>,
    context: LogContext,
    timeout: Duration,
    counts: Mutex<HashMap<TopicName, (u32, Instant)>>,
}

impl Lookup {
    pub(super) fn new(
        client: BaseConsumer<LogContext>,
        context: LogContext,
        timeout: Duration,
    ) -> Self {
        Self {
            client: Arc::new(client),
            context,
            timeout,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Asks for the cluster's metadata; the number of brokers when one answers in time.
    pub(super) async fn brokers(&self, brokers: &str) -> ChangelogResult<usize> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let metadata = blocking("cluster metadata request", timeout, move || {
            client.fetch_metadata(None, timeout)
        })
        .await?
        .map_err(|err| {
            unavailable(self.context.explain(
                format!(
                    "no broker of `{brokers}` answered a metadata request within {timeout:?}: {err}"
                ),
                timeout,
            ))
        })?;
        Ok(metadata.brokers().len())
    }

    /// The partition count of `topic` as the cluster reports it now; `None` when it is missing.
    /// Refreshes the cache.
    pub(super) async fn fresh_partition_count(
        &self,
        topic: &TopicName,
    ) -> ChangelogResult<Option<u32>> {
        Ok(self.fresh_layout(topic).await?.map(|l| l.partitions))
    }

    /// The partitions and replication of `topic` as the cluster reports them now, with the
    /// number of brokers; `None` when the topic is missing. Refreshes the cache.
    pub(super) async fn fresh_layout(
        &self,
        topic: &TopicName,
    ) -> ChangelogResult<Option<TopicLayout>> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let name = topic.as_str().to_string();
        let metadata = blocking("metadata request", timeout, move || {
            client.fetch_metadata(Some(&name), timeout)
        })
        .await?
        .map_err(|err| self.failed(&err, topic, "metadata request"))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic.as_str());
        let layout = match found {
            None => None,
            Some(t) => match t.error().map(RDKafkaErrorCode::from) {
                code @ Some(_) if is_unknown_topic(code) => None,
                // A topic being created may report an error (no leader yet) with its
                // partitions already listed; the count is what matters here.
                Some(code) if t.partitions().is_empty() => {
                    return Err(unavailable(format!("metadata of `{topic}` reports {code}")));
                }
                _ if t.partitions().is_empty() => None,
                _ => Some(TopicLayout {
                    partitions: t.partitions().len() as u32,
                    replication_factor: t
                        .partitions()
                        .iter()
                        .map(|p| p.replicas().len() as i32)
                        .min()
                        .unwrap_or(0),
                    brokers: metadata.brokers().len(),
                    leaders: t
                        .partitions()
                        .iter()
                        .all(|p| p.leader() >= 0 && p.error().is_none()),
                }),
            },
        };
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        match &layout {
            Some(l) => {
                counts.insert(topic.clone(), (l.partitions, Instant::now()));
            }
            None => {
                counts.remove(topic);
            }
        }
        Ok(layout)
    }

    /// The partition count of `topic`, cached for [`COUNT_TTL`].
    pub(super) async fn partition_count(&self, topic: &TopicName) -> ChangelogResult<u32> {
        let cached = {
            let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            counts
                .get(topic)
                .filter(|(_, at)| at.elapsed() < COUNT_TTL)
                .map(|(n, _)| *n)
        };
        match cached {
            Some(n) => Ok(n),
            None => self.fresh_partition_count(topic).await?.ok_or_else(|| {
                ChangelogError::TopicNotFound {
                    topic: topic.clone(),
                }
            }),
        }
    }

    /// Fails unless `partition` is in `topic`.
    pub(super) async fn check_partition(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> ChangelogResult<()> {
        let partitions = self.partition_count(topic).await?;
        if partition.0 < partitions {
            Ok(())
        } else {
            Err(ChangelogError::PartitionNotFound {
                topic: topic.clone(),
                partition,
                partitions,
            })
        }
    }

    /// [`on_topic`], with the latest client error when the request timed out.
    fn failed(&self, err: &KafkaError, topic: &TopicName, what: &str) -> ChangelogError {
        match on_topic(err, topic, what) {
            ChangelogError::Unavailable { reason, .. } => {
                unavailable(self.context.explain(reason, self.timeout))
            }
            other => other,
        }
    }

    /// Forgets the cached count of `topic` (deleted, or reported missing by the cluster).
    pub(super) fn forget(&self, topic: &TopicName) {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
    }

    /// The low and high watermarks of a partition, asked of its leader.
    pub(super) async fn watermarks(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> ChangelogResult<Watermarks> {
        let timeout = self.timeout;
        let deadline = Instant::now() + timeout;
        let name = topic.as_str().to_string();
        let p = partition.0 as i32;
        loop {
            let client = self.client.clone();
            let name = name.clone();
            let answer = blocking("watermark request", timeout, move || {
                client.fetch_watermarks(&name, p, timeout)
            })
            .await?;
            match answer {
                Ok((low, high)) => {
                    return Ok(Watermarks {
                        low: Offset(low.max(0)),
                        high: Offset(high.max(0)),
                    });
                }
                // Leadership moves (a new topic, a broker that failed or came back): librdkafka
                // refreshes its metadata, so asking again shortly finds the new leader.
                Err(err)
                    if is_leader_change(err.rdkafka_error_code()) && Instant::now() < deadline =>
                {
                    tokio::time::sleep(LEADER_RETRY).await;
                }
                Err(err) => {
                    if is_unknown_topic(err.rdkafka_error_code()) {
                        self.forget(topic);
                    }
                    return Err(self.failed(&err, topic, "watermark request"));
                }
            }
        }
    }

    /// What the cluster answers for the first offset at or after `timestamp_ms`: `None` when it
    /// says there is none. Brokers differ here (see the module docs); the caller checks.
    pub(super) async fn offset_for_time(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> ChangelogResult<Option<i64>> {
        let mut query = TopicPartitionList::new();
        query
            .add_partition_offset(
                topic.as_str(),
                partition.0 as i32,
                KafkaOffset::Offset(timestamp_ms),
            )
            .map_err(|err| on_topic(&err, topic, "offset-for-time request"))?;
        let client = self.client.clone();
        let timeout = self.timeout;
        let answer = blocking("offset-for-time request", timeout, move || {
            client.offsets_for_times(query, timeout)
        })
        .await?
        .map_err(|err| self.failed(&err, topic, "offset-for-time request"))?;
        let element = answer
            .find_partition(topic.as_str(), partition.0 as i32)
            .ok_or_else(|| {
                unavailable(format!(
                    "the offset-for-time answer for `{topic}` lacks partition {partition}"
                ))
            })?;
        element
            .error()
            .map_err(|err| on_topic(&err, topic, "offset-for-time request"))?;
        Ok(match element.offset() {
            KafkaOffset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        })
    }
}
