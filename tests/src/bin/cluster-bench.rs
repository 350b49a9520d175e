//! Scale-out benchmark: committed rows/s with 1, 2 and 3 serve nodes writing, and failover time
//! (a node that owns tables is SIGKILLed -> the first commit of each of its tables by another
//! node).
//!
//! ```sh
//! cargo build --release -p unitable-table-service -p unitable-tests
//! source <(bash scripts/test --setup-only | grep ^export)   # KAFKA_HOME
//! UNITABLE_BIN=$CARGO_TARGET_DIR/release/unitable $CARGO_TARGET_DIR/release/cluster-bench
//! ```
//! Starts one Kafka broker and, for each node count, that many `unitable serve` nodes sharing
//! one embedded catalog (SQLite in WAL mode) and warehouse, with committer leases. Each node
//! gets `--writers` client tasks that upsert batches of `--batch` rows (random keys) into the
//! tables in turn for `--seconds`, each write acknowledged once durable in Kafka. Then the
//! bench waits until every table's newest snapshot covers everything acknowledged. Committed
//! rows/s = acknowledged rows / (load time + the wait).
//!
//! The failover part runs on the largest node count with a light load: `--failovers` times,
//! it SIGKILLs the node holding the most leases, records each of its tables' snapshot, and
//! times until each of them has a newer one (only a new owner can commit once the old one is
//! dead), then restarts the node and lets the tables spread again. Prints Markdown tables.
//!
//! Everything (broker, nodes, clients) shares this machine's cores: more nodes add committers
//! but no CPU.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::lease::LeaseStore;
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_proto::v1::WaitFor;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_tests::{Kafka, Service, bench};

#[derive(Debug, Parser)]
struct Args {
    /// Node counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    nodes: Vec<usize>,
    /// Tables written (the committers spread over the nodes by lease).
    #[arg(long, default_value_t = 6)]
    tables: usize,
    /// Buckets (changelog partitions) per table.
    #[arg(long, default_value_t = 4)]
    buckets: u32,
    /// Seconds of write load per node count.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Rows per write request.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Concurrent writing clients per node.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Distinct keys per table (upserts beyond it replace rows).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Kills of a lease-holding node in the failover part (0 skips it).
    #[arg(long, default_value_t = 3)]
    failovers: usize,
    /// Committer lease of the nodes.
    #[arg(long, default_value = "2s")]
    lease: String,
    /// Commit interval of the nodes.
    #[arg(long, default_value = "1s")]
    commit_interval: String,
}

/// The highest acknowledged offset per partition of each table (inclusive).
type Written = BTreeMap<String, PartitionOffsets>;

/// The tables of one phase. Every phase (node count, failover part) has its own tables: it
/// starts nodes on a new catalog against the same broker, and a table is refused a topic that
/// an earlier phase's table of the name wrote to.
fn table_names(phase: &str, tables: usize) -> Arc<Vec<String>> {
    Arc::new((0..tables).map(|i| format!("bench.{phase}_c{i}")).collect())
}

