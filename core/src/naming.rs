//! Names of things outside the process: table names, changelog topic names, catalog table
//! properties and object-store locations. Every external name is built here and nowhere else.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The longest namespace or table part we accept (Kafka topic names are limited to 249 bytes).
pub const MAX_NAME_PART_LEN: usize = 100;

/// A table's logical name, `namespace.table`.
///
/// Both parts are lower-case ASCII letters, digits and underscores, start with a letter and are
/// at most [`MAX_NAME_PART_LEN`] bytes: the same name is then valid as an Iceberg identifier, a
/// Kafka topic name, a SQL identifier and a path segment, with no quoting anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    namespace: String,
    table: String,
}

impl TableName {
    /// Builds a name from its two parts, validating both.
    pub fn new(namespace: &str, table: &str) -> Result<Self> {
        let full = format!("{namespace}.{table}");
        validate_part(&full, "namespace", namespace)?;
        validate_part(&full, "table", table)?;
        Ok(Self {
            namespace: namespace.to_string(),
            table: table.to_string(),
        })
    }

    /// The namespace part.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The table part.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The Iceberg identifier of this table.
    pub fn to_ident(&self) -> iceberg::TableIdent {
        iceberg::TableIdent::new(self.namespace_ident(), self.table.clone())
    }

    /// The Iceberg namespace of this table.
    pub fn namespace_ident(&self) -> iceberg::NamespaceIdent {
        iceberg::NamespaceIdent::new(self.namespace.clone())
    }

    /// The changelog topic bound to this table: `unitable.<namespace>.<table>`.
    pub fn changelog_topic(&self) -> TopicName {
        TopicName(format!("{TOPIC_PREFIX}{}.{}", self.namespace, self.table))
    }
}

/// Every changelog topic unitable creates starts with this prefix.
pub const TOPIC_PREFIX: &str = "unitable.";

fn validate_part(full: &str, what: &str, part: &str) -> Result<()> {
    let fail = |reason: String| {
        Err(Error::InvalidTableName {
            name: full.to_string(),
            reason,
        })
    };
    if part.is_empty() {
        return fail(format!("the {what} part is empty; use `namespace.table`"));
    }
    if part.len() > MAX_NAME_PART_LEN {
        return fail(format!(
            "the {what} part is longer than {MAX_NAME_PART_LEN} characters"
        ));
    }
    let mut chars = part.chars();
    let first = chars.next().unwrap_or('_');
    if !first.is_ascii_lowercase() {
        return fail(format!(
            "the {what} part must start with a lower-case letter (a-z)"
        ));
    }
    if let Some(bad) = part
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return fail(format!(
            "the {what} part contains `{bad}`; only lower-case letters, digits and `_` are allowed"
        ));
    }
    Ok(())
}

impl FromStr for TableName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.split_once('.') {
            Some((ns, table)) if !table.contains('.') => TableName::new(ns, table),
            _ => Err(Error::InvalidTableName {
                name: s.to_string(),
                reason: "expected exactly one `.` between namespace and table, as in `shop.orders`"
                    .to_string(),
            }),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.namespace, self.table)
    }
}

