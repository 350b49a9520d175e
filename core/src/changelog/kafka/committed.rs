//! What the Iceberg committer has committed, per topic.
//!
//! Kafka removes records by its own time and size retention and knows nothing of Iceberg, so
//! these offsets cannot hold records back. They are kept in memory (the latest per partition,
//! never moving backwards) and, when [`super::KafkaConfig::publish_group_offsets`] is on,
//! committed as the offsets of the consumer group `unitable-committer.<topic>`, where standard
//! tools (`kafka-consumer-groups --describe`) show how far Iceberg lags behind the log. That
//! group never has members; the commit is best effort and only logged when it fails.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use tracing::{debug, warn};

use super::config::{KafkaConfig, committer_group};
use super::context::LogContext;
use super::errors::blocking;
use crate::naming::TopicName;
use crate::offsets::PartitionOffsets;

/// Committer clients kept open; each is a librdkafka client with its own threads.
const OPEN_COMMITTERS: usize = 16;

type Committer = Arc<BaseConsumer<LogContext>>;

pub(super) struct Committed {
    config: KafkaConfig,
    context: LogContext,
    latest: Mutex<HashMap<TopicName, PartitionOffsets>>,
    committers: Mutex<HashMap<TopicName, Committer>>,
    /// Topics with a group commit in flight; a publish meanwhile does not start another.
    in_flight: Arc<Mutex<HashSet<TopicName>>>,
}

impl Committed {
    pub(super) fn new(config: KafkaConfig, context: LogContext) -> Self {
        Self {
            config,
            context,
            latest: Mutex::new(HashMap::new()),
            committers: Mutex::new(HashMap::new()),
            in_flight: Arc::default(),
        }
    }

    /// The latest committed offsets published for `topic`.
    pub(super) fn get(&self, topic: &TopicName) -> Option<PartitionOffsets> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.get(topic).cloned()
    }

    /// Forgets a deleted topic.
    pub(super) fn forget(&self, topic: &TopicName) {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
        self.committers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
    }

    /// Records `offsets` and mirrors the result into the committer group.
    pub(super) async fn publish(&self, topic: &TopicName, offsets: &PartitionOffsets) {
        let merged = {
            let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
            let entry = latest.entry(topic.clone()).or_default();
            for (partition, offset) in &offsets.0 {
                if entry.0.get(partition).is_none_or(|old| old < offset) {
                    entry.set(*partition, *offset);
                }
            }
            entry.clone()
        };
        if !self.config.publish_group_offsets || merged.0.is_empty() {
            return;
        }
        let Some(in_flight) = InFlight::start(&self.in_flight, topic) else {
            debug!(%topic, "a committer-group commit is in flight; skipping this one");
            return;
        };
        if let Err(reason) = self.commit(topic, &merged, in_flight).await {
            warn!(%topic, group = committer_group(topic.as_str()), reason,
                "could not mirror committed offsets into the committer group");
        }
    }

    async fn commit(
        &self,
        topic: &TopicName,
        offsets: &PartitionOffsets,
        in_flight: InFlight,
    ) -> Result<(), String> {
        let committer = self.committer(topic)?;
        let mut list = TopicPartitionList::new();
        for (partition, offset) in &offsets.0 {
            list.add_partition_offset(
                topic.as_str(),
                partition.0 as i32,
                KafkaOffset::Offset(offset.0),
            )
            .map_err(|err| err.to_string())?;
        }
        let limit = self.config.request_timeout;
        let outcome = blocking("committer-group commit", limit, move || {
            let outcome = committer.commit(&list, CommitMode::Sync);
            drop(in_flight);
            outcome
        })
        .await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                // A broken client is rebuilt next time.
                self.committers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(topic);
                Err(err.to_string())
            }
            Err(err) => Err(err.to_string()),
        }
    }

    fn committer(&self, topic: &TopicName) -> Result<Committer, String> {
        let mut committers = self.committers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = committers.get(topic) {
            return Ok(existing.clone());
        }
        if committers.len() >= OPEN_COMMITTERS {
            // Close one (any) to stay within the limit; it is reopened when needed.
            let victim = committers.keys().next().cloned();
            if let Some(old) = victim.and_then(|victim| committers.remove(&victim)) {
                tokio::task::spawn_blocking(move || drop(old));
            }
        }
        let config = self.config.committer(&committer_group(topic.as_str()));
        let committer = Arc::new(
            BaseConsumer::from_config_and_context(&config, self.context.clone())
                .map_err(|err| format!("cannot create the committer client: {err}"))?,
        );
        committers.insert(topic.clone(), committer.clone());
        Ok(committer)
    }
}

/// Marks a topic's group commit as in flight until dropped, which happens on the blocking
/// thread when the commit really ends (not when a caller stops waiting for it).
struct InFlight {
    topics: Arc<Mutex<HashSet<TopicName>>>,
    topic: TopicName,
}

impl InFlight {
    fn start(topics: &Arc<Mutex<HashSet<TopicName>>>, topic: &TopicName) -> Option<Self> {
        let fresh = topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.clone());
        fresh.then(|| Self {
            topics: topics.clone(),
            topic: topic.clone(),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.topic);
    }
}
