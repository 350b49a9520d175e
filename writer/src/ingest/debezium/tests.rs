use std::collections::BTreeMap;

use serde_json::{Value, json};
use unitable_core::ingest::IngestConfig;
use unitable_core::naming::props;
use unitable_core::table::{Column, TableDef, TableSpec};
use unitable_core::types::ColumnType;

use super::{Converter, Event, Skip, decimal_from_base64};

fn def() -> TableDef {
    TableDef::new(
        "shop.orders".parse().unwrap(),
        TableSpec {
            columns: vec![
                Column::new("id", ColumnType::Int64, true),
                Column::new("name", ColumnType::String, false),
                Column::new(
                    "amount",
                    ColumnType::Decimal {
                        precision: 12,
                        scale: 2,
                    },
                    false,
                ),
                Column::new("day", ColumnType::Date, false),
                Column::new("at", ColumnType::Timestamp, false),
                Column::new("at_tz", ColumnType::TimestampTz, false),
                Column::new("blob", ColumnType::Binary, false),
            ],
            primary_key: vec!["id".into()],
            buckets: Some(2),
            partition_by: Vec::new(),
            properties: BTreeMap::new(),
            changelog_format: Default::default(),
        },
    )
    .unwrap()
}

fn converter(pairs: &[(&str, &str)]) -> Converter {
    let mut properties: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    properties.insert(props::INGEST_TOPIC.into(), "src".into());
    let config = IngestConfig::from_properties(&properties, true)
        .unwrap()
        .unwrap();
    Converter::new(&def(), &config)
}

fn field(name: &str, ty: &str, logical: Option<&str>, params: Option<Value>) -> Value {
    let mut f = json!({"field": name, "type": ty, "optional": true});
    if let Some(l) = logical {
        f["name"] = json!(l);
    }
    if let Some(p) = params {
        f["parameters"] = p;
    }
    f
}

/// A Connect schema for an envelope whose row fields are `fields`.
fn schema(fields: Vec<Value>) -> Value {
    let row = json!({"type": "struct", "optional": true, "fields": fields});
    let mut before = row.clone();
    before["field"] = json!("before");
    let mut after = row;
    after["field"] = json!("after");
    json!({"type": "struct", "fields": [before, after,
        {"field": "op", "type": "string"}, {"field": "ts_ms", "type": "int64", "optional": true}]})
}

fn upsert(c: &Converter, value: &Value) -> serde_json::Map<String, Value> {
    let bytes = value.to_string();
    match c.convert(None, Some(bytes.as_bytes())).unwrap().event {
        Event::Upsert(row) => row,
        other => panic!("expected an upsert, got {other:?}"),
    }
}

#[test]
fn connect_logical_types_become_unitable_json_forms() {
    let c = converter(&[]);
    let s = schema(vec![
        field("id", "int64", None, None),
        field("name", "string", None, None),
        field(
            "amount",
            "bytes",
            Some("org.apache.kafka.connect.data.Decimal"),
            Some(json!({"scale": "2", "connect.decimal.precision": "12"})),
        ),
        field("day", "int32", Some("io.debezium.time.Date"), None),
        field("at", "int64", Some("io.debezium.time.MicroTimestamp"), None),
        field(
            "at_tz",
            "string",
            Some("io.debezium.time.ZonedTimestamp"),
            None,
        ),
        field("blob", "bytes", None, None),
    ]);
    // -12345 as 2 bytes of two's complement: 0xCF 0xC7; base64 "z8c=".
    let event = json!({"schema": s, "payload": {"op": "c", "before": null, "after": {
        "id": 7, "name": "x", "amount": "z8c=", "day": 19844,
        "at": 1_700_000_000_123_456_i64, "at_tz": "2024-05-01T09:30:00+02:00", "blob": "AAH+/w=="
    }, "ts_ms": 1}});
    let row = upsert(&c, &event);
    assert_eq!(row["id"], json!(7));
    assert_eq!(row["amount"], json!("-123.45"));
    assert_eq!(row["day"], json!("2024-05-01"));
    assert_eq!(row["at"], json!("2023-11-14T22:13:20.123456"));
    assert_eq!(row["at_tz"], json!("2024-05-01T09:30:00+02:00"));
    assert_eq!(row["blob"], json!("AAH+/w=="));

    // Millisecond and nanosecond timestamps, the Connect Date, a variable-scale decimal.
    let s = schema(vec![
        field("id", "int64", None, None),
        field("at", "int64", Some("io.debezium.time.Timestamp"), None),
        field(
            "at_tz",
            "int64",
            Some("io.debezium.time.NanoTimestamp"),
            None,
        ),
        field(
            "day",
            "int32",
            Some("org.apache.kafka.connect.data.Date"),
            None,
        ),
        field(
            "amount",
            "struct",
            Some("io.debezium.data.VariableScaleDecimal"),
            None,
        ),
    ]);
    let event = json!({"schema": s, "payload": {"op": "u", "after": {
        "id": 7, "at": 1_700_000_000_123_i64, "at_tz": 1_700_000_000_123_456_000_i64, "day": -1,
        "amount": {"scale": 3, "value": "MDk="}
    }}});
    let row = upsert(&c, &event);
    assert_eq!(row["at"], json!("2023-11-14T22:13:20.123000"));
    assert_eq!(row["at_tz"], json!("2023-11-14T22:13:20.123456Z"));
    assert_eq!(row["day"], json!("1969-12-31"));
    assert_eq!(row["amount"], json!("12.345"));
}

