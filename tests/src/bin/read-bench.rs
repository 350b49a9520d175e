//! Reader benchmarks against a running `unitable serve` (release build: set UNITABLE_BIN).
//!
//! ```sh
//! cargo build --release -p unitable-table-service -p unitable-tests
//! export UNITABLE_BIN=$CARGO_TARGET_DIR/release/unitable UNITABLE_PYTHON=...  KAFKA_HOME=...   # scripts/test --setup-only prints them
//! cargo run --release -p unitable-tests --bin read-bench -- scan --rows 2000000
//! cargo run --release -p unitable-tests --bin read-bench -- fresh --rows 1000000
//! cargo run --release -p unitable-tests --bin read-bench -- latency --backend local
//! cargo run --release -p unitable-tests --bin read-bench -- latency --backend kafka
//! ```
//!
//! - `scan`: SNAPSHOT throughput over gRPC and Arrow Flight, against DataFusion reading the same Parquet files
//!   in-process, iceberg-rust's scan in-process, and PyIceberg's scan (in its own process, timed
//!   inside Python).
//! - `fresh`: FRESH read time as the changelog tail after the snapshot grows, with SNAPSHOT of
//!   the same table as the baseline; FRESH again while single-row upserts keep changing the
//!   tail.
//! - `latency`: write-to-subscriber latency (a unary Write acknowledged, then received by a
//!   STREAM subscriber), and for Kafka raw rdkafka produce-to-consume on the same broker.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use clap::{Parser, Subcommand, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::scan::{ScanOptions, read_scan};
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::stream_start::Kind;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{
    ReadMode, ReadRequest, RowFormat, StreamStart, WaitFor, WriteOp, WriteRequest, read_response,
};
use unitable_tests::{Kafka, Service, bench};

const TABLE: &str = "bench.events";

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// SNAPSHOT scan throughput vs DataFusion, iceberg-rust and PyIceberg on the same files.
    Scan {
        /// Rows in the table.
        #[arg(long, default_value_t = 2_000_000)]
        rows: usize,
        /// Timed runs per reader (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Rows per batch of the in-process unitable scan, one timed row each (the reader's
        /// default is 8,192).
        #[arg(long, value_delimiter = ',', default_value = "8192")]
        batch_rows: Vec<usize>,
        /// The table's Parquet codec (`write.parquet.compression-codec`: zstd, lz4, snappy,
        /// uncompressed); default the writer's (zstd).
        #[arg(long)]
        codec: Option<String>,
    },
    /// FRESH read time as the changelog tail grows.
    Fresh {
        /// Rows in the snapshot.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Tail sizes (upserts after the snapshot) to measure, ascending.
        #[arg(long, value_delimiter = ',', default_value = "0,10000,100000,1000000")]
        tails: Vec<usize>,
        /// One-row upserts per second (of ids already in the tail, so its size stays) during a
        /// second set of FRESH reads: every such read sees a tail that changed since the last.
        #[arg(long, default_value_t = 50)]
        writes_per_sec: u32,
    },
    /// Write-to-subscriber latency.
    Latency {
        /// Changelog backend of the server.
        #[arg(long, value_enum, default_value_t = Backend::Local)]
        backend: Backend,
        /// Writes timed.
        #[arg(long, default_value_t = 500)]
        samples: usize,
        /// Pause between writes.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Backend {
    Local,
    Kafka,
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("user", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("n", DataType::Int64, true),
    ]))
}

/// Rows `from..to` (ids), with `n` = `version`.
fn batch(from: usize, to: usize, version: i64) -> Result<RecordBatch> {
    let ids: Vec<i64> = (from as i64..to as i64).collect();
    let kinds = ["view", "click", "cart", "buy"];
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("user-{:06}", i % 100_000)),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| kinds[(*i % 4) as usize]),
            )),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|i| (*i % 10_000) as f64 / 100.0),
            )),
            Arc::new(Int64Array::from(vec![version; ids.len()])),
        ],
    )?)
}

fn ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

