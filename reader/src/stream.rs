//! STREAM reads: the changelog as changes, from a chosen start, following the tail.
//!
//! Starts: earliest, latest, explicit offsets, a timestamp, or a snapshot. A snapshot start
//! serves every row of the snapshot as an insert, then the changelog from exactly the offsets
//! anchored in that snapshot: the snapshot reflects every record below them and none above, so
//! the hand-over has no gap and no duplicate, whatever writers do meanwhile.
//!
//! One task per partition reads the changelog and sends decoded, filtered batches into a
//! bounded channel; a slow client fills the channel and the tasks wait, so the server never
//! buffers more than a few batches per read. Dropping the stream stops the tasks.
//!
//! Filters and deletes: a delete carries only its key and always passes. An upsert whose new
//! row fails the filter is delivered as a delete of its key, so a consumer that keeps the
//! filtered rows by key stays exact when a row stops matching (a delete of a key it never held
//! is a no-op). On append-only tables rows that fail are dropped. A filter that reads only key
//! columns is exact on deletes too: a change whose key fails it is dropped, whatever its
//! operation (no row of that key ever passed, so the consumer never held it).
//!
//! Pruning (`prune`): a filter that pins every key column to finitely many values (`id = 5`,
//! `id IN (1, 2)`, `a = 1 AND b IN ('x', 'y')`, ORs of such) can only match rows in the
//! partitions of those keys, so only they are read. Skipped partitions stay in the resume
//! offsets at their start offsets: nothing of them was delivered, and a client resuming with the
//! same filter skips them again. Each stream counts what it read, decoded and delivered
//! (`stats`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::compute::{filter_record_batch, nullif};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::{Stream, StreamExt};
use iceberg::arrow::schema_to_arrow_schema;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;
use unitable_core::changelog::{Changelog, ChangelogError};
use unitable_core::commit::read::anchored_offsets;
use unitable_core::naming::{TableName, TopicName};
use unitable_core::offsets::{AsOf, Offset, PartitionId, PartitionOffsets};
use unitable_core::record::{ChangeOp, RecordCodec};
use unitable_core::table::TableDef;

use crate::error::{ReadError, ReadResult};
use crate::filter::{BoundFilter, RowFilter};
use crate::pinned::conform;
use crate::snapshot::SnapshotSelector;
use crate::{Reader, freshness};

mod prune;
mod stats;

pub use stats::StreamStats;

/// Changes read per changelog request.
const CHUNK: usize = 2_000;
/// How long a partition task waits for an append before checking whether the client left.
const POLL: Duration = Duration::from_millis(500);

/// How often a STREAM partition task measures its lag while records come.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Metadata columns that lead every change batch.
pub const OP_COLUMN: &str = "_op";
/// The changelog partition of the change (null for snapshot rows of append-only tables).
pub const PARTITION_COLUMN: &str = "_partition";
/// The changelog offset of the change (null for snapshot rows).
pub const OFFSET_COLUMN: &str = "_offset";
/// The record timestamp (the snapshot's commit time for snapshot rows).
pub const TIMESTAMP_COLUMN: &str = "_timestamp";

/// Where a stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStart {
    /// The oldest record kept in each partition.
    Earliest,
    /// Only changes appended from now on.
    Latest,
    /// These offsets; partitions not listed start at the earliest.
    Offsets(PartitionOffsets),
    /// The first record at or after this time (ms since the epoch) in each partition.
    Timestamp(i64),
    /// Every row of a snapshot (the latest when `None`) as an insert, then the changelog from
    /// the snapshot's anchored offsets.
    Snapshot(Option<i64>),
}

/// A STREAM read.
#[derive(Debug, Clone)]
pub struct StreamRead {
    /// The table.
    pub table: TableName,
    /// Table columns to return (the key columns are always added); empty = all.
    pub columns: Vec<String>,
    /// Row filter, a SQL boolean expression over the table's columns.
    pub filter: Option<String>,
    /// Where to start.
    pub start: StreamStart,
    /// Stop after this many changes; `None` follows the tail until the client leaves.
    pub limit: Option<u64>,
    /// Read only these changelog partitions (a worker's share of a table); empty = all. Not
    /// with a snapshot start (a snapshot is not split by partition).
    pub partitions: Vec<u32>,
    /// Partitions listed here start at these offsets whatever `start` says (a consumer
    /// group's committed positions); the others start at `start`.
    pub resume: PartitionOffsets,
    /// Who reads, for the metrics' `subscriber` label: the consumer group of a group member,
    /// else the caller's name (keep it to a bounded set of names).
    pub subscriber: String,
}

