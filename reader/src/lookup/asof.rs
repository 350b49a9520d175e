//! LOOKUP as of an instant, exact to the changelog record, without scanning a snapshot.
//!
//! An instant is a position in every changelog partition the keys live in (an exclusive end
//! offset per partition): given as offsets, or derived from a time `T` as the first offset of
//! the partition whose record timestamp is after `T` (so every record before it, and only
//! those, counts; see docs/reader.md for the rule under timestamp disorder). A key's value at
//! that position is its last record in `[S, end)` of its partition, where `S` is the anchored
//! offsets of the newest snapshot at or before the position in every asked-for partition;
//! keys without such a record are read from that snapshot with a scan filtered by key (the key
//! values pushed down as an Iceberg `IN` predicate per key column, which prunes files and row
//! groups by their bounds, then an exact comparison of the canonical key bytes). A snapshot
//! as-of (`snapshot_id`) reads only that snapshot, the same way.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use iceberg::spec::{SnapshotRef, TableMetadata};
use iceberg::table::Table;
use tracing::warn;
use unitable_core::changelog::{Changelog, StoredRecord};
use unitable_core::commit::read::{ancestors, anchored_offsets, changelog_offsets};
use unitable_core::naming::{TableName, TopicName};
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_core::record::{ChangeOp, DecodedBatch, EncodedKey, RecordCodec};
use unitable_core::table::TableDef;

use super::state::TableLookup;
use super::{LookupRequest, LookupResponse, assemble, keys, output_schema, read_located};
use crate::Reader;
use crate::error::{ReadError, ReadResult};
use crate::freshness::{as_of, as_of_in};
use crate::range::chunk_within;
use crate::snapshot::SnapshotSelector;

/// Counter of as-of lookups by where the rows not changed after the base came from: `index`
/// (the lookup state's key index of its base), `scan` (a key-filtered snapshot scan), or
/// `changelog` (no snapshot read was needed).
const LOOKUP_AS_OF: &str = "unitable_lookup_as_of_total";

/// The instant a LOOKUP answers as of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupAsOf {
    /// One snapshot alone (by id, the latest, or the one current at a time): exact to the
    /// snapshot, not to the record.
    Snapshot(SnapshotSelector),
    /// Exact to the record: every changelog record with a timestamp at or before this time
    /// (ms since the epoch) that precedes, in its partition, the first record after it.
    Timestamp(i64),
    /// Exact to the record: every changelog record below these offsets (exclusive ends). Every
    /// partition the keys live in must be listed.
    Offsets(PartitionOffsets),
}

impl LookupAsOf {
    fn describe(&self) -> String {
        match self {
            LookupAsOf::Snapshot(SnapshotSelector::Latest) => "the latest snapshot".into(),
            LookupAsOf::Snapshot(SnapshotSelector::Id(id)) => format!("snapshot {id}"),
            LookupAsOf::Snapshot(SnapshotSelector::AsOf(ms)) | LookupAsOf::Timestamp(ms) => {
                chrono::DateTime::from_timestamp_millis(*ms)
                    .map_or_else(|| format!("{ms} ms"), |t| t.to_rfc3339())
            }
            LookupAsOf::Offsets(o) => format!("offsets {o}"),
        }
    }
}

/// One table as loaded for an as-of lookup.
pub(super) struct Loaded {
    pub(super) name: TableName,
    pub(super) table: Table,
    pub(super) def: TableDef,
    pub(super) codec: RecordCodec,
}

impl Loaded {
    /// `name` from the catalog, with its definition and codec; a table without a primary key
    /// has no rows by key and is refused.
    pub(super) async fn open(
        catalog: &unitable_core::catalog::TableCatalog,
        name: &TableName,
    ) -> ReadResult<Self> {
        let table = catalog.load(name).await?;
        let metadata = table.metadata();
        let def = TableDef::from_iceberg(name.clone(), metadata)?;
        if def.is_append_only() {
            return Err(ReadError::BadRequest {
                reason: format!("table `{name}` has no primary key, so it has no rows by key"),
            });
        }
        let codec = RecordCodec::of_table(&def, metadata)?;
        Ok(Self {
            name: name.clone(),
            table,
            def,
            codec,
        })
    }