/// Creates the bench table with table properties `KEY=VALUE`.
fn create_table(service: &Service, properties: &[String]) -> Result<()> {
    let properties: Vec<String> = properties
        .iter()
        .flat_map(|p| ["--property".to_string(), p.clone()])
        .collect();
    let mut args = vec![
        "table",
        "create",
        TABLE,
        "--column",
        "id:int64!",
        "--column",
        "user:string",
        "--column",
        "kind:string",
        "--column",
        "amount:float64",
        "--column",
        "n:int64",
        "--primary-key",
        "id",
        "--buckets",
        "4",
    ];
    args.extend(properties.iter().map(String::as_str));
    service.cli(&args)?.ok()?;
    Ok(())
}

/// Upserts ids `from..to` with `n = version`, 50,000 rows per request.
async fn load(url: &str, from: usize, to: usize, version: i64, wait: bool) -> Result<()> {
    let mut writer = WriteServiceClient::connect(url.to_string())
        .await?
        .max_decoding_message_size(64 << 20);
    let mut start = from;
    while start < to {
        let end = (start + 50_000).min(to);
        let last = end == to;
        let r = writer
            .write(WriteRequest {
                table: TABLE.into(),
                op: WriteOp::Upsert as i32,
                format: RowFormat::ArrowIpc as i32,
                rows: ipc(&batch(start, end, version)?)?,
                wait_for: if wait && last {
                    WaitFor::Snapshot
                } else {
                    WaitFor::Changelog
                } as i32,
                request_id: String::new(),
            })
            .await?
            .into_inner();
        if r.rows_rejected > 0 {
            bail!("rows rejected: {:?}", r.errors.first());
        }
        start = end;
    }
    Ok(())
}

/// Reads a table over gRPC; gives rows and bytes of Arrow data received.
async fn grpc_read(url: &str, mode: ReadMode) -> Result<(u64, u64)> {
    let mut client = ReadServiceClient::connect(url.to_string())
        .await?
        .max_decoding_message_size(256 << 20);
    let mut stream = client
        .read(ReadRequest {
            table: TABLE.into(),
            mode: mode as i32,
            ..ReadRequest::default()
        })
        .await?
        .into_inner();
    let (mut rows, mut bytes) = (0u64, 0u64);
    while let Some(message) = stream.message().await? {
        let Some(read_response::Body::ArrowIpc(data)) = message.body else {
            continue;
        };
        bytes += data.len() as u64;
        for b in StreamReader::try_new(Cursor::new(data), None)? {
            rows += b?.num_rows() as u64;
        }
    }
    Ok((rows, bytes))
}

/// Reads a table over Arrow Flight: GetFlightInfo with at most `endpoints` endpoints, then one
/// DoGet per endpoint, all at once (each on its own connection); gives rows.
async fn flight_read(url: &str, endpoints: u32) -> Result<u64> {
    let connect = || async {
        let channel = tonic::transport::Channel::from_shared(url.to_string())?
            .connect()
            .await?;
        anyhow::Ok(arrow_flight::FlightClient::new(channel))
    };
    let command = serde_json::json!({"table": TABLE, "max_endpoints": endpoints});
    let info = connect()
        .await?
        .get_flight_info(arrow_flight::FlightDescriptor::new_cmd(command.to_string()))
        .await?;
    let mut tasks = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.context("an endpoint without a ticket")?;
        let mut client = connect().await?;
        tasks.push(tokio::spawn(async move {
            let mut stream = client.do_get(ticket).await?;
            let mut rows = 0u64;
            while let Some(b) = stream.next().await {
                rows += b?.num_rows() as u64;
            }
            anyhow::Ok(rows)
        }));
    }
    let mut rows = 0;
    for task in tasks {
        rows += task.await??;
    }
    Ok(rows)
}

/// The rows of a stream of batches.
async fn count_rows<E>(
    mut batches: impl futures::Stream<Item = std::result::Result<RecordBatch, E>> + Unpin,
) -> Result<u64>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut n = 0u64;
    while let Some(b) = batches.next().await {
        n += b?.num_rows() as u64;
    }
    Ok(n)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

