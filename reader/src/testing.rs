//! Table definitions shared by the reader's unit tests.

use std::sync::Arc;

use unitable_core::admin::TableAdmin;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::changelog::Changelog;
use unitable_core::naming::TopicName;
use unitable_core::offsets::PartitionId;
use unitable_core::record::{ChangeOp, RecordCodec};
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

/// `def` created over `changelog` in a new embedded catalog (in a temporary directory, to be
/// kept as long as the catalog is used): the directory, the catalog and the table's codec.
pub(crate) async fn create(
    def: &TableDef,
    changelog: Arc<dyn Changelog>,
) -> (tempfile::TempDir, TableCatalog, RecordCodec) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = TableCatalog::open(CatalogConfig::embedded(dir.path()))
        .await
        .unwrap();
    let state = TableAdmin::new(catalog.clone(), changelog)
        .create_table(def)
        .await
        .unwrap();
    let loaded = catalog.load(&def.name).await.unwrap();
    let codec = RecordCodec::new(
        &state.def,
        &loaded.metadata().uuid().to_string(),
        loaded.metadata().current_schema_id(),
    )
    .unwrap();
    (dir, catalog, codec)
}

/// Appends the change of one JSON `line` (a row, or a key for a delete), stamped
/// `timestamp_ms`, to its partition of `topic`; gives the partition.
pub(crate) async fn append_line(
    codec: &RecordCodec,
    changelog: &dyn Changelog,
    topic: &TopicName,
    op: ChangeOp,
    line: &str,
    timestamp_ms: i64,
) -> PartitionId {
    let (parsed, errors) = codec.parse_json_rows(op, line.as_bytes(), 0);
    assert!(errors.is_empty(), "{errors:?}");
    let (mut encoded, errors) = codec.encode(op, &parsed.batch, timestamp_ms).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let row = encoded.pop().unwrap();
    changelog
        .append(topic, row.partition, vec![row.record])
        .await
        .unwrap();
    row.partition
}
