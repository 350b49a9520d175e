//! Request rows -> one Arrow batch of the table's columns, with per-row errors.
//!
//! JSON lines are parsed by the record codec ([`RecordCodec::parse_json_rows`]). Arrow IPC
//! streams are read whole (a truncated or corrupt stream fails the request, since no row of it
//! can be trusted), then each column is coerced to the table's type when the conversion loses
//! nothing (wider integers, `Float32` to `Float64`, other string, binary and timestamp
//! encodings, dictionaries): a value that does not convert (an overflow, a lossy timestamp)
//! rejects its row, naming the field.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, new_null_array};
use arrow::compute::kernels::cast::{CastOptions, can_cast_types, cast_with_options};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Schema, TimeUnit};
use arrow::ipc::reader::StreamReader;
use unitable_core::record::{ChangeOp, ParsedRows, RecordCodec, RowError};

use crate::error::{WriteError, WriteResult};

/// The end of an Arrow IPC stream: continuation marker, zero length.
const IPC_END_OF_STREAM: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// The rows of a write request.
#[derive(Debug, Clone)]
pub enum Rows {
    /// JSON objects, one per line.
    JsonLines(bytes::Bytes),
    /// An Arrow IPC stream.
    ArrowIpc(bytes::Bytes),
}

/// Reads `rows` for a write of `op`. Row indexes count from `first_row`.
pub(crate) fn read_rows(
    codec: &RecordCodec,
    op: ChangeOp,
    rows: &Rows,
    first_row: usize,
) -> WriteResult<(ParsedRows, Vec<RowError>)> {
    match rows {
        Rows::JsonLines(bytes) => Ok(codec.parse_json_rows(op, bytes, first_row)),
        Rows::ArrowIpc(bytes) => read_arrow(codec, op, bytes, first_row),
    }
}

fn read_arrow(
    codec: &RecordCodec,
    op: ChangeOp,
    bytes: &[u8],
    first_row: usize,
) -> WriteResult<(ParsedRows, Vec<RowError>)> {
    let bad = |reason: String| WriteError::BadRequest {
        reason: format!("the rows are not a valid Arrow IPC stream: {reason}"),
    };
    // A stream cut at a message boundary would read as fewer rows: require the end marker.
    if !bytes.ends_with(&IPC_END_OF_STREAM) {
        return Err(bad(
            "it does not end with the end-of-stream marker (truncated?)".into(),
        ));
    }
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| bad(e.to_string()))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let batch = concat_batches(&schema, &batches).map_err(|e| bad(e.to_string()))?;
    let target = codec.input_schema(op);

    let n = batch.num_rows();
    let mut ok = vec![true; n];
    let mut errors = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    let given_schema = batch.schema();
    for field in target.fields() {
        let Some((_, given)) = given_schema.column_with_name(field.name()) else {
            if field.is_nullable() {
                columns.push(new_null_array(field.data_type(), n));
                continue;
            }
            return Err(WriteError::BadRequest {
                reason: format!(
                    "column `{}` is required but missing from the Arrow batch",
                    field.name()
                ),
            });
        };
        let array = batch
            .column_by_name(field.name())
            .cloned()
            .unwrap_or_else(|| new_null_array(given.data_type(), n));
        columns.push(coerce(
            &array,
            field.data_type(),
            field.name(),
            first_row,
            &mut ok,
            &mut errors,
        )?);
    }
    if op != ChangeOp::Delete {
        for field in given_schema.fields() {
            if target.column_with_name(field.name()).is_none() {
                return Err(WriteError::BadRequest {
                    reason: format!(
                        "the Arrow batch has a column `{}` that the table does not have",
                        field.name()
                    ),
                });
            }
        }
    }
    let coerced = RecordBatch::try_new(
        Arc::new(Schema::new(
            target
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        )),
        columns,
    )
    .map_err(|e| WriteError::Internal {
        reason: format!("assemble coerced rows: {e}"),
    })?;
    let keep = BooleanArray::from(ok.clone());
    let kept = filter_record_batch(&coerced, &keep).map_err(|e| WriteError::Internal {
        reason: format!("drop rejected rows: {e}"),
    })?;
    let rows = (0..n).filter(|&i| ok[i]).map(|i| first_row + i).collect();
    errors.sort_by_key(|e: &RowError| e.row);
    errors.dedup_by_key(|e| e.row);
    Ok((ParsedRows { batch: kept, rows }, errors))
}

