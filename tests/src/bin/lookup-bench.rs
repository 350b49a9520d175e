//! LOOKUP latency on a large table against Redis GET/MGET on the same machine.
//!
//! ```sh
//! cargo build --release -p unitable-table-service
//! UNITABLE_BIN=$CARGO_TARGET_DIR/release/unitable \
//!   cargo run --release -p unitable-tests --bin lookup-bench -- --rows 10000000
//! ```
//! Starts `unitable serve` (embedded catalog, local changelog) on a temporary directory, loads
//! ROWS rows `{"id":N,"v":"value-N","n":N*7}` (int64 key) through the Write API, waits for the
//! commit, then times sequential LOOKUPs (the unary `Lookup` RPC) over gRPC on loopback:
//! uniform random keys (1 and 100 keys per request), keys not in the table (`absent`: the
//! request path without any row read) and hot keys (`zipf`, ranks from a Zipf law, `--zipf`),
//! printing the server's block-cache hits and misses per workload. Then starts `redis-server`
//! (no persistence) on a free port, loads the same rows as `SET row:N <json>`, and times GET and
//! MGET with the same key sequences over one TCP connection. Prints a Markdown table.
//! `--kafka` puts the changelog on a one-broker Apache Kafka cluster started for the run, where
//! a strict lookup reads each partition's high watermark from the broker; `--max-staleness`
//! gives the server an allowance so lookups skip that read.

use std::io::Cursor;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use arrow::ipc::reader::StreamReader;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::{ReadMode, ReadRequest, RowFormat, read_response};
use unitable_tests::{Service, bench};

#[derive(Debug, Parser)]
struct Args {
    /// Rows in the table.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Single-key requests timed (100-key requests: a tenth of this).
    #[arg(long, default_value_t = 20_000)]
    samples: usize,
    /// Table buckets (changelog partitions).
    #[arg(long, default_value_t = 4)]
    buckets: u32,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Skip the Redis half.
    #[arg(long)]
    no_redis: bool,
    /// Exponent of the hot-key workload (single-key requests, key ranks drawn from a Zipf
    /// distribution); 0 skips it.
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Passed to the server as --lookup-cache-memory (e.g. 0 to time lookups without the
    /// decoded-row cache).
    #[arg(long)]
    cache: Option<String>,
    /// Passes --lookup-cache-warm false: only looked-up blocks are cached.
    #[arg(long)]
    no_warm: bool,
    /// Times the reader's lookup path alone, in this process, on the data directory a run
    /// kept (`UNITABLE_KEEP_TEST_DIRS=1`; its `data`, with no server on it): FRESH lookups of
    /// the same workloads as a server run (`--rows` must be the kept table's), without any
    /// protocol. `LOOKUP_BENCH_PERF=FILE` profiles this process meanwhile.
    #[arg(long, value_name = "DATA_DIR")]
    in_process: Option<std::path::PathBuf>,
    /// The changelog on a one-broker Apache Kafka cluster started for the run (`KAFKA_HOME`,
    /// or the install `scripts/test` caches) instead of the local log.
    #[arg(long)]
    kafka: bool,
    /// Passed to the server as --lookup-max-staleness (e.g. 100ms): how old an answer may be,
    /// so lookups wait for the last high watermark read instead of reading it (with
    /// `--kafka`, a round trip to the broker per lookup).
    #[arg(long)]
    max_staleness: Option<String>,
}

/// One timed sequence of requests, run the same way against unitable and Redis.
struct Workload {
    name: &'static str,
    requests: Vec<Vec<u64>>,
    /// Whether the keys are in the table (the "absent" workload times the request path
    /// without reading any row).
    present: bool,
}

const TABLE: &str = "bench.lookup";

fn quantiles(mut times: Vec<Duration>) -> (f64, f64, f64) {
    times.sort();
    let at = |q: f64| {
        let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
        times[i].as_secs_f64() * 1e3
    };
    (at(0.5), at(0.99), at(0.999))
}

type Reader = ReadServiceClient<tonic::transport::Channel>;

/// One lookup (the unary `Lookup` RPC); returns the rows found.
async fn lookup(reader: &mut Reader, keys: &[u64]) -> Result<usize> {
    let lines: Vec<String> = keys.iter().map(|k| format!("{{\"id\":{k}}}")).collect();
    let response = reader
        .lookup(ReadRequest {
            table: TABLE.into(),
            mode: ReadMode::Lookup as i32,
            keys: lines.join("\n").into_bytes(),
            keys_format: RowFormat::JsonLines as i32,
            ..ReadRequest::default()
        })
        .await?
        .into_inner();
    let mut found = 0;
    if let Some(read_response::Body::Lookup(result)) = response.body {
        for batch in StreamReader::try_new(Cursor::new(result.arrow_ipc), None)? {
            found += batch?.num_rows();
        }
    }
    Ok(found)
}

/// A minimal RESP client: one request at a time on one connection.
struct Redis {
    stream: BufReader<TcpStream>,
}

impl Redis {
    fn command(out: &mut Vec<u8>, parts: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
        for p in parts {
            out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
    }

    async fn line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            let b = self.stream.read_u8().await?;
            if b == b'\n' {
                break;
            }
            line.push(b);
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(line)
    }

