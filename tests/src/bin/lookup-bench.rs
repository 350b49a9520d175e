//! LOOKUP latency on a large table against Redis GET/MGET on the same machine.
//!
//! ```sh
//! cargo build --release -p unitable-table-service
//! UNITABLE_BIN=$CARGO_TARGET_DIR/release/unitable \
//!   cargo run --release -p unitable-tests --bin lookup-bench -- --rows 10000000
//! ```
//! Starts `unitable serve` (embedded catalog, local changelog) on a temporary directory, loads
//! ROWS rows `{"id":N,"v":"value-N","n":N*7}` (int64 key) through the Write API, waits for the
//! commit, then times sequential LOOKUPs of random keys (1 key and 100 keys per request) over
//! gRPC on loopback. Then starts `redis-server` (no persistence) on a free port, loads the same
//! rows as `SET row:N <json>`, and times GET and MGET of 100 with the same key sequence over
//! one TCP connection. Prints a Markdown table.

use std::io::Cursor;
use std::process::{Child, Command, Stdio};
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
}

const TABLE: &str = "bench.lookup";

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn quantiles(mut times: Vec<Duration>) -> (f64, f64, f64) {
    times.sort();
    let at = |q: f64| {
        let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
        times[i].as_secs_f64() * 1e3
    };
    (at(0.5), at(0.99), at(0.999))
}

type Reader = ReadServiceClient<tonic::transport::Channel>;

/// One lookup; returns the rows found.
async fn lookup(reader: &mut Reader, keys: &[u64]) -> Result<usize> {
    let lines: Vec<String> = keys.iter().map(|k| format!("{{\"id\":{k}}}")).collect();
    let mut stream = reader
        .read(ReadRequest {
            table: TABLE.into(),
            mode: ReadMode::Lookup as i32,
            keys: lines.join("\n").into_bytes(),
            keys_format: RowFormat::JsonLines as i32,
            ..ReadRequest::default()
        })
        .await?
        .into_inner();
    let mut found = 0;
    while let Some(message) = stream.message().await? {
        if let Some(read_response::Body::Lookup(result)) = message.body {
            for batch in StreamReader::try_new(Cursor::new(result.arrow_ipc), None)? {
                found += batch?.num_rows();
            }
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

async fn bench_redis(args: &Args, keys1: &[u64], keys100: &[Vec<u64>]) -> Result<Vec<String>> {
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
    let mut times = Vec::with_capacity(keys1.len());
    for k in keys1 {
        let mut out = Vec::new();
        Redis::command(&mut out, &[b"GET", format!("row:{k}").as_bytes()]);
        let t = Instant::now();
        redis.send(&out).await?;
        let found = redis.reply().await?;
        times.push(t.elapsed());
        ensure!(found == 1, "redis lost row:{k}");
    }
    let get = quantiles(times);
    let mut times = Vec::with_capacity(keys100.len());
    for keys in keys100 {
        let names: Vec<String> = keys.iter().map(|k| format!("row:{k}")).collect();
        let mut parts: Vec<&[u8]> = vec![b"MGET"];
        parts.extend(names.iter().map(|n| n.as_bytes()));
        let mut out = Vec::new();
        Redis::command(&mut out, &parts);
        let t = Instant::now();
        redis.send(&out).await?;
        let found = redis.reply().await?;
        times.push(t.elapsed());
        ensure!(found == keys.len(), "redis MGET found {found}");
    }
    let mget = quantiles(times);
    eprintln!("redis: loaded {} rows in {loaded:.1?}", args.rows);
    Ok(vec![
        format!(
            "| Redis GET | 1 | {} | {:.3} ms | {:.3} ms | {:.3} ms |",
            keys1.len(),
            get.0,
            get.1,
            get.2
        ),
        format!(
            "| Redis MGET | 100 | {} | {:.3} ms | {:.3} ms | {:.3} ms |",
            keys100.len(),
            mget.0,
            mget.1,
            mget.2
        ),
    ])
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let service =
        tokio::task::spawn_blocking(|| Service::start(&["--commit-interval", "1s"])).await??;
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

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let keys1: Vec<u64> = (0..args.samples).map(|_| rng.below(args.rows)).collect();
    let keys100: Vec<Vec<u64>> = (0..args.samples / 10)
        .map(|_| (0..100).map(|_| rng.below(args.rows)).collect())
        .collect();
    // Warm-up: footers and page indexes of every file get cached.
    for k in keys1.iter().take(200) {
        lookup(&mut reader, &[*k]).await?;
    }
    let mut times = Vec::with_capacity(keys1.len());
    for k in &keys1 {
        let t = Instant::now();
        let found = lookup(&mut reader, &[*k]).await?;
        times.push(t.elapsed());
        ensure!(found == 1, "row {k} is missing");
    }
    let one = quantiles(times);
    let mut times = Vec::with_capacity(keys100.len());
    for keys in &keys100 {
        let t = Instant::now();
        let found = lookup(&mut reader, keys).await?;
        times.push(t.elapsed());
        ensure!(found == 100, "found {found} of 100");
    }
    let hundred = quantiles(times);
    println!("| Read | Keys/request | Requests | p50 | p99 | p99.9 |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| unitable LOOKUP | 1 | {} | {:.3} ms | {:.3} ms | {:.3} ms |",
        keys1.len(),
        one.0,
        one.1,
        one.2
    );
    println!(
        "| unitable LOOKUP | 100 | {} | {:.3} ms | {:.3} ms | {:.3} ms |",
        keys100.len(),
        hundred.0,
        hundred.1,
        hundred.2
    );
    drop(service);
    if !args.no_redis {
        for line in bench_redis(&args, &keys1, &keys100).await? {
            println!("{line}");
        }
    }
    Ok(())
}