/// The name of a changelog topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Wraps an existing topic name (as read back from table properties).
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The topic name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dead-letter topic paired with this topic.
    pub fn dead_letter(&self) -> TopicName {
        TopicName(format!("{}.dlq", self.0))
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Iceberg table property keys owned by unitable. Everything unitable knows about a table lives
/// in the Iceberg catalog, as schema (identifier fields = primary key) plus these properties.
pub mod props {
    /// Version of the property layout below.
    pub const LAYOUT_VERSION: &str = "unitable.layout-version";
    /// Comma-separated primary-key column names, in key order (empty: append-only table).
    pub const PRIMARY_KEY: &str = "unitable.primary-key";
    /// Number of buckets (= changelog partitions).
    pub const BUCKETS: &str = "unitable.buckets";
    /// The changelog topic bound to the table.
    pub const CHANGELOG_TOPIC: &str = "unitable.changelog.topic";
    /// Number of partitions of the changelog topic.
    pub const CHANGELOG_PARTITIONS: &str = "unitable.changelog.partitions";
    /// The changelog record format.
    pub const CHANGELOG_FORMAT: &str = "unitable.changelog.format";
    /// The named cluster the changelog's current generation lives on (settable at creation;
    /// absent: the server's default cluster).
    pub const CHANGELOG_CLUSTER: &str = "unitable.changelog.cluster";
    /// The changelog's current generation (absent: 0); each move to another cluster adds one.
    pub const CHANGELOG_GENERATION: &str = "unitable.changelog.generation";
    /// The generations the changelog left, as JSON: `[{"generation":0,"cluster":"a",
    /// "end":"0:120,1:98"}]` (Kafka end offsets, exclusive).
    pub const CHANGELOG_HISTORY: &str = "unitable.changelog.history";
    /// While the changelog moves, the cluster it moves to (empty or absent: not moving).
    pub const CHANGELOG_MOVING: &str = "unitable.changelog.moving";
    /// The epoch of the table's committer: each committer that takes a table over raises it,
    /// and every commit requires the epoch it claimed, so a replaced committer cannot commit.
    pub const COMMITTER_EPOCH: &str = "unitable.committer.epoch";
    /// Who holds the committer epoch (host, process id and start time), for operators.
    pub const COMMITTER_OWNER: &str = "unitable.committer.owner";
    /// The commit id of the last metadata-only properties commit (idempotent retries).
    pub const PROPERTIES_COMMIT_ID: &str = "unitable.properties-commit-id";
    /// Every key above; users cannot set these through free properties.
    pub const RESERVED: &[&str] = &[
        PROPERTIES_COMMIT_ID,
        LAYOUT_VERSION,
        PRIMARY_KEY,
        BUCKETS,
        CHANGELOG_TOPIC,
        CHANGELOG_PARTITIONS,
        CHANGELOG_FORMAT,
        CHANGELOG_CLUSTER,
        CHANGELOG_GENERATION,
        CHANGELOG_HISTORY,
        CHANGELOG_MOVING,
        COMMITTER_EPOCH,
        COMMITTER_OWNER,
    ];
    /// User-settable: `true` sends rejected rows to the dead-letter topic `<topic>.dlq`.
    pub const WRITE_DEAD_LETTER: &str = "unitable.write.dead-letter";
    /// User-settable: the data file size the committer aims for, in bytes.
    pub const WRITE_TARGET_FILE_SIZE: &str = "unitable.write.target-file-size-bytes";
    /// User-settable: how often the committer commits, in milliseconds.
    pub const COMMIT_INTERVAL_MS: &str = "unitable.commit.interval-ms";
    /// User-settable: `false` turns background compaction of the table off (default `true`).
    pub const COMPACTION_ENABLED: &str = "unitable.compaction.enabled";
    /// User-settable: the size compaction writes files at (default: the write target size).
    pub const COMPACTION_TARGET_FILE_SIZE: &str = "unitable.compaction.target-file-size-bytes";
    /// User-settable: files smaller than this fraction of the target are bin-packed.
    pub const COMPACTION_SMALL_FILE_FRACTION: &str = "unitable.compaction.small-file-fraction";
    /// User-settable: a partition is bin-packed once it has this many small files.
    pub const COMPACTION_MIN_INPUT_FILES: &str = "unitable.compaction.min-input-files";
    /// User-settable: files with at least this fraction of deleted rows are rewritten.
    pub const COMPACTION_DELETE_RATIO: &str = "unitable.compaction.delete-ratio";
    /// User-settable: snapshots older than this (ms) expire.
    pub const COMPACTION_SNAPSHOT_RETENTION_MS: &str = "unitable.compaction.snapshot-retention-ms";
    /// User-settable: the newest snapshots always kept.
    pub const COMPACTION_MIN_SNAPSHOTS: &str = "unitable.compaction.min-snapshots-to-keep";
    /// User-settable: unreferenced files younger than this (ms) are never removed.
    pub const COMPACTION_ORPHAN_AGE_MS: &str = "unitable.compaction.orphan-age-ms";
    /// User-settable: how often (ms) background compaction looks for orphan files.
    pub const COMPACTION_ORPHAN_INTERVAL_MS: &str = "unitable.compaction.orphan-interval-ms";
    /// User-settable: `false` stops compaction from merging manifests (default `true`).
    pub const COMPACTION_MERGE_MANIFESTS: &str = "unitable.compaction.merge-manifests";
    /// User-settable: manifests the current snapshot may list before compaction merges them.
    pub const COMPACTION_MAX_MANIFESTS: &str = "unitable.compaction.max-manifests";
    /// User-settable at creation: replicas per changelog partition (Kafka; default: the
    /// server's `--kafka-replication-factor`, else min(3, brokers)).
    pub const CHANGELOG_REPLICATION_FACTOR: &str = "unitable.changelog.replication-factor";
    /// User-settable at creation: the topic's `min.insync.replicas` (Kafka; default 2 from 3
    /// replicas on, else 1).
    pub const CHANGELOG_MIN_INSYNC_REPLICAS: &str = "unitable.changelog.min-insync-replicas";
    /// User-settable at creation: the topic's `cleanup.policy` (Kafka; default `compact` for
    /// keyed tables, as upsert-kafka readers expect, `delete` for append-only ones).
    pub const CHANGELOG_CLEANUP_POLICY: &str = "unitable.changelog.cleanup-policy";
    /// User-settable at creation: the topic's `retention.ms` (Kafka; default: the server's).
    pub const CHANGELOG_RETENTION_MS: &str = "unitable.changelog.retention-ms";
    /// User-settable: the Kafka topic a CDC ingester reads into the table (see
    /// [`crate::ingest`]); removing it stops the ingest.
    pub const INGEST_TOPIC: &str = "unitable.ingest.topic";
    /// User-settable: the named Kafka cluster the CDC source topic is on (default: the
    /// server's default cluster).
    pub const INGEST_CLUSTER: &str = "unitable.ingest.cluster";
    /// User-settable: the source topic's format (`debezium-json`, the default).
    pub const INGEST_FORMAT: &str = "unitable.ingest.format";
    /// User-settable: where a source partition without a position starts (`earliest`, the
    /// default, or `latest`).
    pub const INGEST_START: &str = "unitable.ingest.start";
    /// User-settable: the unit (`ms`, `us`, `ns`) of integer timestamps from a source without
    /// a schema.
    pub const INGEST_TIMESTAMP_UNIT: &str = "unitable.ingest.timestamp-unit";
    /// User-settable: `ignore` (default) or `reject` events carrying columns the table lacks.
    pub const INGEST_UNKNOWN_COLUMNS: &str = "unitable.ingest.unknown-columns";
    /// User-settable: the ingest's generation (default 0). Raising it starts the ingest over:
    /// positions and request ids of earlier generations are not used (`ingest start --reset`).
    pub const INGEST_GENERATION: &str = "unitable.ingest.generation";
    /// The layout version this build writes.
    pub const CURRENT_LAYOUT_VERSION: &str = "1";
}

/// Where a table's files live under its location.
pub mod paths {
    /// A new data file under `location` in partition directory `partition_path` (empty for an
    /// unpartitioned table): `data/[<partition path>/]<uuid v7>.parquet`.
    pub fn data_file(location: &str, partition_path: &str) -> String {
        let id = uuid::Uuid::now_v7();
        if partition_path.is_empty() {
            format!("{location}/data/{id}.parquet")
        } else {
            format!("{location}/data/{partition_path}/{id}.parquet")
        }
    }

    /// A new position-delete file beside the data files of `partition_path`.
    pub fn delete_file(location: &str, partition_path: &str) -> String {
        let id = uuid::Uuid::now_v7();
        if partition_path.is_empty() {
            format!("{location}/data/{id}-deletes.parquet")
        } else {
            format!("{location}/data/{partition_path}/{id}-deletes.parquet")
        }
    }

    /// Files unitable keeps under a table's location that are not part of the Iceberg table
    /// (no metadata references them; orphan removal leaves this directory alone).
    pub fn service_dir(location: &str) -> String {
        format!("{location}/unitable")
    }

    /// The directory of the table's key-index checkpoints.
    pub fn index_checkpoint_dir(location: &str) -> String {
        format!("{}/key-index", service_dir(location))
    }

    /// A new key-index checkpoint of the snapshot with sequence number `sequence_number`:
    /// `unitable/key-index/<sequence number, 20 digits>-<uuid v7>.parquet`, so names sort by
    /// snapshot, then by time.
    pub fn index_checkpoint(location: &str, sequence_number: i64) -> String {
        let id = uuid::Uuid::now_v7();
        format!(
            "{}/{sequence_number:020}-{id}.parquet",
            index_checkpoint_dir(location)
        )
    }
}

/// Snapshot-summary property keys written by unitable's committer.
pub mod summary {
    /// Per-partition changelog offsets (exclusive end) a snapshot covers, as `p:offset,...`.
    pub const CHANGELOG_OFFSETS: &str = "unitable.changelog-offsets";
    /// The unique id of the commit that produced a snapshot (idempotent retries).
    pub const COMMIT_ID: &str = "unitable.commit-id";
    /// The committer epoch (table property `unitable.committer.epoch`) the commit was made
    /// under: which owner committed it.
    pub const COMMITTER_EPOCH: &str = "unitable.committer-epoch";
    /// The covered changelog offsets as Kafka positions per cluster and topic,
    /// `CLUSTER/TOPIC@P:O,...;...` (see [`crate::changelog::routes::Route::describe_positions`]),
    /// for Kafka clients and Flink jobs that start where a snapshot ends.
    pub const CHANGELOG_POSITIONS: &str = "unitable.changelog-positions";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_names() {
        let name: TableName = "shop.orders_2024".parse().unwrap();
        assert_eq!(name.namespace(), "shop");
        assert_eq!(name.table(), "orders_2024");
        assert_eq!(name.to_string(), "shop.orders_2024");
        assert_eq!(name.changelog_topic().as_str(), "unitable.shop.orders_2024");
        assert_eq!(
            name.changelog_topic().dead_letter().as_str(),
            "unitable.shop.orders_2024.dlq"
        );
    }

    #[test]
    fn rejects_bad_names_with_reasons() {
        for (bad, needle) in [
            ("orders", "exactly one `.`"),
            ("a.b.c", "exactly one `.`"),
            (".orders", "namespace part is empty"),
            ("shop.", "table part is empty"),
            ("Shop.orders", "lower-case letter"),
            ("shop.1orders", "lower-case letter"),
            ("shop.ord-ers", "contains `-`"),
            ("shop.ordérs", "contains `é`"),
        ] {
            let err = bad.parse::<TableName>().unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        let long = format!("shop.{}", "a".repeat(MAX_NAME_PART_LEN + 1));
        assert!(long.parse::<TableName>().is_err());
    }
}
