//! The committer's primary-key index spilling to disk in a real `unitable serve` with a tiny
//! `--index-memory-limit`: after rounds of upserts and deletes (and a restart, which rebuilds
//! the index under the limit), SNAPSHOT reads, LOOKUPs and the Iceberg table read by
//! iceberg-rust equal a BTreeMap model, and the served metrics show that the index spilled and
//! kept its resident bytes under the limit.

mod support;

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use support::read::{Client, kv_rows, lookup_ids, read, request};
use support::{Rng, TABLE, create_kv_table, kv_line, scan_kv, write_lines};
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{ReadMode, WriteOp};
use unitable_tests::Service;

type Writer = WriteServiceClient<tonic::transport::Channel>;
/// id -> (v, n)
type Model = BTreeMap<i64, (String, i64)>;

const KEYS: i64 = 10_000;
/// About an eighth of what the index of `KEYS` keys takes in memory.
const LIMIT: &str = "64KiB";
const LIMIT_BYTES: f64 = 64.0 * 1024.0;

/// One round: upserts of a random third of the keys (all keys in round 0), then deletes of a
/// random twentieth, each as one request; the deletes wait for the snapshot.
async fn round(writer: &mut Writer, model: &mut Model, rng: &mut Rng, round: u64) -> Result<()> {
    let mut upserts = String::new();
    for id in 0..KEYS {
        if round == 0 || rng.below(3) == 0 {
            let (v, n) = (format!("r{round}-{id}"), rng.below(1 << 40) as i64);
            upserts.push_str(&kv_line(id, &v, n));
            model.insert(id, (v, n));
        }
    }
    let r = write_lines(writer, WriteOp::Upsert, &upserts, false).await?;
    ensure!(r.rows_rejected == 0, "upserts rejected: {r:?}");
    let mut deletes = String::new();
    for _ in 0..KEYS / 20 {
        let id = rng.below(KEYS as u64) as i64;
        deletes.push_str(&format!("{{\"id\":{id}}}\n"));
        model.remove(&id);
    }
    let r = write_lines(writer, WriteOp::Delete, &deletes, true).await?;
    ensure!(r.rows_rejected == 0, "deletes rejected: {r:?}");
    Ok(())
}

/// SNAPSHOT, LOOKUP (of every key and some that never existed) and the table read by
/// iceberg-rust all equal `model`.
async fn check(service: &Service, reader: &mut Client, model: &Model, when: &str) -> Result<()> {
    let (batches, _) = read(reader, request(ReadMode::Snapshot, "")).await?;
    let snapshot = kv_rows(&batches)?;
    ensure!(
        &snapshot == model,
        "{when}: SNAPSHOT differs from the model"
    );
    let ids: Vec<i64> = (0..KEYS + 100).collect();
    // A lookup takes at most 10,000 keys.
    let (mut batches, mut missing) = (Vec::new(), Vec::new());
    for (n, chunk) in ids.chunks(5_000).enumerate() {
        let (b, m) = lookup_ids(reader, chunk).await?;
        batches.extend(b);
        missing.extend(m.into_iter().map(|i| i + (n * 5_000) as u32));
    }
    let found = kv_rows(&batches)?;
    ensure!(&found == model, "{when}: LOOKUP differs from the model");
    let want_missing: Vec<u32> = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| !model.contains_key(id))
        .map(|(i, _)| i as u32)
        .collect();
    ensure!(missing == want_missing, "{when}: LOOKUP's missing keys");
    let table = scan_kv(&service.data_dir()).await?;
    let want: BTreeMap<i64, String> = model.iter().map(|(k, (v, _))| (*k, v.clone())).collect();
    ensure!(
        table == want,
        "{when}: the Iceberg table differs from the model"
    );
    Ok(())
}

/// The value of `metric` for the test table in the served metrics.
fn metric(service: &Service, metric: &str) -> Result<f64> {
    let body = String::from_utf8_lossy(&service.http_get("/metrics")?.body).into_owned();
    let label = format!("table=\"{TABLE}\"");
    body.lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {metric} for {TABLE} in the metrics:\n{body}"))
}

fn check_metrics(service: &Service, when: &str) -> Result<()> {
    let resident = metric(service, "unitable_writer_index_bytes")?;
    ensure!(
        resident <= LIMIT_BYTES,
        "{when}: the index holds {resident} bytes, over its limit"
    );
    let spilled = metric(service, "unitable_writer_index_spilled_bytes")?;
    ensure!(spilled > 0.0, "{when}: the index did not spill");
    let spills = metric(service, "unitable_writer_index_spills_total")?;
    ensure!(spills > 0.0, "{when}: no spill counted");
    Ok(())
}

#[tokio::test]
async fn a_spilling_index_keeps_snapshot_and_lookup_equal_to_the_model() -> Result<()> {
    let args = ["--commit-interval", "200ms", "--index-memory-limit", LIMIT];
    let mut service = tokio::task::spawn_blocking(move || Service::start(&args)).await??;
    create_kv_table(&service, 2).await?;
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
    let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;
    let mut model = Model::new();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for r in 0..3 {
        round(&mut writer, &mut model, &mut rng, r).await?;
    }
    check(&service, &mut reader, &model, "after 3 rounds").await?;
    check_metrics(&service, "after 3 rounds")?;

    // A restart rebuilds the index from the table, spilling again.
    service = tokio::task::spawn_blocking(move || service.restart().map(|()| service)).await??;
    writer = WriteServiceClient::connect(service.grpc_url()).await?;
    reader = ReadServiceClient::connect(service.grpc_url()).await?;
    for r in 3..5 {
        round(&mut writer, &mut model, &mut rng, r).await?;
    }
    check(&service, &mut reader, &model, "after a restart").await?;
    check_metrics(&service, "after a restart")?;
    // The spill file is unlinked once created: nothing shows in the spill directory.
    let spill_dir = service.data_dir().join("index-spill");
    let leftovers: Vec<_> = walk(&spill_dir);
    ensure!(
        leftovers.is_empty(),
        "files in the spill directory: {leftovers:?}"
    );
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
