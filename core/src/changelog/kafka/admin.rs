//! Topic creation and deletion through Kafka's admin API.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{info, warn};

use super::super::{ChangelogError, ChangelogResult};
use super::context::LogContext;
use super::errors::unavailable;
use super::lookup::Lookup;
use crate::naming::TopicName;

/// How often metadata is asked while waiting for a created or deleted topic to show.
const PROPAGATION_POLL: Duration = Duration::from_millis(100);

pub(super) struct Admin {
    client: AdminClient<LogContext>,
    context: LogContext,
    timeout: Duration,
    replication_factor: i32,
    topic_config: Vec<(String, String)>,
}

impl Admin {
    pub(super) fn new(
        client: AdminClient<LogContext>,
        context: LogContext,
        timeout: Duration,
        replication_factor: i32,
        topic_config: Vec<(String, String)>,
    ) -> Self {
        Self {
            client,
            context,
            timeout,
            replication_factor,
            topic_config,
        }
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    /// Creates `topic`, or accepts an existing one with the same partition count.
    pub(super) async fn create_topic(
        &self,
        lookup: &Lookup,
        topic: &TopicName,
        partitions: u32,
    ) -> ChangelogResult<()> {
        // Look first: this settles the common "already there" case without the admin API,
        // which some brokers (librdkafka's mock cluster) do not have.
        if let Some(existing) = lookup.fresh_partition_count(topic).await? {
            return same_count(topic, existing, partitions);
        }
        let count = i32::try_from(partitions).map_err(|_| {
            unavailable(format!("{partitions} partitions is more than Kafka allows"))
        })?;
        let mut new_topic = NewTopic::new(
            topic.as_str(),
            count,
            TopicReplication::Fixed(self.replication_factor),
        );
        for (key, value) in &self.topic_config {
            new_topic = new_topic.set(key, value);
        }
        let outcome = self
            .client
            .create_topics([&new_topic], &self.options())
            .await;
        let code = match outcome {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) => None,
                Some(Err((_, code))) => Some(code),
                None => {
                    return Err(unavailable(format!(
                        "creating `{topic}`: the broker answered without a result"
                    )));
                }
            },
            Err(err) => {
                return Err(self.failure(&err, "CreateTopics", topic));
            }
        };
        match code {
            None => info!(%topic, partitions, "created changelog topic"),
            // Someone else created it in the meantime: compare counts below.
            Some(RDKafkaErrorCode::TopicAlreadyExists) => {}
            Some(code) => {
                return Err(unavailable(format!(
                    "creating `{topic}` with {partitions} partitions failed: {code}"
                )));
            }
        }
        // Creation is asynchronous in Kafka: wait until metadata shows the topic, so that an
        // append right after this returns does not see it missing.
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(existing) = lookup.fresh_partition_count(topic).await? {
                return same_count(topic, existing, partitions);
            }
            if Instant::now() >= deadline {
                return Err(unavailable(format!(
                    "`{topic}` was created but its metadata did not show it within {:?}",
                    self.timeout
                )));
            }
            tokio::time::sleep(PROPAGATION_POLL).await;
        }
    }

    /// Deletes `topic`; a missing topic is not an error.
    pub(super) async fn delete_topic(
        &self,
        lookup: &Lookup,
        topic: &TopicName,
    ) -> ChangelogResult<()> {
        lookup.forget(topic);
        if lookup.fresh_partition_count(topic).await?.is_none() {
            return Ok(());
        }
        let outcome = self
            .client
            .delete_topics(&[topic.as_str()], &self.options())
            .await
            .map_err(|err| self.failure(&err, "DeleteTopics", topic))?;
        match outcome.into_iter().next() {
            Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::UnknownTopicOrPartition))) => {}
            Some(Err((_, code))) => {
                return Err(unavailable(format!("deleting `{topic}` failed: {code}")));
            }
            None => {
                return Err(unavailable(format!(
                    "deleting `{topic}`: the broker answered without a result"
                )));
            }
        }
        info!(%topic, "deleted changelog topic");
        // Deletion is asynchronous too; wait (bounded) until metadata no longer shows it, so a
        // re-creation right after does not find the old topic.
        let deadline = Instant::now() + self.timeout;
        while lookup.fresh_partition_count(topic).await?.is_some() {
            if Instant::now() >= deadline {
                warn!(%topic, "deleted topic still listed in metadata after {:?}", self.timeout);
                break;
            }
            tokio::time::sleep(PROPAGATION_POLL).await;
        }
        lookup.forget(topic);
        Ok(())
    }
}

impl Admin {
    /// A failed admin request as a whole (not one topic's result).
    fn failure(&self, err: &KafkaError, api: &str, topic: &TopicName) -> ChangelogError {
        match err.rdkafka_error_code() {
            Some(RDKafkaErrorCode::UnsupportedFeature | RDKafkaErrorCode::UnsupportedVersion) => {
                unavailable(format!(
                    "the brokers do not support {api}, so `{topic}` cannot be changed through \
                     unitable; manage the topic with the cluster's own tools"
                ))
            }
            // librdkafka waits for a broker that offers the API; brokers without it (such as
            // librdkafka's mock cluster) end here too.
            Some(RDKafkaErrorCode::OperationTimedOut) => unavailable(self.context.explain(
                format!(
                    "{api} for `{topic}` got no answer within {:?}; the brokers may not offer \
                     {api}",
                    self.timeout
                ),
                self.timeout,
            )),
            _ => unavailable(format!("{api} for `{topic}` failed: {err}")),
        }
    }
}

fn same_count(topic: &TopicName, existing: u32, wanted: u32) -> ChangelogResult<()> {
    if existing == wanted {
        Ok(())
    } else {
        Err(ChangelogError::TopicExists {
            topic: topic.clone(),
            partitions: existing,
        })
    }
}
