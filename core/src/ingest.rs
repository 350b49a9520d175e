//! CDC ingest settings and positions: which source topic feeds a table (its `unitable.ingest.*`
//! properties) and, in the catalog database, how far each source partition has been ingested.
//!
//! A position is `next` (the first source offset not yet written to the table) plus, while a
//! batch is being written, `pending` (the batch's last source offset). An ingester records
//! `pending` before it writes a batch and clears it, moving `next` past the batch, once the
//! batch is durable in the changelog; after a crash the range `next..=pending` is read again
//! and written under the same request ids, which the request log ([`crate::requests`])
//! deduplicates. See docs/rfcs/0003-cdc-ingest.md.

use std::collections::BTreeMap;

use sqlx::AnyPool;

use crate::catalog::{CatalogConfig, SqlDialect};
use crate::changelog::routes;
use crate::error::{Error, Result};
use crate::lease::{db_now, open_catalog_db};
use crate::naming::props;
use crate::offsets::{Offset, PartitionId};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS unitable_ingest_positions (\
    table_uuid VARCHAR(64) NOT NULL, \
    source_topic VARCHAR(255) NOT NULL, \
    source_partition INTEGER NOT NULL, \
    next_offset BIGINT NOT NULL, \
    pending_last BIGINT, \
    updated_ms BIGINT NOT NULL, \
    PRIMARY KEY (table_uuid, source_topic, source_partition))";

/// The source formats an ingester reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestFormat {
    /// Debezium's JSON envelope (`before`, `after`, `op`, `source`), with or without the
    /// Kafka Connect `schema`/`payload` wrapper.
    DebeziumJson,
}

impl IngestFormat {
    /// The property value: `debezium-json`.
    pub fn as_str(self) -> &'static str {
        match self {
            IngestFormat::DebeziumJson => "debezium-json",
        }
    }
}

/// Where an ingester starts a source partition it has no position for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestStart {
    /// The oldest record the topic still holds (a Debezium snapshot's `r` events included).
    Earliest,
    /// Only records produced after the ingester first looked.
    Latest,
}

/// The unit of integers given for timestamp columns by a source without a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    /// Milliseconds since the epoch.
    Millis,
    /// Microseconds since the epoch.
    Micros,
    /// Nanoseconds since the epoch.
    Nanos,
}

/// What to do with a source column the table does not have (the source added a column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownColumns {
    /// Leave the value out and count it (`unitable_ingest_unknown_columns_total`); the row is
    /// written with the columns the table has.
    Ignore,
    /// Reject the event to the dead-letter topic.
    Reject,
}

/// A table's ingest settings, from its properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    /// The source topic, on the server's Kafka cluster.
    pub topic: String,
    /// Its format.
    pub format: IngestFormat,
    /// Where to start a partition without a position.
    pub start: IngestStart,
    /// The unit of schemaless integer timestamps (`None`: such a value is an error).
    pub timestamp_unit: Option<TimeUnit>,
    /// What to do with source columns the table lacks.
    pub unknown_columns: UnknownColumns,
    /// The generation: raised to start over (positions and request ids are per generation).
    pub generation: u32,
    /// The named Kafka cluster the source topic is on (`None`: the server's default cluster).
    pub cluster: Option<String>,
}

