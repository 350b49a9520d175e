//! Shared by the bench binaries: a key-value table (`id int64` key, `v string`, `n int64`)
//! loaded through the Write API, and the resident memory of a process.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::commit::read::anchored_offsets;
use unitable_core::offsets::PartitionOffsets;
use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{
    Column, CreateTableRequest, DataType, PartitionField, RowFormat, TableDefinition, WaitFor,
    WriteOp, WriteRequest, WriteResponse, data_type,
};

use crate::Service;

/// Rows per write request while loading.
const CHUNK: u64 = 200_000;

/// Row `id` of the bench table as a JSON line (without the newline).
pub fn kv_row(id: u64) -> String {
    format!("{{\"id\":{id},\"v\":\"value-{id}\",\"n\":{}}}", id * 7)
}

/// The resident set size of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `perf record` (with call graphs) of a running process, stopped and written to its file
/// when dropped: for finding where a benchmark's server time goes (`perf report -i FILE`).
pub struct Profile(std::process::Child);

impl Profile {
    /// Starts profiling `pid` into `out` and gives perf a second to attach.
    pub async fn start(pid: u32, out: &std::ffi::OsStr) -> Result<Profile> {
        let child = std::process::Command::new("perf")
            .args(["record", "--call-graph", "dwarf", "-F", "999", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start perf (install linux-perf): {e}"))?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(Profile(child))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Creates the bench table `name` with `buckets` buckets.
pub async fn create_kv_table(service: &Service, name: &str, buckets: u32) -> Result<()> {
    create_kv_table_as(service, name, buckets, &[], Vec::new()).await
}

/// Creates a table of the key-value shape (`id int64` key, `v string`, `n int64`) named
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

/// Upserts rows `0..rows` of [`kv_row`] into `table`, then waits until a snapshot holds them;
/// returns how long that took.
pub async fn load_kv(service: &Service, table: &str, rows: u64) -> Result<Duration> {
    let mut writer = WriteServiceClient::connect(service.grpc_url())
        .await?
        .max_decoding_message_size(64 << 20);
    let started = Instant::now();
    let mut from = 0;
    while from < rows {
        let to = (from + CHUNK).min(rows);
        let mut lines = String::with_capacity(((to - from) * 48) as usize);
        for id in from..to {
            lines.push_str(&kv_row(id));
            lines.push('\n');
        }
        let response = upsert_lines(&mut writer, table, lines, WaitFor::Changelog).await?;
        ensure!(
            response.rows_rejected == 0,
            "rows rejected: {:?}",
            response.errors
        );
        from = to;
    }
    // Wait until the committer has committed everything: rewrite 64 rows (every partition,
    // for any bucket count up to a few dozen) and wait for a snapshot covering all of them
    // (each wait gives up after 60 s).
    let again: String = (0..64.min(rows)).map(|id| kv_row(id) + "\n").collect();
    for attempt in 0.. {
        let wait = upsert_lines(&mut writer, table, again.clone(), WaitFor::Snapshot).await;
        match wait {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::DeadlineExceeded && attempt < 20 => {}
            Err(s) => return Err(s.into()),
        }
    }
    Ok(started.elapsed())
}

/// Upserts JSON `lines` into `table`, answered once `wait_for` holds.
pub async fn upsert_lines(
    writer: &mut WriteServiceClient<tonic::transport::Channel>,
    table: &str,
    lines: String,
    wait_for: WaitFor,
) -> Result<WriteResponse, tonic::Status> {
    writer
        .write(WriteRequest {
            table: table.into(),
            op: WriteOp::Upsert as i32,
            format: RowFormat::JsonLines as i32,
            rows: lines.into_bytes(),
            wait_for: wait_for as i32,
            request_id: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The tables of `written` (the last acknowledged offset per partition, inclusive) whose newest
/// snapshot in `catalog` does not yet cover it.
pub async fn uncommitted(
    catalog: &TableCatalog,
    written: &BTreeMap<String, PartitionOffsets>,
) -> Result<Vec<String>> {
    let mut behind = Vec::new();
    for (table, offsets) in written {
        let t = catalog.load(&table.parse()?).await?;
        let anchored = t
            .metadata()
            .current_snapshot_id()
            .map(|id| anchored_offsets(t.metadata(), id))
            .unwrap_or_default();
        // Anchored offsets are exclusive ends.
        if offsets.0.iter().any(|(p, o)| anchored.get(*p).0 <= o.0) {
            behind.push(table.clone());
        }
    }
    Ok(behind)
}

/// Waits until every table of `written` is covered by its newest snapshot (see
/// [`uncommitted`]); returns how long that took.
pub async fn wait_committed(
    data: &Path,
    written: &BTreeMap<String, PartitionOffsets>,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let catalog = TableCatalog::open(CatalogConfig::embedded(data)).await?;
    loop {
        let behind = uncommitted(&catalog, written).await?;
        if behind.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= timeout {
            bail!("not committed within {timeout:?}: {behind:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A small deterministic generator (xorshift64), so every bench run draws the same keys.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A uniform draw from 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A uniform draw from (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// A key of `n` whose rank follows Zipf's law with exponent `s` (> 0, != 1), by inverting
    /// the continuous approximation of its CDF; ranks are spread over the key space by a
    /// multiplication with a large odd number (a bijection when `n` is odd or a power of two
    /// times an odd number not sharing its factors; collisions only merge ranks).
    pub fn zipf(&mut self, n: u64, s: f64) -> u64 {
        let u = self.unit();
        let top = (n as f64).powf(1.0 - s);
        let rank = ((top - 1.0) * u + 1.0).powf(1.0 / (1.0 - s)) as u64;
        let rank = rank.clamp(1, n) - 1;
        rank.wrapping_mul(0x9e37_79b9_7f4a_7c15 | 1) % n
    }
}
