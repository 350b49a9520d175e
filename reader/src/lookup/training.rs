//! Training sets: entity rows (keys and an event time each) joined with feature columns of
//! unitable tables as of each row's time, exact to the changelog record (the rule of
//! [`super::LookupAsOf::Timestamp`]), so no value from after a row's time leaks into it.
//!
//! The entity rows arrive as a stream and may be larger than memory. Each row is tagged with
//! its position and its time in milliseconds and the rows are sorted by time with the
//! external sort of [`order`], within half of the reader's training-set memory (past it,
//! sorted runs spill to temporary files). The sorted rows are joined in segments of
//! [`SEGMENT_ROWS`], and the joined rows are sorted back into request order the same way (the
//! other half), so the answer streams out in the order the rows came in while memory holds
//! the two sorts' buffers and the segments being joined ([`SEGMENTS_AT_ONCE`], each on a task
//! of its own).
//!
//! A segment, with `T0` its earliest row time (minus the TTL, if any) and `T1` its latest, is
//! joined per feature table: the base is the newest snapshot at or before `T0` in the rows'
//! partitions; the changelog of those partitions is read once from the base's offsets up to the
//! position of `T1`, keeping the records of the rows' keys and, for every record, the running
//! maximum of the timestamps (a record counts from the time its partition's prefix up to it is
//! all at or before that time). Each partition's rows are then swept in time order, applying
//! the kept records visible at each row's time over the base rows (read with the key-filtered
//! scan). With a TTL a value counts only if the record that set it is stamped after `T - ttl`;
//! the base then holds only expired values and is not read.

mod order;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, TimestampMillisecondArray, UInt64Array,
    new_null_array,
};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use futures::StreamExt;
use unitable_core::changelog::Changelog;
use unitable_core::naming::{TableName, TopicName};
use unitable_core::offsets::{Offset, PartitionId};
use unitable_core::record::{ChangeOp, RecordCodec};

use super::asof::{
    Loaded, LookupAsOf, RowsAt, decode_keyed, index_rows_at, newest_covered_by, snapshot_rows_at,
};
use super::{FastMap, FastSet, conform, finish, nullable, output_schema};
use crate::Reader;
use crate::error::{ReadError, ReadResult};
use crate::pinned::BatchStream;
use crate::range::chunk_within;

/// Memory a training set's two sorts may hold before they spill, by default.
pub const DEFAULT_TRAINING_SET_MEMORY: usize = 512 << 20;
/// Rows (in time order) joined with one base snapshot and one changelog pass.
const SEGMENT_ROWS: usize = 50_000;
/// Segments joined at once (each on a task of its own, so on as many cores).
const SEGMENTS_AT_ONCE: usize = 2;
/// Keys per read of the lookup state's key index.
const KEYS_PER_READ: usize = 10_000;
/// The column that carries each entity row's position in the request through the sorts.
const ROW: &str = "__unitable_row";
/// The column that carries each entity row's time in milliseconds through the first sort.
const TIME: &str = "__unitable_time_ms";

/// What a training-set read joins the entity rows with.
#[derive(Debug, Clone)]
pub struct TrainingSetSpec {
    /// The column of the rows' times: int64 milliseconds since the epoch, or a timestamp.
    pub timestamp_column: String,
    /// Features as `namespace.table.column`.
    pub features: Vec<String>,
    /// Serve a value only if the change that set it is at most this old at the row's time.
    pub ttl: Option<Duration>,
}

/// The answer: the entity rows, in request order, with one column per feature
/// (`namespace.table.column`, null where the key had no live row at the row's time) and, per
/// feature table, where each value came from: `namespace.table._snapshot_id` (the base
/// snapshot, null without one), `namespace.table._partition` and `namespace.table._offset`
/// (the row's instant: every record of the key's partition below that offset, and none at or
/// after it, counts).
pub struct TrainingSet {
    /// The joined rows' schema (also when no row comes).
    pub schema: SchemaRef,
    /// The joined rows, in request order; an error ends the stream.
    pub rows: BatchStream,
}

impl std::fmt::Debug for TrainingSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainingSet")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