impl IngestConfig {
    /// The settings in `properties`; `Ok(None)` when no source topic is set. The error names
    /// the property and says what it accepts. `keyed`: whether the table has a primary key
    /// (changes of rows need one).
    pub fn from_properties(
        properties: &BTreeMap<String, String>,
        keyed: bool,
    ) -> std::result::Result<Option<Self>, String> {
        let get = |key: &str| properties.get(key).map(|v| v.trim().to_ascii_lowercase());
        // The generation outlives a stop, so that a later start goes on in it.
        let generation = match properties.get(props::INGEST_GENERATION) {
            None => 0,
            Some(v) => v.trim().parse::<u32>().map_err(|_| {
                format!(
                    "property `{}`: `{v}` is not a whole number from 0 to {}",
                    props::INGEST_GENERATION,
                    u32::MAX
                )
            })?,
        };
        let Some(topic) = properties.get(props::INGEST_TOPIC) else {
            for key in [
                props::INGEST_CLUSTER,
                props::INGEST_FORMAT,
                props::INGEST_START,
                props::INGEST_TIMESTAMP_UNIT,
                props::INGEST_UNKNOWN_COLUMNS,
            ] {
                if properties.contains_key(key) {
                    return Err(format!(
                        "property `{key}` needs `{}` (the source topic) as well",
                        props::INGEST_TOPIC
                    ));
                }
            }
            return Ok(None);
        };
        let topic = topic.trim().to_string();
        if topic.is_empty()
            || topic.len() > 249
            || !topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(format!(
                "property `{}`: `{topic}` is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)",
                props::INGEST_TOPIC
            ));
        }
        if !keyed {
            return Err(format!(
                "property `{}`: CDC ingest needs a table with a primary key (updates and deletes \
                 are applied by key); create the table with --primary-key",
                props::INGEST_TOPIC
            ));
        }
        let unknown = |key: &str, value: &str, accepted: &str| {
            format!("property `{key}`: unknown value `{value}`; use {accepted}")
        };
        let format = match get(props::INGEST_FORMAT).as_deref() {
            None | Some("debezium-json") => IngestFormat::DebeziumJson,
            Some(other) => {
                return Err(unknown(props::INGEST_FORMAT, other, "debezium-json"));
            }
        };
        let start = match get(props::INGEST_START).as_deref() {
            None | Some("earliest") => IngestStart::Earliest,
            Some("latest") => IngestStart::Latest,
            Some(other) => return Err(unknown(props::INGEST_START, other, "earliest or latest")),
        };
        let timestamp_unit = match get(props::INGEST_TIMESTAMP_UNIT).as_deref() {
            None => None,
            Some("ms") => Some(TimeUnit::Millis),
            Some("us") => Some(TimeUnit::Micros),
            Some("ns") => Some(TimeUnit::Nanos),
            Some(other) => {
                return Err(unknown(props::INGEST_TIMESTAMP_UNIT, other, "ms, us or ns"));
            }
        };
        let unknown_columns = match get(props::INGEST_UNKNOWN_COLUMNS).as_deref() {
            None | Some("ignore") => UnknownColumns::Ignore,
            Some("reject") => UnknownColumns::Reject,
            Some(other) => {
                return Err(unknown(
                    props::INGEST_UNKNOWN_COLUMNS,
                    other,
                    "ignore or reject",
                ));
            }
        };
        let cluster = match properties.get(props::INGEST_CLUSTER).map(|c| c.trim()) {
            None | Some("") => None,
            Some(c) if crate::changelog::valid_cluster_name(c) => Some(c.to_string()),
            Some(c) => {
                return Err(format!(
                    "property `{}`: `{c}` is not a cluster name (1 to 32 of a-z, 0-9 and -)",
                    props::INGEST_CLUSTER
                ));
            }
        };
        Ok(Some(Self {
            topic,
            format,
            start,
            timestamp_unit,
            unknown_columns,
            generation,
            cluster,
        }))
    }

    /// Tells this process's changelog router which cluster the source topic is on, unless the
    /// topic is a table's changelog (whose route comes from that table).
    pub fn route_source(&self) {
        let topic = crate::naming::TopicName::new(self.topic.clone());
        if routes::route(&topic).is_some_and(|r| !r.table_uuid.is_empty()) {
            return;
        }
        routes::replace(
            &topic,
            routes::Route {
                table_uuid: String::new(),
                version: 0,
                cluster: self.cluster.clone(),
                generation: 0,
                moving: None,
                history: Vec::new(),
            },
        );
    }

    /// What positions and request ids name the source by: the topic, plus `#g<generation>`
    /// from generation 1 on.
    pub fn source_key(&self) -> String {
        if self.generation == 0 {
            self.topic.clone()
        } else {
            format!("{}#g{}", self.topic, self.generation)
        }
    }
}

/// One source partition's ingest position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestPosition {
    /// The first source offset not yet written.
    pub next: Offset,
    /// The last source offset of a batch being written (it may have landed in part).
    pub pending: Option<Offset>,
}

/// A table's ingest position per source partition, as [`IngestPositions::positions`] reads it.
pub type Positions = BTreeMap<PartitionId, IngestPosition>;

/// One source partition as `unitable ingest status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestPartition {
    /// The source partition.
    pub partition: PartitionId,
    /// The ingest position (`None`: not started).
    pub position: Option<IngestPosition>,
    /// The source partition's low watermark.
    pub low: Offset,
    /// Its high watermark.
    pub high: Offset,
}

