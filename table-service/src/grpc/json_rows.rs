//! LOOKUP rows as JSON arrays (`LookupResult.json_rows`, asked for with
//! `ReadRequest.json_rows`): one JSON array holding each row's values as an array, in column
//! order. A client with a native JSON parser (Python's) turns a few rows into values several
//! times faster this way than by decoding Arrow IPC and converting it. Every value must come
//! back exactly as the Arrow answer would give it, so a batch with a value that has no exact
//! JSON form (NaN, an infinity) or a column of a type not listed here gets `None`, and the
//! caller answers in Arrow IPC.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type, TimeUnit,
    TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use base64::Engine;

/// The rows of `batch` as `[[v, ...], ...]`, or `None` when a value has no exact JSON form.
pub(crate) fn encode(batch: &RecordBatch) -> Option<Vec<u8>> {
    let columns = batch.columns();
    let mut out = Vec::with_capacity(16 + batch.num_rows() * columns.len() * 8);
    out.push(b'[');
    for row in 0..batch.num_rows() {
        if row > 0 {
            out.push(b',');
        }
        out.push(b'[');
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            value(&mut out, column, row)?;
        }
        out.push(b']');
    }
    out.push(b']');
    Some(out)
}

/// Appends the value at `row` of `column`; `None` when it has no exact JSON form (a null has
/// one in any column type).
fn value(out: &mut Vec<u8>, column: &ArrayRef, row: usize) -> Option<()> {
    if column.is_null(row) {
        out.extend_from_slice(b"null");
        return Some(());
    }
    match column.data_type() {
        DataType::Null => out.extend_from_slice(b"null"),
        DataType::Boolean => {
            let v = column.as_boolean().value(row);
            out.extend_from_slice(if v { b"true" } else { b"false" });
        }
        DataType::Int32 => number(out, column.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => number(out, column.as_primitive::<Int64Type>().value(row)),
        // A float32 as the float64 it widens to: what an Arrow reader hands out as a double.
        DataType::Float32 => float(
            out,
            f64::from(column.as_primitive::<Float32Type>().value(row)),
        )?,
        DataType::Float64 => float(out, column.as_primitive::<Float64Type>().value(row))?,
        DataType::Decimal128(_, _) => string(
            out,
            &column.as_primitive::<Decimal128Type>().value_as_string(row),
        ),
        DataType::Utf8 => string(out, column.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => string(out, column.as_string::<i64>().value(row)),
        DataType::Utf8View => string(out, column.as_string_view().value(row)),
        DataType::Binary => bytes(out, column.as_binary::<i32>().value(row)),
        DataType::LargeBinary => bytes(out, column.as_binary::<i64>().value(row)),
        DataType::Date32 => number(out, column.as_primitive::<Date32Type>().value(row)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => number(
            out,
            column.as_primitive::<TimestampMicrosecondType>().value(row),
        ),
        _ => return None,
    }
    Some(())
}

fn number(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{v}");
}

/// The shortest text that reads back as `v` (a JSON number); `None` for NaN and infinities.
fn float(out: &mut Vec<u8>, v: f64) -> Option<()> {
    if !v.is_finite() {
        return None;
    }
    serde_json::to_writer(&mut *out, &v).ok()
}

fn string(out: &mut Vec<u8>, s: &str) {
    // Serializing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(b)
            .as_bytes(),
    );
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
        Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{Field, Schema};
    use serde_json::{Value, json};

    use super::*;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap()
    }

    #[test]
    fn every_column_type_and_null_has_its_json_form() {
        let b = batch(vec![
            ("b", Arc::new(BooleanArray::from(vec![Some(true), None]))),
            ("i", Arc::new(Int32Array::from(vec![Some(-7), None]))),
            (
                "l",
                Arc::new(Int64Array::from(vec![Some(i64::MAX), Some(i64::MIN)])),
            ),
            ("f", Arc::new(Float32Array::from(vec![Some(1.1f32), None]))),
            (
                "d",
                Arc::new(Float64Array::from(vec![Some(0.1), Some(-1e300)])),
            ),
            (
                "m",
                Arc::new(
                    Decimal128Array::from(vec![Some(1230), Some(-5)])
                        .with_precision_and_scale(9, 2)
                        .unwrap(),
                ),
            ),
            (
                "s",
                Arc::new(StringArray::from(vec![Some("a\"\n\u{e9}"), None])),
            ),
            (
                "y",
                Arc::new(BinaryArray::from(vec![Some(&b"\x00\xff"[..]), None])),
            ),
            (
                "t",
                Arc::new(Date32Array::from(vec![Some(-1), Some(19000)])),
            ),
            (
                "z",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(1_700_000_000_123_456), None])
                        .with_timezone("+00:00"),
                ),
            ),
        ]);
        let text = encode(&b).expect("every value has a JSON form");
        let parsed: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(
            parsed,
            json!([
                [
                    true,
                    -7,
                    i64::MAX,
                    f64::from(1.1f32),
                    0.1,
                    "12.30",
                    "a\"\n\u{e9}",
                    "AP8=",
                    -1,
                    1_700_000_000_123_456i64
                ],
                [
                    null,
                    null,
                    i64::MIN,
                    null,
                    -1e300,
                    "-0.05",
                    null,
                    null,
                    19000,
                    null
                ]
            ])
        );
        // The float32 reads back as the double it widens to, bit for bit.
        assert_eq!(parsed[0][3].as_f64(), Some(f64::from(1.1f32)));
    }

    #[test]
    fn values_without_an_exact_json_form_refuse_the_whole_batch() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let b = batch(vec![(
                "d",
                Arc::new(Float64Array::from(vec![Some(1.0), Some(v)])),
            )]);
            assert_eq!(encode(&b), None, "{v}");
        }
        let b = batch(vec![(
            "f",
            Arc::new(Float32Array::from(vec![Some(f32::NAN)])),
        )]);
        assert_eq!(encode(&b), None);
        // A type this form does not cover.
        let ms = arrow::array::TimestampMillisecondArray::from(vec![Some(1)]);
        assert_eq!(encode(&batch(vec![("t", Arc::new(ms))])), None);
        // No rows: an empty array.
        let empty = batch(vec![("l", Arc::new(Int64Array::from(Vec::<i64>::new())))]);
        assert_eq!(encode(&empty).as_deref(), Some(&b"[]"[..]));
    }
}