/// A batch of changes and where to resume after it.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    /// `_op`, `_partition`, `_offset`, `_timestamp`, then the table columns.
    pub batch: RecordBatch,
    /// Per partition, the offset to resume from after this batch (every partition listed).
    pub next_offsets: PartitionOffsets,
}

/// Changes as they come.
pub type ChangeBatches = Pin<Box<dyn Stream<Item = ReadResult<ChangeBatch>> + Send>>;

/// A started stream.
pub struct ChangeStream {
    /// Where the stream starts: for a snapshot start, the snapshot and its anchored offsets.
    pub as_of: AsOf,
    /// The schema of every batch.
    pub schema: SchemaRef,
    /// The changes.
    pub changes: ChangeBatches,
    /// What the stream read, decoded and delivered so far.
    pub stats: Arc<StreamStats>,
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream")
            .field("as_of", &self.as_of)
            .field("schema", &self.schema)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// What every partition task needs.
struct Shape {
    table: TableName,
    topic: TopicName,
    codec: Arc<RecordCodec>,
    schema: SchemaRef,
    filter: Option<BoundFilter>,
    /// The filter reads only key columns, so it is exact on deletes too.
    key_only_filter: bool,
    /// Per decoded column, whether the stream needs it (returned, filtered on, or key);
    /// `None`: every column.
    wanted: Option<Vec<bool>>,
    stats: Arc<StreamStats>,
    /// Table columns (decoded-schema indexes) that are not key columns: nulled when an upsert
    /// turns into a delete.
    non_key: Vec<usize>,
    /// The primary-key columns.
    key_names: Vec<String>,
}

impl Reader {
    /// Starts a STREAM read.
    pub async fn stream(&self, request: &StreamRead) -> ReadResult<ChangeStream> {
        let loaded = self.catalog.load(&request.table).await?;
        let metadata = loaded.metadata();
        let def = TableDef::from_iceberg(request.table.clone(), metadata)?;
        let codec = Arc::new(RecordCodec::of_table(&def, metadata)?);
        let partitions = def.changelog.partitions;
        let topic = def.changelog.topic.clone();
        let table_schema = Arc::new(
            schema_to_arrow_schema(metadata.current_schema())
                .map_err(|e| ReadError::iceberg("map the schema", e))?,
        );
        // The key columns always travel: a delete is nothing without them.
        let mut columns: Vec<String> = if request.columns.is_empty() {
            table_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        } else {
            request.columns.clone()
        };
        for key in def.primary_key.iter().rev() {
            if !columns.contains(key) {
                columns.insert(0, key.clone());
            }
        }
        let mut fields = vec![
            Field::new(OP_COLUMN, DataType::Utf8, false),
            Field::new(PARTITION_COLUMN, DataType::Int32, true),
            Field::new(OFFSET_COLUMN, DataType::Int64, true),
            Field::new(
                TIMESTAMP_COLUMN,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
        ];
        for name in &columns {
            let field = table_schema
                .field_with_name(name)
                .map_err(|_| ReadError::BadRequest {
                    reason: format!("table `{}` has no column `{name}`", request.table),
                })?;
            fields.push(field.as_ref().clone().with_nullable(true));
        }
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let filter_text = request.filter.as_deref().filter(|f| !f.trim().is_empty());
        let decoded = codec.decoded_schema();
        let filter = filter_text
            .map(|f| RowFilter::parse(f, &decoded))
            .transpose()?;

        let listed = selected_partitions(request, partitions)?;
        let can_match = filter
            .as_ref()
            .and_then(|f| prune::partitions_for(f, &codec, &def.primary_key, &decoded));
        let (selected, pruned): (Vec<u32>, Vec<u32>) = listed
            .iter()
            .partition(|p| can_match.as_ref().is_none_or(|m| m.contains(p)));
        let stats = Arc::new(StreamStats::new(
            &request.table.to_string(),
            &request.subscriber,
            selected.clone(),
            pruned,
        ));
        self.streams
            .register(&request.table, &request.subscriber, &stats);
        let watermarks = freshness::watermarks(self.changelog.as_ref(), &topic, partitions).await?;
        let mut snapshot_phase = None;
        let start = match &request.start {
            StreamStart::Earliest => offsets_of(watermarks.iter().map(|w| w.low)),
            StreamStart::Latest => offsets_of(watermarks.iter().map(|w| w.high)),
            StreamStart::Offsets(given) => {
                for p in given.0.keys() {
                    if p.0 >= partitions {
                        return Err(ReadError::BadRequest {
                            reason: format!(
                                "table `{}` has {partitions} changelog partitions; there is no partition {p}",
                                request.table
                            ),
                        });
                    }
                }
                offsets_of(watermarks.iter().enumerate().map(|(p, w)| {
                    given
                        .0
                        .get(&PartitionId(p as u32))
                        .copied()
                        .unwrap_or(w.low)
                }))
            }
            StreamStart::Timestamp(ms) => {
                let mut out = PartitionOffsets::default();
                for (p, w) in watermarks.iter().enumerate() {
                    let partition = PartitionId(p as u32);
                    let found = self
                        .changelog
                        .offset_for_timestamp(&topic, partition, *ms)
                        .await?;
                    out.set(partition, found.unwrap_or(w.high).max(w.low));
                }
                out
            }
            StreamStart::Snapshot(id) => {
                let selector = id.map_or(SnapshotSelector::Latest, SnapshotSelector::Id);
                let pinned = self.pin_snapshot(&request.table, selector).await?;
                let anchored = pinned
                    .snapshot
                    .as_ref()
                    .map_or_else(PartitionOffsets::default, |s| {
                        anchored_offsets(pinned.table.metadata(), s.snapshot_id())
                    });
                let start = offsets_of((0..partitions).map(|p| anchored.get(PartitionId(p))));
                snapshot_phase = Some(pinned);
                start
            }
        };
        let mut start = start;
        for (p, o) in &request.resume.0 {
            if p.0 < partitions {
                start.set(*p, *o);
            }
        }
        for (p, w) in watermarks.iter().enumerate() {
            let offset = start.get(PartitionId(p as u32));
            if offset < w.low {
                return Err(ReadError::OffsetsRemoved {
                    table: request.table.clone(),
                    partition: p as u32,
                    offset: offset.0,
                    earliest: w.low.0,
                });
            }
            if offset > w.high {
                return Err(ReadError::BadRequest {
                    reason: format!(
                        "offset {offset} of partition {p} is past the end of `{}`'s changelog (next offset {})",
                        request.table, w.high
                    ),
                });
            }
        }

        let shape = Arc::new(Shape {
            table: request.table.clone(),
            topic: topic.clone(),
            codec: codec.clone(),
            schema: schema.clone(),
            filter: filter.as_ref().map(|f| f.bind(&decoded)).transpose()?,
            key_only_filter: !def.primary_key.is_empty()
                && filter
                    .as_ref()
                    .is_some_and(|f| f.columns().iter().all(|c| def.primary_key.contains(c))),
            wanted: {
                let wanted: Vec<bool> = decoded
                    .fields()
                    .iter()
                    .map(|f| {
                        columns.contains(f.name())
                            || filter
                                .as_ref()
                                .is_some_and(|x| x.columns().contains(f.name()))
                    })
                    .collect();
                (!wanted.iter().all(|w| *w)).then_some(wanted)
            },
            stats: stats.clone(),
            non_key: decoded
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| !def.primary_key.contains(f.name()))
                .map(|(i, _)| i)
                .collect(),
            key_names: def.primary_key.clone(),
        });
        let (as_of, snapshot_rows) = match snapshot_phase {
            Some(pinned) => {
                let filter = filter_text
                    .map(|f| RowFilter::parse(f, pinned.schema()))
                    .transpose()?;
                let predicate = filter.as_ref().and_then(|f| pinned.pushdown(f));
                let table_columns: Vec<String> = columns
                    .iter()
                    .filter(|c| pinned.schema().field_with_name(c).is_ok())
                    .cloned()
                    .collect();
                let rows = pinned
                    .batches(&table_columns, filter.as_ref(), predicate)
                    .await?;
                let commit_ms = pinned.as_of.commit_time_ms;
                let shape = shape.clone();
                let start = start.clone();
                let rows = rows.map(move |batch| {
                    let batch = batch?;
                    Ok(ChangeBatch {
                        batch: shape.snapshot_changes(&batch, commit_ms)?,
                        next_offsets: start.clone(),
                    })
                });
                (pinned.as_of.clone(), Some(Box::pin(rows) as ChangeBatches))
            }
            None => (
                freshness::as_of(
                    self.changelog.as_ref(),
                    &topic,
                    partitions,
                    start.clone(),
                    None,
                )
                .await,
                None,
            ),
        };

        // A partition subset: only its partitions are read, and only they are in the resume
        // offsets (another worker owns the rest). Pruned partitions are listed at their start.
        let start = PartitionOffsets(
            start
                .0
                .into_iter()
                .filter(|(p, _)| listed.contains(&p.0))
                .collect(),
        );
        let mut as_of = as_of;
        if listed.len() < partitions as usize {
            as_of.offsets = start.clone();
        }
        let (tx, rx) = mpsc::channel(2 * partitions.clamp(1, 32) as usize);
        let tasks = selected
            .iter()
            .map(|&p| {
                let partition = PartitionId(p);
                tokio::spawn(follow(
                    self.changelog.clone(),
                    shape.clone(),
                    partition,
                    start.get(partition),
                    tx.clone(),
                ))
            })
            .collect();
        // With no partition to read the stream still follows the tail (nothing will ever
        // match) until the client leaves, like a stream whose partitions never match.
        let idle = selected.is_empty().then_some(tx);
        let state = State {
            snapshot_rows,
            rx,
            _idle: idle,
            tasks: Tasks(tasks),
            next: start,
            left: request.limit,
            stats: stats.clone(),
        };
        Ok(ChangeStream {
            as_of,
            schema,
            changes: Box::pin(futures::stream::unfold(state, State::next)),
            stats,
        })
    }
}

/// The partitions a stream reads: the request's subset (checked), or all.
fn selected_partitions(request: &StreamRead, partitions: u32) -> ReadResult<Vec<u32>> {
    if request.partitions.is_empty() {
        return Ok((0..partitions).collect());
    }
    if matches!(request.start, StreamStart::Snapshot(_)) {
        return Err(ReadError::BadRequest {
            reason: "a STREAM of a partition subset cannot start from a snapshot (a snapshot is \
                     not split by partition); start from offsets, a time, earliest or latest, or \
                     read all partitions"
                .into(),
        });
    }
    let mut selected = request.partitions.clone();
    selected.sort_unstable();
    selected.dedup();
    if let Some(p) = selected.iter().find(|p| **p >= partitions) {
        return Err(ReadError::BadRequest {
            reason: format!(
                "table `{}` has {partitions} changelog partitions (0 to {}); there is no partition {p}",
                request.table,
                partitions.saturating_sub(1)
            ),
        });
    }
    Ok(selected)
}

fn offsets_of(offsets: impl Iterator<Item = Offset>) -> PartitionOffsets {
    let mut out = PartitionOffsets::default();
    for (p, o) in offsets.enumerate() {
        out.set(PartitionId(p as u32), o);
    }
    out
}

/// A batch of one partition's changes.
struct Piece {
    partition: PartitionId,
    batch: RecordBatch,
    /// Offset after the last record the batch covers.
    next: Offset,
}

/// Aborts the partition tasks when the stream is dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

struct State {
    snapshot_rows: Option<ChangeBatches>,
    rx: mpsc::Receiver<ReadResult<Piece>>,
    /// Keeps the channel open when no partition is read.
    _idle: Option<mpsc::Sender<ReadResult<Piece>>>,
    tasks: Tasks,
    next: PartitionOffsets,
    left: Option<u64>,
    stats: Arc<StreamStats>,
}

impl State {
    async fn next(mut self) -> Option<(ReadResult<ChangeBatch>, Self)> {
        if self.left == Some(0) {
            return None;
        }
        if let Some(rows) = &mut self.snapshot_rows {
            match rows.next().await {
                Some(Ok(change)) => return Some(self.cut(change)),
                Some(Err(e)) => {
                    self.left = Some(0);
                    return Some((Err(e), self));
                }
                None => self.snapshot_rows = None,
            }
        }
        match self.rx.recv().await? {
            Ok(piece) => {
                let mut next = self.next.clone();
                next.set(piece.partition, piece.next);
                let change = ChangeBatch {
                    batch: piece.batch,
                    next_offsets: next.clone(),
                };
                self.next = next;
                Some(self.cut(change))
            }
            Err(e) => {
                self.left = Some(0);
                self.tasks.0.clear();
                Some((Err(e), self))
            }
        }
    }

