//! The changelog tail of a FRESH read: the records between a snapshot's anchored offsets and
//! the heads seen when the read started, folded to the last change per key.

use std::collections::{HashMap, HashSet};

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::{concat_batches, interleave_record_batch};
use arrow::datatypes::{Int32Type, Int64Type};
use bytes::Bytes;
use tracing::warn;
use unitable_core::changelog::Changelog;
use unitable_core::naming::TopicName;
use unitable_core::offsets::{Offset, PartitionOffsets};
use unitable_core::record::{ChangeOp, RecordCodec};

use crate::error::{ReadError, ReadResult};
use crate::pinned::internal;

/// A FRESH read refuses a tail longer than this many records: the committer is far behind, and
/// merging would hold the whole tail in memory. SNAPSHOT (or FRESH with `max_staleness`) still
/// serves.
pub const MAX_TAIL_RECORDS: u64 = 5_000_000;

type FastHash = foldhash::fast::RandomState;

/// The keys a tail changed (upserted or deleted), as a FRESH read probes them: once per
/// snapshot row.
#[derive(Debug, Clone)]
pub(crate) enum TailKeys {
    /// The primary key is one integer column: its values, probed straight from the stored
    /// rows' key column without writing a key per row.
    Integer(HashSet<i64, FastHash>),
    /// Canonical keys ([`RecordCodec::encode_keys`]).
    Canonical(HashSet<Bytes, FastHash>),
}

impl Default for TailKeys {
    fn default() -> Self {
        Self::Canonical(HashSet::default())
    }
}

impl TailKeys {
    /// An empty set for canonical keys of `codec`'s table.
    pub(crate) fn new(codec: &RecordCodec) -> Self {
        if codec.has_integer_key() {
            Self::Integer(HashSet::default())
        } else {
            Self::Canonical(HashSet::default())
        }
    }

    /// The set of `keys` (canonical keys of `codec`'s table).
    pub(crate) fn build(codec: &RecordCodec, keys: impl IntoIterator<Item = Bytes>) -> Self {
        let mut set = Self::new(codec);
        for key in keys {
            set.insert(codec, &key);
        }
        set
    }

