//! Table administration: keeps a table's Iceberg entry and its changelog topic together.

use std::sync::Arc;

use tracing::{info, warn};

use crate::catalog::TableCatalog;
use crate::changelog::{Changelog, TopicInfo};
use crate::commit::CommitError;
use crate::commit::committer::Committer;
use crate::error::{Error, Result};
use crate::naming::TableName;
use crate::table::{Column, ColumnChange, TableDef, TableState};

/// Creates, describes, lists, alters and drops tables (catalog entry + changelog topic).
#[derive(Debug, Clone)]
pub struct TableAdmin {
    catalog: TableCatalog,
    changelog: Arc<dyn Changelog>,
    /// Commits schema changes iceberg-rust cannot (see [`TableAdmin::alter_columns`]).
    committer: Option<Committer>,
    /// CDC ingest positions, for [`TableAdmin::ingest_status`].
    ingest: Option<crate::ingest::IngestPositions>,
}

impl TableAdmin {
    /// Admin over a catalog and a changelog.
    pub fn new(catalog: TableCatalog, changelog: Arc<dyn Changelog>) -> Self {
        Self {
            catalog,
            changelog,
            committer: None,
            ingest: None,
        }
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
        let topic = &def.changelog.topic;
        self.changelog
            .create_topic_with(topic, def.changelog.partitions, &def.topic_settings()?)
            .await?;
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

    #[tokio::test]
    async fn create_and_drop_keep_topic_and_table_together() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = TableCatalog::open(CatalogConfig::embedded(dir.path()))
            .await
            .unwrap();
        let log = Arc::new(MemoryChangelog::new());
        let admin = TableAdmin::new(catalog, log.clone());
        let def = TableDef::new(
            "a.t".parse().unwrap(),
            TableSpec {
                columns: vec![Column::parse("k:string!").unwrap()],
                primary_key: vec!["k".into()],
                buckets: Some(5),
                ..TableSpec::default()
            },
        )
        .unwrap();
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
}