async fn timed<F, Fut>(runs: usize, mut f: F) -> Result<(Duration, u64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let mut times = Vec::new();
    let mut rows = 0;
    for _ in 0..runs {
        let t = Instant::now();
        rows = f().await?;
        times.push(t.elapsed());
    }
    Ok((median(times), rows))
}

fn row(label: &str, rows: u64, time: Duration, bytes: u64, baseline: Option<Duration>) {
    let secs = time.as_secs_f64();
    let ratio = baseline.map_or(String::new(), |b| format!("{:.2}x", b.as_secs_f64() / secs));
    println!(
        "| {label} | {rows} | {:.0} ms | {:.2} M rows/s | {:.0} MB/s | {ratio} |",
        secs * 1000.0,
        rows as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6
    );
}

async fn scan(rows: usize, runs: usize, batch_rows: &[usize], codec: Option<&str>) -> Result<()> {
    let mut service = Service::start(&["--commit-interval", "3600s"])?;
    let properties: Vec<String> = codec
        .map(|c| format!("write.parquet.compression-codec={c}"))
        .into_iter()
        .collect();
    create_table(&service, &properties)?;
    let url = service.grpc_url();
    eprintln!("loading {rows} rows...");
    load(&url, 0, rows, 1, false).await?;
    // A graceful stop commits everything in one snapshot; the restart serves it.
    service.stop()?;
    service.restart()?;
    let data_dir = service.data_dir();
    let catalog = TableCatalog::open(CatalogConfig::embedded(&data_dir)).await?;
    let table = catalog.load(&TABLE.parse()?).await?;
    let files: Vec<String> = table
        .scan()
        .build()?
        .plan_files()
        .await?
        .map_ok(|task| task.data_file_path().to_string())
        .try_collect()
        .await?;
    let file_bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f.trim_start_matches("file://")).map_or(0, |m| m.len()))
        .sum();
    eprintln!(
        "{} data files, {} MB of Parquet",
        files.len(),
        file_bytes / 1_000_000
    );

    println!("| Reader | Rows | Median of {runs} | Rows/s | Parquet MB/s | vs DataFusion |");
    println!("|---|---|---|---|---|---|");
    let ctx = datafusion::prelude::SessionContext::new();
    let paths: Vec<String> = files.clone();
    let (df_time, df_rows) = timed(runs, || {
        let ctx = ctx.clone();
        let paths = paths.clone();
        async move {
            let frame = ctx
                .read_parquet(paths, datafusion::prelude::ParquetReadOptions::default())
                .await?;
            count_rows(frame.execute_stream().await?).await
        }
    })
    .await?;
    row(
        "DataFusion 53, same Parquet files, in-process",
        df_rows,
        df_time,
        file_bytes,
        None,
    );
    let (t, n) = timed(runs, || async {
        Ok(grpc_read(&url, ReadMode::Snapshot).await?.0)
    })
    .await?;
    row(
        "unitable SNAPSHOT over gRPC (Arrow IPC, decoded by the client)",
        n,
        t,
        file_bytes,
        Some(df_time),
    );
    for (endpoints, label) in [
        (
            8,
            "unitable SNAPSHOT over Arrow Flight (up to 8 endpoints, fetched in parallel)",
        ),
        (1, "unitable SNAPSHOT over Arrow Flight (one endpoint)"),
    ] {
        let (t, n) = timed(runs, || flight_read(&url, endpoints)).await?;
        row(label, n, t, file_bytes, Some(df_time));
    }
    if let Some(out) = std::env::var_os("READ_BENCH_PERF") {
        // Profiles the server while it answers Flight reads (8 endpoints), for finding where
        // a SNAPSHOT read's time goes: `perf report -i $READ_BENCH_PERF`.
        let pid = service
            .process()
            .id()
            .context("the server is not running")?;
        let profile = bench::Profile::start(pid, &out).await?;
        for _ in 0..runs {
            flight_read(&url, 8).await?;
        }
        drop(profile);
    }
    for &batch in batch_rows {
        let (t, n) = timed(runs, || {
            let table = table.clone();
            async move {
                let scan = table.scan().build()?;
                let options = ScanOptions {
                    batch_size: Some(batch),
                    ..ScanOptions::default()
                };
                count_rows(read_scan(&table, &scan, options).await?).await
            }
        })
        .await?;
        row(
            &format!(
                "unitable's scan (`core::scan::read_scan`, batches of {batch} rows), in-process"
            ),
            n,
            t,
            file_bytes,
            Some(df_time),
        );
    }
    let (t, n) = timed(runs, || {
        let table = table.clone();
        async move { count_rows(table.scan().build()?.to_arrow().await?).await }
    })
    .await?;
    row(
        "iceberg-rust 0.10.1 scan, in-process",
        n,
        t,
        file_bytes,
        Some(df_time),
    );

    let python = unitable_tests::python_bin()?;
    // The same Flight reads from Python's own Flight client (gRPC C++, Arrow C++ decoding), the
    // way a pyarrow or ADBC user reads: endpoints fetched in parallel threads, then one table.
    let flight_script = r#"
