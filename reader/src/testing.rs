//! Table definitions shared by the reader's unit tests.

use unitable_core::record::RecordCodec;
use unitable_core::table::{Column, TableDef, TableSpec};

/// Table `name` with `columns` (`name:type[!]`), primary key `key` and `buckets` buckets.
pub(crate) fn table(name: &str, columns: &[&str], key: &[&str], buckets: u32) -> TableDef {
    TableDef::new(
        name.parse().unwrap(),
        TableSpec {
            columns: columns.iter().map(|c| Column::parse(c).unwrap()).collect(),
            primary_key: key.iter().map(|k| k.to_string()).collect(),
            buckets: Some(buckets),
            ..TableSpec::default()
        },
    )
    .unwrap()
}

/// `t.kv`: `id:int64!` (the primary key) and `v:string`, in `buckets` buckets.
pub(crate) fn kv_table(buckets: u32) -> TableDef {
    table("t.kv", &["id:int64!", "v:string"], &["id"], buckets)
}

/// A codec for `def` at schema 0 of a fixed table uuid (for tests that need no catalog).
pub(crate) fn codec(def: &TableDef) -> RecordCodec {
    RecordCodec::new(def, "0190d7a4-5c3e-7b21-9a4f-3c2d1e0f9a8b", 0).unwrap()
}