fn bad(reason: String) -> ReadError {
    ReadError::BadRequest { reason }
}

/// Rows of one request for one feature table: key bytes, partitions and times, by row index.
#[derive(Clone, Copy)]
struct Rows<'a> {
    keys: &'a [Bytes],
    partition_of: &'a [PartitionId],
    times: &'a [i64],
}

/// What the segments joined, by row index.
struct Joined {
    /// The batches answers point into.
    sources: Vec<RecordBatch>,
    /// Each row's answer: (source, row), or `None` for no live row.
    answers: Vec<Option<(usize, usize)>>,
    instants: Vec<Offset>,
    snapshots: Vec<Option<i64>>,
}

/// A change kept while replaying: when it becomes visible, its key, its row (batch and row in
/// the replay's batches; `None`: a delete) and its own timestamp.
struct Kept {
    visible_from: i64,
    key: Bytes,
    row: Option<(usize, usize)>,
    timestamp_ms: i64,
}

/// One partition's replay: the kept changes in offset order and the offsets where the running
/// maximum timestamp rises (offset, new maximum), ascending.
struct Replay {
    kept: Vec<Kept>,
    /// The decoded batches the kept rows are in.
    batches: Vec<RecordBatch>,
    rises: Vec<(Offset, i64)>,
    end: Offset,
}

impl Replay {
    /// The instant `t` in this partition: the first offset whose record is stamped after `t`.
    fn end_at(&self, t: i64) -> Offset {
        // The maxima ascend: the first one past `t` is found by bisection.
        let at = self.rises.partition_point(|(_, max)| *max <= t);
        self.rises.get(at).map_or(self.end, |(o, _)| *o)
    }
}

/// A feature table, loaded once per request, and the part of its rows a training set wants.
struct Feature {
    loaded: Loaded,
    schema: SchemaRef,
}

/// What every segment of one request is joined with.
struct Job {
    reader: Reader,
    features: Vec<Feature>,
    timestamp_column: String,
    ttl: Option<i64>,
}

/// The features grouped by table, tables in request order.
fn feature_groups(features: &[String]) -> ReadResult<Vec<(TableName, Vec<String>)>> {
    let mut tables: Vec<(TableName, Vec<String>)> = Vec::new();
    for feature in features {
        let (table, column) = feature
            .rsplit_once('.')
            .and_then(|(t, c)| Some((t.parse::<TableName>().ok()?, c.to_string())))
            .ok_or_else(|| {
                bad(format!(
                    "feature `{feature}` is not `namespace.table.column`"
                ))
            })?;
        match tables.iter_mut().find(|(t, _)| *t == table) {
            Some((_, columns)) => columns.push(column),
            None => tables.push((table, vec![column])),
        }
    }
    if tables.is_empty() {
        return Err(bad("no features given".into()));
    }
    Ok(tables)
}

