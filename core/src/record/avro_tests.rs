//! `avro-v1` values: exact bytes, the schema they follow, schema changes in both directions,
//! and bad values named by field.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::Int64Type;
use bytes::Bytes;

use super::tests::{UUID, batch, every_type_batch, every_type_table, stored, table};
use super::*;
use crate::changelog::StoredRecord;
use crate::table::Column;

fn avro_codec(mut def: TableDef, schema_id: i32) -> RecordCodec {
    def.changelog.format = RecordFormat::AvroV1;
    RecordCodec::new(&def, super::tests::UUID, schema_id).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn values_are_framed_avro_and_keys_stay_json() {
    let json = super::tests::codec(&every_type_table());
    let codec = avro_codec(every_type_table(), 3);
    let input = every_type_batch(&codec);
    let (rows, errors) = codec.encode(ChangeOp::Upsert, &input, 1).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let (json_rows, _) = json.encode(ChangeOp::Upsert, &input, 1).unwrap();
    for (a, j) in rows.iter().zip(&json_rows) {
        // Same key bytes, so the same partition, in both formats.
        assert_eq!(a.record.key, j.record.key);
        assert_eq!(a.partition, j.partition);
        assert_eq!(a.record.headers, j.record.headers);
    }
    let value = rows[0].record.value.as_deref().unwrap();
    assert_eq!(value[0], avro::MAGIC);
    assert_eq!(
        u32::from_be_bytes(value[1..5].try_into().unwrap()),
        avro::schema_id(UUID, 3)
    );
    assert_eq!(codec.avro_schema_id(), avro::schema_id(UUID, 3));
    insta::assert_snapshot!("avro_upsert_every_type", hex(&value[5..]));
    insta::assert_snapshot!(
        "avro_upsert_extremes_and_nulls",
        hex(&rows[1].record.value.as_deref().unwrap()[5..])
    );
    let decoded = codec.decode(&stored(&rows)).unwrap();
    for (i, column) in input.columns().iter().enumerate() {
        assert_eq!(decoded.batch.column(i), column, "column {i}");
    }
}

#[test]
fn the_schema_follows_the_columns() {
    let def = every_type_table();
    let schema = avro::value_schema(&def.name, &def.columns);
    insta::assert_snapshot!(
        "avro_value_schema",
        serde_json::to_string_pretty(&schema).unwrap()
    );
}

fn two_column_batch(codec: &RecordCodec, ids: &[i64], notes: &[Option<&str>]) -> RecordBatch {
    batch(
        codec,
        vec![
            Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef,
            Arc::new(StringArray::from(notes.to_vec())),
        ],
    )
}

/// A column added later: values of the old schema end early (the new column reads null), and a
/// reader still on the old schema skips the new column of newer values.
#[test]
fn added_columns_read_both_ways() {
    let old = avro_codec(table(&["id:int64!", "note:string"], &["id"]), 0);
    let mut new_def = table(&["id:int64!", "note:string"], &["id"]);
    let mut added = Column::new("qty", crate::types::ColumnType::Int32, false);
    added.field_id = 3;
    new_def.columns.push(added);
    let new = avro_codec(new_def, 1);

    let (old_rows, _) = old
        .encode(
            ChangeOp::Upsert,
            &two_column_batch(&old, &[1, 2], &[Some("a"), None]),
            0,
        )
        .unwrap();
    let decoded = new.decode(&stored(&old_rows)).unwrap();
    assert_eq!(decoded.batch.num_columns(), 3);
    assert_eq!(decoded.batch.column(2).null_count(), 2);
    assert_eq!(decoded.batch.column(1).as_string::<i32>().value(0), "a");

    let new_batch = batch(
        &new,
        vec![
            Arc::new(Int64Array::from(vec![3])) as ArrayRef,
            Arc::new(StringArray::from(vec![Some("b")])),
            Arc::new(arrow::array::Int32Array::from(vec![Some(9)])),
        ],
    );
    let (new_rows, _) = new.encode(ChangeOp::Upsert, &new_batch, 0).unwrap();
    let decoded = old.decode(&stored(&new_rows)).unwrap();
    assert_eq!(decoded.batch.num_columns(), 2);
    assert_eq!(
        decoded.batch.column(0).as_primitive::<Int64Type>().value(0),
        3
    );
    assert_eq!(decoded.batch.column(1).as_string::<i32>().value(0), "b");
}

/// JSON and Avro values of one table decode together (a table's format can differ from its
/// older records'), and a bad Avro value names its field and offset.
#[test]
fn mixed_formats_and_bad_values() {
    let def = table(&["id:int64!", "note:string"], &["id"]);
    let json = super::tests::codec(&def);
    let codec = avro_codec(def, 3);
    let (mut rows, _) = json
        .encode(
            ChangeOp::Upsert,
            &two_column_batch(&json, &[1], &[Some("from json")]),
            0,
        )
        .unwrap();
    let (avro_rows, _) = codec
        .encode(
            ChangeOp::Upsert,
            &two_column_batch(&codec, &[2], &[Some("from avro")]),
            0,
        )
        .unwrap();
    rows.extend(avro_rows.clone());
    let decoded = codec.decode(&stored(&rows)).unwrap();
    let notes = decoded.batch.column(1).as_string::<i32>();
    assert_eq!((notes.value(0), notes.value(1)), ("from json", "from avro"));

    // The key must match the value, whatever the value's format.
    let mut wrong_key = avro_rows[0].record.clone();
    wrong_key.key = Some(Bytes::from_static(br#"{"id":5}"#));
    let err = codec
        .decode(&[StoredRecord {
            offset: Offset(9),
            record: wrong_key,
        }])
        .unwrap_err()
        .to_string();
    assert!(err.contains("offset 9") && err.contains("`id`"), "{err}");

    let value = avro_rows[0].record.value.clone().unwrap();
    let mut cases: Vec<(Vec<u8>, &str)> = vec![
        (value[..3].to_vec(), "has only 3 bytes"),
        // Own schema id, a byte too many.
        (
            [&value[..], &[0]].concat(),
            "1 bytes follow the last column",
        ),
        // The string's length runs past the end.
        (
            [&value[..value.len() - 1]].concat(),
            "field `note`: the value ends 1 bytes early in the Avro value",
        ),
    ];
    // A union branch that is neither null nor the value.
    let mut bad_branch = value.to_vec();
    let id_len = bad_branch.len() - 5 - 2 - "from avro".len();
    bad_branch[5 + id_len] = 0x04;
    cases.push((bad_branch, "field `note`: union branch 2"));
    for (bytes, want) in cases {
        let mut record = avro_rows[0].record.clone();
        record.value = Some(Bytes::from(bytes));
        let err = codec
            .decode(&[StoredRecord {
                offset: Offset(4),
                record,
            }])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("offset 4") && err.contains(want),
            "{want}: {err}"
        );
    }
}

#[test]
fn required_columns_must_be_present_in_older_values() {
    // An old value that ends before a required column is refused, as in json-v1.
    let def = table(&["id:int64!", "note:string"], &["id"]);
    let codec = avro_codec(def, 3);
    let mut value = vec![avro::MAGIC, 0, 0, 0, 7];
    avro::put_long(&mut value, 5);
    let mut old = value.clone();
    old.truncate(5);
    let record = ChangeRecord {
        key: Some(Bytes::from_static(br#"{"id":5}"#)),
        value: Some(Bytes::from(old)),
        headers: vec![],
        timestamp_ms: 0,
    };
    let err = codec
        .decode(&[StoredRecord {
            offset: Offset(0),
            record: record.clone(),
        }])
        .unwrap_err()
        .to_string();
    assert!(err.contains("`id`") && err.contains("required"), "{err}");
    // With the id present and the nullable column missing, it reads.
    let decoded = codec
        .decode(&[StoredRecord {
            offset: Offset(0),
            record: ChangeRecord {
                value: Some(Bytes::from(value)),
                ..record
            },
        }])
        .unwrap();
    assert_eq!(decoded.batch.column(1).null_count(), 1);
}