#[test]
fn decimals_decode_from_twos_complement() {
    assert_eq!(decimal_from_base64("AA==", 2).unwrap(), "0.00");
    assert_eq!(decimal_from_base64("AQ==", 2).unwrap(), "0.01");
    assert_eq!(decimal_from_base64("/w==", 0).unwrap(), "-1");
    assert_eq!(decimal_from_base64("/w==", 3).unwrap(), "-0.001");
    // 2^63 needs 9 bytes: 0x00 0x80 0..0.
    assert_eq!(
        decimal_from_base64("AIAAAAAAAAAA", 0).unwrap(),
        "9223372036854775808"
    );
    assert!(decimal_from_base64("not base64!", 2).is_err());
    assert!(decimal_from_base64("", 2).is_err());
    // 17 bytes do not fit.
    assert!(decimal_from_base64("AAAAAAAAAAAAAAAAAAAAAAA=", 2).is_err());
}

#[test]
fn schemaless_events_convert_by_the_column_type() {
    let c = converter(&[(props::INGEST_TIMESTAMP_UNIT, "ms")]);
    let row = upsert(
        &c,
        &json!({"op": "r", "after": {"id": 1, "day": 0, "at": 86_400_000, "at_tz": 0,
            "amount": "1.50", "at_other": 5}}),
    );
    assert_eq!(row["day"], json!("1970-01-01"));
    assert_eq!(row["at"], json!("1970-01-02T00:00:00.000000"));
    assert_eq!(row["at_tz"], json!("1970-01-01T00:00:00.000000Z"));
    assert_eq!(row["amount"], json!("1.50"));
    assert!(!row.contains_key("at_other"));

    // Without a unit, an integer timestamp is refused, naming the column and the fix.
    let c = converter(&[]);
    let e = c
        .convert(None, Some(br#"{"op":"c","after":{"id":1,"at":5}}"#))
        .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("at"));
    assert!(
        e.reason.contains("unitable.ingest.timestamp-unit"),
        "{}",
        e.reason
    );
    // A zoned text for a timestamp without zone is its UTC time.
    let row = upsert(
        &c,
        &json!({"op": "c", "after": {"id": 1, "at": "2024-05-01T09:30:00+02:00"}}),
    );
    assert_eq!(row["at"], json!("2024-05-01T07:30:00.000000"));
}

#[test]
fn deletes_take_the_key_from_before_or_from_the_record_key() {
    let c = converter(&[]);
    let delete = |key: Option<&str>, value: &Value| {
        let bytes = value.to_string();
        c.convert(key.map(str::as_bytes), Some(bytes.as_bytes()))
    };
    let got = delete(
        None,
        &json!({"op": "d", "before": {"id": 3, "name": "x"}, "after": null}),
    )
    .unwrap();
    assert_eq!(
        got.event,
        Event::Delete(json!({"id": 3}).as_object().unwrap().clone())
    );
    // No `before` (a source without full row images): the key, with or without a schema.
    let got = delete(
        Some(r#"{"schema":{"type":"struct","fields":[{"field":"ID","type":"int64"}]},"payload":{"ID":4}}"#),
        &json!({"op": "d", "before": null, "after": null}),
    )
    .unwrap();
    assert_eq!(
        got.event,
        Event::Delete(json!({"id": 4}).as_object().unwrap().clone())
    );
    let e = delete(None, &json!({"op": "d", "before": null})).unwrap_err();
    assert_eq!(e.kind, "missing_key");
    let e = delete(None, &json!({"op": "d", "before": {"name": "x"}})).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("id"));
}

#[test]
fn tombstones_schema_changes_and_heartbeats_are_skipped() {
    let c = converter(&[]);
    let skip = |value: Option<&str>| match c.convert(None, value.map(str::as_bytes)).unwrap().event
    {
        Event::Skip(s) => s,
        other => panic!("expected a skip, got {other:?}"),
    };
    assert_eq!(skip(None), Skip::Tombstone);
    assert_eq!(
        skip(Some(r#"{"schema":{"type":"struct"},"payload":null}"#)),
        Skip::Tombstone
    );
    assert_eq!(
        skip(Some(
            r#"{"source":{},"databaseName":"shop","ddl":"ALTER TABLE orders ADD c INT","tableChanges":[]}"#
        )),
        Skip::SchemaChange
    );
    assert_eq!(skip(Some(r#"{"ts_ms":1700000000000}"#)), Skip::Other);
    assert_eq!(skip(Some(r#"{"op":"m","message":{}}"#)), Skip::Other);
}

#[test]
fn bad_events_are_rejected_naming_the_field_and_never_panic() {
    let c = converter(&[]);
    let reject = |value: &[u8]| c.convert(None, Some(value)).unwrap_err();
    assert_eq!(reject(b"{not json").kind, "malformed");
    assert_eq!(reject(b"[1,2]").kind, "malformed");
    assert_eq!(
        reject(br#"{"after":{"id":1}}"#).field.as_deref(),
        Some("op")
    );
    assert_eq!(
        reject(br#"{"op":"x","after":{}}"#).field.as_deref(),
        Some("op")
    );
    assert_eq!(
        reject(br#"{"op":"c","after":5}"#).field.as_deref(),
        Some("after")
    );
    assert_eq!(reject(br#"{"op":"t"}"#).kind, "truncate");
    let s = schema(vec![field(
        "amount",
        "bytes",
        Some("org.apache.kafka.connect.data.Decimal"),
        None,
    )]);
    let e = reject(
        json!({"schema": s, "payload": {"op": "c", "after": {"id": 1, "amount": "AA=="}}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(e.field.as_deref(), Some("amount"));
    assert!(e.reason.contains("scale"), "{}", e.reason);
    // Arbitrary bytes: an error or a conversion, never a panic.
    for bytes in [
        &b"\xff\xfe"[..],
        b"",
        b"null",
        b"{\"op\":\"c\",\"after\":{\"day\":1e400}}",
    ] {
        let _ = c.convert(Some(b"\x00"), Some(bytes));
    }
}

#[test]
fn unknown_columns_are_left_out_or_rejected_as_the_table_says() {
    let event = br#"{"op":"c","after":{"id":1,"NAME":"a","added":2}}"#;
    let got = converter(&[]).convert(None, Some(event)).unwrap();
    assert_eq!(got.unknown_columns, vec!["added".to_string()]);
    match got.event {
        // Matched without case: MySQL column names.
        Event::Upsert(row) => assert_eq!(row["name"], json!("a")),
        other => panic!("{other:?}"),
    }
    let c = converter(&[(props::INGEST_UNKNOWN_COLUMNS, "reject")]);
    let e = c.convert(None, Some(event)).unwrap_err();
    assert_eq!(e.kind, "unknown_column");
    assert_eq!(e.field.as_deref(), Some("added"));
}

#[test]
fn a_schema_is_parsed_once_and_bare_events_mentioning_payload_still_read() {
    let c = converter(&[]);
    let s = schema(vec![
        field("id", "int64", None, None),
        field("name", "string", None, None),
    ]);
    for id in 0..3 {
        let event = json!({"schema": s, "payload": {"op": "c", "after": {"id": id, "name": "x"}}});
        assert_eq!(upsert(&c, &event)["id"], json!(id));
    }
    assert_eq!(
        c.schemas.lock().unwrap().len(),
        1,
        "one schema text, parsed once"
    );
    // A bare event whose text contains "payload" (in a value) is still a bare event.
    let row = upsert(
        &c,
        &json!({"op": "c", "after": {"id": 9, "name": "\"payload\""}}),
    );
    assert_eq!(row["name"], json!("\"payload\""));
    // A wrapper without a schema.
    let row = upsert(&c, &json!({"payload": {"op": "r", "after": {"id": 10}}}));
    assert_eq!(row["id"], json!(10));
    // A wrapped value that is not an object at the top is malformed, not a panic.
    assert_eq!(
        c.convert(None, Some(br#"["payload"]"#)).unwrap_err().kind,
        "malformed"
    );
}