    /// Reads one reply; returns how many non-null bulk strings it held.
    async fn reply(&mut self) -> Result<usize> {
        let line = self.line().await?;
        let (kind, rest) = line.split_first().context("empty reply")?;
        let n: i64 = std::str::from_utf8(rest)?.parse().unwrap_or(0);
        match kind {
            b'+' | b':' => Ok(0),
            b'-' => bail!("redis: {}", String::from_utf8_lossy(rest)),
            b'$' if n < 0 => Ok(0),
            b'$' => {
                let mut body = vec![0; n as usize + 2];
                self.stream.read_exact(&mut body).await?;
                Ok(1)
            }
            b'*' => {
                let mut found = 0;
                for _ in 0..n.max(0) {
                    found += Box::pin(self.reply()).await?;
                }
                Ok(found)
            }
            _ => bail!("unexpected redis reply {}", String::from_utf8_lossy(&line)),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.get_mut().write_all(bytes).await?;
        Ok(())
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench_redis(args: &Args, workloads: &[Workload]) -> Result<Vec<String>> {
    let port = unitable_tests::free_port();
    let dir = tempfile::tempdir()?;
    let child = Command::new(&args.redis_server)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (apt-get install -y redis-server)",
                args.redis_server
            )
        })?;
    let _guard = KillOnDrop(child);
    unitable_tests::wait_for_tcp(("127.0.0.1", port), Duration::from_secs(10))?;
    let mut redis = Redis {
        stream: BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?),
    };
    redis.stream.get_ref().set_nodelay(true)?;
    let started = Instant::now();
    let mut from = 0;
    while from < args.rows {
        let to = (from + 10_000).min(args.rows);
        let mut out = Vec::new();
        for id in from..to {
            Redis::command(
                &mut out,
                &[
                    b"SET",
                    format!("row:{id}").as_bytes(),
                    bench::kv_row(id).as_bytes(),
                ],
            );
        }
        redis.send(&out).await?;
        for _ in from..to {
            redis.reply().await?;
        }
        from = to;
    }
    let loaded = started.elapsed();
    eprintln!("redis: loaded {} rows in {loaded:.1?}", args.rows);
    time_resp(&mut redis, "Redis", "row:", workloads).await
}