impl IngestPartition {
    /// Source records not yet ingested (from the low watermark when not started).
    pub fn lag(&self) -> i64 {
        let next = self.position.map_or(self.low, |p| p.next);
        (self.high.0 - next.0).max(0)
    }
}

/// A table's CDC ingest: its settings and, per source partition, how far it has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestStatus {
    /// The settings.
    pub config: IngestConfig,
    /// Whether the source topic exists.
    pub source_exists: bool,
    /// The source partitions.
    pub partitions: Vec<IngestPartition>,
}

/// Ingest positions in the catalog database.
#[derive(Debug, Clone)]
pub struct IngestPositions {
    pool: AnyPool,
    dialect: SqlDialect,
}

fn db(operation: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |e| Error::IngestDatabase {
        operation,
        reason: e.to_string(),
    }
}

impl IngestPositions {
    /// Connects to the database of the SQL catalog in `config`, creating the table if missing;
    /// `None` for a REST catalog (which has no database to keep positions in).
    pub async fn connect(config: &CatalogConfig) -> Result<Option<Self>> {
        Ok(open_catalog_db(config, 2, &[SCHEMA])
            .await?
            .map(|(pool, dialect)| Self { pool, dialect }))
    }

    fn sql(&self, text: &str) -> String {
        self.dialect
            .placeholders(&text.replace("{now}", db_now(self.dialect)))
    }

    /// The positions of table `table_uuid` reading `topic`.
    pub async fn positions(&self, table_uuid: &str, topic: &str) -> Result<Positions> {
        let rows: Vec<(i32, i64, Option<i64>)> = sqlx::query_as(&self.sql(
            "SELECT source_partition, next_offset, pending_last FROM unitable_ingest_positions \
             WHERE table_uuid = $1 AND source_topic = $2",
        ))
        .bind(table_uuid)
        .bind(topic)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read ingest positions"))?;
        Ok(rows
            .into_iter()
            .map(|(p, next, pending)| {
                (
                    PartitionId(p as u32),
                    IngestPosition {
                        next: Offset(next),
                        pending: pending.map(Offset),
                    },
                )
            })
            .collect())
    }

    /// Records that the batch `first..=last` of a source partition is about to be written.
    pub async fn begin(
        &self,
        table_uuid: &str,
        topic: &str,
        partition: PartitionId,
        first: Offset,
        last: Offset,
    ) -> Result<()> {
        self.upsert(table_uuid, topic, partition, first, Some(last))
            .await
    }

    /// Records that every source record before `next` is written (no batch pending). A
    /// position never moves back: an older `next` (from a node that lost the table while it
    /// wrote) changes nothing.
    pub async fn advance(
        &self,
        table_uuid: &str,
        topic: &str,
        partition: PartitionId,
        next: Offset,
    ) -> Result<()> {
        self.upsert(table_uuid, topic, partition, next, None).await
    }

    async fn upsert(
        &self,
        table_uuid: &str,
        topic: &str,
        partition: PartitionId,
        next: Offset,
        pending: Option<Offset>,
    ) -> Result<()> {
        let p = partition.0 as i32;
        let updated = sqlx::query(&self.sql(
            "UPDATE unitable_ingest_positions SET next_offset = $1, pending_last = $2, \
             updated_ms = {now} WHERE table_uuid = $3 AND source_topic = $4 \
             AND source_partition = $5 AND next_offset <= $6",
        ))
        .bind(next.0)
        .bind(pending.map(|o| o.0))
        .bind(table_uuid)
        .bind(topic)
        .bind(p)
        .bind(next.0)
        .execute(&self.pool)
        .await
        .map_err(db("record an ingest position"))?;
        if updated.rows_affected() == 1 {
            return Ok(());
        }
        sqlx::query(&self.sql(
            "INSERT INTO unitable_ingest_positions \
             (table_uuid, source_topic, source_partition, next_offset, pending_last, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, {now}) \
             ON CONFLICT (table_uuid, source_topic, source_partition) DO NOTHING",
        ))
        .bind(table_uuid)
        .bind(topic)
        .bind(p)
        .bind(next.0)
        .bind(pending.map(|o| o.0))
        .execute(&self.pool)
        .await
        .map_err(db("record an ingest position"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