import json, sys, threading, time
import pyarrow as pa, pyarrow.flight as fl
url, runs, endpoints = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
command = json.dumps({"table": "bench.events", "max_endpoints": endpoints})
def read():
    info = fl.connect(url).get_flight_info(fl.FlightDescriptor.for_command(command))
    parts = [None] * len(info.endpoints)
    def get(i, ticket):
        parts[i] = fl.connect(url).do_get(ticket).read_all()
    threads = [threading.Thread(target=get, args=(i, e.ticket)) for i, e in enumerate(info.endpoints)]
    for t in threads: t.start()
    for t in threads: t.join()
    return pa.concat_tables(parts)
read()
times = []
for _ in range(runs):
    s = time.perf_counter(); n = read().num_rows; times.append(time.perf_counter() - s)
times.sort()
print(n, times[len(times) // 2])
"#;
    let flight_url = url.replacen("http://", "grpc+tcp://", 1);
    for (endpoints, label) in [
        (
            8,
            "unitable SNAPSHOT over Arrow Flight, pyarrow.flight client (up to 8 endpoints in threads)",
        ),
        (
            1,
            "unitable SNAPSHOT over Arrow Flight, pyarrow.flight client (one endpoint)",
        ),
    ] {
        let (n, t) = python_timed(
            &python,
            flight_script,
            &[flight_url.clone(), runs.to_string(), endpoints.to_string()],
        )?;
        row(label, n, t, file_bytes, Some(df_time));
    }
    let script = r#"
import sys, time
from pyiceberg.catalog.sql import SqlCatalog
d, runs = sys.argv[1], int(sys.argv[2])
c = SqlCatalog("unitable", uri=f"sqlite:///{d}/catalog.db", warehouse=f"file://{d}/warehouse")
t = c.load_table("bench.events")
times = []
for _ in range(runs):
    s = time.perf_counter(); n = t.scan().to_arrow().num_rows; times.append(time.perf_counter() - s)
times.sort()
print(n, times[len(times) // 2])
"#;
    let (n, t) = python_timed(
        &python,
        script,
        &[data_dir.display().to_string(), runs.to_string()],
    )?;
    row(
        "PyIceberg 0.12 scan().to_arrow(), in its process",
        n,
        t,
        file_bytes,
        Some(df_time),
    );
    Ok(())
}

/// Runs a Python `script` that prints its row count and its median time in seconds.
fn python_timed(
    python: &std::path::Path,
    script: &str,
    args: &[String],
) -> Result<(u64, Duration)> {
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "the Python reader failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut parts = text.split_whitespace();
    let n: u64 = parts.next().context("rows")?.parse()?;
    let secs: f64 = parts.next().context("time")?.parse()?;
    Ok((n, Duration::from_secs_f64(secs)))
}

async fn fresh(rows: usize, tails: Vec<usize>, writes_per_sec: u32) -> Result<()> {
    let mut service = Service::start(&["--commit-interval", "3600s"])?;
    create_table(&service, &[])?;
    let url = service.grpc_url();
    eprintln!("loading {rows} rows...");
    load(&url, 0, rows, 1, false).await?;
    service.stop()?;
    service.restart()?;
    println!(
        "| Tail (upserts after the snapshot) | SNAPSHOT | FRESH (all rows) | FRESH / SNAPSHOT | \
         FRESH during {writes_per_sec} writes/s | its FRESH / SNAPSHOT |"
    );
    println!("|---|---|---|---|---|---|");
    let mut written = 0;
    for (i, tail) in tails.into_iter().enumerate() {
        if tail > written {
            // Update the oldest ids again, so the tail replaces snapshot rows.
            load(&url, written, tail, 2 + i as i64, false).await?;
            written = tail;
        }
        let expected = rows.max(written) as u64;
        let (snap, n) = timed(3, || async {
            Ok(grpc_read(&url, ReadMode::Snapshot).await?.0)
        })
        .await?;
        let fresh_read = || async {
            let m = grpc_read(&url, ReadMode::Fresh).await?.0;
            // The snapshot may hold fewer rows than written (shutdown commits one batch); FRESH
            // must hold them all.
            if m != expected {
                bail!("FRESH read {m} rows, expected {expected}");
            }
            Ok(m)
        };
        let (fr, _) = timed(3, fresh_read).await?;
        let during = if tail == 0 || writes_per_sec == 0 {
            "| - | - |".to_string()
        } else {
            let stop = Arc::new(AtomicBool::new(false));
            let writes = tokio::spawn(trickle(
                url.clone(),
                tail,
                100 + i as i64,
                writes_per_sec,
                stop.clone(),
            ));
            let (fw, _) = timed(3, fresh_read).await?;
            stop.store(true, Ordering::Relaxed);
            let done = writes.await??;
            if done == 0 {
                bail!("no write landed during the FRESH reads");
            }
            format!(
                "| {:.0} ms ({done} writes) | {:.2} |",
                fw.as_secs_f64() * 1000.0,
                fw.as_secs_f64() / snap.as_secs_f64()
            )
        };
        println!(
            "| {tail} | {n} rows, {:.0} ms | {:.0} ms | {:.2} {during}",
            snap.as_secs_f64() * 1000.0,
            fr.as_secs_f64() * 1000.0,
            fr.as_secs_f64() / snap.as_secs_f64()
        );
    }
    Ok(())
}

/// Upserts one row at a time, ids cycling through `0..ids`, `per_sec` a second until `stop`;
/// gives the number written.
async fn trickle(
    url: String,
    ids: usize,
    version: i64,
    per_sec: u32,
    stop: Arc<AtomicBool>,
) -> Result<usize> {
    let mut writer = WriteServiceClient::connect(url).await?;
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / per_sec);
    let mut written = 0;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let id = (written * 7919) % ids;
        writer
            .write(WriteRequest {
                table: TABLE.into(),
                op: WriteOp::Upsert as i32,
                format: RowFormat::ArrowIpc as i32,
                rows: ipc(&batch(id, id + 1, version)?)?,
                wait_for: WaitFor::Changelog as i32,
                request_id: String::new(),
            })
            .await?;
        written += 1;
    }
    Ok(written)
}

fn percentiles(mut xs: Vec<Duration>) -> (f64, f64) {
    xs.sort();
    let p = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    (p(0.5), p(0.99))
}

async fn latency(backend: Backend, samples: usize, interval: Duration) -> Result<()> {
    let kafka = match backend {
        Backend::Kafka => Some(Kafka::start()?),
        Backend::Local => None,
    };
    let args: Vec<String> = match &kafka {
        Some(t) => vec!["--kafka-brokers".into(), t.bootstrap()],
        None => Vec::new(),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let service = Service::start(&args)?;
    create_table(&service, &[])?;
    let url = service.grpc_url();
    let mut reader = ReadServiceClient::connect(url.clone()).await?;
    let mut stream = reader
        .read(ReadRequest {
            table: TABLE.into(),
            mode: ReadMode::Stream as i32,
            start: Some(StreamStart {
                kind: Kind::Latest as i32,
                ..StreamStart::default()
            }),
            ..ReadRequest::default()
        })
        .await?
        .into_inner();
    stream.message().await?; // the first message: schema and start
    let epoch = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < samples {
            let Some(message) = stream.message().await? else {
                bail!("the stream ended");
            };
            let now = epoch.elapsed();
            let Some(read_response::Body::Changes(c)) = message.body else {
                continue;
            };
            for b in StreamReader::try_new(Cursor::new(c.arrow_ipc), None)? {
                let b = b?;
                let ns = b
                    .column_by_name("n")
                    .context("n")?
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .context("n type")?;
                for i in 0..b.num_rows() {
                    seen.push(now.saturating_sub(Duration::from_micros(ns.value(i) as u64)));
                }
            }
        }
        anyhow::Ok(seen)
    });
    let mut writer = WriteServiceClient::connect(url.clone()).await?;
    let mut acks = Vec::new();
    for i in 0..samples {
        let sent = epoch.elapsed();
        let mut b = batch(i, i + 1, 0)?;
        b = RecordBatch::try_new(
            b.schema(),
            vec![
                b.column(0).clone(),
                b.column(1).clone(),
                b.column(2).clone(),
                b.column(3).clone(),
                Arc::new(Int64Array::from(vec![sent.as_micros() as i64])),
            ],
        )?;
        writer
            .write(WriteRequest {
                table: TABLE.into(),
                op: WriteOp::Upsert as i32,
                format: RowFormat::ArrowIpc as i32,
                rows: ipc(&b)?,
                wait_for: WaitFor::Changelog as i32,
                request_id: String::new(),
            })
            .await?;
        acks.push(epoch.elapsed() - sent);
        tokio::time::sleep(interval).await;
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), receiver).await???;
    let (a50, a99) = percentiles(acks);
    let (s50, s99) = percentiles(seen);
    let name = match backend {
        Backend::Local => "local changelog",
        Backend::Kafka => "Kafka 4.4 (one broker)",
    };
    println!("| Path | Samples | p50 | p99 |");
    println!("|---|---|---|---|");
    println!("| {name}: Write acknowledged | {samples} | {a50:.2} ms | {a99:.2} ms |");
    println!(
        "| {name}: Write sent -> STREAM subscriber received | {samples} | {s50:.2} ms | {s99:.2} ms |"
    );
    if let Some(t) = &kafka {
        let (r50, r99) = raw_kafka(&t.bootstrap(), samples, interval).await?;
        println!(
            "| raw rdkafka produce -> consume, same broker | {samples} | {r50:.2} ms | {r99:.2} ms |"
        );
    }
    Ok(())
}

