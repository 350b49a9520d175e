//! Table administration: keeps a table's Iceberg entry and its changelog topic together.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{info, warn};

use crate::changelog::routes::{self, Segment};
use crate::naming::props;
use crate::offsets::{Offset, PartitionId, PartitionOffsets};

use crate::catalog::TableCatalog;
use crate::changelog::{Changelog, ChangelogError, TopicInfo};
use crate::commit::CommitError;
use crate::commit::committer::Committer;
use crate::error::{Error, Result};
use crate::naming::{TableName, TopicName};
use crate::table::{Column, ColumnChange, TableDef, TableState};

/// How long a topic just created may still be reported missing by some broker.
const NEW_TOPIC_VISIBLE: std::time::Duration = std::time::Duration::from_secs(15);

/// Creates, describes, lists, alters and drops tables (catalog entry + changelog topic).
#[derive(Debug, Clone)]
pub struct TableAdmin {
    catalog: TableCatalog,
    changelog: Arc<dyn Changelog>,
    /// Commits schema changes iceberg-rust cannot (see [`TableAdmin::alter_columns`]).
    committer: Option<Committer>,
    /// CDC ingest positions, for [`TableAdmin::ingest_status`].
    ingest: Option<crate::ingest::IngestPositions>,
    /// The named changelog clusters (`None`: one unnamed changelog, tables cannot move).
    clusters: Option<ClusterDirectory>,
}

/// The changelog clusters a server knows, for creating tables on them and moving tables
/// between them.
#[derive(Debug, Clone, Default)]
pub struct ClusterDirectory {
    /// The cluster of tables that name none.
    pub default: String,
    /// Every cluster by name, with its Kafka bootstrap servers (empty for the local log).
    pub bootstrap: BTreeMap<String, String>,
}

impl ClusterDirectory {
    /// The bootstrap servers of `cluster` (`None`: the default cluster); empty when unknown.
    pub fn bootstrap_of(&self, cluster: Option<&str>) -> String {
        self.bootstrap
            .get(cluster.unwrap_or(&self.default))
            .cloned()
            .unwrap_or_default()
    }

    /// The cluster names, comma-separated, for messages.
    pub fn names(&self) -> String {
        self.bootstrap
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The name of `cluster` (`None`: the default cluster).
    pub fn name_of<'a>(&'a self, cluster: Option<&'a str>) -> &'a str {
        cluster.unwrap_or(&self.default)
    }
}

/// Where the records of one partition are, from a position on (see
/// [`TableAdmin::changelog_positions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPosition {
    /// The partition.
    pub partition: PartitionId,
    /// The position, as unitable gives positions out.
    pub offset: Offset,
    /// The Kafka topics and offset ranges holding the records from there on, in order.
    pub segments: Vec<Segment>,
}

/// A position to map: as unitable gives it out, or as a Kafka offset of one of the table's
/// topics.
#[derive(Debug, Clone)]
pub enum PositionQuery {
    /// unitable positions (`ReadResponse.next_offsets`, snapshot summaries).
    Offsets(PartitionOffsets),
    /// Kafka offsets of the table's Kafka topic `topic` (any generation).
    Kafka {
        /// The Kafka topic.
        topic: String,
        /// Kafka offsets per partition.
        offsets: PartitionOffsets,
    },
}

impl TableAdmin {
    /// Admin over a catalog and a changelog.
    pub fn new(catalog: TableCatalog, changelog: Arc<dyn Changelog>) -> Self {
        Self {
            catalog,
            changelog,
            committer: None,
            ingest: None,
            clusters: None,
        }
    }

    /// Creates tables on, and moves tables between, the named `clusters`.
    pub fn with_clusters(mut self, clusters: ClusterDirectory) -> Self {
        self.clusters = Some(clusters);
        self
    }

    /// The named changelog clusters, if the server has them.
    pub fn clusters(&self) -> Option<&ClusterDirectory> {
        self.clusters.as_ref()
    }

