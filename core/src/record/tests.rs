//! Examples of the format: exact bytes (insta snapshots), per-row validation, batch checks,
//! partitions, and decoding of other writers' records and of bad records.

use std::sync::Arc;

use arrow::array::AsArray;
use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int32Array, Int64Array, LargeBinaryArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use bytes::Bytes;

use super::*;
use crate::changelog::StoredRecord;
use crate::naming::TableName;
use crate::table::{Column, TableSpec};

pub(super) const UUID: &str = "0190d7a4-5c3e-7b21-9a4f-3c2d1e0f9a8b";

pub(super) fn table(columns: &[&str], primary_key: &[&str]) -> TableDef {
    TableDef::new(
        TableName::new("shop", "orders").unwrap(),
        TableSpec {
            columns: columns.iter().map(|c| Column::parse(c).unwrap()).collect(),
            primary_key: primary_key.iter().map(|k| k.to_string()).collect(),
            buckets: Some(8),
            ..TableSpec::default()
        },
    )
    .unwrap()
}

/// A table with a composite key and a column of every type.
pub(super) fn every_type_table() -> TableDef {
    table(
        &[
            "region:string!",
            "id:int64!",
            "active:bool",
            "qty:int32",
            "price:decimal(12,2)!",
            "weight:float32",
            "score:float64",
            "note:string",
            "payload:binary",
            "day:date",
            "created:timestamp",
            "updated:timestamptz",
        ],
        &["region", "id"],
    )
}

pub(super) fn codec(def: &TableDef) -> RecordCodec {
    RecordCodec::new(def, UUID, 3).unwrap()
}

pub(super) fn batch(codec: &RecordCodec, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(codec.arrow_schema(), columns).unwrap()
}

pub(super) fn every_type_batch(codec: &RecordCodec) -> RecordBatch {
    batch(
        codec,
        vec![
            Arc::new(StringArray::from(vec!["eu", "us-west"])),
            Arc::new(Int64Array::from(vec![42, i64::MIN])),
            Arc::new(BooleanArray::from(vec![Some(true), None])),
            Arc::new(Int32Array::from(vec![Some(-7), None])),
            Arc::new(
                Decimal128Array::from(vec![1230, -5])
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
            ),
            Arc::new(Float32Array::from(vec![Some(0.1), Some(f32::NAN)])),
            Arc::new(Float64Array::from(vec![
                Some(1e300),
                Some(f64::NEG_INFINITY),
            ])),
            Arc::new(StringArray::from(vec![
                Some("say \"hi\"\\\n\té😀\u{1}\u{2028}/"),
                None,
            ])),
            Arc::new(LargeBinaryArray::from_opt_vec(vec![
                Some(&[0, 1, 0xfe, 0xff]),
                None,
            ])),
            Arc::new(Date32Array::from(vec![Some(19_000), Some(-719_529)])),
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(1_700_000_000_123_456),
                Some(-1),
            ])),
            Arc::new(TimestampMicrosecondArray::from(vec![Some(0), None]).with_timezone("+00:00")),
        ],
    )
}

/// The record as text: partition, key, value and headers, exactly as bytes (all UTF-8).
fn show(row: &EncodedRow) -> String {
    let text = |b: &Option<Bytes>| match b {
        Some(b) => String::from_utf8(b.to_vec()).unwrap(),
        None => "<null>".into(),
    };
    let mut out = format!(
        "partition: {}\nkey: {}\nvalue: {}\ntimestamp_ms: {}\n",
        row.partition,
        text(&row.record.key),
        text(&row.record.value),
        row.record.timestamp_ms
    );
    for (name, value) in &row.record.headers {
        out += &format!(
            "header {name}: {}\n",
            String::from_utf8(value.to_vec()).unwrap()
        );
    }
    out
}

/// The records of `rows` as stored at offsets 0, 1, ...
pub(super) fn stored(rows: &[EncodedRow]) -> Vec<StoredRecord> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| StoredRecord {
            offset: Offset(i as i64),
            record: r.record.clone(),
        })
        .collect()
}