/// Raw rdkafka: produce one record every `interval` (acks=all, idempotent) to a fresh topic
/// and time it until an assigned consumer receives it.
async fn raw_kafka(bootstrap: &str, samples: usize, interval: Duration) -> Result<(f64, f64)> {
    use rdkafka::ClientConfig;
    use rdkafka::Message;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let topic = "raw-latency";
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    admin
        .create_topics(
            [&NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "raw-latency")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let epoch = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut messages = consumer.stream();
        while seen.len() < samples {
            let m = messages.next().await.context("consumer ended")??;
            let now = epoch.elapsed();
            let sent: u64 = std::str::from_utf8(m.payload().unwrap_or_default())?.parse()?;
            seen.push(now.saturating_sub(Duration::from_micros(sent)));
        }
        anyhow::Ok(seen)
    });
    for _ in 0..samples {
        let payload = epoch.elapsed().as_micros().to_string();
        producer
            .send(
                FutureRecord::<(), _>::to(topic).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        tokio::time::sleep(interval).await;
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), receiver).await???;
    Ok(percentiles(seen))
}

#[tokio::main]
async fn main() -> Result<()> {
    match Args::parse().what {
        What::Scan {
            rows,
            runs,
            batch_rows,
            codec,
        } => scan(rows, runs, &batch_rows, codec.as_deref()).await,
        What::Fresh {
            rows,
            tails,
            writes_per_sec,
        } => fresh(rows, tails, writes_per_sec).await,
        What::Latency {
            backend,
            samples,
            interval_ms,
        } => latency(backend, samples, Duration::from_millis(interval_ms)).await,
    }
}
