//! A [`Changelog`] over several named clusters: each call goes to the cluster and generation
//! the table's route names (see [`super::routes`]); offsets are positions across generations.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::routes::{self, Route, physical_topic};
use super::{
    AppendStatus, AppendedRange, ChangeRecord, Changelog, ChangelogError, ChangelogResult,
    StoredRecord, TopicInfo, TopicSettings, Watermarks,
};
use crate::naming::TopicName;
use crate::offsets::{Offset, PartitionId, PartitionOffsets};

/// The cluster name of the embedded local changelog.
pub const LOCAL_CLUSTER: &str = "local";

/// Named changelog clusters; tables are routed by their changelog route. A topic without a
/// route (a CDC source topic, a table this process has not loaded yet) is on the default
/// cluster, offsets unchanged.
#[derive(Debug)]
pub struct RoutedChangelog {
    clusters: BTreeMap<String, Arc<dyn Changelog>>,
    default: String,
}

/// Whether `name` can name a cluster: 1 to 32 of `a-z`, `0-9`, `-`.
pub fn valid_cluster_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl RoutedChangelog {
    /// Routes over `clusters`, with tables that name no cluster on `default` (which must be
    /// one of them).
    pub fn new(
        clusters: BTreeMap<String, Arc<dyn Changelog>>,
        default: &str,
    ) -> Result<Self, String> {
        if let Some(bad) = clusters.keys().find(|n| !valid_cluster_name(n)) {
            return Err(format!(
                "cluster name `{bad}` is invalid: use 1 to 32 of a-z, 0-9 and -"
            ));
        }
        if !clusters.contains_key(default) {
            return Err(format!(
                "the default cluster `{default}` is not one of the configured clusters ({})",
                clusters.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(Self {
            clusters,
            default: default.to_string(),
        })
    }

    /// The configured cluster names, sorted.
    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.keys().cloned().collect()
    }

    /// The cluster of tables that name none.
    pub fn default_cluster(&self) -> &str {
        &self.default
    }

    fn cluster(&self, name: Option<&str>) -> ChangelogResult<&Arc<dyn Changelog>> {
        let name = name.unwrap_or(&self.default);
        self.clusters
            .get(name)
            .ok_or_else(|| ChangelogError::Unavailable {
                backend: "routed",
                reason: format!(
                    "the changelog is on cluster `{name}`, which this server does not know; \
                     start every server with --kafka-cluster {name}=BOOTSTRAP"
                ),
            })
    }

    /// The cluster and Kafka topic of `generation`.
    fn generation_target(
        &self,
        route: &Route,
        logical: &TopicName,
        generation: u32,
    ) -> ChangelogResult<(&Arc<dyn Changelog>, TopicName)> {
        let cluster = route
            .cluster_of(generation)
            .ok_or_else(|| ChangelogError::Unavailable {
                backend: "routed",
                reason: format!("`{logical}` has no changelog generation {generation}"),
            })?;
        Ok((self.cluster(cluster)?, physical_topic(logical, generation)))
    }

    /// The route of a table's logical topic, or of the topic whose dead-letter topic `topic`
    /// is (`Some(true)` then).
    fn route_of(topic: &TopicName) -> Option<(Arc<Route>, TopicName, bool)> {
        if let Some(route) = routes::route(topic) {
            return Some((route, topic.clone(), false));
        }
        let base = TopicName::new(topic.as_str().strip_suffix(".dlq")?);
        routes::route(&base).map(|r| (r, base, true))
    }

    /// Where a call on `topic` goes when it names the current generation: the cluster and the
    /// Kafka topic (a dead-letter topic follows its table's current generation).
    fn current(&self, topic: &TopicName) -> ChangelogResult<(&Arc<dyn Changelog>, TopicName)> {
        match Self::route_of(topic) {
            None => Ok((self.cluster(None)?, topic.clone())),
            Some((route, logical, dead_letter)) => {
                let (log, physical) = self.generation_target(&route, &logical, route.generation)?;
                Ok((
                    log,
                    if dead_letter {
                        physical.dead_letter()
                    } else {
                        physical
                    },
                ))
            }
        }
    }

    fn table_route(topic: &TopicName) -> Option<Arc<Route>> {
        routes::route(topic)
    }

    /// `from` is not readable (a generation the table does not have, or one whose topic is
    /// gone): out of range, with the watermarks there are (or the error asking for them).
    async fn out_of_range(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        from: Offset,
    ) -> ChangelogError {
        match self.watermarks(topic, partition).await {
            Ok(w) => ChangelogError::OffsetOutOfRange {
                topic: topic.clone(),
                partition,
                offset: from,
                low: w.low,
                high: w.high,
            },
            Err(e) => e,
        }
    }
}

/// `error` from generation `generation`'s Kafka topic, restated in positions of `logical`.
fn restate(error: ChangelogError, logical: &TopicName, generation: u32) -> ChangelogError {
    match error {
        ChangelogError::OffsetOutOfRange {
            partition,
            offset,
            low,
            high,
            ..
        } => ChangelogError::OffsetOutOfRange {
            topic: logical.clone(),
            partition,
            offset: Offset::of_generation(generation, offset.0),
            low: Offset::of_generation(generation, low.0),
            high: Offset::of_generation(generation, high.0),
        },
        other => other,
    }
}

fn shift(records: Vec<StoredRecord>, generation: u32) -> Vec<StoredRecord> {
    if generation == 0 {
        return records;
    }
    records
        .into_iter()
        .map(|mut r| {
            r.offset = Offset::of_generation(generation, r.offset.0);
            r
        })
        .collect()
}

#[async_trait]
impl Changelog for RoutedChangelog {
    fn backend(&self) -> &'static str {
        self.clusters
            .get(&self.default)
            .map_or("routed", |c| c.backend())
    }

    async fn create_topic(&self, topic: &TopicName, partitions: u32) -> ChangelogResult<()> {
        self.create_topic_with(topic, partitions, &TopicSettings::default())
            .await
    }

    /// Creates the topic writes go to next: the current generation's, or while a move is
    /// under way the next generation's on the target cluster.
    async fn create_topic_with(
        &self,
        topic: &TopicName,
        partitions: u32,
        settings: &TopicSettings,
    ) -> ChangelogResult<()> {
        if let Some(route) = Self::table_route(topic)
            && let Some(target) = &route.moving
        {
            let next = physical_topic(topic, route.generation + 1);
            return self
                .cluster(Some(target))?
                .create_topic_with(&next, partitions, settings)
                .await;
        }
        let (log, physical) = self.current(topic)?;
        log.create_topic_with(&physical, partitions, settings).await
    }

    async fn describe_topic(
        &self,
        topic: &TopicName,
        settings: &TopicSettings,
    ) -> ChangelogResult<Option<TopicInfo>> {
        let (log, physical) = self.current(topic)?;
        log.describe_topic(&physical, settings).await
    }

    /// Deletes every generation's topic (and dead-letter topic).
    async fn delete_topic(&self, topic: &TopicName) -> ChangelogResult<()> {
        let Some((route, logical, dead_letter)) = Self::route_of(topic) else {
            return self.cluster(None)?.delete_topic(topic).await;
        };
        let mut generations: Vec<(u32, Option<&str>)> = route
            .history
            .iter()
            .map(|g| (g.generation, g.cluster.as_deref()))
            .collect();
        generations.push((route.generation, route.cluster.as_deref()));
        if let Some(target) = &route.moving {
            generations.push((route.generation + 1, Some(target)));
        }
        for (generation, cluster) in generations {
            let physical = physical_topic(&logical, generation);
            let physical = if dead_letter {
                physical.dead_letter()
            } else {
                physical
            };
            self.cluster(cluster)?.delete_topic(&physical).await?;
        }
        Ok(())
    }

    async fn partition_count(&self, topic: &TopicName) -> ChangelogResult<u32> {
        let (log, physical) = self.current(topic)?;
        log.partition_count(&physical).await
    }

    async fn append(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        records: Vec<ChangeRecord>,
    ) -> ChangelogResult<AppendedRange> {
        match Self::route_of(topic) {
            Some((route, logical, false)) => {
                if let Some(target) = &route.moving {
                    return Err(ChangelogError::Unavailable {
                        backend: "routed",
                        reason: format!(
                            "the changelog of `{logical}` is moving to cluster `{target}`; \
                             writes resume in a few seconds, retry then"
                        ),
                    });
                }
                let generation = route.generation;
                let (log, physical) = self.generation_target(&route, &logical, generation)?;
                let range = log
                    .append(&physical, partition, records)
                    .await
                    .map_err(|e| restate(e, &logical, generation))?;
                Ok(AppendedRange {
                    first: Offset::of_generation(generation, range.first.0),
                    last: Offset::of_generation(generation, range.last.0),
                })
            }
            _ => {
                let (log, physical) = self.current(topic)?;
                log.append(&physical, partition, records).await
            }
        }
    }

    fn append_status(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        range: AppendedRange,
    ) -> AppendStatus {
        let Some(route) = Self::table_route(topic) else {
            return AppendStatus::Durable;
        };
        let generation = range.last.generation();
        if generation == route.generation {
            return match &route.moving {
                Some(_) => AppendStatus::Pending,
                None => AppendStatus::Durable,
            };
        }
        match route.closed(generation) {
            Some(closed) if range.last.physical() < closed.end.get(partition).0 => {
                AppendStatus::Durable
            }
            _ => AppendStatus::Lost {
                reason: format!(
                    "the changelog of `{topic}` moved to cluster `{}` while the append ran",
                    route.cluster.as_deref().unwrap_or(&self.default)
                ),
            },
        }
    }

    async fn read(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        from: Offset,
        max_records: usize,
        wait: Duration,
    ) -> ChangelogResult<Vec<StoredRecord>> {
        let Some(route) = Self::table_route(topic) else {
            let (log, physical) = self.current(topic)?;
            return log
                .read(&physical, partition, from, max_records, wait)
                .await;
        };
        let mut generation = from.generation();
        let mut physical = from.physical();
        loop {
            if generation == route.generation {
                let (log, kafka_topic) = self.generation_target(&route, topic, generation)?;
                let records = log
                    .read(&kafka_topic, partition, Offset(physical), max_records, wait)
                    .await
                    .map_err(|e| restate(e, topic, generation))?;
                return Ok(shift(records, generation));
            }
            let end = match route.closed(generation) {
                Some(closed) if generation < route.generation => closed.end.get(partition).0,
                _ => return Err(self.out_of_range(topic, partition, from).await),
            };
            if physical < end {
                let (log, kafka_topic) = self.generation_target(&route, topic, generation)?;
                let records = log
                    .read(
                        &kafka_topic,
                        partition,
                        Offset(physical),
                        max_records,
                        Duration::ZERO,
                    )
                    .await;
                let mut records = match records {
                    // The old topic was deleted (by an operator, after the move): its records
                    // are gone, as if retention had removed them.
                    Err(ChangelogError::TopicNotFound { .. }) => {
                        return Err(self.out_of_range(topic, partition, from).await);
                    }
                    other => other.map_err(|e| restate(e, topic, generation))?,
                };
                // Records past the end were appended while the move switched over; their
                // writers were told to retry, so they are not part of the table.
                records.retain(|r| r.offset.0 < end);
                if !records.is_empty() {
                    return Ok(shift(records, generation));
                }
            }
            generation += 1;
            physical = 0;
        }
    }

    async fn offset_for_timestamp(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> ChangelogResult<Option<Offset>> {
        let Some(route) = Self::table_route(topic) else {
            let (log, physical) = self.current(topic)?;
            return log
                .offset_for_timestamp(&physical, partition, timestamp_ms)
                .await;
        };
        for closed in &route.history {
            let end = closed.end.get(partition).0;
            let Ok((log, kafka_topic)) = self.generation_target(&route, topic, closed.generation)
            else {
                continue;
            };
            // A generation whose cluster is gone or whose topic was cleaned up holds nothing
            // to find.
            if let Ok(Some(found)) = log
                .offset_for_timestamp(&kafka_topic, partition, timestamp_ms)
                .await
                && found.0 < end
            {
                return Ok(Some(Offset::of_generation(closed.generation, found.0)));
            }
        }
        let (log, kafka_topic) = self.generation_target(&route, topic, route.generation)?;
        Ok(log
            .offset_for_timestamp(&kafka_topic, partition, timestamp_ms)
            .await
            .map_err(|e| restate(e, topic, route.generation))?
            .map(|o| Offset::of_generation(route.generation, o.0)))
    }

    async fn watermarks(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> ChangelogResult<Watermarks> {
        let Some(route) = Self::table_route(topic) else {
            let (log, physical) = self.current(topic)?;
            return log.watermarks(&physical, partition).await;
        };
        let (log, kafka_topic) = self.generation_target(&route, topic, route.generation)?;
        let current = log
            .watermarks(&kafka_topic, partition)
            .await
            .map_err(|e| restate(e, topic, route.generation))?;
        let mut low = Offset::of_generation(route.generation, current.low.0);
        // The oldest generation that still holds records below its end is where reading can
        // start; one whose cluster cannot be asked counts as gone.
        for closed in &route.history {
            let end = closed.end.get(partition).0;
            let Ok((log, kafka_topic)) = self.generation_target(&route, topic, closed.generation)
            else {
                continue;
            };
            if let Ok(w) = log.watermarks(&kafka_topic, partition).await
                && w.low.0 < end
            {
                low = Offset::of_generation(closed.generation, w.low.0);
                break;
            }
        }
        Ok(Watermarks {
            low,
            high: Offset::of_generation(route.generation, current.high.0),
        })
    }

    async fn publish_committed(
        &self,
        topic: &TopicName,
        offsets: &PartitionOffsets,
    ) -> ChangelogResult<()> {
        let Some(route) = Self::table_route(topic) else {
            let (log, physical) = self.current(topic)?;
            return log.publish_committed(&physical, offsets).await;
        };
        let mut current = PartitionOffsets::default();
        for (p, o) in &offsets.0 {
            if o.generation() == route.generation {
                current.set(*p, Offset(o.physical()));
            }
        }
        let (log, kafka_topic) = self.generation_target(&route, topic, route.generation)?;
        log.publish_committed(&kafka_topic, &current).await
    }
}

/// The clusters a server was started with, by name.
pub type Clusters = BTreeMap<String, Arc<dyn Changelog>>;

#[cfg(test)]
mod tests;