    /// Starts moving the table's changelog to the cluster `to` (docs/rfcs/0004): records the
    /// target in the table (`unitable.changelog.moving`); the table's committer then commits
    /// what the old topic holds and switches the table to a new topic on `to`. Writes are
    /// refused (retryable) until it has. With `abort`, gives up a move that has not switched
    /// yet (`to` is then ignored).
    pub async fn move_changelog(
        &self,
        name: &TableName,
        to: &str,
        abort: bool,
    ) -> Result<TableState> {
        let fail = |reason: String| Err(Error::invalid_definition(name, reason));
        let Some(clusters) = &self.clusters else {
            return fail("this server has no named changelog clusters; start it with --kafka-cluster NAME=BOOTSTRAP".into());
        };
        let Some(committer) = &self.committer else {
            return fail("this server cannot commit table metadata".into());
        };
        let state = self.catalog.describe(name).await?;
        let binding = &state.def.changelog;
        let mut updates = BTreeMap::new();
        let mut required = BTreeMap::new();
        if abort {
            let Some(moving) = &binding.moving else {
                return fail("the changelog is not moving; nothing to abort".into());
            };
            updates.insert(props::CHANGELOG_MOVING.to_string(), String::new());
            required.insert(props::CHANGELOG_MOVING.to_string(), moving.clone());
        } else {
            if let Some(moving) = &binding.moving {
                return fail(format!(
                    "the changelog is already moving to cluster `{moving}`; wait for it, or abort it with --abort"
                ));
            }
            if !clusters.bootstrap.contains_key(to) {
                return fail(format!(
                    "unknown cluster `{to}`; this server knows {}",
                    clusters.names()
                ));
            }
            let current = clusters.name_of(binding.cluster.as_deref());
            if current == to {
                return fail(format!("the changelog is already on cluster `{to}`"));
            }
            updates.insert(props::CHANGELOG_MOVING.to_string(), to.to_string());
            if let Some(g) = Some(state.def.changelog.generation).filter(|g| *g > 0) {
                required.insert(props::CHANGELOG_GENERATION.to_string(), g.to_string());
            }
        }
        committer
            .commit_properties(name, None, updates, required)
            .await
            .map_err(|e| match e {
                CommitError::Fenced { .. } => Error::invalid_definition(
                    name,
                    "the changelog's move changed meanwhile (another move, an abort or the switch); look again with `table describe`",
                ),
                e => Error::PropertiesCommit {
                    table: name.to_string(),
                    retryable: e.is_retryable(),
                    reason: e.to_string(),
                },
            })?;
        info!(table = %name, to, abort, "changelog move requested");
        self.catalog.describe(name).await
    }