    pub(super) fn metadata(&self) -> &TableMetadata {
        self.table.metadata()
    }

    pub(super) fn topic(&self) -> &TopicName {
        &self.def.changelog.topic
    }
}

impl Reader {
    /// A LOOKUP as of `at`.
    pub(super) async fn lookup_as_of(
        &self,
        request: &LookupRequest,
        at: &LookupAsOf,
    ) -> ReadResult<LookupResponse> {
        let loaded = Loaded::open(&self.catalog, &request.table).await?;
        let keys = keys::canonical_keys(&loaded.codec, &loaded.def, &request.keys)?;
        let schema = output_schema(&request.table, &loaded.codec, &request.columns)?;
        let partitions: BTreeSet<PartitionId> =
            keys.iter().map(|k| loaded.codec.partition_of(k)).collect();
        let distinct: Vec<Bytes> = {
            let mut seen = HashSet::new();
            keys.iter().filter(|k| seen.insert(*k)).cloned().collect()
        };

        let mut indexed = None;
        let (snapshot, served, replayed) = match at {
            LookupAsOf::Snapshot(selector) => {
                let snapshot = select_snapshot(&loaded, *selector)?;
                (Some(snapshot), None, HashMap::new())
            }
            LookupAsOf::Timestamp(_) | LookupAsOf::Offsets(_) => {
                let end = self.resolve_ends(&loaded, at, &partitions).await?;
                // The lookup state's base, when it is at or before the instant, has a key index;
                // otherwise the newest snapshot at or before it.
                indexed = self.indexed_base(&loaded, &end);
                let base = match &indexed {
                    Some((_, snapshot, offsets)) => Some((snapshot.clone(), offsets.clone())),
                    None => newest_covered_by(loaded.metadata(), &end),
                };
                let from = base.as_ref().map(|(_, o)| o.clone()).unwrap_or_default();
                let replayed = self
                    .replay_keys(&loaded, at, &from, &end, &distinct)
                    .await?;
                (base.map(|(s, _)| s), Some(end), replayed)
            }
        };

        // Keys the changelog range did not settle come from the snapshot.
        let rest: Vec<Bytes> = distinct
            .iter()
            .filter(|k| !replayed.contains_key(*k))
            .cloned()
            .collect();
        let via_index = match (&snapshot, &indexed) {
            (Some(s), Some((state, _, _))) if !rest.is_empty() => {
                index_rows(state, &loaded.name, s.snapshot_id(), &rest, &schema).await?
            }
            _ => None,
        };
        let source = match (&snapshot, &via_index) {
            (_, Some(_)) => "index",
            (Some(_), None) if !rest.is_empty() => "scan",
            _ => "changelog",
        };
        let from_snapshot = match (via_index, &snapshot) {
            (Some(rows), _) => rows,
            (None, Some(s)) if !rest.is_empty() => {
                // The state's base may be newer than the metadata loaded here.
                let table = if loaded.metadata().snapshot_by_id(s.snapshot_id()).is_some() {
                    loaded.table.clone()
                } else {
                    self.catalog.load(&loaded.name).await?
                };
                snapshot_rows(&loaded, &table, s, &rest, &schema).await?
            }
            _ => HashMap::new(),
        };
        metrics::counter!(LOOKUP_AS_OF, "table" => loaded.name.to_string(), "base" => source)
            .increment(1);
        let answers: Vec<Option<RecordBatch>> = keys
            .iter()
            .map(|k| match replayed.get(k) {
                Some(change) => change.clone(),
                None => from_snapshot.get(k).cloned(),
            })
            .collect();
        let (rows, missing) = assemble(&request.table, &schema, answers)?;
        let as_of = match served {
            // A snapshot alone: it reflects its anchored offsets in every partition.
            None => {
                let offsets = snapshot
                    .as_ref()
                    .map(|s| anchored_offsets(loaded.metadata(), s.snapshot_id()))
                    .unwrap_or_default();
                as_of(
                    self.changelog.as_ref(),
                    loaded.topic(),
                    loaded.def.changelog.partitions,
                    offsets,
                    snapshot.as_ref(),
                )
                .await
            }
            // Record-exact: the position read in each of the keys' partitions.
            Some(end) => {
                as_of_in(
                    self.changelog.as_ref(),
                    loaded.topic(),
                    partitions.iter().copied(),
                    end,
                    snapshot.as_ref(),
                )
                .await
            }
        };
        Ok(LookupResponse {
            as_of,
            rows,
            missing,
        })
    }