/// `array` as `to`, marking rows whose value does not convert exactly.
fn coerce(
    array: &ArrayRef,
    to: &DataType,
    name: &str,
    first_row: usize,
    ok: &mut [bool],
    errors: &mut Vec<RowError>,
) -> WriteResult<ArrayRef> {
    let from = array.data_type();
    if from == to {
        return Ok(array.clone());
    }
    let refuse = || WriteError::BadRequest {
        reason: format!("column `{name}` has Arrow type {from}, which cannot be stored as {to}"),
    };
    if !compatible(from, to) || !can_cast_types(from, to) {
        return Err(refuse());
    }
    let options = CastOptions {
        safe: true,
        ..CastOptions::default()
    };
    let cast = cast_with_options(array, to, &options).map_err(|_| refuse())?;
    // A value that became null did not convert; a lossy timestamp did not either.
    let back = matches!(
        (from, to),
        (DataType::Timestamp(TimeUnit::Nanosecond, _), _)
    )
    .then(|| cast_with_options(&cast, from, &options).ok())
    .flatten();
    for (i, row_ok) in ok.iter_mut().enumerate().take(array.len()) {
        let lost = array.is_valid(i) && cast.is_null(i);
        let inexact = back.as_ref().is_some_and(|b| {
            array.is_valid(i)
                && b.is_valid(i)
                && array.slice(i, 1).to_data() != b.slice(i, 1).to_data()
        });
        if (lost || inexact) && *row_ok {
            *row_ok = false;
            errors.push(RowError {
                row: first_row + i,
                field: Some(name.to_string()),
                reason: if lost {
                    format!("the value does not fit the column type {to}")
                } else {
                    "the timestamp has sub-microsecond digits; the column stores microseconds"
                        .into()
                },
            });
        }
    }
    Ok(cast)
}