    /// Where the records of each partition are from the given positions on (all partitions
    /// from their oldest record when `query` names none): Kafka topics and offset ranges per
    /// cluster, for clients that read the table's topics directly across moves.
    pub async fn changelog_positions(
        &self,
        name: &TableName,
        query: &PositionQuery,
    ) -> Result<Vec<PartitionPosition>> {
        let state = self.catalog.describe(name).await?;
        let binding = &state.def.changelog;
        let route = binding.route(&state.uuid, 0);
        let bad = |reason: String| Error::invalid_definition(name, reason);
        let mut positions = Vec::new();
        let requested: Vec<(PartitionId, Offset)> = match query {
            PositionQuery::Offsets(offsets) if !offsets.0.is_empty() => {
                offsets.0.iter().map(|(p, o)| (*p, *o)).collect()
            }
            PositionQuery::Offsets(_) => {
                let mut out = Vec::new();
                for p in 0..binding.partitions {
                    let partition = PartitionId(p);
                    let low = self.changelog.watermarks(&binding.topic, partition).await?.low;
                    out.push((partition, low));
                }
                out
            }
            PositionQuery::Kafka { topic, offsets } => offsets
                .0
                .iter()
                .map(|(p, o)| {
                    route
                        .position_of(&binding.topic, topic, *p, o.0)
                        .map(|position| (*p, position))
                        .ok_or_else(|| {
                            bad(format!(
                                "`{topic}` is not one of the table's Kafka topics (its generations are {})",
                                (0..=binding.generation)
                                    .map(|g| crate::changelog::routes::physical_topic(&binding.topic, g).to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ))
                        })
                })
                .collect::<Result<_>>()?,
        };
        for (partition, offset) in requested {
            if partition.0 >= binding.partitions {
                return Err(bad(format!(
                    "partition {partition} does not exist; the changelog has {} partitions",
                    binding.partitions
                )));
            }
            if offset.generation() > binding.generation {
                return Err(bad(format!(
                    "position {offset} of partition {partition} is of changelog generation {}, but the table is at generation {}",
                    offset.generation(),
                    binding.generation
                )));
            }
            positions.push(PartitionPosition {
                partition,
                offset,
                segments: route.segments(&binding.topic, partition, offset),
            });
        }
        Ok(positions)
    }

    /// The same admin, committing column changes through `committer`.
    pub fn with_committer(mut self, committer: Committer) -> Self {
        self.committer = Some(committer);
        self
    }

    /// Reports CDC ingest positions from `positions` in [`TableAdmin::ingest_status`].
    pub fn with_ingest_positions(mut self, positions: crate::ingest::IngestPositions) -> Self {
        self.ingest = Some(positions);
        self
    }

    /// How far the table's CDC ingest has come: per source partition, the position, a batch
    /// being written, and the source's watermarks. `None` when the table names no source.
    pub async fn ingest_status(
        &self,
        state: &crate::table::TableState,
    ) -> Result<Option<crate::ingest::IngestStatus>> {
        let Ok(Some(config)) = crate::ingest::IngestConfig::from_properties(
            &state.def.properties,
            !state.def.primary_key.is_empty(),
        ) else {
            return Ok(None);
        };
        config.route_source();
        let positions = match &self.ingest {
            Some(store) => store.positions(&state.uuid, &config.source_key()).await?,
            None => Default::default(),
        };
        let topic = crate::naming::TopicName::new(config.topic.clone());
        let partitions = match self.changelog.partition_count(&topic).await {
            Ok(n) => n,
            Err(crate::changelog::ChangelogError::TopicNotFound { .. }) => {
                return Ok(Some(crate::ingest::IngestStatus {
                    config,
                    source_exists: false,
                    partitions: Vec::new(),
                }));
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let partition = crate::offsets::PartitionId(p);
            let marks = self.changelog.watermarks(&topic, partition).await?;
            out.push(crate::ingest::IngestPartition {
                partition,
                position: positions.get(&partition).copied(),
                low: marks.low,
                high: marks.high,
            });
        }
        Ok(Some(crate::ingest::IngestStatus {
            config,
            source_exists: true,
            partitions: out,
        }))
    }

    /// Renames, drops, widens, makes optional or moves columns (see [`ColumnChange`]) in one
    /// metadata-only commit of a new current schema with the same field ids.
    pub async fn alter_columns(
        &self,
        name: &TableName,
        changes: &[ColumnChange],
    ) -> Result<TableState> {
        let committer = self.committer.as_ref().ok_or_else(|| Error::SchemaCommit {
            table: name.to_string(),
            reason: "this admin has no commit layer (a bug: the server always gives it one)".into(),
            retryable: false,
            conflict: false,
        })?;
        let current = self.catalog.describe(name).await?;
        let def = current.def.evolved(changes)?;
        let schema = def.iceberg_schema(current.schema_id + 1)?;
        let schema_commit = |e: CommitError| match e {
            CommitError::Table(e) => e,
            other => Error::SchemaCommit {
                table: name.to_string(),
                conflict: matches!(other, CommitError::Invalid { .. }),
                retryable: other.is_retryable(),
                reason: other.to_string(),
            },
        };
        committer
            .commit_schema(name, current.schema_id, schema)
            .await
            .map_err(schema_commit)?;
        let state = self.catalog.describe(name).await?;
        info!(table = %name, schema_id = state.schema_id, changes = changes.len(), "changed columns");
        Ok(state)
    }

    /// The catalog.
    pub fn catalog(&self) -> &TableCatalog {
        &self.catalog
    }

    /// The changelog.
    pub fn changelog(&self) -> &Arc<dyn Changelog> {
        &self.changelog
    }

    /// Creates the topic, then the Iceberg table. The topic comes first so that a table is
    /// never visible without its changelog; if the table cannot be created, the topic is
    /// removed again.
    pub async fn create_table(&self, def: &TableDef) -> Result<TableState> {
        if self.catalog.exists(&def.name).await? {
            return Err(Error::TableAlreadyExists {
                table: def.name.clone(),
            });
        }
        let mut def = def.clone();
        if let Some(clusters) = &self.clusters {
            match &def.changelog.cluster {
                None => def.changelog.cluster = Some(clusters.default.clone()),
                Some(c) if !clusters.bootstrap.contains_key(c) => {
                    return Err(Error::invalid_definition(
                        &def.name,
                        format!(
                            "property {}={c}: this server knows the clusters {}",
                            props::CHANGELOG_CLUSTER,
                            clusters.names()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        let def = &def;
        let topic = &def.changelog.topic;
        // The topic goes to the table's cluster: tell the router before the table exists.
        routes::replace(topic, def.changelog.route("", 0));
        self.changelog
            .create_topic_with(topic, def.changelog.partitions, &def.topic_settings()?)
            .await?;
        if let Err(e) = self.ensure_unwritten(topic, def.changelog.partitions).await {
            // Another node creating the same table wrote to the topic first: say so plainly.
            if self.catalog.exists(&def.name).await? {
                return Err(Error::TableAlreadyExists {
                    table: def.name.clone(),
                });
            }
            return Err(e);
        }
        match self.catalog.create(def).await {
            Ok(state) => {
                info!(table = %def.name, %topic, buckets = def.buckets, "created table");
                Ok(state)
            }
            Err(e) => {
                if !matches!(e, Error::TableAlreadyExists { .. })
                    && let Err(cleanup) = self.changelog.delete_topic(topic).await
                {
                    warn!(%topic, error = %cleanup, "could not remove the topic of a table that failed to create");
                }
                Err(e)
            }
        }
    }

    /// Fails with [`ChangelogError::TopicInUse`] when `topic` (existing before this table)
    /// has been written to: a new table starts empty, and adopting the topic would make
    /// another table's records its contents. The topic is left as it is.
    async fn ensure_unwritten(&self, topic: &TopicName, partitions: u32) -> Result<()> {
        let (mut records, mut written) = (0u64, 0u64);
        for p in 0..partitions {
            let w = self.visible_watermarks(topic, PartitionId(p)).await?;
            written += u64::try_from(w.high.0).unwrap_or(0);
            records += u64::try_from(w.high.0 - w.low.0).unwrap_or(0);
        }
        if written == 0 {
            return Ok(());
        }
        Err(ChangelogError::TopicInUse {
            topic: topic.clone(),
            records,
            written,
        }
        .into())
    }

    /// `partition`'s watermarks, asking again while the cluster reports the topic missing: the
    /// topic was just created or seen, and a broker that answers first may not know it yet
    /// (Kafka spreads a new topic's metadata to its brokers asynchronously).
    async fn visible_watermarks(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> Result<crate::changelog::Watermarks> {
        let deadline = std::time::Instant::now() + NEW_TOPIC_VISIBLE;
        loop {
            match self.changelog.watermarks(topic, partition).await {
                Err(
                    ChangelogError::TopicNotFound { .. } | ChangelogError::PartitionNotFound { .. },
                ) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => return Ok(other?),
            }
        }
    }

    /// The table's changelog topic as the backend reports it, compared with the table's
    /// settings; `None` when the topic is missing.
    pub async fn describe_changelog(&self, def: &TableDef) -> Result<Option<TopicInfo>> {
        Ok(self
            .changelog
            .describe_topic(&def.changelog.topic, &def.topic_settings()?)
            .await?)
    }

    /// The table's definition and state.
    pub async fn describe(&self, name: &TableName) -> Result<TableState> {
        self.catalog.describe(name).await
    }

    /// Table names, optionally of one namespace.
    pub async fn list(&self, namespace: Option<&str>) -> Result<Vec<TableName>> {
        self.catalog.list(namespace).await
    }

    /// Adds a nullable column.
    pub async fn add_column(&self, name: &TableName, column: &Column) -> Result<TableState> {
        self.catalog.add_column(name, column).await
    }

    /// Sets and removes table properties ([`TableCatalog::alter_properties`]).
    pub async fn alter_properties(
        &self,
        name: &TableName,
        set: &std::collections::BTreeMap<String, String>,
        unset: &[String],
    ) -> Result<TableState> {
        let state = self.catalog.alter_properties(name, set, unset).await?;
        info!(table = %name, set = set.len(), unset = unset.len(), "altered table properties");
        Ok(state)
    }

    /// Drops the table (purging its files unless `keep_data`), then its topic and dead-letter
    /// topic.
    pub async fn drop_table(&self, name: &TableName, keep_data: bool) -> Result<TableDef> {
        let def = self.catalog.describe(name).await?.def;
        self.catalog.drop(name, !keep_data).await?;
        self.changelog.delete_topic(&def.changelog.topic).await?;
        self.changelog
            .delete_topic(&def.changelog.topic.dead_letter())
            .await?;
        routes::forget(&def.changelog.topic);
        info!(table = %name, keep_data, "dropped table");
        Ok(def)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogConfig;
    use crate::changelog::{ChangelogError, MemoryChangelog};
    use crate::table::TableSpec;

    /// An admin over an embedded catalog in `dir` and an in-memory changelog.
    async fn admin_in(dir: &std::path::Path) -> (TableAdmin, Arc<MemoryChangelog>) {
        let catalog = TableCatalog::open(CatalogConfig::embedded(dir))
            .await
            .unwrap();
        let log = Arc::new(MemoryChangelog::new());
        (TableAdmin::new(catalog, log.clone()), log)
    }

    /// A table keyed by one string column, with `buckets` buckets.
    fn keyed(name: &str, buckets: u32) -> TableDef {
        TableDef::new(
            name.parse().unwrap(),
            TableSpec {
                columns: vec![Column::parse("k:string!").unwrap()],
                primary_key: vec!["k".into()],
                buckets: Some(buckets),
                ..TableSpec::default()
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn create_and_drop_keep_topic_and_table_together() {
        let dir = tempfile::tempdir().unwrap();
        let (admin, log) = admin_in(dir.path()).await;
        let def = keyed("a.t", 5);
        admin.create_table(&def).await.unwrap();
        assert_eq!(log.partition_count(&def.changelog.topic).await.unwrap(), 5);
        assert!(matches!(
            admin.create_table(&def).await,
            Err(Error::TableAlreadyExists { .. })
        ));
        assert_eq!(log.partition_count(&def.changelog.topic).await.unwrap(), 5);

        admin.drop_table(&def.name, false).await.unwrap();
        assert!(matches!(
            log.partition_count(&def.changelog.topic).await,
            Err(ChangelogError::TopicNotFound { .. })
        ));
        assert!(matches!(
            admin.describe(&def.name).await,
            Err(Error::TableNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn a_new_table_refuses_a_topic_that_was_written_to() {
        let dir = tempfile::tempdir().unwrap();
        let (admin, log) = admin_in(dir.path()).await;
        let def = |name: &str| keyed(name, 2);
        // A topic left by another table of the name (another catalog on the cluster).
        let used = def("a.used");
        let topic = &used.changelog.topic;
        log.create_topic(topic, 2).await.unwrap();
        log.append(
            topic,
            PartitionId(1),
            vec![crate::changelog::conformance::record("x", Some("old"), 1)],
        )
        .await
        .unwrap();
        let err = admin.create_table(&used).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                Error::Changelog(ChangelogError::TopicInUse {
                    records: 1,
                    written: 1,
                    ..
                })
            ),
            "{text}"
        );
        assert!(
            text.contains("unitable.a.used") && text.contains("delete the topic"),
            "{text}"
        );
        // Nothing was created, and the other table's topic is untouched.
        assert!(!admin.catalog().exists(&used.name).await.unwrap());
        assert_eq!(
            log.watermarks(topic, PartitionId(1)).await.unwrap().high,
            Offset(1)
        );

        // An existing topic never written to (a create that crashed before its table) is used.
        let empty = def("a.empty");
        log.create_topic(&empty.changelog.topic, 2).await.unwrap();
        admin.create_table(&empty).await.unwrap();
        assert!(admin.catalog().exists(&empty.name).await.unwrap());
    }
}