    /// Adds a canonical key of `codec`'s table.
    pub(crate) fn insert(&mut self, codec: &RecordCodec, key: &Bytes) {
        match self {
            // A key that is not `{"<name>":<integer>}` is no stored row's key (every integer's
            // canonical key reads back to it), so it can supersede nothing.
            Self::Integer(set) => {
                if let Some(v) = codec.integer_key(key) {
                    set.insert(v);
                }
            }
            Self::Canonical(set) => {
                set.insert(key.clone());
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Self::Integer(set) => set.is_empty(),
            Self::Canonical(set) => set.is_empty(),
        }
    }

    /// Clears `keep` for the rows of `keys` (the key columns of stored rows, in key order) whose
    /// key is in the set; gives how many it cleared.
    pub(crate) fn supersede(
        &self,
        codec: &RecordCodec,
        keys: &RecordBatch,
        keep: &mut [bool],
    ) -> ReadResult<usize> {
        let mut dropped = 0;
        let mut mark = |row: usize, hit: bool| {
            if hit {
                keep[row] = false;
                dropped += 1;
            }
        };
        if let Self::Integer(set) = self
            && let [column] = keys.columns()
            && column.null_count() == 0
        {
            if let Some(a) = column.as_primitive_opt::<Int64Type>() {
                for (row, v) in a.values().iter().enumerate() {
                    mark(row, set.contains(v));
                }
                return Ok(dropped);
            }
            if let Some(a) = column.as_primitive_opt::<Int32Type>() {
                for (row, v) in a.values().iter().enumerate() {
                    mark(row, set.contains(&i64::from(*v)));
                }
                return Ok(dropped);
            }
        }
        let errors = codec
            .for_each_key(keys, |row, key| {
                let hit = match self {
                    Self::Canonical(set) => set.contains(key),
                    Self::Integer(set) => codec.integer_key(key).is_some_and(|v| set.contains(&v)),
                };
                mark(row, hit);
            })
            .map_err(|e| internal("encode keys", e))?;
        if let Some(e) = errors.first() {
            return Err(internal("encode a key of a stored row", &e.reason));
        }
        Ok(dropped)
    }
}

/// The folded tail.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    /// Keys the tail changed (upserted or deleted); empty for append-only tables.
    pub(crate) keys: TailKeys,
    /// The rows live after the tail, in changelog order within each partition (decoded
    /// schema), in batches read one after the other.
    pub(crate) live: Vec<RecordBatch>,
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
            keys: TailKeys::default(),
            live: vec![live],
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
        keys: TailKeys::build(codec, last.into_keys()),
        live: vec![live],
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};

    use super::*;

    fn codec(columns: &[&str], key: &[&str]) -> RecordCodec {
        crate::testing::codec(&crate::testing::table("t.kv", columns, key, 3))
    }

    /// The rows of `stored` (a key-column batch) each set supersedes, by probing and by the
    /// oracle: membership of the row's canonical key among the tail's canonical keys.
    fn check(codec: &RecordCodec, tail: &RecordBatch, stored: &RecordBatch, integer: bool) {
        let (tail_keys, errors) = codec.encode_keys(tail).unwrap();
        assert!(errors.is_empty());
        let canonical: HashSet<Bytes> = tail_keys.iter().map(|k| k.key.clone()).collect();
        let keys = TailKeys::build(codec, tail_keys.into_iter().map(|k| k.key));
        assert_eq!(matches!(keys, TailKeys::Integer(_)), integer);
        let (stored_keys, _) = codec.encode_keys(stored).unwrap();
        let expected: Vec<bool> = stored_keys
            .iter()
            .map(|k| !canonical.contains(&k.key))
            .collect();
        let mut keep = vec![true; stored.num_rows()];
        let dropped = keys.supersede(codec, stored, &mut keep).unwrap();
        assert_eq!(keep, expected);
        assert_eq!(dropped, expected.iter().filter(|k| !**k).count());
    }

    fn ids64(ids: &[i64]) -> ArrayRef {
        Arc::new(Int64Array::from(ids.to_vec()))
    }

    #[test]
    fn integer_and_canonical_keys_supersede_the_same_rows() {
        let tail_ids = [5, -3, 0, i64::MAX, i64::MIN, 77];
        let stored_ids: Vec<i64> = (-5..100).chain([i64::MIN, i64::MAX, 1 << 40]).collect();
        let c = codec(&["id:int64!", "v:string"], &["id"]);
        let key_batch = |ids: &[i64]| RecordBatch::try_from_iter([("id", ids64(ids))]).unwrap();
        check(&c, &key_batch(&tail_ids), &key_batch(&stored_ids), true);

        let c = codec(&["id:int32!", "v:string"], &["id"]);
        let key_batch = |ids: &[i64]| {
            let ids: ArrayRef =
                Arc::new(Int32Array::from_iter_values(ids.iter().map(|&i| i as i32)));
            RecordBatch::try_from_iter([("id", ids)]).unwrap()
        };
        let small: Vec<i64> = stored_ids.iter().map(|&i| i64::from(i as i32)).collect();
        check(&c, &key_batch(&tail_ids[..3]), &key_batch(&small), true);

        let c = codec(&["id:string!", "v:string"], &["id"]);
        let key_batch = |ids: &[&str]| {
            let ids: ArrayRef = Arc::new(StringArray::from(ids.to_vec()));
            RecordBatch::try_from_iter([("id", ids)]).unwrap()
        };
        check(
            &c,
            &key_batch(&["a", "7", "\"q\""]),
            &key_batch(&["a", "b", "7", "\"q\"", ""]),
            false,
        );

        let c = codec(&["a:int64!", "b:string!", "v:string"], &["a", "b"]);
        let key_batch = |rows: &[(i64, &str)]| {
            let a = ids64(&rows.iter().map(|r| r.0).collect::<Vec<_>>());
            let b: ArrayRef = Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            ));
            RecordBatch::try_from_iter([("a", a), ("b", b)]).unwrap()
        };
        check(
            &c,
            &key_batch(&[(1, "x"), (2, "y")]),
            &key_batch(&[(1, "x"), (1, "y"), (2, "y"), (3, "x")]),
            false,
        );
    }

    #[test]
    fn a_stored_row_without_a_key_is_an_error_not_a_miss() {
        let c = codec(&["id:int64!", "v:string"], &["id"]);
        let keys = TailKeys::build(&c, [Bytes::from_static(br#"{"id":1}"#)]);
        assert!(matches!(keys, TailKeys::Integer(_)));
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
        let stored = RecordBatch::try_from_iter([("id", ids)]).unwrap();
        let mut keep = vec![true; 2];
        let e = keys.supersede(&c, &stored, &mut keep).unwrap_err();
        assert!(
            e.to_string().contains("encode a key of a stored row"),
            "{e}"
        );
    }
}