/// Times every workload over a RESP connection (GET for one key, MGET for more), keys named
/// `{prefix}{id}`; `who` heads the result rows.
async fn time_resp(
    redis: &mut Redis,
    who: &str,
    prefix: &str,
    workloads: &[Workload],
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for workload in workloads {
        let mut times = Vec::with_capacity(workload.requests.len());
        for keys in &workload.requests {
            let names: Vec<String> = keys.iter().map(|k| format!("{prefix}{k}")).collect();
            let mut parts: Vec<&[u8]> = vec![if keys.len() == 1 { b"GET" } else { b"MGET" }];
            parts.extend(names.iter().map(|n| n.as_bytes()));
            let mut out = Vec::new();
            Redis::command(&mut out, &parts);
            let t = Instant::now();
            redis.send(&out).await?;
            let found = redis.reply().await?;
            times.push(t.elapsed());
            let want = if workload.present { keys.len() } else { 0 };
            ensure!(found == want, "{who} found {found} of {want}");
        }
        let verb = if workload.requests[0].len() == 1 {
            "GET"
        } else {
            "MGET"
        };
        lines.push(row(&format!("{who} {verb}"), workload, times));
    }
    Ok(lines)
}

/// A Markdown row of the results table.
fn row(who: &str, workload: &Workload, times: Vec<Duration>) -> String {
    let (p50, p99, p999) = quantiles(times);
    format!(
        "| {who} | {} | {} | {} | {p50:.3} ms | {p99:.3} ms | {p999:.3} ms |",
        workload.name,
        workload.requests[0].len(),
        workload.requests.len(),
    )
}

