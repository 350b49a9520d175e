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
use unitable_core::scan::{ScanOptions, read_scan};
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{RowFormat, WaitFor, WriteOp, WriteRequest, WriteResponse};
use unitable_tests::Service;
pub use unitable_tests::bench::create_kv_table_as;

/// The test table: `id int64` primary key, `v string`, `n int64`.
pub const TABLE: &str = "crash.kv";

/// Creates [`TABLE`] with `buckets` buckets through the admin API.
pub async fn create_kv_table(service: &Service, buckets: u32) -> Result<()> {
    create_kv_table_as(service, TABLE, buckets, &[], Vec::new()).await
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
    let scan = table.scan().select(["id", "v"]).build()?;
    let batches: Vec<RecordBatch> = read_scan(&table, &scan, ScanOptions::default())
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

/// The sum of the samples of metric `name` whose labels contain every one of `labels`.
pub fn metric(service: &Service, name: &str, labels: &[&str]) -> Result<f64> {
    let body = String::from_utf8(service.http_get("/metrics")?.body)?;
    let mut sum = 0.0;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let base = series.split('{').next().unwrap_or(series);
        if base == name && labels.iter().all(|l| series.contains(l)) {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(sum)
}

/// Random upserts and deletes of `keys` keys; every acknowledged change goes into `model`.
pub async fn random_writes(
    client: &mut WriteServiceClient<tonic::transport::Channel>,
    rng: &mut unitable_tests::iceberg_oracle::Rng,
    model: &mut BTreeMap<i64, String>,
    keys: u64,
    requests: usize,
    wait: bool,
    tag: &str,
) -> Result<()> {
    for r in 0..requests {
        let mut upserts = String::new();
        let mut deletes = String::new();
        let mut changes: BTreeMap<i64, Option<String>> = BTreeMap::new();
        for i in 0..(1 + rng.below(20)) {
            let id = rng.below(keys) as i64;
            if changes.contains_key(&id) {
                continue;
            }
            if rng.below(5) == 0 {
                deletes.push_str(&format!("{{\"id\":{id}}}\n"));
                changes.insert(id, None);
            } else {
                let v = format!("{tag}-{r}-{i}");
                upserts.push_str(&kv_line(id, &v, i as i64));
                changes.insert(id, Some(v));
            }
        }
        let last = r + 1 == requests;
        if !upserts.is_empty() {
            let resp = write_lines(
                client,
                WriteOp::Upsert,
                &upserts,
                wait && last && deletes.is_empty(),
            )
            .await?;
            ensure!(resp.errors.is_empty(), "rejected: {:?}", resp.errors);
        }
        if !deletes.is_empty() {
            let resp = write_lines(client, WriteOp::Delete, &deletes, wait && last).await?;
            ensure!(resp.errors.is_empty(), "rejected: {:?}", resp.errors);
        }
        for (id, change) in changes {
            match change {
                Some(v) => model.insert(id, v),
                None => model.remove(&id),
            };
        }
    }
    Ok(())
}

/// Waits until the table's snapshot covers everything written (a no-op write that waits).
pub async fn settle(client: &mut WriteServiceClient<tonic::transport::Channel>) -> Result<()> {
    let resp = write_lines(client, WriteOp::Delete, "{\"id\":-1}\n", true).await?;
    ensure!(resp.errors.is_empty(), "rejected: {:?}", resp.errors);
    Ok(())
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
