//! Key-index checkpoints, judged by the table: a committer that starts from a checkpoint and
//! catches up over later commits and a compaction must find every key's current row, or the
//! next upsert of a key leaves its old row live (a duplicate) or deletes another key's row (a
//! missing one). iceberg-rust and PyIceberg read the table against a model after every key
//! has been upserted or deleted again. A broken checkpoint falls back to the full rebuild.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use support::{
    TABLE, create_kv_table_as, kv_line, metric, random_writes, scan_kv, scan_kv_pyiceberg, settle,
    write_lines,
};
use unitable_proto::v1::WriteOp;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_tests::Service;
use unitable_tests::iceberg_oracle::Rng;

const KEYS: u64 = 400;

/// Starts a server whose committers checkpoint only when they stop (the interval is an hour),
/// so a crash leaves the index's checkpoint behind the table.
async fn start() -> Result<Service> {
    tokio::task::spawn_blocking(|| {
        Service::start(&[
            "--commit-interval",
            "50ms",
            "--compaction-interval",
            "0",
            "--index-checkpoint-interval",
            "1h",
        ])
    })
    .await?
}

/// The table's key-index checkpoints on disk.
fn checkpoints(data_dir: &Path) -> Result<Vec<PathBuf>> {
    let (ns, table) = TABLE.split_once('.').context("table name")?;
    let dir = data_dir
        .join("warehouse")
        .join(ns)
        .join(table)
        .join("unitable/key-index");
    let mut out = Vec::new();
    if dir.exists() {
        for entry in std::fs::read_dir(&dir)? {
            out.push(entry?.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Upserts every key of `0..KEYS` and deletes every seventh, so each key's current row must
/// be found through the index; the model follows.
async fn touch_every_key(service: &Service, model: &mut BTreeMap<i64, String>) -> Result<()> {
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    let mut upserts = String::new();
    let mut deletes = String::new();
    for id in 0..KEYS as i64 {
        if id % 7 == 0 {
            deletes.push_str(&format!("{{\"id\":{id}}}\n"));
            model.remove(&id);
        } else {
            let v = format!("final-{id}");
            upserts.push_str(&kv_line(id, &v, id));
            model.insert(id, v);
        }
    }
    let resp = write_lines(&mut client, WriteOp::Upsert, &upserts, false).await?;
    ensure!(resp.errors.is_empty(), "rejected: {:?}", resp.errors);
    let resp = write_lines(&mut client, WriteOp::Delete, &deletes, true).await?;
    ensure!(resp.errors.is_empty(), "rejected: {:?}", resp.errors);
    Ok(())
}

async fn check_against_model(service: &Service, model: &BTreeMap<i64, String>) -> Result<()> {
    let read = scan_kv(&service.data_dir()).await?;
    ensure!(
        &read == model,
        "iceberg-rust: the table differs from the model ({} rows vs {})",
        read.len(),
        model.len()
    );
    let data_dir = service.data_dir();
    let py = tokio::task::spawn_blocking(move || scan_kv_pyiceberg(&data_dir)).await??;
    ensure!(&py == model, "PyIceberg: the table differs from the model");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_committer_catches_a_checkpoint_up_over_commits_and_a_compaction() -> Result<()> {
    let mut service = start().await?;
    create_kv_table_as(
        &service,
        TABLE,
        2,
        &[
            ("unitable.compaction.min-input-files", "2"),
            ("unitable.compaction.delete-ratio", "0.05"),
        ],
        Vec::new(),
    )
    .await?;
    let mut rng = Rng(0x5eed_1dc4_2025_0001);
    let mut model = BTreeMap::new();
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    random_writes(&mut client, &mut rng, &mut model, KEYS, 30, true, "a").await?;
    ensure!(
        checkpoints(&service.data_dir())?.is_empty(),
        "a checkpoint was written before the interval"
    );

    // A graceful stop checkpoints the index after the final commit.
    tokio::task::block_in_place(|| service.stop())?;
    let first = checkpoints(&service.data_dir())?;
    ensure!(first.len() == 1, "checkpoints after the stop: {first:?}");
    tokio::task::block_in_place(|| service.restart())?;
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    settle(&mut client).await?;
    ensure!(
        metric(
            &service,
            "unitable_committer_index_checkpoint_loads_total",
            &["result=\"loaded\""]
        )? == 1.0,
        "the restart did not load the checkpoint:\n{}",
        service.log()
    );

    // Commits the checkpoint does not know (upserts and deletes of its keys), then a crash.
    random_writes(&mut client, &mut rng, &mut model, KEYS, 20, true, "b").await?;
    crash_and_check_restart(&mut service, &model, &first).await?;

    // Then a compaction too (the checkpoint's files are replaced), more commits, a crash.
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    let out = service.cli(&["compact", TABLE])?.ok()?;
    ensure!(out.contains("compacted"), "{out}");
    random_writes(&mut client, &mut rng, &mut model, KEYS, 20, true, "c").await?;
    crash_and_check_restart(&mut service, &model, &first).await?;

    // Every key's row must now be found through the caught-up index.
    touch_every_key(&service, &mut model).await?;
    check_against_model(&service, &model).await?;
    Ok(())
}

/// SIGKILLs the server (no checkpoint is written: the only one is still `checkpoints`), starts
/// it, and checks that its committer loaded the checkpoint, caught up to exactly the table's
/// live keys, and that the table equals the model.
async fn crash_and_check_restart(
    service: &mut Service,
    model: &BTreeMap<i64, String>,
    checkpoints_before: &[PathBuf],
) -> Result<()> {
    ensure!(
        checkpoints(&service.data_dir())? == checkpoints_before,
        "a checkpoint was written before the crash"
    );
    tokio::task::block_in_place(|| service.restart())?; // SIGKILL, then start
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    settle(&mut client).await?;
    let loaded = metric(
        service,
        "unitable_committer_index_checkpoint_loads_total",
        &["result=\"loaded\""],
    )?;
    let rebuilds = metric(service, "unitable_committer_index_rebuilds_total", &[])?;
    ensure!(
        loaded == 1.0 && rebuilds == 0.0,
        "expected a checkpoint load and no rebuild, found {loaded} loads and {rebuilds} rebuilds:\n{}",
        service.log()
    );
    // The caught-up index holds exactly the live keys (no entry for a row deleted since).
    let keys = metric(service, "unitable_writer_index_keys", &[])?;
    ensure!(
        keys == model.len() as f64,
        "the index holds {keys} keys, the table {}",
        model.len()
    );
    check_against_model(service, model).await
}

/// A server that took 20 random write requests (seeded with `seed`) to a new table and
/// stopped gracefully (so it checkpointed), with the model of the table.
async fn written_and_stopped(seed: u64) -> Result<(Service, BTreeMap<i64, String>)> {
    let mut service = start().await?;
    create_kv_table_as(&service, TABLE, 2, &[], Vec::new()).await?;
    let mut rng = Rng(seed);
    let mut model = BTreeMap::new();
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    random_writes(&mut client, &mut rng, &mut model, KEYS, 20, true, "a").await?;
    tokio::task::block_in_place(|| service.stop())?;
    Ok((service, model))
}

/// Restarts the server, waits until a write is committed, and returns the index rebuilds its
/// start counted.
async fn restart_and_count_rebuilds(service: &mut Service) -> Result<f64> {
    tokio::task::block_in_place(|| service.restart())?;
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    settle(&mut client).await?;
    metric(
        service,
        "unitable_committer_index_rebuilds_total",
        &["reason=\"start\""],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_checkpoint_falls_back_to_a_rebuild() -> Result<()> {
    let (mut service, mut model) = written_and_stopped(0x5eed_1dc4_2025_0002).await?;
    let written = checkpoints(&service.data_dir())?;
    ensure!(
        written.len() == 1,
        "checkpoints after the stop: {written:?}"
    );
    // Cut the file in half: the Parquet footer is gone.
    let bytes = std::fs::read(&written[0])?;
    std::fs::write(&written[0], &bytes[..bytes.len() / 2])?;

    let rebuilds = restart_and_count_rebuilds(&mut service).await?;
    let stale = metric(
        &service,
        "unitable_committer_index_checkpoint_loads_total",
        &["result=\"stale\""],
    )?;
    ensure!(
        stale == 1.0 && rebuilds == 1.0,
        "expected the broken checkpoint refused and a rebuild, found {stale} and {rebuilds}:\n{}",
        service.log()
    );
    touch_every_key(&service, &mut model).await?;
    check_against_model(&service, &model).await?;
    // The stop after the rebuild writes a good checkpoint; the broken one is pruned later.
    tokio::task::block_in_place(|| service.stop())?;
    ensure!(checkpoints(&service.data_dir())?.len() == 2);
    Ok(())
}

/// PyIceberg appends rows for keys the table already holds while the server is down.
fn append_with_pyiceberg(data_dir: &Path, ids: &[i64]) -> Result<()> {
    let script = r#"
import sys
import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
d = sys.argv[1]
c = SqlCatalog("unitable", uri=f"sqlite:///{d}/catalog.db", warehouse=f"file://{d}/warehouse")
t = c.load_table(sys.argv[2])
ids = [int(x) for x in sys.argv[3].split(",")]
t.append(pa.table({
    "id": pa.array(ids, pa.int64()),
    "v": pa.array([f"py-{i}" for i in ids], pa.string()),
    "n": pa.array([None] * len(ids), pa.int64()),
}, schema=t.schema().as_arrow()))
"#;
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    let out = std::process::Command::new(unitable_tests::python_bin()?)
        .args(["-c", script])
        .arg(data_dir)
        .arg(TABLE)
        .arg(ids.join(","))
        .output()
        .context("running PyIceberg")?;
    ensure!(
        out.status.success(),
        "PyIceberg append failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Another writer (PyIceberg) appends rows whose keys are live: the table then holds those keys
/// twice. The next start cannot use the checkpoint (a snapshot after it is not unitable's),
/// rebuilds the index on several threads, finds each key twice and deletes the older copy in
/// its next commit: PyIceberg then reads every key once, with the appended value.
#[tokio::test(flavor = "multi_thread")]
async fn keys_another_writer_appended_twice_are_healed_after_a_rebuild() -> Result<()> {
    let (mut service, mut model) = written_and_stopped(0x5eed_1dc4_2025_0003).await?;

    let twice: Vec<i64> = model.keys().copied().step_by(5).collect();
    ensure!(twice.len() > 10, "the model holds {} keys", model.len());
    append_with_pyiceberg(&service.data_dir(), &twice)?;
    for id in &twice {
        model.insert(*id, format!("py-{id}"));
    }

    let rebuilds = restart_and_count_rebuilds(&mut service).await?;
    ensure!(
        rebuilds == 1.0,
        "expected a rebuild at the start, found {rebuilds}:\n{}",
        service.log()
    );
    let reported = service.log().matches("a key is live twice").count();
    ensure!(
        reported == twice.len(),
        "{reported} keys reported live twice, {} appended again",
        twice.len()
    );
    check_against_model(&service, &model).await?;
    // The healed table keeps taking upserts and deletes of every key.
    touch_every_key(&service, &mut model).await?;
    check_against_model(&service, &model).await
}
