//! What an operator looks at for one table: its snapshot timeline with the changelog offsets
//! each snapshot anchors, how far the current snapshot is behind the changelog, and the newest
//! rejected rows of its dead-letter topic. The web console and its JSON API are built on these.

use std::collections::BTreeMap;

use unitable_core::commit::read::changelog_offsets;
use unitable_core::naming::TableName;
use unitable_core::offsets::{AsOf, Offset, PartitionId, PartitionOffsets};
use unitable_core::table::TableDef;

use crate::error::ReadResult;
use crate::{Reader, freshness};

/// One snapshot in the table's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotEntry {
    pub snapshot_id: i64,
    pub parent_id: Option<i64>,
    pub timestamp_ms: i64,
    /// `append`, `overwrite`, `replace` or `delete`.
    pub operation: String,
    /// The summary's other properties (`added-records`, `deleted-records`, ...).
    pub summary: BTreeMap<String, String>,
    /// The changelog offsets the snapshot's own summary anchors (`None`: written by another
    /// engine, or not a unitable commit).
    pub offsets: Option<PartitionOffsets>,
}

/// A table's snapshots and freshness.
#[derive(Debug, Clone)]
pub struct TableOverview {
    /// Every snapshot still in the metadata, oldest first.
    pub snapshots: Vec<SnapshotEntry>,
    pub current_snapshot_id: Option<i64>,
    /// The current snapshot against the changelog head now: covered offsets, commit time,
    /// records not yet committed and the age of the oldest of them.
    pub freshness: AsOf,
    /// The changelog head (high watermark) of every partition.
    pub heads: PartitionOffsets,
}

/// One rejected row from a table's dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub offset: i64,
    pub timestamp_ms: i64,
    /// The record's value as text: `{"row","op","field","reason","input"}` as the writer sends
    /// it (docs/writer.md).
    pub value: Option<String>,
}

/// At most this many records are read from a dead-letter topic per request.
pub const MAX_DEAD_LETTERS: usize = 1000;

impl Reader {
    /// `table`'s snapshot timeline and freshness now.
    pub async fn overview(&self, table: &TableName) -> ReadResult<TableOverview> {
        let loaded = self.catalog.load(table).await?;
        let metadata = loaded.metadata();
        let def = TableDef::from_iceberg(table.clone(), metadata)?;
        let mut snapshots: Vec<SnapshotEntry> = metadata
            .snapshots()
            .map(|s| SnapshotEntry {
                snapshot_id: s.snapshot_id(),
                parent_id: s.parent_snapshot_id(),
                timestamp_ms: s.timestamp_ms(),
                operation: s.summary().operation.as_str().to_string(),
                summary: s
                    .summary()
                    .additional_properties
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                offsets: changelog_offsets(s),
            })
            .collect();
        snapshots.sort_by_key(|s| (s.timestamp_ms, s.snapshot_id));
        let current = metadata.current_snapshot();
        let covered = current
            .map(|s| unitable_core::commit::read::anchored_offsets(metadata, s.snapshot_id()))
            .unwrap_or_default();
        let topic = &def.changelog.topic;
        let partitions = def.changelog.partitions;
        let freshness =
            freshness::as_of(self.changelog.as_ref(), topic, partitions, covered, current).await;
        let heads = freshness::heads(self.changelog.as_ref(), topic, partitions).await?;
        Ok(TableOverview {
            snapshots,
            current_snapshot_id: current.map(|s| s.snapshot_id()),
            freshness,
            heads,
        })
    }

    /// The newest `limit` (at most [`MAX_DEAD_LETTERS`]) records of `table`'s dead-letter
    /// topic, newest first; empty when no row was ever rejected (the topic is created with
    /// the first).
    pub async fn dead_letters(
        &self,
        table: &TableName,
        limit: usize,
    ) -> ReadResult<Vec<DeadLetter>> {
        let loaded = self.catalog.load(table).await?;
        let def = TableDef::from_iceberg(table.clone(), loaded.metadata())?;
        let topic = def.changelog.topic.dead_letter();
        let partition = PartitionId(0);
        let Ok(w) = self.changelog.watermarks(&topic, partition).await else {
            return Ok(Vec::new());
        };
        let limit = limit.min(MAX_DEAD_LETTERS) as i64;
        let mut next = Offset((w.high.0 - limit).max(w.low.0));
        let mut out = Vec::new();
        while next < w.high {
            let records =
                crate::range::chunk(self.changelog.as_ref(), &topic, partition, next, w.high)
                    .await?;
            let Some(last) = records.last() else { break };
            next = Offset(last.offset.0 + 1);
            out.extend(records.into_iter().map(|r| {
                DeadLetter {
                    offset: r.offset.0,
                    timestamp_ms: r.record.timestamp_ms,
                    value: r
                        .record
                        .value
                        .as_deref()
                        .map(|v| String::from_utf8_lossy(v).into_owned()),
                }
            }));
        }
        out.reverse();
        Ok(out)
    }
}

/// One STREAM read open now (a group member's stream included).
#[derive(Debug, Clone)]
pub struct ActiveStream {
    /// The subscriber name the reader gave, or the consumer group of a group member.
    pub subscriber: String,
    pub started_ms: i64,
    pub partitions: Vec<u32>,
    pub records_read: u64,
    pub rows_delivered: u64,
    /// Records behind the changelog head over the stream's partitions, as last measured.
    pub lag_records: i64,
}

/// The STREAM reads open on this reader, by table: each entry holds its stream's counters
/// weakly, so an ended stream disappears with its last task.
#[derive(Debug, Default)]
pub(crate) struct StreamRegistry {
    open: std::sync::Mutex<Vec<Registered>>,
}

#[derive(Debug)]
struct Registered {
    table: TableName,
    subscriber: String,
    started_ms: i64,
    stats: std::sync::Weak<crate::StreamStats>,
}

impl StreamRegistry {
    pub(crate) fn register(
        &self,
        table: &TableName,
        subscriber: &str,
        stats: &std::sync::Arc<crate::StreamStats>,
    ) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|r| r.stats.strong_count() > 0);
        open.push(Registered {
            table: table.clone(),
            subscriber: subscriber.to_string(),
            started_ms: chrono::Utc::now().timestamp_millis(),
            stats: std::sync::Arc::downgrade(stats),
        });
    }

    fn of(&self, table: &TableName) -> Vec<ActiveStream> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|r| r.stats.strong_count() > 0);
        open.iter()
            .filter(|r| r.table == *table)
            .filter_map(|r| {
                let stats = r.stats.upgrade()?;
                Some(ActiveStream {
                    subscriber: r.subscriber.clone(),
                    started_ms: r.started_ms,
                    partitions: stats.partitions().to_vec(),
                    records_read: stats.records_read(),
                    rows_delivered: stats.rows_delivered(),
                    lag_records: stats.lag_records(),
                })
            })
            .collect()
    }
}

impl Reader {
    /// The STREAM reads of `table` open on this reader now, oldest first.
    pub fn active_streams(&self, table: &TableName) -> Vec<ActiveStream> {
        self.streams.of(table)
    }
}
