//! Training sets: entity rows (keys and an event time each) joined with feature columns of
//! unitable tables as of each row's time, exact to the changelog record (the rule of
//! [`super::LookupAsOf::Timestamp`]), so no value from after a row's time leaks into it.
//!
//! Per feature table the rows are sorted by time and joined in segments of [`SEGMENT_ROWS`].
//! For a segment, with `T0` its earliest row time (minus the TTL, if any) and `T1` its
//! latest: the base is the newest snapshot at or before `T0` in the rows' partitions; the
//! changelog of those partitions is read once from the base's offsets up to the position of
//! `T1`, keeping the records of the rows' keys and, for every record, the running maximum of
//! the timestamps (a record counts from the time its partition's prefix up to it is all at or
//! before that time). Each partition's rows are then swept in time order, applying the kept
//! records visible at each row's time over the base rows (read with the key-filtered scan).
//! With a TTL a value counts only if the record that set it is stamped after `T - ttl`; the
//! base then holds only expired values and is not read.
//!
//! Limits: the entity rows, the answer and a segment's kept records are held in memory (no
//! spill); at most [`MAX_ENTITY_ROWS`] rows per request.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, TimestampMillisecondArray, new_null_array,
};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use unitable_core::changelog::Changelog;
use unitable_core::naming::{TableName, TopicName};
use unitable_core::offsets::{Offset, PartitionId};
use unitable_core::record::{ChangeOp, RecordCodec};
use unitable_core::table::TableDef;

use super::asof::{Loaded, LookupAsOf, decode_keyed, newest_covered_by, snapshot_rows};
use super::{conform, finish, output_schema};
use crate::Reader;
use crate::error::{ReadError, ReadResult};
use crate::range::chunk_within;

/// Most entity rows one request may hold (they are joined in memory).
pub const MAX_ENTITY_ROWS: usize = 1_000_000;
/// Rows (in time order) joined with one base snapshot and one changelog pass.
const SEGMENT_ROWS: usize = 50_000;
/// Keys per key-filtered snapshot read.
const KEYS_PER_READ: usize = 10_000;
/// A training-set read.
#[derive(Debug, Clone)]
pub struct TrainingSetRequest {
    /// The entity rows: every feature table's key columns (by name) and the time column.
    pub entities: Vec<RecordBatch>,
    /// The column of the rows' times: int64 milliseconds since the epoch, or a timestamp.
    pub timestamp_column: String,
    /// Features as `namespace.table.column`.
    pub features: Vec<String>,
    /// Serve a value only if the change that set it is at most this old at the row's time.
    pub ttl: Option<Duration>,
}

/// The entity rows, in request order, with one column per feature (`namespace.table.column`,
/// null where the key had no live row at the row's time) and, per feature table, where each
/// value came from: `namespace.table._snapshot_id` (the base snapshot, null without one),
/// `namespace.table._partition` and `namespace.table._offset` (the row's instant: every
/// record of the key's partition below that offset, and none at or after it, counts).
#[derive(Debug, Clone)]
pub struct TrainingSet {
    /// The joined rows.
    pub rows: RecordBatch,
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
    answers: Vec<Option<RecordBatch>>,
    instants: Vec<Offset>,
    snapshots: Vec<Option<i64>>,
}

/// A change kept while replaying: when it becomes visible, its key, its row (`None`: a
/// delete) and its own timestamp.
struct Kept {
    visible_from: i64,
    key: Bytes,
    row: Option<RecordBatch>,
    timestamp_ms: i64,
}

/// One partition's replay: the kept changes in offset order and the offsets where the running
/// maximum timestamp rises (offset, new maximum), ascending.
struct Replay {
    kept: Vec<Kept>,
    rises: Vec<(Offset, i64)>,
    end: Offset,
}

impl Replay {
    /// The instant `t` in this partition: the first offset whose record is stamped after `t`.
    fn end_at(&self, t: i64) -> Offset {
        self.rises
            .iter()
            .find(|(_, max)| *max > t)
            .map_or(self.end, |(o, _)| *o)
    }
}