    /// The table's lookup state with its base snapshot and offsets, when one is built for this
    /// very table (same uuid and schema) and its base is at or before `end` in every partition
    /// `end` lists.
    pub(super) fn indexed_base(
        &self,
        loaded: &Loaded,
        end: &PartitionOffsets,
    ) -> Option<(Arc<TableLookup>, SnapshotRef, PartitionOffsets)> {
        let state = self.existing_lookup_state(&loaded.name)?;
        let metadata = loaded.metadata();
        if state.uuid != metadata.uuid().to_string()
            || state.schema_id != metadata.current_schema_id()
        {
            return None;
        }
        let (snapshot, offsets) = state.base_snapshot();
        let snapshot = snapshot?;
        end.0
            .iter()
            .all(|(&p, &e)| offsets.get(p) <= e)
            .then_some((state, snapshot, offsets))
    }

    /// The exclusive end offset of the instant `at` in each of `partitions`.
    pub(super) async fn resolve_ends(
        &self,
        loaded: &Loaded,
        at: &LookupAsOf,
        partitions: &BTreeSet<PartitionId>,
    ) -> ReadResult<PartitionOffsets> {
        let topic = loaded.topic();
        let changelog = self.changelog.as_ref();
        let ends = futures::future::try_join_all(partitions.iter().map(|&p| async move {
            // The watermarks first: a time no record is after yet ends at the head read here,
            // before any record after the time could have been appended.
            let w = changelog.watermarks(topic, p).await?;
            let end = match at {
                LookupAsOf::Offsets(offsets) => {
                    let Some(&end) = offsets.0.get(&p) else {
                        return Err(ReadError::BadRequest {
                            reason: format!(
                                "field `as_of_offsets`: must list partition {p} of `{}`, which a key lives in (given: {offsets})",
                                loaded.name
                            ),
                        });
                    };
                    if end > w.high {
                        return Err(ReadError::BadRequest {
                            reason: format!(
                                "field `as_of_offsets`: offset {end} of partition {p} of `{}` is past its high watermark {}",
                                loaded.name, w.high
                            ),
                        });
                    }
                    end
                }
                LookupAsOf::Timestamp(ms) => {
                    // Record times are never negative (Kafka reserves negative times for
                    // "none"), and brokers refuse negative look-ups: before 0 is before all.
                    let after = changelog
                        .offset_for_timestamp(topic, p, ms.saturating_add(1).max(0))
                        .await?;
                    match after {
                        // The first retained record is already after the time, and older
                        // ones were removed: where the instant falls among them is unknown.
                        Some(first) if first <= w.low && w.low.0 > 0 => {
                            return Err(ReadError::AsOfUnavailable {
                                table: loaded.name.clone(),
                                at: at.describe(),
                                partition: p.0,
                                reason: format!(
                                    "keeps only records from offset {} on, all after that time",
                                    w.low
                                ),
                            });
                        }
                        Some(first) => first,
                        None => w.high,
                    }
                }
                LookupAsOf::Snapshot(_) => w.high,
            };
            Ok::<_, ReadError>((p, end))
        }))
        .await?;
        Ok(PartitionOffsets(ends.into_iter().collect()))
    }

