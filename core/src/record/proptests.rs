//! Round-trip properties: for random rows of every type (nulls and extremes included),
//! encode -> decode gives equal Arrow arrays, deletes give the key back, and re-encoding
//! decoded rows gives the same bytes (the encoding is canonical).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array, Int32Array,
    Int64Array, LargeBinaryArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use proptest::prelude::*;

use super::tests::{batch, codec, stored, table};
use super::*;

fn decimal(precision: u32) -> impl Strategy<Value = i128> {
    let max = 10i128.pow(precision) - 1;
    prop_oneof![Just(max), Just(-max), Just(0), -max..=max, -1000i128..1000,]
}

/// Floats of every class; NaN only as the canonical NaN (a NaN's sign and payload are not
/// part of the format).
fn f64s() -> impl Strategy<Value = f64> {
    any::<f64>().prop_map(|v| if v.is_nan() { f64::NAN } else { v })
}

fn f32s() -> impl Strategy<Value = f32> {
    any::<f32>().prop_map(|v| if v.is_nan() { f32::NAN } else { v })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn ints64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0),
        -1i64..1,
        any::<i64>()
    ]
}

type Key = (String, i64, i128, i32, i64, Vec<u8>, bool, i32, i64);
type Values = (
    Option<bool>,
    Option<i32>,
    Option<i64>,
    Option<f32>,
    Option<f64>,
    Option<i128>,
    Option<i128>,
    Option<String>,
    Option<Vec<u8>>,
    Option<i32>,
    Option<i64>,
    Option<i64>,
);

fn key() -> impl Strategy<Value = Key> {
    (
        any::<String>(),
        ints64(),
        decimal(38),
        any::<i32>(),
        ints64(),
        bytes(),
        any::<bool>(),
        any::<i32>(),
        ints64(),
    )
}

fn values() -> impl Strategy<Value = Values> {
    (
        any::<Option<bool>>(),
        any::<Option<i32>>(),
        prop::option::of(ints64()),
        prop::option::of(f32s()),
        prop::option::of(f64s()),
        prop::option::of(decimal(38)),
        prop::option::of(decimal(38)),
        prop::option::of(any::<String>()),
        prop::option::of(bytes()),
        any::<Option<i32>>(),
        prop::option::of(ints64()),
        prop::option::of(ints64()),
    )
}

/// Every type in the key (all key-able types) and again as nullable values, plus a required
/// float.
fn every_type_codec(avro: bool) -> RecordCodec {
    let mut def = table(
        &[
            "k_str:string!",
            "k_long:int64!",
            "k_dec:decimal(38,9)!",
            "k_date:date!",
            "k_tstz:timestamptz!",
            "k_bin:binary!",
            "k_bool:bool!",
            "k_int:int32!",
            "k_ts:timestamp!",
            "v_bool:bool",
            "v_int:int32",
            "v_long:int64",
            "v_float:float32",
            "v_double:float64",
            "v_dec_frac:decimal(38,38)",
            "v_dec_int:decimal(38,0)",
            "v_str:string",
            "v_bin:binary",
            "v_date:date",
            "v_ts:timestamp",
            "v_tstz:timestamptz",
            "r_double:float64!",
        ],
        &[
            "k_str", "k_long", "k_dec", "k_date", "k_tstz", "k_bin", "k_bool", "k_int", "k_ts",
        ],
    );
    if avro {
        def.changelog.format = RecordFormat::AvroV1;
    }
    codec(&def)
}

fn some<T>(values: Vec<T>) -> Vec<Option<T>> {
    values.into_iter().map(Some).collect()
}

fn dec(values: Vec<Option<i128>>, scale: i8) -> ArrayRef {
    Arc::new(
        Decimal128Array::from(values)
            .with_precision_and_scale(38, scale)
            .unwrap(),
    )
}