async fn start_nodes(kafka: &Kafka, count: usize, args: &Args) -> Result<Vec<Service>> {
    let flags = [
        "--commit-interval",
        args.commit_interval.as_str(),
        "--committer-lease",
        args.lease.as_str(),
        "--compaction-interval",
        "0s",
    ];
    let mut nodes: Vec<Service> = Vec::new();
    for i in 0..count {
        let node = Service::start_node(&kafka.bootstrap(), &format!("n{i}"), nodes.first(), &flags)
            .await
            .with_context(|| format!("start node n{i}"))?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Writes batches into the tables in turn through `url` until `stop`; returns the rows
/// acknowledged and merges the acknowledged offsets into `written`.
async fn write_until(
    url: String,
    tables: Arc<Vec<String>>,
    batch: u64,
    keys: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Result<(u64, Written)> {
    let mut client = WriteServiceClient::connect(url).await?;
    let mut written = Written::new();
    let (mut rows, mut state, mut turn) = (0u64, seed | 1, seed as usize);
    while !stop.load(Ordering::Relaxed) {
        let table = tables[turn % tables.len()].clone();
        turn += 1;
        let mut lines = String::with_capacity(batch as usize * 48);
        for _ in 0..batch {
            // xorshift: random keys without a dependency.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            lines.push_str(&bench::kv_row(state % keys));
            lines.push('\n');
        }
        let response = bench::upsert_lines(&mut client, &table, lines, WaitFor::Changelog)
            .await
            .with_context(|| format!("write to {table}"))?;
        ensure!(
            response.rows_rejected == 0,
            "rejected: {:?}",
            response.errors
        );
        rows += response.rows_written;
        let seen = written.entry(table).or_default();
        for po in &response.last_offsets {
            let p = PartitionId(po.partition);
            if po.offset >= seen.get(p).0 {
                seen.set(p, Offset(po.offset));
            }
        }
    }
    Ok((rows, written))
}

fn merge(into: &mut Written, from: Written) {
    for (table, offsets) in from {
        let seen = into.entry(table).or_default();
        for (p, o) in offsets.0 {
            if o.0 >= seen.get(p).0 {
                seen.set(p, o);
            }
        }
    }
}

/// A writer client's task: rows acknowledged and what it wrote.
type Client = tokio::task::JoinHandle<Result<(u64, Written)>>;

/// Starts `writers` clients per node; they run until the returned flag is set.
fn start_load(
    nodes: &[Service],
    tables: &Arc<Vec<String>>,
    args: &Args,
    batch: u64,
) -> (Arc<AtomicBool>, Vec<Client>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for w in 0..args.writers {
            let seed = (n * 1000 + w + 1) as u64 * 0x9E37_79B9;
            tasks.push(tokio::spawn(write_until(
                node.grpc_url(),
                tables.clone(),
                batch,
                args.keys,
                seed,
                stop.clone(),
            )));
        }
    }
    (stop, tasks)
}

async fn stop_load(
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<Result<(u64, Written)>>>,
) -> Result<(u64, Written)> {
    stop.store(true, Ordering::Relaxed);
    let mut rows = 0;
    let mut written = Written::new();
    for task in tasks {
        let (r, w) = task.await??;
        rows += r;
        merge(&mut written, w);
    }
    Ok((rows, written))
}

struct Throughput {
    nodes: usize,
    acked: u64,
    load: Duration,
    drain: Duration,
}

async fn throughput(kafka: &Kafka, count: usize, args: &Args) -> Result<Throughput> {
    let nodes = start_nodes(kafka, count, args).await?;
    let tables = table_names(&format!("n{count}"), args.tables);
    for table in tables.iter() {
        bench::create_kv_table(&nodes[0], table, args.buckets).await?;
    }
    // Let the leases spread the new tables before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("{count} node(s): writing for {} s", args.seconds);
    let started = Instant::now();
    let (stop, tasks) = start_load(&nodes, &tables, args, args.batch);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (acked, written) = stop_load(&stop, tasks).await?;
    let load = started.elapsed();
    eprintln!("{count} node(s): {acked} rows acknowledged; waiting for the commits");
    let drain =
        bench::wait_committed(&nodes[0].data_dir(), &written, Duration::from_secs(300)).await?;
    Ok(Throughput {
        nodes: count,
        acked,
        load,
        drain,
    })
}

/// The tables each node holds the lease of.
async fn owners(store: &LeaseStore) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (table, holder) in store.holders().await? {
        out.entry(holder.owner).or_default().push(table);
    }
    Ok(out)
}

async fn snapshot_of(catalog: &TableCatalog, table: &str) -> Result<Option<i64>> {
    Ok(catalog
        .load(&table.parse()?)
        .await?
        .metadata()
        .current_snapshot_id())
}

struct Failover {
    victim: String,
    tables: usize,
    first: Duration,
    last: Duration,
}

async fn failovers(kafka: &Kafka, count: usize, args: &Args) -> Result<Vec<Failover>> {
    ensure!(count >= 2, "failover needs at least 2 nodes");
    let mut nodes = start_nodes(kafka, count, args).await?;
    let data = nodes[0].data_dir();
    let names = table_names("failover", args.tables);
    for table in names.iter() {
        bench::create_kv_table(&nodes[0], table, args.buckets).await?;
    }
    let store = LeaseStore::connect(&CatalogConfig::embedded(&data))
        .await?
        .context("the embedded catalog has a lease store")?;
    let catalog = TableCatalog::open(CatalogConfig::embedded(&data)).await?;
    let mut out = Vec::new();
    for round in 0..args.failovers {
        // Wait for every table to have a lease holder, then pick the busiest node.
        let deadline = Instant::now() + Duration::from_secs(60);
        let held = loop {
            let held = owners(&store).await?;
            if held.values().map(Vec::len).sum::<usize>() == args.tables {
                break held;
            }
            ensure!(
                Instant::now() < deadline,
                "tables without a lease holder: {held:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (victim, tables) = held
            .iter()
            .max_by_key(|(_, t)| t.len())
            .map(|(n, t)| (n.clone(), t.clone()))
            .context("no lease holder")?;
        let index: usize = victim.trim_start_matches('n').parse()?;
        // A light load on the other nodes keeps every table wanting commits.
        let (stop, tasks) = {
            let live: Vec<&Service> = nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != index)
                .map(|(_, n)| n)
                .collect();
            let stop = Arc::new(AtomicBool::new(false));
            let mut tasks = Vec::new();
            for (k, node) in live.iter().enumerate() {
                tasks.push(tokio::spawn(write_until(
                    node.grpc_url(),
                    names.clone(),
                    10,
                    args.keys,
                    (round * 100 + k + 7) as u64,
                    stop.clone(),
                )));
            }
            (stop, tasks)
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Where each node's log stands, so the round prints only its own lines.
        let log_from: Vec<usize> = nodes.iter().map(|n| n.log().len()).collect();
        tokio::task::block_in_place(|| nodes[index].kill())?;
        let killed = Instant::now();
        let mut before = BTreeMap::new();
        for t in &tables {
            before.insert(t.clone(), snapshot_of(&catalog, t).await?);
        }
        let mut taken: BTreeMap<String, Duration> = BTreeMap::new();
        while taken.len() < tables.len() {
            ensure!(
                killed.elapsed() < Duration::from_secs(120),
                "round {round}: {victim}'s tables not committed by another node within 120 s"
            );
            for t in &tables {
                if !taken.contains_key(t) && snapshot_of(&catalog, t).await? != before[t] {
                    taken.insert(t.clone(), killed.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_load(&stop, tasks).await?;
        // The survivors' own account of the takeover (lease, start phases), for reading why
        // a failover took long.
        for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != index) {
            let log = node.log();
            let new = log.get(log_from[i]..).unwrap_or_default();
            for line in new.lines().filter(|l| {
                tables.iter().any(|t| l.contains(&format!("table={t} ")))
                    && (l.contains("committer lease")
                        || l.contains("committer started")
                        || l.contains("primary-key index")
                        || l.contains("committer stopped"))
            }) {
                eprintln!("  n{i}: {line}");
            }
        }
        let first = taken.values().min().copied().unwrap_or_default();
        let last = taken.values().max().copied().unwrap_or_default();
        eprintln!(
            "failover {round}: {victim} ({} tables) -> first commit {first:?}, last {last:?}",
            tables.len()
        );
        out.push(Failover {
            victim,
            tables: tables.len(),
            first,
            last,
        });
        tokio::task::block_in_place(|| nodes[index].restart())?;
        // Let the returning node take its share back before the next kill.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    Ok(out)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let kafka = tokio::task::spawn_blocking(Kafka::start).await??;
    let mut results = Vec::new();
    for &count in &args.nodes {
        results.push(throughput(&kafka, count, &args).await?);
    }
    println!(
        "\n{} tables x {} buckets, {} writers/node, {} rows/request, {} s of load, commit interval {}\n",
        args.tables, args.buckets, args.writers, args.batch, args.seconds, args.commit_interval
    );
    println!(
        "| nodes | rows acknowledged | acknowledged rows/s | drain after load (s) | committed rows/s |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for r in &results {
        let load = r.load.as_secs_f64();
        let total = load + r.drain.as_secs_f64();
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.0} |",
            r.nodes,
            r.acked,
            r.acked as f64 / load,
            r.drain.as_secs_f64(),
            r.acked as f64 / total
        );
    }
    let most = args.nodes.iter().copied().max().unwrap_or(1);
    if args.failovers > 0 && most >= 2 {
        let rounds = failovers(&kafka, most, &args).await?;
        println!(
            "\nFailover with {most} nodes, lease {}: SIGKILL of the node holding the most leases -> the first commit of each of its tables by another node\n",
            args.lease
        );
        println!(
            "| round | killed | its tables | first table committed (s) | all its tables committed (s) |"
        );
        println!("|---:|---|---:|---:|---:|");
        for (i, r) in rounds.iter().enumerate() {
            println!(
                "| {i} | {} | {} | {:.2} | {:.2} |",
                r.victim,
                r.tables,
                r.first.as_secs_f64(),
                r.last.as_secs_f64()
            );
        }
    }
    Ok(())
}