#[test]
fn snapshots_of_every_type() {
    let codec = codec(&every_type_table());
    let input = every_type_batch(&codec);
    let (upserts, errors) = codec
        .encode(ChangeOp::Upsert, &input, 1_700_000_000_000)
        .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    insta::assert_snapshot!("upsert_every_type", show(&upserts[0]));
    insta::assert_snapshot!("upsert_extremes_and_nulls", show(&upserts[1]));

    let keys = input.project(&[0, 1]).unwrap();
    let (deletes, errors) = codec
        .encode(ChangeOp::Delete, &keys, 1_700_000_000_001)
        .unwrap();
    assert!(errors.is_empty());
    insta::assert_snapshot!("delete", show(&deletes[0]));
    // A delete goes to the same partition as the upserts of its key.
    assert_eq!(deletes[0].partition, upserts[0].partition);
    assert_eq!(deletes[0].record.key, upserts[0].record.key);

    // Decoding gives the rows back (NaN as NaN) and deletes as key-only rows.
    let mut records = upserts.clone();
    records.extend(deletes);
    let decoded = codec.decode(&stored(&records)).unwrap();
    use ChangeOp::*;
    assert_eq!(decoded.ops, vec![Upsert, Upsert, Delete, Delete]);
    assert_eq!(decoded.offsets, (0..4).map(Offset).collect::<Vec<_>>());
    assert_eq!(decoded.timestamps_ms[2], 1_700_000_000_001);
    assert_eq!(decoded.batch.schema(), codec.decoded_schema());
    for (i, column) in input.columns().iter().enumerate() {
        let got = decoded.batch.column(i);
        assert_eq!(&got.slice(0, 2), column, "{}", codec.columns[i].name);
        if i < 2 {
            assert_eq!(&got.slice(2, 2), column);
        } else {
            assert_eq!(got.slice(2, 2).null_count(), 2);
        }
    }
}