impl Reader {
    /// Answers a training-set read.
    pub async fn training_set(&self, request: &TrainingSetRequest) -> ReadResult<TrainingSet> {
        let Some(first) = request.entities.first() else {
            return Err(bad("no entity rows given".into()));
        };
        let entities = concat_batches(first.schema_ref(), &request.entities)
            .map_err(|e| bad(format!("entity batches differ in schema: {e}")))?;
        if entities.num_rows() > MAX_ENTITY_ROWS {
            return Err(bad(format!(
                "{} entity rows; a training set takes at most {MAX_ENTITY_ROWS}: split them",
                entities.num_rows()
            )));
        }
        let times = row_times(&entities, &request.timestamp_column)?;
        let ttl = request
            .ttl
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        // Features grouped by table, in request order.
        let mut tables: Vec<(TableName, Vec<String>)> = Vec::new();
        for feature in &request.features {
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
        let mut fields: Vec<Field> = entities
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut columns: Vec<ArrayRef> = entities.columns().to_vec();
        for (table, wanted) in &tables {
            let (joined_fields, joined) = self
                .join_table(table, wanted, &entities, &times, ttl)
                .await?;
            fields.extend(joined_fields);
            columns.extend(joined);
        }
        let schema = Arc::new(Schema::new(fields));
        let rows = RecordBatch::try_new(schema, columns).map_err(|e| ReadError::Internal {
            reason: format!("assemble the training set: {e}"),
        })?;
        Ok(TrainingSet { rows })
    }

    /// The feature columns of one table for every entity row, with the provenance columns.
    async fn join_table(
        &self,
        name: &TableName,
        wanted: &[String],
        entities: &RecordBatch,
        times: &[i64],
        ttl: Option<i64>,
    ) -> ReadResult<(Vec<Field>, Vec<ArrayRef>)> {
        let table = self.catalog.load(name).await?;
        let metadata = table.metadata();
        let def = TableDef::from_iceberg(name.clone(), metadata)?;
        if def.is_append_only() {
            return Err(bad(format!(
                "feature table `{name}` has no primary key, so it has no values by key"
            )));
        }
        let codec = RecordCodec::of_table(&def, metadata)?;
        let loaded = Loaded {
            name,
            table,
            def,
            codec,
        };
        let schema = output_schema(name, &loaded.codec, wanted)?;
        let keys = entity_keys(&loaded, entities)?;
        let n = keys.len();
        let partition_of: Vec<PartitionId> =
            keys.iter().map(|k| loaded.codec.partition_of(k)).collect();
        // Rows in time order, joined segment by segment: each segment has its own base, the
        // newest snapshot at or before its earliest time, so rows spread over a long time do
        // not replay the whole span, and what a segment keeps in memory stays bounded.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (times[i], i));
        let mut joined = Joined {
            answers: vec![None; n],
            instants: vec![Offset(0); n],
            snapshots: vec![None; n],
        };
        let rows = Rows {
            keys: &keys,
            partition_of: &partition_of,
            times,
        };
        for segment in order.chunks(SEGMENT_ROWS) {
            self.join_segment(&loaded, &schema, segment, rows, ttl, &mut joined)
                .await?;
        }
        let Joined {
            answers,
            instants,
            snapshots,
        } = joined;
        finish_table(name, &schema, answers, &instants, snapshots, &partition_of)
    }

    /// Joins the rows `segment` (indexes in time order) of one feature table.
    async fn join_segment(
        &self,
        loaded: &Loaded<'_>,
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
        let base = newest_covered_by(loaded.metadata(), &start);
        let from = base.as_ref().map(|(_, o)| o.clone()).unwrap_or_default();

        // The changelog of the rows' partitions, once.
        let mut by_partition: HashMap<PartitionId, Vec<usize>> = HashMap::new();
        for &i in segment {
            by_partition.entry(partition_of[i]).or_default().push(i);
        }
        let changelog = self.changelog.as_ref();
        let replays = futures::future::try_join_all(partitions.iter().map(|&p| {
            let wanted: HashSet<&[u8]> =
                by_partition[&p].iter().map(|&i| keys[i].as_ref()).collect();
            let from = from.get(p);
            let end = end.get(p);
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
        let replays: HashMap<PartitionId, Replay> = replays.into_iter().collect();

        // Base rows (without a TTL: with one, every base value is expired at every row).
        let mut base_rows: HashMap<Bytes, RecordBatch> = HashMap::new();
        if ttl.is_none()
            && let Some((snapshot, _)) = &base
        {
            let distinct: Vec<Bytes> = {
                let mut seen = HashSet::new();
                segment
                    .iter()
                    .map(|&i| &keys[i])
                    .filter(|k| seen.insert(*k))
                    .cloned()
                    .collect()
            };
            for chunk in distinct.chunks(KEYS_PER_READ) {
                base_rows
                    .extend(snapshot_rows(loaded, &loaded.table, snapshot, chunk, schema).await?);
            }
        }

        // Sweep each partition's rows in time order.
        let snapshot_id = base.as_ref().map(|(s, _)| s.snapshot_id());
        let Joined {
            answers,
            instants,
            snapshots,
        } = joined;
        for (p, rows) in &mut by_partition {
            let replay = &replays[p];
            rows.sort_by_key(|&i| (times[i], i));
            let mut state: HashMap<&Bytes, (Option<&RecordBatch>, Option<i64>)> = HashMap::new();
            for &i in rows.iter() {
                if let Some(row) = base_rows.get(&keys[i]) {
                    state.entry(&keys[i]).or_insert((Some(row), None));
                }
            }
            let mut next = 0;
            for &i in rows.iter() {
                let t = times[i];
                while let Some(change) = replay.kept.get(next)
                    && change.visible_from <= t
                {
                    state.insert(
                        &change.key,
                        (change.row.as_ref(), Some(change.timestamp_ms)),
                    );
                    next += 1;
                }
                instants[i] = replay.end_at(t);
                snapshots[i] = snapshot_id;
                answers[i] = match state.get(&keys[i]) {
                    Some((Some(row), stamped)) => {
                        let fresh = match (ttl, stamped) {
                            (None, _) => true,
                            (Some(ttl), Some(ts)) => *ts > t.saturating_sub(ttl),
                            (Some(_), None) => false,
                        };
                        fresh.then(|| (*row).clone())
                    }
                    _ => None,
                };
            }
        }

        Ok(())
    }
}

/// The feature columns of one table from the joined rows, with the provenance columns.
fn finish_table(
    name: &TableName,
    schema: &SchemaRef,
    answers: Vec<Option<RecordBatch>>,
    instants: &[Offset],
    snapshots: Vec<Option<i64>>,
    partition_of: &[PartitionId],
) -> ReadResult<(Vec<Field>, Vec<ArrayRef>)> {
    let n = answers.len();
    // Feature columns: found rows, and a null row for the rest.
    let relaxed: SchemaRef = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
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
    let mut sources = vec![nulls];
    let mut picks = Vec::with_capacity(n);
    for answer in answers {
        match answer {
            Some(row) => {
                sources.push(conform(name, schema, &row)?);
                picks.push((sources.len() - 1, 0));
            }
            None => picks.push((0, 0)),
        }
    }
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

/// Each row's time in milliseconds since the epoch.
fn row_times(entities: &RecordBatch, column: &str) -> ReadResult<Vec<i64>> {
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
            "row {row}, column `{column}`: the time is null"
        )));
    }
    Ok(ms.values().to_vec())
}

/// The canonical key bytes of every entity row for the table's key columns.
fn entity_keys(loaded: &Loaded<'_>, entities: &RecordBatch) -> ReadResult<Vec<Bytes>> {
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
    wanted: &HashSet<&[u8]>,
) -> ReadResult<Replay> {
    let mut kept = Vec::new();
    let mut rises = Vec::new();
    let mut max = i64::MIN;
    let mut position = from;
    while position < end {
        let (chunk, next) = chunk_within(changelog, topic, partition, position, end).await?;
        position = next;
        let mut visible: HashMap<Offset, i64> = HashMap::new();
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
                    ChangeOp::Insert | ChangeOp::Upsert => Some(decoded.batch.slice(key.row, 1)),
                },
                timestamp_ms: decoded.timestamps_ms[key.row],
            });
        }
    }
    Ok(Replay { kept, rises, end })
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
                row_times(&batch, "at").unwrap(),
                [1_700_000_000_123, -1],
                "{zone:?}"
            );
        }
    }
}