/// The server's counter `name` summed over its labels, from /metrics.
fn counter(service: &Service, name: &str) -> f64 {
    let Ok(page) = service.http_get("/metrics") else {
        return 0.0;
    };
    page.text()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The timed request sequences, the same for every reader of a run (one seed): one-key and
/// 100-key uniform requests, absent keys and, unless `--zipf 0`, hot keys.
fn workloads(args: &Args) -> Vec<Workload> {
    let mut rng = bench::Rng(0x9e37_79b9_7f4a_7c15);
    let mut workloads = vec![
        Workload {
            name: "uniform",
            requests: (0..args.samples)
                .map(|_| vec![rng.below(args.rows)])
                .collect(),
            present: true,
        },
        Workload {
            name: "uniform",
            requests: (0..args.samples / 10)
                .map(|_| (0..100).map(|_| rng.below(args.rows)).collect())
                .collect(),
            present: true,
        },
        Workload {
            name: "absent",
            requests: (0..args.samples / 4)
                .map(|_| vec![args.rows + rng.below(args.rows)])
                .collect(),
            present: false,
        },
    ];
    if args.zipf > 0.0 {
        workloads.push(Workload {
            name: "zipf",
            requests: (0..args.samples)
                .map(|_| vec![rng.zipf(args.rows, args.zipf)])
                .collect(),
            present: true,
        });
    }
    workloads
}

/// `--in-process`: the reader's lookup path timed without a server.
async fn in_process(args: &Args, data: &std::path::Path) -> Result<()> {
    use unitable_core::catalog::{CatalogConfig, TableCatalog};
    use unitable_core::changelog::{
        Changelog, Clusters, LocalChangelog, LocalConfig, RoutedChangelog,
    };
    use unitable_reader::{LookupKeys, LookupRequest, Reader};

    let catalog = TableCatalog::open(CatalogConfig::embedded(data)).await?;
    let local: Arc<dyn Changelog> =
        Arc::new(LocalChangelog::open(LocalConfig::new(data.join("changelog"))).await?);
    let clusters: Clusters = [("local".to_string(), local)].into_iter().collect();
    let changelog = Arc::new(RoutedChangelog::new(clusters, "local").map_err(anyhow::Error::msg)?);
    let reader = Reader::new(catalog, changelog);
    let table: unitable_core::naming::TableName = TABLE.parse()?;
    let request = |keys: &[u64]| LookupRequest {
        table: table.clone(),
        keys: LookupKeys::Text(keys.iter().map(u64::to_string).collect()),
        columns: Vec::new(),
        as_of: None,
        max_staleness: None,
    };
    let t = Instant::now();
    let first = reader.lookup(&request(&[1])).await?;
    ensure!(
        first.rows.num_rows() == 1,
        "row 1 is missing: is --rows the kept table's?"
    );
    eprintln!("in-process: first lookup (index build) {:.1?}", t.elapsed());
    // Lets the block cache warm (as the server run does) before timing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let workloads = workloads(args);
    let profile = match std::env::var_os("LOOKUP_BENCH_PERF") {
        Some(out) => Some(bench::Profile::start(std::process::id(), &out).await?),
        None => None,
    };
    println!("| Lookup, in-process | Requests | mean | p50 | p99 | p99.9 |");
    println!("|---|---|---|---|---|---|");
    for workload in &workloads {
        let requests = &workload.requests;
        let mut times = Vec::with_capacity(requests.len());
        let all = Instant::now();
        for keys in requests {
            let t = Instant::now();
            let answer = reader.lookup(&request(keys)).await?;
            times.push(t.elapsed());
            let want = if workload.present { keys.len() } else { 0 };
            ensure!(
                answer.rows.num_rows() == want,
                "keys {keys:?}: wrong answer"
            );
        }
        let mean = all.elapsed().as_secs_f64() * 1e6 / requests.len() as f64;
        let (p50, p99, p999) = quantiles(times);
        println!(
            "| {} x{} | {} | {mean:.1} us | {:.1} us | {:.1} us | {:.1} us |",
            workload.name,
            requests[0].len(),
            requests.len(),
            p50 * 1e3,
            p99 * 1e3,
            p999 * 1e3
        );
    }
    drop(profile);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(data) = &args.in_process {
        return in_process(&args, data).await;
    }
    let mut flags = vec!["--commit-interval".to_string(), "1s".to_string()];
    if let Some(cache) = &args.cache {
        flags.extend(["--lookup-cache-memory".to_string(), cache.clone()]);
    }
    if args.no_warm {
        flags.extend(["--lookup-cache-warm".to_string(), "false".to_string()]);
    }
    if let Some(staleness) = &args.max_staleness {
        flags.extend(["--lookup-max-staleness".to_string(), staleness.clone()]);
    }
    let kafka = if args.kafka {
        let kafka = tokio::task::spawn_blocking(unitable_tests::Kafka::start).await??;
        flags.extend(["--kafka-brokers".to_string(), kafka.bootstrap()]);
        Some(kafka)
    } else {
        None
    };
    let resp_port = unitable_tests::free_port();
    flags.extend(["--resp-addr".to_string(), format!("127.0.0.1:{resp_port}")]);
    let service = tokio::task::spawn_blocking(move || {
        Service::start(&flags.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await??;
    bench::create_kv_table(&service, TABLE, args.buckets).await?;
    let loaded = bench::load_kv(&service, TABLE, args.rows).await?;
    eprintln!(
        "unitable: loaded and committed {} rows in {loaded:.1?}",
        args.rows
    );
    let mut service = service;
    let pid = service.process().id().context("server pid")?;
    let rss_before = bench::rss_mib(pid);
    let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;
    let t = Instant::now();
    ensure!(lookup(&mut reader, &[1]).await? == 1, "row 1 is missing");
    let build = t.elapsed();
    let rss_after = bench::rss_mib(pid);
    let index_line = service
        .log()
        .lines()
        .find(|l| l.contains("lookup index built"))
        .map(str::to_string)
        .unwrap_or_default();
    eprintln!(
        "unitable: first lookup (index build) {build:.1?}; RSS {rss_before:?} -> {rss_after:?} MiB\n{index_line}"
    );
    // The state warms the block cache in the background: time it and let it finish, so the
    // workloads below measure lookups, not lookups beside the warming.
    let t = Instant::now();
    let mut last = (0.0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let warmed = counter(&service, "unitable_lookup_cache_warmed_blocks_total");
        if warmed != last.0 {
            last = (warmed, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    eprintln!(
        "unitable: block cache warmed with {} blocks in {:.1?}; RSS {:?} MiB",
        last.0,
        last.1 - t,
        bench::rss_mib(pid)
    );

    let workloads = workloads(&args);
    // Warm-up: footers and page indexes of every file get cached.
    for keys in workloads[0].requests.iter().take(200) {
        lookup(&mut reader, keys).await?;
    }
    println!("| Read | Keys | Keys/request | Requests | p50 | p99 | p99.9 |");
    println!("|---|---|---|---|---|---|---|");
    let mut cache_lines = Vec::new();
    for workload in &workloads {
        let hits = counter(&service, "unitable_lookup_cache_hits_total");
        let misses = counter(&service, "unitable_lookup_cache_misses_total");
        let mut times = Vec::with_capacity(workload.requests.len());
        for keys in &workload.requests {
            let t = Instant::now();
            let found = lookup(&mut reader, keys).await?;
            times.push(t.elapsed());
            let want = if workload.present { keys.len() } else { 0 };
            ensure!(found == want, "found {found} of {want}");
        }
        println!("{}", row("unitable LOOKUP", workload, times));
        let hits = counter(&service, "unitable_lookup_cache_hits_total") - hits;
        let misses = counter(&service, "unitable_lookup_cache_misses_total") - misses;
        cache_lines.push(format!(
            "{} x{}: block cache {hits} hits, {misses} misses ({:.1}% hits)",
            workload.name,
            workload.requests[0].len(),
            100.0 * hits / (hits + misses).max(1.0)
        ));
    }
    // The same workloads as RESP GET/MGET against the server's RESP endpoint.
    let mut resp = Redis {
        stream: BufReader::new(TcpStream::connect(("127.0.0.1", resp_port)).await?),
    };
    resp.stream.get_ref().set_nodelay(true)?;
    let prefix = format!("{TABLE}:");
    for keys in workloads[0].requests.iter().take(200) {
        let names: Vec<String> = keys.iter().map(|k| format!("{prefix}{k}")).collect();
        let mut parts: Vec<&[u8]> = vec![b"GET"];
        parts.extend(names.iter().map(|n| n.as_bytes()));
        let mut out = Vec::new();
        Redis::command(&mut out, &parts);
        resp.send(&out).await?;
        resp.reply().await?;
    }
    let hits = counter(&service, "unitable_lookup_cache_hits_total");
    let misses = counter(&service, "unitable_lookup_cache_misses_total");
    for line in time_resp(&mut resp, "unitable RESP", &prefix, &workloads).await? {
        println!("{line}");
    }
    if let Some(out) = std::env::var_os("LOOKUP_BENCH_PERF") {
        // Profiles the server through the single-key RESP workloads once more (after they
        // were timed), for finding where a GET's server time goes: `perf report -i FILE`.
        let single: Vec<&Workload> = workloads
            .iter()
            .filter(|w| w.requests[0].len() == 1)
            .collect();
        let profile = bench::Profile::start(pid, &out).await?;
        for workload in single {
            time_resp(
                &mut resp,
                "unitable RESP",
                &prefix,
                std::slice::from_ref(workload),
            )
            .await?;
        }
        drop(profile);
    }
    cache_lines.push(format!(
        "RESP, all workloads: block cache {} hits, {} misses",
        counter(&service, "unitable_lookup_cache_hits_total") - hits,
        counter(&service, "unitable_lookup_cache_misses_total") - misses
    ));
    eprintln!(
        "unitable: {}; server RSS {:?} MiB",
        cache_lines.join("; "),
        bench::rss_mib(pid)
    );
    // What moved the lookup state meanwhile (warming passes, compactions).
    for line in service.log().lines().filter(|l| {
        l.contains("lookup cache warmed")
            || l.contains("compacted")
            || l.contains("rewrite committed")
    }) {
        eprintln!("server: {line}");
    }
    drop(service);
    drop(kafka);
    if !args.no_redis {
        for line in bench_redis(&args, &workloads).await? {
            println!("{line}");
        }
    }
    Ok(())
}