    /// Replays `[from, end)` of each partition in `end`, keeping the last change of each of
    /// `keys`: `Some(row)` for an insert or upsert, `None` for a delete. Keys without a record
    /// in the range are absent.
    async fn replay_keys(
        &self,
        loaded: &Loaded,
        at: &LookupAsOf,
        from: &PartitionOffsets,
        end: &PartitionOffsets,
        keys: &[Bytes],
    ) -> ReadResult<HashMap<Bytes, Option<RecordBatch>>> {
        let wanted: HashSet<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let wanted = &wanted;
        let changelog = self.changelog.as_ref();
        let parts = futures::future::try_join_all(end.0.iter().map(|(&p, &end)| async move {
            let start = from.get(p);
            if start >= end {
                return Ok(HashMap::new());
            }
            let w = changelog.watermarks(loaded.topic(), p).await?;
            if start < w.low {
                return Err(ReadError::AsOfUnavailable {
                    table: loaded.name.clone(),
                    at: at.describe(),
                    partition: p.0,
                    reason: format!(
                        "no longer holds offsets {start}..{} (retention kept {} on), and no \
                         retained snapshot covers them",
                        w.low, w.low
                    ),
                });
            }
            replay_partition(
                changelog,
                &loaded.codec,
                loaded.topic(),
                p,
                start,
                end,
                wanted,
            )
            .await
        }))
        .await?;
        Ok(parts.into_iter().flatten().collect())
    }
}

/// The last change of each wanted key in `[from, end)` of one partition.
async fn replay_partition(
    changelog: &dyn Changelog,
    codec: &RecordCodec,
    topic: &TopicName,
    partition: PartitionId,
    from: Offset,
    end: Offset,
    wanted: &HashSet<&[u8]>,
) -> ReadResult<HashMap<Bytes, Option<RecordBatch>>> {
    let mut out = HashMap::new();
    let mut position = from;
    while position < end {
        let (chunk, next) = chunk_within(changelog, topic, partition, position, end).await?;
        position = next;
        // Only records of asked-for keys are decoded.
        let mine: Vec<StoredRecord> = chunk
            .into_iter()
            .filter(|r| {
                r.offset < end
                    && r.record
                        .key
                        .as_ref()
                        .is_some_and(|k| wanted.contains(k.as_ref()))
            })
            .collect();
        if mine.is_empty() {
            continue;
        }
        let (decoded, encoded) = decode_keyed(codec, topic, partition, &mine)?;
        // Rows are in offset order: the last one of a key wins.
        for key in encoded {
            let change = match decoded.ops[key.row] {
                ChangeOp::Delete => None,
                ChangeOp::Insert | ChangeOp::Upsert => Some(decoded.batch.slice(key.row, 1)),
            };
            out.insert(key.key, change);
        }
    }
    Ok(out)
}

/// The rows of `keys` in the lookup state's base snapshot `snapshot_id`, from its key index
/// and the row-block cache; `None` when the base moved on or a data file it points into is
/// gone (the caller then reads the snapshot instead).
/// Decodes `records` (rows of the table; others are logged and skipped) and encodes each
/// decoded row's key, in row order.
pub(super) fn decode_keyed(
    codec: &RecordCodec,
    topic: &TopicName,
    partition: PartitionId,
    records: &[StoredRecord],
) -> ReadResult<(DecodedBatch, Vec<EncodedKey>)> {
    let (decoded, skipped) = codec
        .decode_skipping(records)
        .map_err(|e| ReadError::Internal {
            reason: format!("decode changelog records: {e}"),
        })?;
    for e in skipped {
        warn!(%topic, %partition, error = %e, "skipping a changelog record that is not a row of this table");
    }
    let (encoded, errors) = codec
        .encode_keys(&decoded.batch)
        .map_err(|e| ReadError::Internal {
            reason: format!("encode changelog keys: {e}"),
        })?;
    if let Some(e) = errors.first() {
        return Err(ReadError::Internal {
            reason: format!("a decoded changelog row has no valid key: {}", e.reason),
        });
    }
    Ok((decoded, encoded))
}

pub(super) async fn index_rows(
    state: &TableLookup,
    table: &TableName,
    snapshot_id: i64,
    keys: &[Bytes],
    schema: &SchemaRef,
) -> ReadResult<Option<HashMap<Bytes, RecordBatch>>> {
    Ok(index_rows_at(state, table, snapshot_id, keys, schema)
        .await?
        .map(|rows| rows.sliced()))
}