impl Reader {
    /// Answers a training-set read: `entities` joined with `spec`'s features, streamed in the
    /// entities' order. Fails before the stream starts when a feature is malformed, its table
    /// cannot be read or has no primary key, or the first batch lacks the time column or a
    /// key column; later faults (a batch of another schema, a null time, a key that does not
    /// fit, memory) end the stream with the error.
    pub async fn training_set(
        &self,
        spec: TrainingSetSpec,
        mut entities: BatchStream,
    ) -> ReadResult<TrainingSet> {
        let started = Instant::now();
        let mut features = Vec::new();
        for (name, wanted) in feature_groups(&spec.features)? {
            features.push(self.feature(name, &wanted).await?);
        }
        let job = Arc::new(Job {
            reader: self.clone(),
            features,
            timestamp_column: spec.timestamp_column,
            ttl: spec
                .ttl
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        });
        let first = entities
            .next()
            .await
            .ok_or_else(|| bad("no entity rows given".into()))??;
        let given = first.schema();
        for reserved in [ROW, TIME] {
            if given.column_with_name(reserved).is_some() {
                return Err(bad(format!(
                    "the entity rows have a column `{reserved}`, a name the training set uses \
                     itself: rename it"
                )));
            }
        }
        // The answer's shape, from joining no rows: this also checks the time column and every
        // table's key columns before any row is read.
        let entity_schema = Arc::new(Schema::new(
            given
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let empty = RecordBatch::new_empty(entity_schema.clone());
        row_times(&empty, &job.timestamp_column, 0)?;
        let answer_schema = job.join(&empty, &[]).await?.schema();
        let with = |schema: &SchemaRef, extra: &[(&str, DataType)]| -> SchemaRef {
            let mut fields: Vec<Field> =
                schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.extend(extra.iter().map(|(n, t)| Field::new(*n, t.clone(), false)));
            Arc::new(Schema::new(fields))
        };
        let tagged_schema = with(
            &entity_schema,
            &[(ROW, DataType::UInt64), (TIME, DataType::Int64)],
        );
        let joined_schema = with(&answer_schema, &[(ROW, DataType::UInt64)]);

        // Tag the rows and sort them by time.
        let mut next_row = 0u64;
        let (column, tagged) = (job.timestamp_column.clone(), tagged_schema.clone());
        let rows = futures::stream::once(async { Ok(first) })
            .chain(entities)
            .map(move |batch| tag(&batch?, &tagged, &column, &mut next_row))
            .boxed();
        let by_time = order::sort(
            self.training_memory / 2,
            tagged_schema,
            rows,
            vec![
                entity_schema.fields().len() + 1,
                entity_schema.fields().len(),
            ],
        );
        let by_time_spilled = by_time.spilled.clone();

        // Join segment by segment, then sort the joined rows back into request order.
        // Segments are joined on their own tasks, [`SEGMENTS_AT_ONCE`] at a time, and come out
        // in order.
        let joined = segments(by_time.rows, SEGMENT_ROWS)
            .map(move |segment| {
                let job = job.clone();
                let mut joining =
                    AbortOnDrop(tokio::spawn(
                        async move { job.join_tagged(&segment?).await },
                    ));
                async move {
                    (&mut joining.0).await.map_err(|e| ReadError::Internal {
                        reason: format!("a training-set segment's join stopped: {e}"),
                    })?
                }
            })
            .buffered(SEGMENTS_AT_ONCE)
            .boxed();
        let answer_width = answer_schema.fields().len();
        let by_row = order::sort(
            self.training_memory / 2,
            joined_schema,
            joined,
            vec![answer_width],
        );
        let by_row_spilled = by_row.spilled.clone();
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        let (counted, failing) = (sent.clone(), failed.clone());
        let rows = by_row
            .rows
            .map(move |batch| {
                let batch = batch.inspect_err(|_| failing.store(true, Ordering::Relaxed))?;
                counted.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                batch
                    .project(&(0..answer_width).collect::<Vec<_>>())
                    .map_err(|e| ReadError::Internal {
                        reason: format!("drop the row positions: {e}"),
                    })
            })
            .chain(
                futures::stream::once(async move {
                    let spilled = by_time_spilled.load(Ordering::Relaxed)
                        + by_row_spilled.load(Ordering::Relaxed);
                    metrics::counter!("unitable_training_set_spilled_bytes_total")
                        .increment(spilled);
                    let (rows, elapsed_ms) = (
                        sent.load(Ordering::Relaxed),
                        started.elapsed().as_millis() as u64,
                    );
                    let outcome = if failed.load(Ordering::Relaxed) {
                        "failed"
                    } else {
                        "answered"
                    };
                    tracing::info!(
                        rows,
                        spilled_bytes = spilled,
                        elapsed_ms,
                        outcome,
                        "training set"
                    );
                    None
                })
                .filter_map(futures::future::ready),
            )
            .boxed();
        Ok(TrainingSet {
            schema: answer_schema,
            rows,
        })
    }

    /// A feature table, loaded, with the columns wanted from it.
    async fn feature(&self, name: TableName, wanted: &[String]) -> ReadResult<Feature> {
        let loaded = Loaded::open(&self.catalog, &name).await?;
        let schema = output_schema(&name, &loaded.codec, wanted)?;
        Ok(Feature { loaded, schema })
    }
}

/// A spawned task that is aborted when its handle is dropped (a training set whose reader
/// went away stops joining).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `batch` with its rows' positions (from `next_row` on) and times in milliseconds appended.
fn tag(
    batch: &RecordBatch,
    tagged: &SchemaRef,
    column: &str,
    next_row: &mut u64,
) -> ReadResult<RecordBatch> {
    let first = *next_row;
    let width = tagged.fields().len() - 2;
    let same = batch.num_columns() == width
        && batch
            .schema()
            .fields()
            .iter()
            .zip(tagged.fields().iter())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    if !same {
        return Err(bad(format!(
            "field `entities`: the rows from row {first} on have the columns {}, where the first \
             rows had {}; send one schema",
            describe(&batch.schema()),
            describe(&Arc::new(Schema::new(tagged.fields()[..width].to_vec())))
        )));
    }
    let times = row_times(batch, column, first)?;
    let n = batch.num_rows() as u64;
    *next_row += n;
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(UInt64Array::from_iter_values(first..first + n)));
    columns.push(Arc::new(Int64Array::from(times)));
    RecordBatch::try_new(tagged.clone(), columns).map_err(|e| ReadError::Internal {
        reason: format!("tag entity rows: {e}"),
    })
}

/// `name type, ...` of a schema, for errors.
fn describe(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rows` re-cut into batches of `size` rows (the last may be shorter).
fn segments(rows: BatchStream, size: usize) -> BatchStream {
    struct Cut {
        rows: BatchStream,
        held: Vec<RecordBatch>,
        count: usize,
        done: bool,
    }
    let start = Cut {
        rows,
        held: Vec::new(),
        count: 0,
        done: false,
    };
    futures::stream::try_unfold(start, move |mut cut| async move {
        loop {
            if cut.count >= size || (cut.done && cut.count > 0) {
                let all = concat_batches(cut.held[0].schema_ref(), &cut.held).map_err(|e| {
                    ReadError::Internal {
                        reason: format!("cut a segment: {e}"),
                    }
                })?;
                let take = size.min(all.num_rows());
                let rest = all.slice(take, all.num_rows() - take);
                cut.count = rest.num_rows();
                cut.held = if rest.num_rows() > 0 {
                    vec![rest]
                } else {
                    Vec::new()
                };
                return Ok(Some((all.slice(0, take), cut)));
            }
            if cut.done {
                return Ok(None);
            }
            match cut.rows.next().await {
                Some(batch) => {
                    let batch = batch?;
                    if batch.num_rows() > 0 {
                        cut.count += batch.num_rows();
                        cut.held.push(batch);
                    }
                }
                None => cut.done = true,
            }
        }
    })
    .boxed()
}

impl Job {
    /// Joins one segment of tagged rows (in time order): the answer columns, then the rows'
    /// positions. A key that does not fit is reported by the row's position in the request.
    async fn join_tagged(&self, segment: &RecordBatch) -> ReadResult<RecordBatch> {
        let width = segment.num_columns() - 2;
        let positions = segment.column(width).clone();
        let entities = segment
            .project(&(0..width).collect::<Vec<_>>())
            .map_err(|e| ReadError::Internal {
                reason: format!("untag entity rows: {e}"),
            })?;
        let times = segment
            .column(width + 1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .map(|t| t.values().to_vec())
            .ok_or_else(|| ReadError::Internal {
                reason: "entity times are not int64".into(),
            })?;
        let answer = self.join(&entities, &times).await.map_err(|e| match e {
            ReadError::InvalidKey {
                index,
                field,
                reason,
            } => ReadError::InvalidKey {
                index: positions
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .map_or(index, |p| p.value(index) as usize),
                field,
                reason,
            },
            other => other,
        })?;
        let mut fields: Vec<Field> = answer
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(ROW, DataType::UInt64, false));
        let mut columns = answer.columns().to_vec();
        columns.push(positions);
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| {
            ReadError::Internal {
                reason: format!("tag joined rows: {e}"),
            }
        })
    }

    /// `entities` (with their times in milliseconds) and every feature table's columns.
    async fn join(&self, entities: &RecordBatch, times: &[i64]) -> ReadResult<RecordBatch> {
        let mut fields: Vec<Field> = entities
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut columns: Vec<ArrayRef> = entities.columns().to_vec();
        for feature in &self.features {
            let (joined_fields, joined) = self
                .reader
                .join_table(feature, entities, times, self.ttl)
                .await?;
            fields.extend(joined_fields);
            columns.extend(joined);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| {
            ReadError::Internal {
                reason: format!("assemble the training set: {e}"),
            }
        })
    }
}

impl Reader {
    /// The feature columns of one table for every entity row, with the provenance columns.
    async fn join_table(
        &self,
        feature: &Feature,
        entities: &RecordBatch,
        times: &[i64],
        ttl: Option<i64>,
    ) -> ReadResult<(Vec<Field>, Vec<ArrayRef>)> {
        let loaded = &feature.loaded;
        let schema = &feature.schema;
        let keys = entity_keys(loaded, entities)?;
        let n = keys.len();
        let partition_of: Vec<PartitionId> =
            keys.iter().map(|k| loaded.codec.partition_of(k)).collect();
        let mut joined = Joined {
            sources: Vec::new(),
            answers: vec![None; n],
            instants: vec![Offset(0); n],
            snapshots: vec![None; n],
        };
        let rows = Rows {
            keys: &keys,
            partition_of: &partition_of,
            times,
        };
        // The rows are one segment (`training_set` cuts them in time order); no rows (the
        // answer's shape) read nothing.
        if n > 0 {
            let segment: Vec<usize> = (0..n).collect();
            self.join_segment(loaded, schema, &segment, rows, ttl, &mut joined)
                .await?;
        }
        let Joined {
            sources,
            answers,
            instants,
            snapshots,
        } = joined;
        finish_table(
            &loaded.name,
            schema,
            &sources,
            &answers,
            &instants,
            snapshots,
            &partition_of,
        )
    }

    /// Joins the rows `segment` (indexes in time order) of one feature table.
    async fn join_segment(
        &self,
        loaded: &Loaded,
        schema: &SchemaRef,
        segment: &[usize],
        rows: Rows<'_>,
        ttl: Option<i64>,
        joined: &mut Joined,
    ) -> ReadResult<()> {
        let Rows {
            keys,
            partition_of,
            times,
        } = rows;
        let partitions: BTreeSet<PartitionId> = segment.iter().map(|&i| partition_of[i]).collect();
        let earliest = segment.iter().map(|&i| times[i]).min().unwrap_or(0);
        let latest = segment.iter().map(|&i| times[i]).max().unwrap_or(0);
        let from_time = ttl.map_or(earliest, |ttl| earliest.saturating_sub(ttl));
        let start = self
            .resolve_ends(loaded, &LookupAsOf::Timestamp(from_time), &partitions)
            .await?;
        let end = self
            .resolve_ends(loaded, &LookupAsOf::Timestamp(latest), &partitions)
            .await?;
        // Without a TTL the lookup state's base, when there is one at or before `T0`, serves
        // the base rows from its key index (as a LOOKUP as of a time does); otherwise the
        // newest snapshot at or before `T0`, read with the key-filtered scan.
        let indexed = ttl
            .is_none()
            .then(|| self.indexed_base(loaded, &start))
            .flatten();
        let base = match &indexed {
            Some((_, snapshot, offsets)) => Some((snapshot.clone(), offsets.clone())),
            None => newest_covered_by(loaded.metadata(), &start),
        };
        let from = base.as_ref().map(|(_, o)| o.clone()).unwrap_or_default();

        // The changelog of the rows' partitions, once.
        let mut by_partition: FastMap<PartitionId, Vec<usize>> = FastMap::default();
        for &i in segment {
            by_partition.entry(partition_of[i]).or_default().push(i);
        }
        let changelog = self.changelog.as_ref();
        let replays = futures::future::try_join_all(partitions.iter().map(|&p| {
            let from = from.get(p);
            let end = end.get(p);
            // No record to replay (the base covers the rows' times): no key set to build.
            let wanted: FastSet<&[u8]> = if from < end {
                by_partition[&p].iter().map(|&i| keys[i].as_ref()).collect()
            } else {
                FastSet::default()
            };
            async move {
                let w = changelog.watermarks(loaded.topic(), p).await?;
                if from < w.low && from < end {
                    return Err(ReadError::AsOfUnavailable {
                        table: loaded.name.clone(),
                        at: "the entity rows' times".into(),
                        partition: p.0,
                        reason: format!(
                            "no longer holds offsets {from}..{} (retention kept {} on), and no \
                             retained snapshot covers them",
                            w.low, w.low
                        ),
                    });
                }
                let replay = replay(
                    changelog,
                    &loaded.codec,
                    loaded.topic(),
                    p,
                    from,
                    end,
                    &wanted,
                )
                .await?;
                Ok::<_, ReadError>((p, replay))
            }
        }))
        .await?;
        let replays: FastMap<PartitionId, Replay> = replays.into_iter().collect();

        // Base rows (without a TTL: with one, every base value is expired at every row).
        // Each key's base row: (source in `joined.sources`, row).
        let mut base_rows: FastMap<Bytes, (usize, usize)> = FastMap::default();
        if ttl.is_none()
            && let Some((snapshot, _)) = &base
        {
            let distinct: Vec<Bytes> = {
                let mut seen = FastSet::default();
                segment
                    .iter()
                    .map(|&i| &keys[i])
                    .filter(|k| seen.insert(*k))
                    .cloned()
                    .collect()
            };
            let mut via_index = indexed.is_some();
            if let Some((state, _, _)) = &indexed {
                for chunk in distinct.chunks(KEYS_PER_READ) {
                    match index_rows_at(state, &loaded.name, snapshot.snapshot_id(), chunk, schema)
                        .await?
                    {
                        Some(rows) => take_rows(rows, &mut joined.sources, &mut base_rows),
                        None => {
                            via_index = false;
                            base_rows.clear();
                            break;
                        }
                    }
                }
            }
            if !via_index {
                // The state's base may be newer than the metadata loaded for this request.
                let table = if loaded
                    .metadata()
                    .snapshot_by_id(snapshot.snapshot_id())
                    .is_some()
                {
                    loaded.table.clone()
                } else {
                    self.catalog.load(&loaded.name).await?
                };
                // One scan for all of the segment's keys: past a few keys the scan filters by
                // their bounds, so reading them in chunks would read the same files again.
                let rows = snapshot_rows_at(loaded, &table, snapshot, &distinct, schema).await?;
                take_rows(rows, &mut joined.sources, &mut base_rows);
            }
        }

        // Sweep each partition's rows in time order.
        let snapshot_id = base.as_ref().map(|(s, _)| s.snapshot_id());
        let Joined {
            sources,
            answers,
            instants,
            snapshots,
        } = joined;
        for (p, rows) in &mut by_partition {
            let replay = &replays[p];
            // The replay's rows join the sources after those already there.
            let first = sources.len();
            sources.extend(replay.batches.iter().cloned());
            rows.sort_by_key(|&i| (times[i], i));
            // Per key changed so far: the row it has now (source, row; `None`: deleted), and
            // when that row was written. A key not changed has its base row, if any.
            type KeyState = (Option<(usize, usize)>, Option<i64>);
            let mut state: FastMap<&Bytes, KeyState> = FastMap::default();
            let mut next = 0;
            for &i in rows.iter() {
                let t = times[i];
                while let Some(change) = replay.kept.get(next)
                    && change.visible_from <= t
                {
                    state.insert(
                        &change.key,
                        (
                            change.row.map(|(b, r)| (first + b, r)),
                            Some(change.timestamp_ms),
                        ),
                    );
                    next += 1;
                }
                instants[i] = replay.end_at(t);
                snapshots[i] = snapshot_id;
                let now = state
                    .get(&keys[i])
                    .copied()
                    .or_else(|| base_rows.get(&keys[i]).map(|&row| (Some(row), None)));
                answers[i] = match now {
                    Some((Some(row), stamped)) => {
                        let fresh = match (ttl, stamped) {
                            (None, _) => true,
                            (Some(ttl), Some(ts)) => ts > t.saturating_sub(ttl),
                            (Some(_), None) => false,
                        };
                        fresh.then_some(row)
                    }
                    _ => None,
                };
            }
        }

        Ok(())
    }
}

/// Adds the rows of `found` to `sources` and their places to `rows`.
fn take_rows(
    found: RowsAt,
    sources: &mut Vec<RecordBatch>,
    rows: &mut FastMap<Bytes, (usize, usize)>,
) {
    let first = sources.len();
    sources.extend(found.batches);
    rows.extend(
        found
            .at
            .into_iter()
            .map(|(key, (batch, row))| (key, (first + batch, row))),
    );
}

/// The feature columns of one table from the joined rows, with the provenance columns.
fn finish_table(
    name: &TableName,
    schema: &SchemaRef,
    found: &[RecordBatch],
    answers: &[Option<(usize, usize)>],
    instants: &[Offset],
    snapshots: Vec<Option<i64>>,
    partition_of: &[PartitionId],
) -> ReadResult<(Vec<Field>, Vec<ArrayRef>)> {
    // Feature columns: found rows, and a null row for the rest (source 0).
    let relaxed = nullable(schema);
    let nulls = RecordBatch::try_new(
        relaxed.clone(),
        relaxed
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect(),
    )
    .map_err(|e| ReadError::Internal {
        reason: format!("a null feature row: {e}"),
    })?;
    // Each source is brought to the output schema once, not once per row.
    let mut used = vec![false; found.len()];
    for (source, _) in answers.iter().flatten() {
        used[*source] = true;
    }
    let mut sources = vec![nulls];
    let mut index = vec![0; found.len()];
    for (i, batch) in found.iter().enumerate() {
        if used[i] {
            index[i] = sources.len();
            sources.push(conform(name, schema, batch)?);
        }
    }
    let picks: Vec<(usize, usize)> = answers
        .iter()
        .map(|a| a.map_or((0, 0), |(source, row)| (index[source], row)))
        .collect();
    let features = finish(name, schema, &sources, &picks)?;
    let mut fields: Vec<Field> = features
        .schema()
        .fields()
        .iter()
        .map(|f| {
            Field::new(format!("{name}.{}", f.name()), f.data_type().clone(), true)
                .with_metadata(f.metadata().clone())
        })
        .collect();
    let mut columns: Vec<ArrayRef> = features.columns().to_vec();
    fields.push(Field::new(
        format!("{name}._snapshot_id"),
        DataType::Int64,
        true,
    ));
    columns.push(Arc::new(Int64Array::from(snapshots)));
    fields.push(Field::new(
        format!("{name}._partition"),
        DataType::Int32,
        false,
    ));
    columns.push(Arc::new(Int32Array::from_iter_values(
        partition_of.iter().map(|p| p.0 as i32),
    )));
    fields.push(Field::new(
        format!("{name}._offset"),
        DataType::Int64,
        false,
    ));
    columns.push(Arc::new(Int64Array::from_iter_values(
        instants.iter().map(|o| o.0),
    )));
    Ok((fields, columns))
}

/// Each row's time in milliseconds since the epoch; errors name rows counting from `first_row`.
fn row_times(entities: &RecordBatch, column: &str, first_row: u64) -> ReadResult<Vec<i64>> {
    let array = entities.column_by_name(column).ok_or_else(|| {
        bad(format!(
            "field `timestamp_column`: the entity rows have no column `{column}`"
        ))
    })?;
    let ms: ArrayRef = match array.data_type() {
        DataType::Int64 => array.clone(),
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
            // Keep the zone: the values stay UTC instants (a cast to a zoneless type would
            // shift them to wall-clock time).
            let zone = match array.data_type() {
                DataType::Timestamp(_, zone) => zone.clone(),
                _ => None,
            };
            let as_ms = cast(array, &DataType::Timestamp(TimeUnit::Millisecond, zone))
                .map_err(|e| bad(format!("column `{column}`: {e}")))?;
            let ts = as_ms
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .ok_or_else(|| bad(format!("column `{column}`: not a timestamp")))?;
            Arc::new(Int64Array::new(ts.values().clone(), ts.nulls().cloned()))
        }
        other => {
            return Err(bad(format!(
                "column `{column}` is {other}; the row times must be int64 milliseconds or a \
                 timestamp"
            )));
        }
    };
    let ms = ms
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| bad(format!("column `{column}`: not int64")))?;
    if let Some(row) = (0..ms.len()).find(|&i| ms.is_null(i)) {
        return Err(bad(format!(
            "entity row {}, column `{column}`: the time is null",
            first_row + row as u64
        )));
    }
    Ok(ms.values().to_vec())
}

/// The canonical key bytes of every entity row for the table's key columns.
fn entity_keys(loaded: &Loaded, entities: &RecordBatch) -> ReadResult<Vec<Bytes>> {
    let mut at = Vec::with_capacity(loaded.def.primary_key.len());
    for column in &loaded.def.primary_key {
        at.push(entities.schema().index_of(column).map_err(|_| {
            bad(format!(
                "the entity rows have no column `{column}`, a key column of `{}`",
                loaded.name
            ))
        })?);
    }
    let key_batch = entities
        .project(&at)
        .map_err(|e| bad(format!("entity key columns: {e}")))?;
    let (encoded, errors) = loaded.codec.encode_keys(&key_batch).map_err(|e| {
        bad(format!(
            "entity key columns do not fit `{}`: {e}",
            loaded.name
        ))
    })?;
    if let Some(e) = errors.into_iter().min_by_key(|e| e.row) {
        return Err(ReadError::InvalidKey {
            index: e.row,
            field: e.field,
            reason: e.reason,
        });
    }
    Ok(encoded.into_iter().map(|k| k.key).collect())
}

/// Reads `[from, end)` of one partition: the changes of `wanted` keys and where the running
/// maximum timestamp rises.
async fn replay(
    changelog: &dyn Changelog,
    codec: &RecordCodec,
    topic: &TopicName,
    partition: PartitionId,
    from: Offset,
    end: Offset,
    wanted: &FastSet<&[u8]>,
) -> ReadResult<Replay> {
    let mut kept = Vec::new();
    let mut batches = Vec::new();
    let mut rises = Vec::new();
    let mut max = i64::MIN;
    let mut position = from;
    while position < end {
        let (chunk, next) = chunk_within(changelog, topic, partition, position, end).await?;
        position = next;
        let mut visible: FastMap<Offset, i64> = FastMap::default();
        let mut mine = Vec::new();
        for record in chunk.into_iter().filter(|r| r.offset < end) {
            if record.record.timestamp_ms > max {
                max = record.record.timestamp_ms;
                rises.push((record.offset, max));
            }
            if record
                .record
                .key
                .as_ref()
                .is_some_and(|k| wanted.contains(k.as_ref()))
            {
                visible.insert(record.offset, max);
                mine.push(record);
            }
        }
        if mine.is_empty() {
            continue;
        }
        let (decoded, encoded) = decode_keyed(codec, topic, partition, &mine)?;
        for key in encoded {
            let offset = decoded.offsets[key.row];
            kept.push(Kept {
                visible_from: visible[&offset],
                key: key.key,
                row: match decoded.ops[key.row] {
                    ChangeOp::Delete => None,
                    ChangeOp::Insert | ChangeOp::Upsert => Some((batches.len(), key.row)),
                },
                timestamp_ms: decoded.timestamps_ms[key.row],
            });
        }
        batches.push(decoded.batch);
    }
    Ok(Replay {
        kept,
        batches,
        rises,
        end,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{RecordBatch, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::row_times;

    #[test]
    fn row_times_are_utc_milliseconds_whatever_the_zone() {
        for zone in [
            None,
            Some("+00:00"),
            Some("America/New_York"),
            Some("+05:30"),
        ] {
            let micros = TimestampMicrosecondArray::from(vec![1_700_000_000_123_456, -1_500])
                .with_timezone_opt(zone);
            let schema = Schema::new(vec![Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, zone.map(Arc::from)),
                false,
            )]);
            let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(micros)]).unwrap();
            // Microseconds to milliseconds truncate toward zero, as Arrow's cast does.
            assert_eq!(
                row_times(&batch, "at", 0).unwrap(),
                [1_700_000_000_123, -1],
                "{zone:?}"
            );
        }
    }
}
