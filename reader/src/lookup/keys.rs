//! Request keys -> canonical key bytes (the changelog's key encoding), with errors naming the
//! key and the field.

use arrow::array::RecordBatch;
use bytes::Bytes;
use unitable_core::record::{ChangeOp, EncodeError, RecordCodec};

use crate::error::{ReadError, ReadResult};

/// Most keys one lookup may ask for.
pub const MAX_KEYS: usize = 10_000;

/// The keys of a lookup: rows of the primary-key columns (other columns are ignored).
#[derive(Debug, Clone)]
pub enum LookupKeys {
    /// JSON objects, one per line, in the changelog's JSON mapping.
    JsonLines(Vec<u8>),
    /// Arrow batches whose columns are named after the key columns.
    Arrow(Vec<RecordBatch>),
}

impl LookupKeys {
    /// How many keys the request holds (lines with content, or rows).
    pub fn count(&self) -> usize {
        match self {
            LookupKeys::JsonLines(lines) => lines
                .split(|b| *b == b'\n')
                .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
                .count(),
            LookupKeys::Arrow(batches) => batches.iter().map(RecordBatch::num_rows).sum(),
        }
    }
}

fn too_many(n: usize) -> ReadError {
    ReadError::BadRequest {
        reason: format!("{n} keys asked for; a lookup takes at most {MAX_KEYS}: split the request"),
    }
}

fn mismatch(e: EncodeError) -> ReadError {
    match e {
        EncodeError::BatchMismatch { column, reason, .. } => ReadError::InvalidKey {
            index: 0,
            field: Some(column),
            reason,
        },
        e @ EncodeError::NeedsPrimaryKey { .. } => ReadError::BadRequest {
            reason: e.to_string(),
        },
    }
}

/// The canonical bytes of every key, in request order.
pub(crate) fn canonical_keys(codec: &RecordCodec, keys: &LookupKeys) -> ReadResult<Vec<Bytes>> {
    match keys {
        LookupKeys::JsonLines(input) => {
            let lines = unitable_core::record::json_lines(input).len();
            if lines > MAX_KEYS {
                return Err(too_many(lines));
            }
            let (parsed, errors) = codec.parse_json_rows(ChangeOp::Delete, input, 0);
            if let Some(e) = errors.into_iter().min_by_key(|e| e.row) {
                return Err(ReadError::InvalidKey {
                    index: e.row,
                    field: e.field,
                    reason: e.reason,
                });
            }
            let (encoded, errors) = codec.encode_keys(&parsed.batch).map_err(mismatch)?;
            if let Some(e) = errors.into_iter().min_by_key(|e| e.row) {
                return Err(ReadError::InvalidKey {
                    index: parsed.rows[e.row],
                    field: e.field,
                    reason: e.reason,
                });
            }
            Ok(encoded.into_iter().map(|k| k.key).collect())
        }
        LookupKeys::Arrow(batches) => {
            let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
            if n > MAX_KEYS {
                return Err(too_many(n));
            }
            let mut out = Vec::with_capacity(n);
            for batch in batches {
                let first = out.len();
                let (encoded, errors) = codec.encode_keys(batch).map_err(mismatch)?;
                if let Some(e) = errors.into_iter().min_by_key(|e| e.row) {
                    return Err(ReadError::InvalidKey {
                        index: first + e.row,
                        field: e.field,
                        reason: e.reason,
                    });
                }
                out.extend(encoded.into_iter().map(|k| k.key));
            }
            Ok(out)
        }
    }
}