/// Rows found by key: the batches they are in and each key's (batch, row) (were a key listed
/// twice, the later entry would count).
#[derive(Default)]
pub(super) struct RowsAt {
    pub(super) batches: Vec<RecordBatch>,
    pub(super) at: Vec<(Bytes, (usize, usize))>,
}

impl RowsAt {
    /// Each key's row as a batch of its own.
    pub(super) fn sliced(self) -> HashMap<Bytes, RecordBatch> {
        let batches = self.batches;
        self.at
            .into_iter()
            .map(|(key, (batch, row))| (key, batches[batch].slice(row, 1)))
            .collect()
    }
}

/// [`index_rows`] without slicing: the rows where they were read.
pub(super) async fn index_rows_at(
    state: &TableLookup,
    table: &TableName,
    snapshot_id: i64,
    keys: &[Bytes],
    schema: &SchemaRef,
) -> ReadResult<Option<RowsAt>> {
    let Some(locations) = state.base_rows(snapshot_id, keys) else {
        return Ok(None);
    };
    let (sources, at) = match read_located(state, table, schema, locations.iter().flatten()).await {
        Ok(read) => read,
        Err(e @ (ReadError::DataFile { .. } | ReadError::LookupState { .. })) => {
            warn!(%table, "as-of lookup reads the snapshot instead of the key index: {e}");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    // `at` follows the keys that have a location.
    let found = keys.iter().zip(&locations).filter(|(_, l)| l.is_some());
    Ok(Some(RowsAt {
        batches: sources,
        at: found.map(|(key, _)| key.clone()).zip(at).collect(),
    }))
}

/// The snapshot `selector` picks, which must exist.
fn select_snapshot(loaded: &Loaded, selector: SnapshotSelector) -> ReadResult<SnapshotRef> {
    let metadata = loaded.metadata();
    let not_found = |what: String| ReadError::SnapshotNotFound {
        table: loaded.name.clone(),
        what,
    };
    match selector {
        SnapshotSelector::Latest => metadata
            .current_snapshot()
            .cloned()
            .ok_or_else(|| not_found("yet (nothing committed)".into())),
        SnapshotSelector::Id(id) => metadata
            .snapshot_by_id(id)
            .cloned()
            .ok_or_else(|| not_found(format!("with id {id} (expired or never committed)"))),
        SnapshotSelector::AsOf(ms) => unitable_core::commit::read::snapshot_as_of(metadata, ms)
            .ok_or_else(|| {
                let at = chrono::DateTime::from_timestamp_millis(ms)
                    .map_or_else(|| ms.to_string(), |t| t.to_rfc3339());
                not_found(format!("as of {at} (before its first commit, or expired)"))
            }),
    }
}

/// The newest snapshot of the current snapshot's ancestry whose anchored offsets are at or
/// below `end` in every partition `end` lists, with those offsets. Snapshots without anchored
/// offsets (none of their retained ancestors was written by unitable) are never chosen.
pub(crate) fn newest_covered_by(
    metadata: &TableMetadata,
    end: &PartitionOffsets,
) -> Option<(SnapshotRef, PartitionOffsets)> {
    let chain = ancestors(metadata, metadata.current_snapshot_id()?);
    // Anchored offsets, oldest first: a snapshot's own, or its newest ancestor's.
    let mut anchored: Vec<Option<PartitionOffsets>> = Vec::with_capacity(chain.len());
    let mut carried = None;
    for snapshot in chain.iter().rev() {
        if let Some(own) = changelog_offsets(snapshot) {
            carried = Some(own);
        }
        anchored.push(carried.clone());
    }
    chain
        .into_iter()
        .zip(anchored.into_iter().rev())
        .find_map(|(snapshot, offsets)| {
            let offsets = offsets?;
            end.0
                .iter()
                .all(|(&p, &e)| offsets.get(p) <= e)
                .then_some((snapshot, offsets))
        })
}

mod scan;
#[cfg(test)]
mod tests;

pub(super) use scan::{snapshot_rows, snapshot_rows_at};