#[test]
fn keys_are_compact_json_in_key_order() {
    let def = table(
        &["id:int64!", "region:string!", "v:int32"],
        &["region", "id"],
    );
    let codec = codec(&def);
    let input = batch(
        &codec,
        vec![
            Arc::new(Int64Array::from(vec![42])),
            Arc::new(StringArray::from(vec!["eu"])),
            Arc::new(Int32Array::from(vec![None])),
        ],
    );
    let (rows, _) = codec.encode(ChangeOp::Insert, &input, 0).unwrap();
    assert_eq!(
        rows[0].record.key.as_deref(),
        Some(&br#"{"region":"eu","id":42}"#[..])
    );
    assert_eq!(
        rows[0].record.value.as_deref(),
        Some(&br#"{"id":42,"region":"eu","v":null}"#[..])
    );
    let (keys, _) = codec.encode_keys(&input).unwrap();
    assert_eq!(keys[0].key, rows[0].record.key.clone().unwrap());
    assert_eq!(keys[0].partition, rows[0].partition);
}

/// A table keyed by one `ty` (`int64` or `int32`) column, the boundary values of that type
/// and their encoded keys, in order.
fn integer_keys(ty: &str) -> (RecordCodec, Vec<i64>, Vec<EncodedKey>) {
    let codec = codec(&table(&[&format!("id:{ty}!"), "v:string"], &["id"]));
    let values: Vec<i64> = if ty == "int64" {
        vec![0, -1, 7, 42, i64::MIN, i64::MAX]
    } else {
        vec![0, -1, 7, 42, i64::from(i32::MIN), i64::from(i32::MAX)]
    };
    let ids: ArrayRef = if ty == "int64" {
        Arc::new(Int64Array::from(values.clone()))
    } else {
        Arc::new(Int32Array::from_iter_values(
            values.iter().map(|&v| v as i32),
        ))
    };
    let strings = Arc::new(StringArray::from(vec![Some("a"); values.len()]));
    let (keys, errors) = codec
        .encode_keys(&batch(&codec, vec![ids, strings]))
        .unwrap();
    assert!(errors.is_empty());
    (codec, values, keys)
}

#[test]
fn integer_keys_read_back_from_canonical_keys() {
    for ty in ["int64", "int32"] {
        let (codec, values, keys) = integer_keys(ty);
        assert!(codec.has_integer_key());
        let read: Vec<Option<i64>> = keys.iter().map(|k| codec.integer_key(&k.key)).collect();
        assert_eq!(read, values.into_iter().map(Some).collect::<Vec<_>>());
        // Not keys of this table.
        for other in [
            &br#"{"id":"42"}"#[..],
            br#"{"idx":42}"#,
            br#"{"id":42"#,
            b"",
            br#"{"id":4.2}"#,
        ] {
            assert_eq!(
                codec.integer_key(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }
    for (columns, key) in [
        (&["id:string!", "v:int64"][..], &["id"][..]),
        (&["a:int64!", "b:int64!"][..], &["a", "b"][..]),
        (&["v:int64"][..], &[][..]),
    ] {
        let codec = codec(&table(columns, key));
        assert!(!codec.has_integer_key());
        assert_eq!(codec.integer_key(br#"{"id":42}"#), None);
    }
}

#[test]
fn text_keys_are_the_canonical_keys_of_their_values() {
    // Integer columns: canonical decimal texts only; others are left to the general way.
    for ty in ["int64", "int32"] {
        let (c, values, keys) = integer_keys(ty);
        for (value, key) in values.iter().zip(&keys) {
            assert_eq!(c.text_key(&value.to_string()), Some(key.key.clone()));
        }
        let too_big = if ty == "int64" {
            "9223372036854775808"
        } else {
            "2147483648"
        };
        for other in ["+7", "007", "-0", "7.0", " 7", "", "x", too_big] {
            assert_eq!(c.text_key(other), None, "{other:?}");
        }
    }
    // String columns: any text without a line break, escaped as the codec escapes.
    let c = codec(&table(&["name:string!", "v:int64"], &["name"]));
    let texts = [
        "alice",
        "42",
        "",
        "quote \" and \\",
        "tab\tbell\u{7}",
        "π ✓",
    ];
    let names = Arc::new(StringArray::from(texts.to_vec()));
    let values = Arc::new(Int64Array::from(vec![1; texts.len()]));
    let (keys, _) = c.encode_keys(&batch(&c, vec![names, values])).unwrap();
    for (text, key) in texts.iter().zip(&keys) {
        assert_eq!(c.text_key(text), Some(key.key.clone()), "{text:?}");
    }
    assert_eq!(c.text_key("two\nlines"), None);
    // Composite keys and other key types go the general way.
    for (columns, key) in [
        (&["a:int64!", "b:int64!"][..], &["a", "b"][..]),
        (&["d:date!", "v:int64"][..], &["d"][..]),
        (&["v:int64"][..], &[][..]),
    ] {
        assert_eq!(codec(&table(columns, key)).text_key("1"), None);
    }
}

/// The partition is Kafka's default partitioner over the key bytes (core/src/bucket.rs, tested
/// against Apache Kafka's murmur2 vectors). These values are part of the format: a change
/// would move existing keys to other partitions.
#[test]
fn partitions_of_known_keys_never_change() {
    let codec = codec(&table(&["id:int64!", "v:string"], &["id"]));
    let ids = Int64Array::from(vec![42, 0, -1, 1_000_000]);
    let keys_batch = RecordBatch::try_from_iter([("id", Arc::new(ids) as ArrayRef)]).unwrap();
    let (keys, errors) = codec.encode_keys(&keys_batch).unwrap();
    assert!(errors.is_empty());
    let got: Vec<(String, u32)> = keys
        .iter()
        .map(|k| (String::from_utf8(k.key.to_vec()).unwrap(), k.partition.0))
        .collect();
    let want = [
        (r#"{"id":42}"#, 5),
        (r#"{"id":0}"#, 0),
        (r#"{"id":-1}"#, 3),
        (r#"{"id":1000000}"#, 7),
    ];
    for ((key, partition), (want_key, want_partition)) in got.iter().zip(want) {
        assert_eq!((key.as_str(), *partition), (want_key, want_partition));
        assert_eq!(*partition, crate::bucket::bucket_of(key.as_bytes(), 8));
    }
}

#[test]
fn arrow_schema_is_iceberg_rusts() {
    let def = every_type_table();
    let codec = codec(&def);
    let iceberg = iceberg::arrow::schema_to_arrow_schema(&def.iceberg_schema(3).unwrap()).unwrap();
    assert_eq!(*codec.arrow_schema(), iceberg);
    assert_eq!(
        codec.arrow_schema().field(4).metadata()["PARQUET:field_id"],
        "5"
    );
    let decoded = codec.decoded_schema();
    assert!(!decoded.field(0).is_nullable() && !decoded.field(1).is_nullable());
    assert!(decoded.fields().iter().skip(2).all(|f| f.is_nullable()));
}

#[test]
fn bad_rows_are_reported_and_good_rows_still_encoded() {
    let def = table(
        &["id:int64!", "name:string!", "price:decimal(4,2)"],
        &["id"],
    );
    let codec = codec(&def);
    let input = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(4)])) as ArrayRef,
        ),
        (
            "name",
            Arc::new(StringArray::from(vec![
                Some("a"),
                Some("b"),
                None,
                Some("d"),
            ])),
        ),
        (
            "price",
            Arc::new(
                Decimal128Array::from(vec![Some(9999), Some(1), Some(1), Some(10_000)])
                    .with_precision_and_scale(4, 2)
                    .unwrap(),
            ),
        ),
    ])
    .unwrap();
    let (rows, errors) = codec.encode(ChangeOp::Upsert, &input, 0).unwrap();
    assert_eq!(rows.iter().map(|r| r.row).collect::<Vec<_>>(), vec![0]);
    assert_eq!(
        rows[0].record.value.as_deref(),
        Some(&br#"{"id":1,"name":"a","price":"99.99"}"#[..])
    );
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "row 1, field `id`: primary-key column is null",
            "row 2, field `name`: null in a required (not null) column",
            "row 3, field `price`: decimal value 10000 (unscaled) has more digits than the column's precision",
        ]
    );
}

#[test]
fn batches_that_do_not_fit_are_refused() {
    let def = table(&["id:int64!", "ts:timestamptz", "v:string"], &["id"]);
    let codec = codec(&def);
    let ids: ArrayRef = Arc::new(Int64Array::from(vec![1]));
    let ts: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![1]).with_timezone("UTC"));
    let v: ArrayRef = Arc::new(StringArray::from(vec!["x"]));
    let err = |cols: Vec<(&str, ArrayRef)>, op| {
        let input = RecordBatch::try_from_iter(cols).unwrap();
        codec.encode(op, &input, 0).unwrap_err().to_string()
    };
    use ChangeOp::*;
    assert_eq!(
        err(vec![("id", ids.clone()), ("ts", ts.clone())], Upsert),
        "table `shop.orders`: batch column `v`: missing from the batch"
    );
    assert_eq!(
        err(
            vec![("id", v.clone()), ("ts", ts.clone()), ("v", v.clone())],
            Upsert
        ),
        "table `shop.orders`: batch column `id`: has Arrow type Utf8, but the column is int64 (Int64)"
    );
    assert!(err(vec![("id", ids.clone()), ("x", v.clone())], Delete).contains("no such column"));
    assert!(err(vec![("id", ids.clone()), ("id", ids.clone())], Delete).contains("twice"));
    assert!(err(vec![("ts", ts.clone())], Delete).contains("`id`: missing"));
    // A timestamptz batch column may carry any zone name: the values are UTC instants.
    let input = RecordBatch::try_from_iter([("v", v), ("id", ids), ("ts", ts)]).unwrap();
    let (rows, _) = codec.encode(Insert, &input, 0).unwrap();
    assert_eq!(
        rows[0].record.value.as_deref(),
        Some(&br#"{"id":1,"ts":"1970-01-01T00:00:00.000001Z","v":"x"}"#[..])
    );

    let append_only = RecordCodec::new(&table(&["v:string"], &[]), UUID, 1).unwrap();
    let input =
        RecordBatch::try_from_iter([("v", Arc::new(StringArray::from(vec!["x"])) as ArrayRef)])
            .unwrap();
    assert_eq!(
        append_only.encode(Upsert, &input, 0).unwrap_err(),
        EncodeError::NeedsPrimaryKey {
            table: "shop.orders".into(),
            op: Upsert
        }
    );
}

#[test]
fn binary_columns_accept_both_offset_widths() {
    let codec = codec(&table(&["id:int32!", "b:binary"], &["id"]));
    let all_bytes: Vec<u8> = (0..=255).collect();
    let encode = |b: ArrayRef| {
        let ids: ArrayRef = Arc::new(Int32Array::from(vec![1]));
        let input = RecordBatch::try_from_iter([("id", ids), ("b", b)]).unwrap();
        let (rows, _) = codec.encode(ChangeOp::Upsert, &input, 0).unwrap();
        rows[0].record.clone()
    };
    let small = encode(Arc::new(BinaryArray::from_vec(vec![&all_bytes])));
    let large = encode(Arc::new(LargeBinaryArray::from_vec(vec![&all_bytes])));
    assert_eq!(small, large);
    let decoded = codec
        .decode(&[StoredRecord {
            offset: Offset(0),
            record: small,
        }])
        .unwrap();
    let column = decoded.batch.column(1);
    assert_eq!(column.as_binary::<i64>().value(0), &all_bytes[..]);
}

#[test]
fn append_only_tables_have_null_keys_and_rotate_partitions() {
    let codec = codec(&table(&["v:string", "n:int32"], &[]));
    assert!(codec.is_append_only());
    let input = batch(
        &codec,
        vec![
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(Int32Array::from(vec![1, 2])),
        ],
    );
    let mut partitions = Vec::new();
    for _ in 0..3 {
        let (rows, _) = codec.encode(ChangeOp::Insert, &input, 5).unwrap();
        assert!(rows.iter().all(|r| r.record.key.is_none()));
        assert_eq!(
            rows[0].partition, rows[1].partition,
            "one partition per batch"
        );
        partitions.push(rows[0].partition.0);
    }
    assert_eq!(partitions, vec![0, 1, 2]);
    let (rows, _) = codec.encode(ChangeOp::Insert, &input, 5).unwrap();
    let decoded = codec.decode(&stored(&rows)).unwrap();
    assert_eq!(decoded.ops, vec![ChangeOp::Insert; 2]);
    assert_eq!(decoded.batch.columns(), input.columns());
}

fn record(key: Option<&str>, value: Option<&str>, headers: &[(&str, &str)]) -> StoredRecord {
    StoredRecord {
        offset: Offset(17),
        record: ChangeRecord {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
            timestamp_ms: 9,
        },
    }
}

#[test]
fn decodes_other_writers_records_where_unambiguous() {
    let codec = codec(&every_type_table());
    // What Flink's upsert-kafka sink with the json format writes: no headers, other member
    // order, spaces, decimals as numbers, millisecond timestamps, unknown and missing fields.
    let upsert = record(
        Some(r#"{ "id": 42, "region": "eu" }"#),
        Some(
            r#"{"id":42,"region":"eu","price":12.3,"extra":{"a":[1,2]},"qty":"7",
                "created":"2023-11-14T22:13:20.123","updated":"2023-11-14 23:13:20+01:00",
                "payload":"AAH+/w","weight":0.1,"score":"Infinity","note":"\/\u00e9"}"#,
        ),
        &[],
    );
    let delete = record(Some(r#"{"region":"eu","id":42}"#), None, &[("other", "x")]);
    let decoded = codec.decode(&[upsert, delete]).unwrap();
    assert_eq!(decoded.ops, vec![ChangeOp::Upsert, ChangeOp::Delete]);
    let (rows, errors) = codec
        .encode(ChangeOp::Upsert, &decoded.batch.slice(0, 1), 0)
        .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        std::str::from_utf8(rows[0].record.value.as_ref().unwrap()).unwrap(),
        r#"{"region":"eu","id":42,"active":null,"qty":7,"price":"12.30","weight":0.1,"score":"Infinity","note":"/é","payload":"AAH+/w==","day":null,"created":"2023-11-14T22:13:20.123000","updated":"2023-11-14T22:13:20.000000Z"}"#
    );
}

#[test]
fn decode_errors_name_the_offset_and_field() {
    let codec = codec(&every_type_table());
    let key = Some(r#"{"region":"eu","id":42}"#);
    let value = r#"{"region":"eu","id":42,"price":"1.00"}"#;
    let cases: Vec<(StoredRecord, &str)> = vec![
        (
            record(key, Some(r#"{"region":"eu","id":42,"price":"1.001"}"#), &[]),
            "offset 17, field `price`: `1.001` has more than 2 fraction digits (values are never rounded) in the value",
        ),
        (
            record(key, Some(r#"{"region":"eu","id":42}"#), &[]),
            "offset 17, field `price`: missing or null in the value, but the column is required",
        ),
        (
            record(key, Some(r#"{"region":"eu","id":"x","price":"1"}"#), &[]),
            "offset 17, field `id`: `x` is not an integer in the value",
        ),
        (
            record(
                key,
                Some(r#"{"region":"eu","id":42,"id":42,"price":"1"}"#),
                &[],
            ),
            "offset 17, field `id`: appears twice in the value",
        ),
        (
            record(Some(r#"{"region":"eu","id":43}"#), Some(value), &[]),
            "offset 17, field `id`: the key holds Int64(43) but the value holds Int64(42)",
        ),
        (
            record(None, Some(value), &[]),
            "offset 17: the record has no key, but the table has a primary key",
        ),
        (
            record(key, Some(r#"{"region":"eu","id":42"#), &[]),
            "offset 17: the value is not a JSON object: invalid JSON at byte 22: expected `,` or `}`",
        ),
        (
            record(Some(r#"{"region":"eu"}"#), None, &[]),
            "offset 17, field `id`: primary-key column missing or null in the key",
        ),
        (
            record(key, None, &[("unitable.op", "upsert")]),
            "offset 17, field `unitable.op`: the operation is upsert but the value is null (a tombstone)",
        ),
        (
            record(key, Some(value), &[("unitable.op", "delete")]),
            "offset 17, field `unitable.op`: the operation is delete but the record has a value",
        ),
        (
            record(key, Some(value), &[("unitable.op", "merge")]),
            "offset 17, field `unitable.op`: unknown operation `merge` (expected insert, upsert or delete)",
        ),
        (
            record(key, Some(value), &[("unitable.table-uuid", "other")]),
            "offset 17, field `unitable.table-uuid`: the record belongs to table uuid `other`, not to this table (`0190d7a4-5c3e-7b21-9a4f-3c2d1e0f9a8b`)",
        ),
    ];
    for (record, want) in cases {
        let err = codec.decode(&[record]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("table `shop.orders`: changelog record at {want}")
        );
    }
    let append_only = RecordCodec::new(&table(&["v:string"], &[]), UUID, 1).unwrap();
    let err = append_only.decode(&[record(None, None, &[])]).unwrap_err();
    assert!(
        err.to_string()
            .contains("no primary key, so it has no delete records"),
        "{err}"
    );
}

#[test]
fn change_ops_round_trip_through_text() {
    for op in [ChangeOp::Insert, ChangeOp::Upsert, ChangeOp::Delete] {
        assert_eq!(ChangeOp::parse(op.as_str()), Some(op));
        assert_eq!(op.to_string(), op.as_str());
    }
    assert_eq!(ChangeOp::parse("Upsert"), None);
}

/// The examples in docs/changelog-format.md are what the codec writes, byte for byte.
#[test]
fn the_format_doc_shows_real_records() {
    let doc = include_str!("../../../docs/changelog-format.md");
    let def = table(
        &[
            "region:string!",
            "id:int64!",
            "status:string",
            "amount:decimal(12,2)",
            "placed_at:timestamptz",
            "note:string",
        ],
        &["region", "id"],
    );
    let codec = RecordCodec::new(&def, UUID, 0).unwrap();
    let row = |status: &str, note: Option<&str>| {
        batch(
            &codec,
            vec![
                Arc::new(StringArray::from(vec!["eu"])),
                Arc::new(Int64Array::from(vec![42])),
                Arc::new(StringArray::from(vec![status])),
                Arc::new(
                    Decimal128Array::from(vec![1230])
                        .with_precision_and_scale(12, 2)
                        .unwrap(),
                ),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_714_555_800_000_000])
                        .with_timezone("+00:00"),
                ),
                Arc::new(StringArray::from(vec![note])),
            ],
        )
    };
    let (insert, _) = codec
        .encode(ChangeOp::Insert, &row("new", None), 0)
        .unwrap();
    let (upsert, _) = codec
        .encode(ChangeOp::Upsert, &row("paid", Some("gift \"wrap\"")), 0)
        .unwrap();
    let keys = row("", None).project(&[0, 1]).unwrap();
    let (delete, _) = codec.encode(ChangeOp::Delete, &keys, 0).unwrap();
    for encoded in [&insert[0], &upsert[0], &delete[0]] {
        assert_eq!(encoded.partition, PartitionId(1));
        for part in [&encoded.record.key, &encoded.record.value]
            .into_iter()
            .flatten()
        {
            let text = std::str::from_utf8(part).unwrap();
            assert!(doc.contains(text), "docs/changelog-format.md lacks {text}");
        }
    }
}

#[test]
fn a_projected_decode_converts_only_the_wanted_columns_and_the_key() {
    let codec = codec(&every_type_table());
    let upsert = record(
        Some(r#"{"region":"eu","id":42}"#),
        Some(r#"{"region":"eu","id":42,"qty":7,"price":"1.00","note":"n","score":"not a number"}"#),
        &[],
    );
    let delete = record(Some(r#"{"region":"eu","id":43}"#), None, &[]);
    // `score` is malformed: the full decode refuses the record, the projection never looks.
    assert!(codec.decode(&[upsert.clone(), delete.clone()]).is_err());
    let mut wanted = vec![false; 12];
    wanted[3] = true; // qty
    wanted[7] = true; // note
    let decoded = codec.decode_projected(&[upsert, delete], &wanted).unwrap();
    assert_eq!(decoded.ops, vec![ChangeOp::Upsert, ChangeOp::Delete]);
    let b = &decoded.batch;
    assert_eq!(b.schema(), codec.decoded_schema());
    assert_eq!(b.column(0).as_string::<i32>().value(1), "eu");
    assert_eq!(
        b.column(1)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(1),
        43
    );
    assert_eq!(
        b.column(3)
            .as_primitive::<arrow::datatypes::Int32Type>()
            .value(0),
        7
    );
    assert_eq!(b.column(7).as_string::<i32>().value(0), "n");
    for (i, column) in b.columns().iter().enumerate() {
        if !matches!(i, 0 | 1 | 3 | 7) {
            assert_eq!(column.null_count(), 2, "column {i} is not all null");
        }
    }
}
