//! Rows of given keys in one snapshot, read with the key values pushed into the Iceberg scan.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use bytes::Bytes;
use datafusion::common::ScalarValue;
use futures::TryStreamExt;
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::SnapshotRef;
use iceberg::table::Table;
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;
use unitable_core::changelog::{ChangeRecord, StoredRecord};
use unitable_core::offsets::Offset;
use unitable_core::record::RecordCodec;
use unitable_core::scan::{ScanOptions, read_scan};

use super::{Loaded, RowsAt};
use crate::error::{ReadError, ReadResult};
use crate::filter::datum;
use crate::lookup::FastSet;

/// The rows of `keys` in `snapshot`, by canonical key bytes, read with the key values pushed
/// into the scan (files and row groups whose key bounds exclude every key are skipped, and
/// iceberg-rust filters rows by the predicate), then matched exactly by key bytes.
pub(in crate::lookup) async fn snapshot_rows(
    loaded: &Loaded,
    table: &Table,
    snapshot: &SnapshotRef,
    keys: &[Bytes],
    schema: &SchemaRef,
) -> ReadResult<HashMap<Bytes, RecordBatch>> {
    Ok(snapshot_rows_at(loaded, table, snapshot, keys, schema)
        .await?
        .sliced())
}

/// [`snapshot_rows`] without slicing: the scan's batches that hold a key, and each key's row.
pub(in crate::lookup) async fn snapshot_rows_at(
    loaded: &Loaded,
    table: &Table,
    snapshot: &SnapshotRef,
    keys: &[Bytes],
    schema: &SchemaRef,
) -> ReadResult<RowsAt> {
    let metadata = table.metadata();
    let snapshot_schema = snapshot
        .schema(metadata)
        .map_err(|e| ReadError::iceberg("the snapshot's schema", e))?;
    let current = metadata.current_schema();
    let fail = |reason: String| ReadError::LookupState {
        table: loaded.name.clone(),
        reason,
    };
    // Columns by field id, named as the snapshot names them: the key first, then the rest of
    // the output that the snapshot has (a newer column is null in its rows).
    let mut select: Vec<String> = Vec::new();
    let mut key_types = Vec::new();
    for column in &loaded.def.primary_key {
        let field = current
            .field_by_name(column)
            .and_then(|f| snapshot_schema.field_by_id(f.id))
            .ok_or_else(|| fail(format!("key column `{column}` is not in the snapshot")))?;
        select.push(field.name.clone());
        key_types.push(field.field_type.as_primitive_type().cloned());
    }
    for field in schema.fields() {
        let in_snapshot = field
            .metadata()
            .get(PARQUET_FIELD_ID_META_KEY)
            .and_then(|id| id.parse::<i32>().ok())
            .and_then(|id| snapshot_schema.field_by_id(id));
        if let Some(f) = in_snapshot
            && !select.contains(&f.name)
        {
            select.push(f.name.clone());
        }
    }
    let mut scan = table
        .scan()
        .snapshot_id(snapshot.snapshot_id())
        .select(select.iter().map(String::as_str));
    let key_columns = &loaded.def.primary_key;
    if let Some(predicate) = key_predicate(&loaded.codec, keys, key_columns, &select, &key_types)? {
        scan = scan.with_filter(predicate);
    }
    let scan = scan
        .build()
        .map_err(|e| ReadError::iceberg("plan the scan", e))?;
    let mut stream = read_scan(table, &scan, ScanOptions::default())
        .await
        .map_err(|e| ReadError::iceberg("start the scan", e))?;
    let wanted: FastSet<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
    let key_count = loaded.def.primary_key.len();
    let key_schema = Arc::new(Schema::new(
        loaded
            .def
            .primary_key
            .iter()
            .map(|name| {
                loaded
                    .codec
                    .arrow_schema()
                    .field_with_name(name)
                    .cloned()
                    .unwrap_or_else(|_| Field::new(name, arrow::datatypes::DataType::Null, true))
            })
            .collect::<Vec<_>>(),
    ));
    let mut found = RowsAt::default();
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(|e| ReadError::iceberg("read data files", e))?
    {
        // The key columns under the table's current names, for the codec.
        let key_batch =
            RecordBatch::try_new(key_schema.clone(), batch.columns()[..key_count].to_vec())
                .map_err(|e| fail(format!("key columns of the snapshot: {e}")))?;
        let (encoded, _) = loaded
            .codec
            .encode_keys(&key_batch)
            .map_err(|e| fail(format!("key columns of the snapshot: {e}")))?;
        let mut kept = false;
        for key in encoded {
            if wanted.contains(key.key.as_ref()) {
                found.at.push((key.key, (found.batches.len(), key.row)));
                kept = true;
            }
        }
        if kept {
            found.batches.push(batch);
        }
    }
    Ok(found)
}

/// Most key values pushed into a scan as an IN list; more are pushed as their bounds.
const MAX_IN_VALUES: usize = 32;

/// `key_column IN (values)` (or, past [`MAX_IN_VALUES`], `min <= key_column <= max`) for each
/// key column whose values translate to Iceberg literals, ANDed (for a composite key a superset of the keys; the caller matches exactly). `None` when
/// no column translates.
fn key_predicate(
    codec: &RecordCodec,
    keys: &[Bytes],
    key_columns: &[String],
    names: &[String],
    types: &[Option<iceberg::spec::PrimitiveType>],
) -> ReadResult<Option<Predicate>> {
    // The key values, typed as the table's columns: decode each key as a delete record.
    let records: Vec<StoredRecord> = keys
        .iter()
        .map(|k| StoredRecord {
            offset: Offset(0),
            record: ChangeRecord {
                key: Some(k.clone()),
                value: None,
                headers: Vec::new(),
                timestamp_ms: 0,
            },
        })
        .collect();
    let decoded = codec.decode(&records).map_err(|e| ReadError::Internal {
        reason: format!("decode lookup keys: {e}"),
    })?;
    let schema = codec.decoded_schema();
    let mut predicate: Option<Predicate> = None;
    for (i, (name, ty)) in names.iter().zip(types).enumerate() {
        let Some(ty) = ty else { continue };
        let Some(column) = key_columns
            .get(i)
            .and_then(|c| schema.index_of(c).ok())
            .map(|at| decoded.batch.column(at).clone())
        else {
            continue;
        };
        let mut values = Vec::with_capacity(column.len());
        let mut seen = HashSet::new();
        let mut complete = true;
        for row in 0..column.len() {
            let Ok(scalar) = ScalarValue::try_from_array(&column, row) else {
                complete = false;
                break;
            };
            match datum(&scalar, ty) {
                Some(d) if seen.insert(d.to_string()) => values.push(d),
                Some(_) => {}
                None => {
                    complete = false;
                    break;
                }
            }
        }
        if !complete || values.is_empty() {
            continue;
        }
        // iceberg-rust tests a row against an IN list one value at a time, so past a few
        // values the bounds of the keys filter as well (for pruning files and row groups
        // nearly as well) at a fraction of the cost; exact matching follows anyway.
        let term = if values.len() <= MAX_IN_VALUES {
            Reference::new(name.as_str()).is_in(values)
        } else {
            let low = values
                .iter()
                .min_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
            let high = values
                .iter()
                .max_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
            match (low, high) {
                (Some(low), Some(high)) => Reference::new(name.as_str())
                    .greater_than_or_equal_to(low.clone())
                    .and(Reference::new(name.as_str()).less_than_or_equal_to(high.clone())),
                _ => continue,
            }
        };
        predicate = Some(match predicate {
            None => term,
            Some(p) => p.and(term),
        });
    }
    Ok(predicate)
}
