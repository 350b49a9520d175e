//! Topic creation and deletion through Kafka's admin API.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{info, warn};

use super::super::{ChangelogError, ChangelogResult, TopicInfo, TopicSettings};
use super::context::LogContext;
use super::errors::unavailable;
use super::lookup::{Lookup, TopicLayout};
use crate::naming::TopicName;
use crate::offsets::PartitionId;

/// How often metadata is asked while waiting for a created or deleted topic to show.
const PROPAGATION_POLL: Duration = Duration::from_millis(100);

pub(super) struct Admin {
    client: AdminClient<LogContext>,
    context: LogContext,
    timeout: Duration,
    replication_factor: Option<i32>,
    topic_config: Vec<(String, String)>,
}

/// The topic-level settings unitable always shows and checks, besides those it is asked for.
const SHOWN_CONFIGS: [&str; 3] = ["cleanup.policy", "min.insync.replicas", "retention.ms"];

/// A topic as unitable would create it now.
#[derive(Debug, Clone)]
struct Wanted {
    replication_factor: i32,
    configs: BTreeMap<String, String>,
}

impl Admin {
    pub(super) fn new(
        client: AdminClient<LogContext>,
        context: LogContext,
        timeout: Duration,
        replication_factor: Option<i32>,
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

    /// What a topic is created with: the table's settings over the server's, the replication
    /// factor defaulting to min(3, brokers), `min.insync.replicas` to 2 from 3 replicas on.
    fn wanted(&self, settings: &TopicSettings, brokers: usize) -> Wanted {
        let replication_factor = settings
            .replication_factor
            .or(self.replication_factor)
            .unwrap_or_else(|| (brokers as i32).clamp(1, 3));
        let mut configs: BTreeMap<String, String> = self.topic_config.iter().cloned().collect();
        configs.extend(settings.configs.clone());
        configs
            .entry("min.insync.replicas".into())
            .or_insert_with(|| if replication_factor >= 3 { "2" } else { "1" }.into());
        Wanted {
            replication_factor,
            configs,
        }
    }

    /// Creates `topic` with `settings`, or accepts an existing one with the same partition
    /// count and settings.
    pub(super) async fn create_topic(
        &self,
        lookup: &Lookup,
        topic: &TopicName,
        partitions: u32,
        settings: &TopicSettings,
    ) -> ChangelogResult<()> {
        // Look first: this settles the common "already there" case without the admin API,
        // which some brokers (librdkafka's mock cluster) do not have.
        if let Some(existing) = lookup.fresh_layout(topic).await? {
            return self
                .accept_existing(topic, existing, partitions, settings)
                .await;
        }
        let brokers = lookup.brokers("the cluster").await?;
        let wanted = self.wanted(settings, brokers);
        let count = i32::try_from(partitions).map_err(|_| {
            unavailable(format!("{partitions} partitions is more than Kafka allows"))
        })?;
        let mut new_topic = NewTopic::new(
            topic.as_str(),
            count,
            TopicReplication::Fixed(wanted.replication_factor),
        );
        for (key, value) in &wanted.configs {
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
            None => info!(
                %topic, partitions, replication_factor = wanted.replication_factor,
                configs = ?wanted.configs, "created changelog topic"
            ),
            // Someone else created it in the meantime: compare below.
            Some(RDKafkaErrorCode::TopicAlreadyExists) => {}
            Some(RDKafkaErrorCode::InvalidReplicationFactor) => {
                return Err(unavailable(format!(
                    "creating `{topic}` with replication factor {} failed: the cluster has only \
                     {brokers} broker(s); set unitable.changelog.replication-factor on the table \
                     or --kafka-replication-factor",
                    wanted.replication_factor
                )));
            }
            Some(code) => {
                return Err(unavailable(format!(
                    "creating `{topic}` with {partitions} partitions failed: {code}"
                )));
            }
        }
        // Creation is asynchronous in Kafka: wait until metadata shows the topic with a leader
        // for every partition, and every leader answers for it (metadata can come from a
        // broker that learned of the topic before its leaders did), so that an append or a
        // read right after this returns does not see it missing or leaderless.
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(existing) = lookup.fresh_layout(topic).await?
                && ((existing.leaders && leaders_know(lookup, topic, existing.partitions).await?)
                    || Instant::now() >= deadline)
            {
                if code.is_some() {
                    return self
                        .accept_existing(topic, existing, partitions, settings)
                        .await;
                }
                return same_count(topic, existing.partitions, partitions);
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

    /// An existing topic is used only with the partition count and settings the table needs.
    async fn accept_existing(
        &self,
        topic: &TopicName,
        existing: TopicLayout,
        partitions: u32,
        settings: &TopicSettings,
    ) -> ChangelogResult<()> {
        same_count(topic, existing.partitions, partitions)?;
        let info = self.describe_layout(topic, existing, settings).await?;
        if info.problems.is_empty() {
            Ok(())
        } else {
            Err(ChangelogError::TopicMisconfigured {
                topic: topic.clone(),
                problems: info.problems.join("; "),
            })
        }
    }

    /// `topic`'s replication and settings, compared with what unitable would create.
    pub(super) async fn describe_topic(
        &self,
        lookup: &Lookup,
        topic: &TopicName,
        settings: &TopicSettings,
    ) -> ChangelogResult<Option<TopicInfo>> {
        match lookup.fresh_layout(topic).await? {
            None => Ok(None),
            Some(layout) => self
                .describe_layout(topic, layout, settings)
                .await
                .map(Some),
        }
    }

    async fn describe_layout(
        &self,
        topic: &TopicName,
        layout: TopicLayout,
        settings: &TopicSettings,
    ) -> ChangelogResult<TopicInfo> {
        let wanted = self.wanted(settings, layout.brokers);
        let mut info = TopicInfo {
            partitions: layout.partitions,
            replication_factor: Some(layout.replication_factor),
            configs: BTreeMap::new(),
            problems: Vec::new(),
        };
        if layout.replication_factor != wanted.replication_factor {
            info.problems.push(format!(
                "replication factor {} instead of {}",
                layout.replication_factor, wanted.replication_factor
            ));
        }
        let resource = ResourceSpecifier::Topic(topic.as_str());
        let described = self
            .client
            .describe_configs([&resource], &self.options())
            .await;
        let entries = match described {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(resource)) => resource.entries,
                Some(Err(code)) => {
                    return Err(unavailable(format!(
                        "describing the configuration of `{topic}` failed: {code}"
                    )));
                }
                None => Vec::new(),
            },
            // Brokers without DescribeConfigs (librdkafka's mock cluster): nothing to compare.
            Err(err) => {
                warn!(%topic, "cannot describe the topic's configuration: {err}");
                return Ok(info);
            }
        };
        // A broker that has not caught up with a topic created a moment ago may describe it
        // with no entries at all: its settings are unknown then, not different.
        if entries.is_empty() {
            warn!(%topic, "the brokers described no configuration for the topic (yet)");
            return Ok(info);
        }
        for entry in entries {
            let shown = SHOWN_CONFIGS.contains(&entry.name.as_str())
                || wanted.configs.contains_key(&entry.name);
            if let (true, Some(value)) = (shown, entry.value) {
                info.configs.insert(entry.name, value);
            }
        }
        for (key, value) in &wanted.configs {
            match info.configs.get(key) {
                Some(found) if found == value => {}
                found => info.problems.push(format!(
                    "{key}={} instead of {key}={value}",
                    found.map_or("<unset>", String::as_str)
                )),
            }
        }
        Ok(info)
    }

    /// Deletes `topic`; a missing topic is not an error.
    pub(super) async fn delete_topic(
        &self,
        lookup: &Lookup,
        topic: &TopicName,
    ) -> ChangelogResult<()> {
        lookup.forget(topic);
        if lookup.fresh_layout(topic).await?.is_none() {
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

/// Whether the leader of every partition of `topic` answers for it (a watermark request that
/// does not come back "unknown topic or partition").
async fn leaders_know(
    lookup: &Lookup,
    topic: &TopicName,
    partitions: u32,
) -> ChangelogResult<bool> {
    for p in 0..partitions {
        match lookup.watermarks(topic, PartitionId(p)).await {
            Ok(_) => {}
            Err(
                ChangelogError::TopicNotFound { .. } | ChangelogError::PartitionNotFound { .. },
            ) => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
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