    /// Applies the limit: a cut batch resumes after its last row.
    fn cut(mut self, mut change: ChangeBatch) -> (ReadResult<ChangeBatch>, Self) {
        if let Some(left) = self.left {
            let rows = change.batch.num_rows() as u64;
            if rows > left {
                change.batch = change.batch.slice(0, left as usize);
                if let Some(resume) = resume_after(&change.batch) {
                    change.next_offsets.set(resume.0, resume.1);
                }
                self.left = Some(0);
            } else {
                self.left = Some(left - rows);
            }
        }
        self.stats.delivered(change.batch.num_rows() as u64);
        (Ok(change), self)
    }
}

/// The partition and offset after the last changelog row of a (single-partition) batch.
fn resume_after(batch: &RecordBatch) -> Option<(PartitionId, Offset)> {
    let last = batch.num_rows().checked_sub(1)?;
    let partitions = batch.column(1).as_any().downcast_ref::<Int32Array>()?;
    let offsets = batch.column(2).as_any().downcast_ref::<Int64Array>()?;
    if offsets.is_null(last) {
        return None;
    }
    Some((
        PartitionId(partitions.value(last) as u32),
        Offset(offsets.value(last) + 1),
    ))
}

/// Follows one partition from `position`, sending change batches until the client leaves or a
/// read fails.
async fn follow(
    changelog: Arc<dyn Changelog>,
    shape: Arc<Shape>,
    partition: PartitionId,
    mut position: Offset,
    tx: mpsc::Sender<ReadResult<Piece>>,
) {
    // The lag is measured against the partition's head at most once per LAG_EVERY while
    // records come, and is 0 whenever a read finds nothing new.
    let mut lag_measured: Option<std::time::Instant> = None;
    loop {
        if tx.is_closed() {
            return;
        }
        let records = match changelog
            .read(&shape.topic, partition, position, CHUNK, POLL)
            .await
        {
            Ok(r) => r,
            Err(ChangelogError::OffsetOutOfRange { low, .. }) if position < low => {
                let _ = tx
                    .send(Err(ReadError::OffsetsRemoved {
                        table: shape.table.clone(),
                        partition: partition.0,
                        offset: position.0,
                        earliest: low.0,
                    }))
                    .await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let Some(last) = records.last() else {
            shape.stats.set_lag(partition.0, 0);
            continue;
        };
        shape.stats.read(
            records.len() as u64,
            records.iter().map(|r| record_bytes(&r.record)).sum(),
        );
        position = Offset(last.offset.0 + 1);
        if lag_measured.is_none_or(|at| at.elapsed() >= LAG_EVERY)
            && let Ok(w) = changelog.watermarks(&shape.topic, partition).await
        {
            shape
                .stats
                .set_lag(partition.0, position.records_until(w.high));
            lag_measured = Some(std::time::Instant::now());
        }
        let batch = match shape.changes(partition, &records) {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if batch.num_rows() == 0 {
            continue;
        }
        let piece = Piece {
            partition,
            batch,
            next: position,
        };
        if tx.send(Ok(piece)).await.is_err() {
            return;
        }
    }
}

/// The bytes of a record as stored: key, value, header names and values.
fn record_bytes(record: &unitable_core::changelog::ChangeRecord) -> u64 {
    let key = record.key.as_ref().map_or(0, |k| k.len());
    let value = record.value.as_ref().map_or(0, |v| v.len());
    let headers: usize = record.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    (key + value + headers) as u64
}

impl Shape {
    /// Changelog records of one partition as a change batch (filtered, projected).
    fn changes(
        &self,
        partition: PartitionId,
        records: &[unitable_core::changelog::StoredRecord],
    ) -> ReadResult<RecordBatch> {
        let started = std::time::Instant::now();
        let decoded = match &self.wanted {
            Some(wanted) => self.codec.decode_skipping_projected(records, wanted),
            None => self.codec.decode_skipping(records),
        };
        let (decoded, skipped) = decoded.map_err(|e| ReadError::Internal {
            reason: format!("decode changelog records: {e}"),
        })?;
        crate::decode_metrics::observe(
            self.codec.table(),
            "stream",
            started,
            decoded.batch.num_rows(),
            skipped.len(),
        );
        for e in skipped {
            warn!(table = %self.table, %partition, error = %e, "skipping a changelog record that is not a row of this table");
        }
        let rows = decoded.batch.num_rows();
        self.stats.decoded(rows as u64);
        let mut ops: Vec<ChangeOp> = decoded.ops;
        let mut keep = vec![true; rows];
        let mut turned = vec![false; rows];
        if let Some(filter) = &self.filter {
            let mask = filter.mask(&decoded.batch)?;
            for (i, op) in ops.iter_mut().enumerate() {
                if mask.value(i) {
                    continue;
                }
                if self.key_only_filter || self.codec.is_append_only() {
                    keep[i] = false;
                } else if *op != ChangeOp::Delete {
                    *op = ChangeOp::Delete;
                    turned[i] = true;
                }
            }
        }
        let mut table_columns: Vec<ArrayRef> = decoded.batch.columns().to_vec();
        if turned.iter().any(|t| *t) {
            let turned = BooleanArray::from(turned);
            for &i in &self.non_key {
                table_columns[i] =
                    nullif(&table_columns[i], &turned).map_err(|e| ReadError::Internal {
                        reason: format!("blank a filtered row: {e}"),
                    })?;
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                ops.iter().map(|o| o.as_str()),
            )),
            Arc::new(Int32Array::from(vec![partition.0 as i32; rows])),
            Arc::new(Int64Array::from_iter_values(
                decoded.offsets.iter().map(|o| o.0),
            )),
            Arc::new(TimestampMillisecondArray::from(decoded.timestamps_ms).with_timezone("UTC")),
        ];
        columns.extend(table_columns);
        let mut fields: Vec<Field> = self.schema.fields()[..4]
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(
            decoded
                .batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true)),
        );
        let full = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| {
            ReadError::Internal {
                reason: format!("assemble changes: {e}"),
            }
        })?;
        let full = if keep.iter().all(|k| *k) {
            full
        } else {
            filter_record_batch(&full, &keep.into()).map_err(|e| ReadError::Internal {
                reason: format!("drop filtered rows: {e}"),
            })?
        };
        conform(&full, &self.schema)
    }

