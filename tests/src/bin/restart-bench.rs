//! Restart-to-first-commit against table size, with a key-index checkpoint and without one.
//!
//! ```sh
//! cargo build --release -p unitable-table-service -p unitable-tests
//! UNITABLE_BIN=$CARGO_TARGET_DIR/release/unitable \
//!   $CARGO_TARGET_DIR/release/restart-bench --rows 10000000
//!   $CARGO_TARGET_DIR/release/restart-bench --rows 100000000 --index-memory-limit 1GiB
//! ```
//! Starts `unitable serve` (embedded catalog, local changelog) on a temporary directory, loads
//! ROWS rows (int64 key) through the Write API and waits for the commit, then stops the server
//! gracefully (its committer writes a key-index checkpoint after the final commit). Then, twice:
//! start the server and time it until a one-row write waited for with `wait_for = SNAPSHOT` is
//! acknowledged (the committer has loaded or rebuilt its index and committed), and read its
//! resident memory; the first start finds the checkpoint, the second finds none (the bench
//! deletes it) and rebuilds the index from the data files. Prints a Markdown table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use unitable_proto::v1::WaitFor;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_tests::{Service, bench};

#[derive(Debug, Parser)]
struct Args {
    /// Rows (keys) in the table.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Table buckets (changelog partitions).
    #[arg(long, default_value_t = 4)]
    buckets: u32,
    /// Passed to `unitable serve --index-memory-limit` (e.g. 1GiB): the committer's key index
    /// spills to local disk past it, so tables larger than memory can be measured.
    #[arg(long)]
    index_memory_limit: Option<String>,
}

const TABLE: &str = "bench.restart";

fn checkpoint_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("warehouse/bench/restart/unitable/key-index")
}

fn dir_bytes(dir: &Path) -> Result<(usize, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    if dir.exists() {
        for entry in std::fs::read_dir(dir)? {
            bytes += entry?.metadata()?.len();
            files += 1;
        }
    }
    Ok((files, bytes))
}

/// The value of the first sample of metric `name` on `/metrics`.
fn metric(service: &Service, name: &str) -> Result<f64> {
    let body = String::from_utf8(service.http_get("/metrics")?.body)?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series.split('{').next() == Some(name)).then(|| value.parse().ok())?
        })
        .with_context(|| format!("no metric {name}"))
}

/// Starts the stopped server and times it to the first commit.
async fn timed_start(service: &mut Service, rows: u64) -> Result<(Duration, Option<f64>)> {
    let started = Instant::now();
    tokio::task::block_in_place(|| service.restart())?;
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
    let line = bench::kv_row(rows) + "\n";
    bench::upsert_lines(&mut writer, TABLE, line, WaitFor::Snapshot).await?;
    let took = started.elapsed();
    let pid = service.process().id().context("server pid")?;
    Ok((took, bench::rss_mib(pid)))
}

/// The committer's own account of its start, from the server log.
fn start_line(service: &Service) -> String {
    service
        .log()
        .lines()
        .rev()
        .find(|l| {
            l.contains("loaded the primary-key index from a checkpoint")
                || l.contains("rebuilt the primary-key index")
        })
        .unwrap_or_default()
        .to_string()
}

/// How long a graceful stop may take: it makes the final commit and writes the index
/// checkpoint, which grows with the keys (about 3 s at 10M here).
const STOP_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut flags: Vec<String> = [
        "--commit-interval",
        "1s",
        "--compaction-interval",
        "0",
        "--index-checkpoint-interval",
        "1h",
    ]
    .map(String::from)
    .to_vec();
    if let Some(limit) = &args.index_memory_limit {
        flags.extend(["--index-memory-limit".to_string(), limit.clone()]);
    }
    let mut service = tokio::task::spawn_blocking(move || {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Service::start(&flags)
    })
    .await??;
    bench::create_kv_table(&service, TABLE, args.buckets).await?;
    let loaded = bench::load_kv(&service, TABLE, args.rows).await?;
    eprintln!("loaded and committed {} rows in {loaded:.1?}", args.rows);
    // The committer reports its index right after it publishes the commit the load waited for.
    let mut keys = 0.0;
    for _ in 0..100 {
        keys = metric(&service, "unitable_writer_index_keys")?;
        if keys >= args.rows as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let index_bytes = metric(&service, "unitable_writer_index_bytes")?;
    let pid = service.process().id().context("server pid")?;
    let rss_loaded = bench::rss_mib(pid);

    let stopping = Instant::now();
    tokio::task::block_in_place(|| service.stop_within(STOP_TIMEOUT))?;
    let stop = stopping.elapsed();
    let dir = checkpoint_dir(&service.data_dir());
    let (files, checkpoint_bytes) = dir_bytes(&dir)?;
    ensure!(
        files == 1,
        "expected one checkpoint in {}, found {files}",
        dir.display()
    );

    let (with_checkpoint, rss_checkpoint) = timed_start(&mut service, args.rows).await?;
    let loaded_line = start_line(&service);
    ensure!(
        loaded_line.contains("from a checkpoint"),
        "the restart did not load the checkpoint: {loaded_line}"
    );
    tokio::task::block_in_place(|| service.stop_within(STOP_TIMEOUT))?;
    std::fs::remove_dir_all(&dir)?;
    let (rebuilt, rss_rebuilt) = timed_start(&mut service, args.rows).await?;
    let rebuilt_line = start_line(&service);
    ensure!(
        rebuilt_line.contains("rebuilt"),
        "the restart did not rebuild: {rebuilt_line}"
    );
    tokio::task::block_in_place(|| service.stop_within(STOP_TIMEOUT))?;

    eprintln!("{loaded_line}\n{rebuilt_line}");
    let mib = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.0} MiB"));
    println!(
        "keys {keys:.0}: index {:.1} B/key in memory, checkpoint {:.1} B/key on disk ({:.1} MiB); \
         RSS after loading {}; graceful stop (final commit + checkpoint) {stop:.2?}",
        index_bytes / keys,
        checkpoint_bytes as f64 / keys,
        checkpoint_bytes as f64 / (1 << 20) as f64,
        mib(rss_loaded)
    );
    println!("| Start | Keys | Restart to first commit | RSS after |");
    println!("|---|---|---|---|");
    println!(
        "| from the checkpoint | {keys:.0} | {:.2} s | {} |",
        with_checkpoint.as_secs_f64(),
        mib(rss_checkpoint)
    );
    println!(
        "| rebuild from data files | {keys:.0} | {:.2} s | {} |",
        rebuilt.as_secs_f64(),
        mib(rss_rebuilt)
    );
    Ok(())
}