/// Conversions that keep every value's meaning (range checked per value by the cast).
fn compatible(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    match (from, to) {
        (Dictionary(_, values), _) => compatible(values, to) || values.as_ref() == to,
        (Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64, Int32 | Int64) => true,
        (Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32, Float64) => true,
        (Int8 | Int16 | UInt8 | UInt16, Float32) => true,
        (Float16 | Float32, Float64) => true,
        (Float16, Float32) => true,
        (LargeUtf8 | Utf8View, Utf8) => true,
        (Binary | BinaryView | FixedSizeBinary(_), LargeBinary) => true,
        (Date64, Date32) => false,
        (Timestamp(_, a), Timestamp(TimeUnit::Microsecond, b)) => a.is_some() == b.is_some(),
        // A smaller scale would round; a larger one is exact (overflow becomes a row error).
        (Decimal128(_, from_scale), Decimal128(_, to_scale)) => to_scale >= from_scale,
        (Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32, Decimal128(_, _)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int32Array, StringArray, TimestampNanosecondArray};
    use arrow::datatypes::Field;
    use arrow::ipc::writer::StreamWriter;
    use unitable_core::table::{Column, TableDef, TableSpec};

    use super::*;

    fn codec() -> RecordCodec {
        let def = TableDef::new(
            "t.input".parse().unwrap(),
            TableSpec {
                columns: vec![
                    Column::parse("id:int32!").unwrap(),
                    Column::parse("name:string").unwrap(),
                    Column::parse("at:timestamp").unwrap(),
                ],
                primary_key: vec!["id".into()],
                ..TableSpec::default()
            },
        )
        .unwrap();
        RecordCodec::new(&def, "u", 0).unwrap()
    }

    fn ipc(batch: &RecordBatch) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, batch.schema_ref()).unwrap();
        w.write(batch).unwrap();
        w.finish().unwrap();
        drop(w);
        out
    }

    #[test]
    fn coerces_what_fits_and_rejects_rows_that_do_not() {
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(arrow::array::Int64Array::from(vec![1, 5_000_000_000, 3])) as ArrayRef,
            ),
            (
                "name",
                Arc::new(arrow::array::LargeStringArray::from(vec!["a", "b", "c"])) as ArrayRef,
            ),
            (
                "at",
                Arc::new(TimestampNanosecondArray::from(vec![1_000, 2_000, 3_001])) as ArrayRef,
            ),
        ])
        .unwrap();
        let (parsed, errors) = read_arrow(&codec(), ChangeOp::Upsert, &ipc(&batch), 10).unwrap();
        assert_eq!(parsed.rows, [10]);
        let ids = parsed
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        assert_eq!(ids.value(0), 1);
        let names = parsed
            .batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(names.value(0), "a");
        let got: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.row, e.field.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(got, [(11, "id"), (12, "at")]);
    }

    #[test]
    fn decimals_that_would_round_are_refused() {
        let def = TableDef::new(
            "t.money".parse().unwrap(),
            TableSpec {
                columns: vec![
                    Column::parse("id:int32!").unwrap(),
                    Column::parse("amount:decimal(10,2)").unwrap(),
                ],
                primary_key: vec!["id".into()],
                ..TableSpec::default()
            },
        )
        .unwrap();
        let codec = RecordCodec::new(&def, "u", 0).unwrap();
        let amounts = |precision, scale, values: Vec<i128>| {
            Arc::new(
                arrow::array::Decimal128Array::from(values)
                    .with_precision_and_scale(precision, scale)
                    .unwrap(),
            ) as ArrayRef
        };
        let ids = || Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef;
        let finer = RecordBatch::try_from_iter([
            ("id", ids()),
            ("amount", amounts(12, 4, vec![12_345, 10_000])),
        ])
        .unwrap();
        let err = read_arrow(&codec, ChangeOp::Upsert, &ipc(&finer), 0).unwrap_err();
        assert!(err.to_string().contains("amount"), "{err}");
        let coarser = RecordBatch::try_from_iter([
            ("id", ids()),
            ("amount", amounts(38, 1, vec![15, 10_i128.pow(30)])),
        ])
        .unwrap();
        let (parsed, errors) = read_arrow(&codec, ChangeOp::Upsert, &ipc(&coarser), 0).unwrap();
        assert_eq!(parsed.rows, [0], "1.5 fits; 10^29 overflows decimal(10,2)");
        assert_eq!(errors[0].field.as_deref(), Some("amount"));
    }

    #[test]
    fn truncated_streams_and_wrong_types_fail_the_request() {
        let batch = RecordBatch::try_from_iter([(
            "id",
            Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef,
        )])
        .unwrap();
        let bytes = ipc(&batch);
        let err = read_arrow(&codec(), ChangeOp::Delete, &bytes[..bytes.len() / 2], 0).unwrap_err();
        assert!(
            err.to_string().contains("not a valid Arrow IPC stream"),
            "{err}"
        );

        let wrong = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)])),
            vec![Arc::new(StringArray::from(vec!["1"]))],
        )
        .unwrap();
        let err = read_arrow(&codec(), ChangeOp::Delete, &ipc(&wrong), 0).unwrap_err();
        assert!(
            err.to_string().contains("column `id` has Arrow type Utf8"),
            "{err}"
        );

        let extra = RecordBatch::try_from_iter([
            ("id", Arc::new(Int32Array::from(vec![1])) as ArrayRef),
            ("bogus", Arc::new(Int32Array::from(vec![1])) as ArrayRef),
        ])
        .unwrap();
        let err = read_arrow(&codec(), ChangeOp::Upsert, &ipc(&extra), 0).unwrap_err();
        assert!(err.to_string().contains("`bogus`"), "{err}");
    }
}
