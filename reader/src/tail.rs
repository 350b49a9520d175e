//! The changelog tail of a FRESH read: the records between a snapshot's anchored offsets and
//! the heads seen when the read started, folded to the last change per key.

use std::collections::{HashMap, HashSet};

use arrow::array::RecordBatch;
use arrow::compute::{concat_batches, interleave_record_batch};
use bytes::Bytes;
use tracing::warn;
use unitable_core::changelog::Changelog;
use unitable_core::naming::TopicName;
use unitable_core::offsets::{Offset, PartitionOffsets};
use unitable_core::record::{ChangeOp, RecordCodec};

use crate::error::{ReadError, ReadResult};

/// A FRESH read refuses a tail longer than this many records: the committer is far behind, and
/// merging would hold the whole tail in memory. SNAPSHOT (or FRESH with `max_staleness`) still
/// serves.
pub const MAX_TAIL_RECORDS: u64 = 5_000_000;

/// The folded tail.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    /// Keys the tail changed (upserted or deleted); empty for append-only tables.
    pub(crate) keys: HashSet<Bytes>,
    /// The rows live after the tail, in changelog order per partition (decoded schema).
    pub(crate) live: Option<RecordBatch>,
}

/// Reads `from..to` of every partition in `to` and folds it.
pub(crate) async fn read_tail(
    changelog: &dyn Changelog,
    codec: &RecordCodec,
    topic: &TopicName,
    from: &PartitionOffsets,
    to: &PartitionOffsets,
) -> ReadResult<Tail> {
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut ops: Vec<Vec<ChangeOp>> = Vec::new();
    let mut records = 0u64;
    for (&partition, &end) in &to.0 {
        let watermarks = changelog.watermarks(topic, partition).await?;
        let mut position = from.get(partition);
        if position < watermarks.low {
            // Retention removed records the snapshot does not cover: the committer lost them
            // too (it counts them in unitable_committer_lost_records_total).
            warn!(%topic, %partition, from = %position, low = %watermarks.low,
                "changelog records after the snapshot were removed by retention");
            position = watermarks.low;
        }
        while position < end {
            let chunk = crate::range::chunk(changelog, topic, partition, position, end).await?;
            let Some(last) = chunk.last() else {
                break;
            };
            position = Offset(last.offset.0 + 1);
            let chunk: Vec<_> = chunk.into_iter().filter(|r| r.offset < end).collect();
            records += chunk.len() as u64;
            if records > MAX_TAIL_RECORDS {
                return Err(ReadError::TailTooLong {
                    records,
                    max: MAX_TAIL_RECORDS,
                });
            }
            let started = std::time::Instant::now();
            let (decoded, skipped) =
                codec
                    .decode_skipping(&chunk)
                    .map_err(|e| ReadError::Internal {
                        reason: format!("decode changelog records: {e}"),
                    })?;
            crate::decode_metrics::observe(
                codec.table(),
                "fresh",
                started,
                decoded.batch.num_rows(),
                skipped.len(),
            );
            for e in skipped {
                warn!(%topic, %partition, error = %e, "skipping a changelog record that is not a row of this table");
            }
            ops.push(decoded.ops);
            batches.push(decoded.batch);
        }
    }
    if batches.is_empty() {
        return Ok(Tail::default());
    }
    let schema = codec.decoded_schema();
    if codec.is_append_only() {
        let live = concat_batches(&schema, &batches).map_err(|e| ReadError::Internal {
            reason: format!("combine tail rows: {e}"),
        })?;
        return Ok(Tail {
            keys: HashSet::new(),
            live: Some(live),
        });
    }
    // Last change per key: (batch, row, op), overwritten in changelog order. Keys live in one
    // partition each, so per-partition order is the order that matters.
    let mut last: HashMap<Bytes, (usize, usize, ChangeOp)> = HashMap::new();
    for (b, batch) in batches.iter().enumerate() {
        let (keys, errors) = codec.encode_keys(batch).map_err(|e| ReadError::Internal {
            reason: format!("encode tail keys: {e}"),
        })?;
        if let Some(e) = errors.first() {
            return Err(ReadError::Internal {
                reason: format!("a decoded changelog row has no valid key: {}", e.reason),
            });
        }
        for key in keys {
            last.insert(key.key, (b, key.row, ops[b][key.row]));
        }
    }
    let mut live: Vec<(usize, usize)> = last
        .values()
        .filter(|(_, _, op)| *op != ChangeOp::Delete)
        .map(|&(b, r, _)| (b, r))
        .collect();
    live.sort_unstable();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let live = interleave_record_batch(&refs, &live).map_err(|e| ReadError::Internal {
        reason: format!("gather tail rows: {e}"),
    })?;
    Ok(Tail {
        keys: last.into_keys().collect(),
        live: Some(live),
    })
}