    /// Snapshot rows as inserts.
    fn snapshot_changes(&self, batch: &RecordBatch, commit_ms: i64) -> ReadResult<RecordBatch> {
        let rows = batch.num_rows();
        let partitions: Int32Array = if self.codec.is_append_only() {
            Int32Array::from(vec![None; rows])
        } else {
            let key_columns: Vec<usize> = self
                .key_names
                .iter()
                .filter_map(|k| batch.schema().index_of(k).ok())
                .collect();
            let key_batch = batch
                .project(&key_columns)
                .map_err(|e| ReadError::Internal {
                    reason: format!("project the key columns: {e}"),
                })?;
            let (keys, errors) =
                self.codec
                    .encode_keys(&key_batch)
                    .map_err(|e| ReadError::Internal {
                        reason: format!("encode snapshot keys: {e}"),
                    })?;
            if let Some(e) = errors.first() {
                return Err(ReadError::Internal {
                    reason: format!("a stored row has no valid key: {}", e.reason),
                });
            }
            keys.iter().map(|k| Some(k.partition.0 as i32)).collect()
        };
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                ChangeOp::Insert.as_str(),
                rows,
            ))),
            Arc::new(partitions),
            Arc::new(Int64Array::from(vec![None; rows])),
            Arc::new(TimestampMillisecondArray::from(vec![commit_ms; rows]).with_timezone("UTC")),
        ];
        columns.extend(batch.columns().iter().cloned());
        let mut fields: Vec<Field> = self.schema.fields()[..4]
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true)),
        );
        let full = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| {
            ReadError::Internal {
                reason: format!("assemble snapshot changes: {e}"),
            }
        })?;
        conform(&full, &self.schema)
    }
}

#[cfg(test)]
mod tests;
