//! Shared by the writer tests: a gRPC client for writes, a key-value table, and reading the
//! Iceberg table back with iceberg-rust and PyIceberg.

#![allow(dead_code, unreachable_pub)]

pub mod read;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use futures::TryStreamExt;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{
    Column, CreateTableRequest, DataType, PartitionField, RowFormat, TableDefinition, WaitFor,
    WriteOp, WriteRequest, WriteResponse, data_type,
};
use unitable_tests::Service;

/// The test table: `id int64` primary key, `v string`, `n int64`.
pub const TABLE: &str = "crash.kv";

/// Creates [`TABLE`] with `buckets` buckets through the admin API.
pub async fn create_kv_table(service: &Service, buckets: u32) -> Result<()> {
    create_kv_table_as(service, TABLE, buckets, &[], Vec::new()).await
}

/// Creates a table of the test table's shape (`id int64` key, `v string`, `n int64`) named
/// `name`, with `buckets` buckets, table properties and a partition spec.
pub async fn create_kv_table_as(
    service: &Service,
    name: &str,
    buckets: u32,
    properties: &[(&str, &str)],
    partition_by: Vec<PartitionField>,
) -> Result<()> {
    let mut admin = TableAdminServiceClient::connect(service.grpc_url()).await?;
    let column = |name: &str, kind: data_type::Kind, required: bool| Column {
        name: name.into(),
        r#type: Some(DataType {
            kind: kind as i32,
            ..DataType::default()
        }),
        required,
        ..Column::default()
    };
    admin
        .create_table(CreateTableRequest {
            definition: Some(TableDefinition {
                table: name.into(),
                columns: vec![
                    column("id", data_type::Kind::Int64, true),
                    column("v", data_type::Kind::String, false),
                    column("n", data_type::Kind::Int64, false),
                ],
                primary_key: vec!["id".into()],
                buckets,
                partition_by,
                properties: properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..TableDefinition::default()
            }),
        })
        .await?;
    Ok(())
}

/// One JSON line of the test table.
pub fn kv_line(id: i64, v: &str, n: i64) -> String {
    format!("{{\"id\":{id},\"v\":\"{v}\",\"n\":{n}}}\n")
}

/// Writes JSON lines with `op`.
pub async fn write_lines(
    client: &mut WriteServiceClient<tonic::transport::Channel>,
    op: WriteOp,
    lines: &str,
    wait: bool,
) -> Result<WriteResponse, tonic::Status> {
    write_lines_to(client, TABLE, op, lines, wait).await
}

/// Writes JSON lines with `op` to `table`.
pub async fn write_lines_to(
    client: &mut WriteServiceClient<tonic::transport::Channel>,
    table: &str,
    op: WriteOp,
    lines: &str,
    wait: bool,
) -> Result<WriteResponse, tonic::Status> {
    client
        .write(WriteRequest {
            table: table.into(),
            op: op as i32,
            format: RowFormat::JsonLines as i32,
            rows: lines.as_bytes().to_vec(),
            wait_for: if wait {
                WaitFor::Snapshot
            } else {
                WaitFor::Changelog
            } as i32,
            request_id: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The rows of the test table's current snapshot read by iceberg-rust: id -> v. Fails on a
/// duplicate id.
pub async fn scan_kv(data_dir: &Path) -> Result<BTreeMap<i64, String>> {
    scan_kv_table(data_dir, TABLE).await
}

/// [`scan_kv`] of another table of the same shape.
pub async fn scan_kv_table(data_dir: &Path, name: &str) -> Result<BTreeMap<i64, String>> {
    let catalog = TableCatalog::open(CatalogConfig::embedded(data_dir)).await?;
    let table = catalog.load(&name.parse()?).await?;
    let batches: Vec<RecordBatch> = table
        .scan()
        .select(["id", "v"])
        .build()?
        .to_arrow()
        .await?
        .try_collect()
        .await?;
    let mut rows = BTreeMap::new();
    for b in batches {
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("id column")?;
        let vs = b
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .context("v column")?;
        for i in 0..b.num_rows() {
            let v = if vs.is_null(i) {
                String::new()
            } else {
                vs.value(i).to_string()
            };
            ensure!(
                rows.insert(ids.value(i), v).is_none(),
                "duplicate id {} in the Iceberg table",
                ids.value(i)
            );
        }
    }
    Ok(rows)
}

/// The same rows read by PyIceberg 0.12 (a separate process on the catalog database).
pub fn scan_kv_pyiceberg(data_dir: &Path) -> Result<BTreeMap<i64, String>> {
    let python = unitable_tests::python_bin()?;
    let script = r#"
import json, sys
from pyiceberg.catalog.sql import SqlCatalog
d = sys.argv[1]
c = SqlCatalog("unitable", uri=f"sqlite:///{d}/catalog.db", warehouse=f"file://{d}/warehouse")
rows = c.load_table(sys.argv[2]).scan(selected_fields=("id", "v")).to_arrow().to_pylist()
print(json.dumps([[r["id"], r["v"] or ""] for r in rows]))
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(data_dir)
        .arg(TABLE)
        .output()
        .context("running PyIceberg")?;
    if !out.status.success() {
        bail!("PyIceberg failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let pairs: Vec<(i64, String)> = serde_json::from_slice(&out.stdout)?;
    let mut rows = BTreeMap::new();
    for (id, v) in pairs {
        ensure!(rows.insert(id, v).is_none(), "PyIceberg read id {id} twice");
    }
    Ok(rows)
}

/// A deterministic pseudo-random sequence (xorshift; no test dependency on a seeded crate).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