fn to_batch(codec: &RecordCodec, rows: &[(Key, Values, f64)]) -> RecordBatch {
    macro_rules! col {
        ($part:tt, $i:tt) => {
            rows.iter().map(|r| r.$part.$i.clone()).collect::<Vec<_>>()
        };
    }
    let utc = |a: TimestampMicrosecondArray| Arc::new(a.with_timezone("+00:00")) as ArrayRef;
    let bins = |v: Vec<Option<Vec<u8>>>| -> ArrayRef {
        Arc::new(LargeBinaryArray::from_opt_vec(
            v.iter().map(|b| b.as_deref()).collect(),
        ))
    };
    batch(
        codec,
        vec![
            Arc::new(StringArray::from(col!(0, 0))),
            Arc::new(Int64Array::from(col!(0, 1))),
            dec(some(col!(0, 2)), 9),
            Arc::new(Date32Array::from(col!(0, 3))),
            utc(TimestampMicrosecondArray::from(col!(0, 4))),
            bins(some(col!(0, 5))),
            Arc::new(BooleanArray::from(col!(0, 6))),
            Arc::new(Int32Array::from(col!(0, 7))),
            Arc::new(TimestampMicrosecondArray::from(col!(0, 8))),
            Arc::new(BooleanArray::from(col!(1, 0))),
            Arc::new(Int32Array::from(col!(1, 1))),
            Arc::new(Int64Array::from(col!(1, 2))),
            Arc::new(Float32Array::from(col!(1, 3))),
            Arc::new(Float64Array::from(col!(1, 4))),
            dec(col!(1, 5), 38),
            dec(col!(1, 6), 0),
            Arc::new(StringArray::from(col!(1, 7))),
            bins(col!(1, 8)),
            Arc::new(Date32Array::from(col!(1, 9))),
            Arc::new(TimestampMicrosecondArray::from(col!(1, 10))),
            utc(TimestampMicrosecondArray::from(col!(1, 11))),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
}

proptest! {
    #[test]
    fn upserts_and_deletes_round_trip(
        rows in prop::collection::vec((key(), values(), f64s()), 0..12),
        avro in any::<bool>(),
    ) {
        let codec = every_type_codec(avro);
        let input = to_batch(&codec, &rows);
        let (upserts, errors) = codec.encode(ChangeOp::Upsert, &input, 7).unwrap();
        prop_assert!(errors.is_empty(), "{:?}", errors);
        prop_assert_eq!(upserts.len(), rows.len());
        for u in &upserts {
            let value = u.record.value.as_deref().unwrap_or_default();
            prop_assert_eq!(value.first() == Some(&avro::MAGIC), avro);
        }

        let decoded = codec.decode(&stored(&upserts)).unwrap();
        prop_assert_eq!(&decoded.ops, &vec![ChangeOp::Upsert; rows.len()]);
        for (i, column) in input.columns().iter().enumerate() {
            prop_assert_eq!(decoded.batch.column(i), column, "column {}", codec.columns[i].name);
        }

        // Canonical: decoded rows encode to the same bytes, in the same partitions.
        let (again, _) = codec.encode(ChangeOp::Upsert, &decoded.batch, 7).unwrap();
        prop_assert_eq!(&again, &upserts);

        // Deletes carry the key only and decode to it.
        let key_columns: Vec<usize> = (0..9).collect();
        let keys = input.project(&key_columns).unwrap();
        let (deletes, errors) = codec.encode(ChangeOp::Delete, &keys, 8).unwrap();
        prop_assert!(errors.is_empty());
        for (d, u) in deletes.iter().zip(&upserts) {
            prop_assert_eq!(&d.record.key, &u.record.key);
            prop_assert_eq!(d.partition, u.partition);
            prop_assert!(d.record.value.is_none());
        }
        let decoded = codec.decode(&stored(&deletes)).unwrap();
        prop_assert_eq!(&decoded.ops, &vec![ChangeOp::Delete; rows.len()]);
        for i in 0..codec.columns.len() {
            let column = decoded.batch.column(i);
            if i < 9 {
                prop_assert_eq!(column, input.column(i));
            } else {
                prop_assert_eq!(column.null_count(), rows.len());
            }
        }
    }

    /// Damaged records (a byte replaced, inserted or cut off, in the key or the value) are
    /// errors or other rows, never panics.
    #[test]
    fn damaged_records_never_panic(
        row in (key(), values(), f64s()),
        in_key in any::<bool>(),
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        damage in 0..3u8,
        avro in any::<bool>(),
    ) {
        let codec = every_type_codec(avro);
        let input = to_batch(&codec, &[row]);
        let (mut rows, _) = codec.encode(ChangeOp::Upsert, &input, 0).unwrap();
        let record = &mut rows[0].record;
        let part = if in_key { &mut record.key } else { &mut record.value };
        let mut bytes = part.as_ref().map(|b| b.to_vec()).unwrap_or_default();
        let at = position.index(bytes.len() + 1);
        match damage {
            0 if at < bytes.len() => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            _ => bytes.truncate(at),
        }
        *part = Some(Bytes::from(bytes));
        let _ = codec.decode(&stored(&rows));
    }
}
