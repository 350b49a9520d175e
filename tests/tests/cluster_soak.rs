//! The scale-out deployment under node loss: three `unitable serve` nodes on a three-broker
//! Kafka cluster, a PostgreSQL catalog and an S3 warehouse (moto), a write load through all
//! nodes, and a random node SIGKILLed every round (kept down past its lease, then restarted),
//! 20 rounds. Writes carry request ids and a failed one is retried with the same id on
//! another node, so each acknowledged change happens exactly once.
//!
//! At the end the Iceberg tables read by iceberg-rust, and the SNAPSHOT, FRESH and LOOKUP
//! reads of every node, equal the model. The longest stretch in which a table's current
//! snapshot did not change while the load ran is reported (not asserted: it is a measurement,
//! see docs/benchmarks.md).

mod support;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, bail, ensure};
use arrow::array::RecordBatch;
use futures::TryStreamExt;
use support::Rng;
use support::create_kv_table_as;
use support::read::{ipc, kv_rows, read};
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::commit::read::anchored_offsets;
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_core::scan::{ScanOptions, read_scan};
use unitable_core::storage::s3_props;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{
    ReadMode, ReadRequest, RowFormat, WaitFor, WriteOp, WriteRequest, read_response,
};
use unitable_tests::{Kafka, Moto, Postgres, Service};

const TABLES: usize = 4;
const KEYS: i64 = 200;
const ROUNDS: usize = 20;
const LEASE: &str = "2s";

struct Cluster {
    _postgres: Postgres,
    moto: Moto,
    kafka: Kafka,
    catalog_url: String,
    nodes: Vec<Service>,
    up: Vec<bool>,
}

impl Cluster {
    fn storage_args(&self) -> Vec<String> {
        [
            "--warehouse",
            "s3://lake/wh",
            "--s3-endpoint",
            &self.moto.endpoint(),
            "--s3-region",
            "us-east-1",
            "--s3-access-key-id",
            "testing",
            "--s3-secret-access-key",
            "testing",
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    fn catalog(&self) -> CatalogConfig {
        CatalogConfig {
            uri: self.catalog_url.clone(),
            warehouse: "s3://lake/wh".into(),
            storage_props: HashMap::from([
                (s3_props::ENDPOINT.to_string(), self.moto.endpoint()),
                (s3_props::REGION.to_string(), "us-east-1".to_string()),
                (s3_props::ACCESS_KEY_ID.to_string(), "testing".to_string()),
                (
                    s3_props::SECRET_ACCESS_KEY.to_string(),
                    "testing".to_string(),
                ),
            ]),
        }
    }
}

fn epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

fn start_cluster() -> Result<Cluster> {
    let postgres = Postgres::start()?;
    let moto = Moto::start()?;
    moto.create_bucket("lake")?;
    let kafka = Kafka::cluster(3)?;
    let mut cluster = Cluster {
        catalog_url: postgres.url(),
        _postgres: postgres,
        moto,
        kafka,
        nodes: Vec::new(),
        up: Vec::new(),
    };
    for i in 0..3 {
        let mut args: Vec<String> = vec![
            "--node-id".into(),
            format!("node-{i}"),
            "--kafka-brokers".into(),
            cluster.kafka.bootstrap(),
            "--catalog".into(),
            cluster.catalog_url.clone(),
            "--commit-interval".into(),
            "200ms".into(),
            "--committer-lease".into(),
            LEASE.into(),
        ];
        args.extend(cluster.storage_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster.nodes.push(Service::start(&args)?);
        cluster.up.push(true);
    }
    Ok(cluster)
}

type Model = BTreeMap<String, BTreeMap<i64, (String, i64)>>;

/// Per table, the acknowledged writes no snapshot covered yet when last looked at: their last
/// offsets, and when they were acknowledged (monotonic and wall clock).
type Acks = std::sync::Arc<
    std::sync::Mutex<HashMap<String, VecDeque<(Vec<(u32, i64)>, Instant, SystemTime)>>>,
>;

/// The longest stretches the watcher saw.
struct Gaps {
    /// A table kept the same current snapshot.
    same_snapshot: (Duration, String),
    /// An acknowledged write of a table waited for a snapshot covering it, as the watcher saw
    /// it still uncovered (it polls, so this stops at its last look before the commit: short
    /// by up to one of its rounds).
    uncommitted: (Duration, String, SystemTime),
    /// An acknowledged write waited for the first snapshot covering it, by that snapshot's
    /// own timestamp (same machine, so the same clock as the acknowledgement's).
    until_commit: (Duration, String, SystemTime),
}

impl Default for Gaps {
    fn default() -> Self {
        Self {
            same_snapshot: (Duration::ZERO, String::new()),
            uncommitted: (Duration::ZERO, String::new(), SystemTime::UNIX_EPOCH),
            until_commit: (Duration::ZERO, String::new(), SystemTime::UNIX_EPOCH),
        }
    }
}

/// Whether `anchored` offsets cover the records at `offsets` (partition, last offset).
fn covers(anchored: &PartitionOffsets, offsets: &[(u32, i64)]) -> bool {
    offsets
        .iter()
        .all(|(p, o)| anchored.get(PartitionId(*p)).0 > *o)
}

/// When the oldest snapshot in the current one's history that covers `offsets` was committed
/// (its timestamp); `None` without a current snapshot. Snapshots expired since count as not
/// covering, so the answer can only be late.
fn first_covering(
    metadata: &iceberg::spec::TableMetadata,
    offsets: &[(u32, i64)],
) -> Option<SystemTime> {
    let mut found = None;
    let mut at = metadata.current_snapshot();
    while let Some(snapshot) = at {
        if !covers(&anchored_offsets(metadata, snapshot.snapshot_id()), offsets) {
            break;
        }
        found = Some(snapshot.timestamp_ms());
        at = snapshot
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id));
    }
    let ms = u64::try_from(found?).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// Writes one request to `table` through some live node, retrying with the same request id
/// on other nodes until it is acknowledged. Returns the last offsets written.
async fn write_once(
    cluster: &Cluster,
    rng: &mut Rng,
    request: WriteRequest,
) -> Result<Vec<(u32, i64)>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last_error = None;
    while Instant::now() < deadline {
        let live: Vec<usize> = (0..cluster.nodes.len())
            .filter(|i| cluster.up[*i])
            .collect();
        let node = live[rng.below(live.len() as u64) as usize];
        let attempt = async {
            let mut client = WriteServiceClient::connect(cluster.nodes[node].grpc_url()).await?;
            let r = client.write(request.clone()).await?.into_inner();
            anyhow::Ok(r)
        };
        match tokio::time::timeout(Duration::from_secs(30), attempt).await {
            Ok(Ok(r)) => {
                ensure!(r.errors.is_empty(), "row errors: {:?}", r.errors);
                return Ok(r
                    .last_offsets
                    .iter()
                    .map(|o| (o.partition, o.offset))
                    .collect());
            }
            Ok(Err(e)) => last_error = Some(format!("node {node}: {e:#}")),
            Err(_) => last_error = Some(format!("node {node}: timed out")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "request {} was never acknowledged: {last_error:?}",
        request.request_id
    )
}

/// One batch of upserts and deletes for `table`; applied to the model once acknowledged.
async fn write_batch(
    cluster: &Cluster,
    rng: &mut Rng,
    model: &mut Model,
    written: &mut BTreeMap<String, PartitionOffsets>,
    acks: &Acks,
    table: &str,
    seq: u64,
) -> Result<()> {
    let delete = rng.below(5) == 0;
    let keys: Vec<i64> = (0..10).map(|_| rng.below(KEYS as u64) as i64).collect();
    let mut lines = String::new();
    let mut changes = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for k in keys {
        if !seen.insert(k) {
            continue;
        }
        if delete {
            lines.push_str(&format!("{{\"id\":{k}}}\n"));
            changes.push((k, None));
        } else {
            let v = format!("{table}-{seq}-{k}");
            lines.push_str(&format!("{{\"id\":{k},\"v\":\"{v}\",\"n\":{seq}}}\n"));
            changes.push((k, Some((v, seq as i64))));
        }
    }
    let request = WriteRequest {
        table: table.into(),
        op: if delete {
            WriteOp::Delete
        } else {
            WriteOp::Upsert
        } as i32,
        format: RowFormat::JsonLines as i32,
        rows: lines.into_bytes(),
        wait_for: WaitFor::Changelog as i32,
        request_id: format!("soak-{table}-{seq}"),
    };
    let offsets = write_once(cluster, rng, request).await?;
    acks.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(table.to_string())
        .or_default()
        .push_back((offsets.clone(), Instant::now(), SystemTime::now()));
    let rows = model.entry(table.to_string()).or_default();
    for (k, change) in changes {
        match change {
            Some(row) => rows.insert(k, row),
            None => rows.remove(&k),
        };
    }
    let w = written.entry(table.to_string()).or_default();
    for (p, o) in offsets {
        if o >= w.get(PartitionId(p)).0 {
            w.set(PartitionId(p), Offset(o));
        }
    }
    Ok(())
}

async fn lookup(
    client: &mut ReadServiceClient<tonic::transport::Channel>,
    table: &str,
) -> Result<BTreeMap<i64, (String, i64)>> {
    let keys: Vec<String> = (0..KEYS).map(|k| format!("{{\"id\":{k}}}")).collect();
    let request = ReadRequest {
        table: table.into(),
        mode: ReadMode::Lookup as i32,
        keys: keys.join("\n").into_bytes(),
        keys_format: RowFormat::JsonLines as i32,
        ..ReadRequest::default()
    };
    let mut stream = client.read(request).await?.into_inner();
    let mut batches = Vec::new();
    while let Some(message) = stream.message().await? {
        let Some(read_response::Body::Lookup(result)) = message.body else {
            bail!("not a lookup body");
        };
        batches.extend(ipc(result.arrow_ipc)?);
    }
    kv_rows(&batches)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "slow: 3 serve nodes, 3 brokers, Postgres and S3, 20 node kills (a few minutes)"]
async fn the_cluster_loses_nothing_while_nodes_die() -> Result<()> {
    let mut cluster = tokio::task::spawn_blocking(start_cluster).await??;
    let tables: Vec<String> = (0..TABLES).map(|i| format!("soak.t{i}")).collect();
    for t in &tables {
        create_kv_table_as(&cluster.nodes[0], t, 3, &[], Vec::new()).await?;
    }
    // Watches every table while the load runs: the longest time one kept the same snapshot,
    // and the longest time an acknowledged write waited for a snapshot that covers it (the
    // first can also grow while no write reaches the table; the second only while a table has
    // acknowledged changes that no commit covers).
    let watching = stop_flag();
    let acks: Acks = Default::default();
    let watcher = {
        let catalog = TableCatalog::open(cluster.catalog()).await?;
        let tables = tables.clone();
        let stop = watching.clone();
        let acks = acks.clone();
        tokio::spawn(async move {
            let mut last: HashMap<String, (Option<i64>, Instant)> = HashMap::new();
            let mut gaps = Gaps::default();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for t in &tables {
                    let Ok(name) = t.parse() else { continue };
                    let Ok(table) = catalog.load(&name).await else {
                        continue;
                    };
                    let now = Instant::now();
                    let current = table.metadata().current_snapshot_id();
                    let entry = last.entry(t.clone()).or_insert((current, now));
                    if entry.0 != current {
                        *entry = (current, now);
                    } else if now - entry.1 > gaps.same_snapshot.0 {
                        gaps.same_snapshot = (now - entry.1, t.clone());
                    }
                    let anchored = current
                        .map(|id| anchored_offsets(table.metadata(), id))
                        .unwrap_or_default();
                    let mut acks = acks.lock().unwrap_or_else(|e| e.into_inner());
                    let queue = acks.entry(t.clone()).or_default();
                    while let Some((offsets, _, wall)) =
                        queue.front().filter(|(o, _, _)| covers(&anchored, o))
                    {
                        if let Some(committed) = first_covering(table.metadata(), offsets) {
                            let waited = committed.duration_since(*wall).unwrap_or_default();
                            if waited > gaps.until_commit.0 {
                                gaps.until_commit = (waited, t.clone(), *wall);
                            }
                        }
                        queue.pop_front();
                    }
                    if let Some((_, at, wall)) = queue.front()
                        && now - *at > gaps.uncommitted.0
                    {
                        gaps.uncommitted = (now - *at, t.clone(), *wall);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            gaps
        })
    };
    let mut rng = Rng(0x5eed_cafe_f00d);
    let mut model = Model::new();
    let mut written = BTreeMap::new();
    let mut seq = 0u64;
    let started = Instant::now();
    for round in 0..ROUNDS {
        // Writes with every node up, then with one down past its lease, then it comes back.
        let victim = rng.below(3) as usize;
        for _ in 0..3 {
            for t in &tables {
                seq += 1;
                write_batch(&cluster, &mut rng, &mut model, &mut written, &acks, t, seq).await?;
            }
        }
        cluster.nodes[victim].kill()?;
        cluster.up[victim] = false;
        eprintln!("round {round}: killed node-{victim} at {} ms", epoch_ms());
        let down = Instant::now();
        while down.elapsed() < Duration::from_secs(3) {
            for t in &tables {
                seq += 1;
                write_batch(&cluster, &mut rng, &mut model, &mut written, &acks, t, seq).await?;
            }
        }
        tokio::task::block_in_place(|| cluster.nodes[victim].restart())?;
        cluster.up[victim] = true;
        eprintln!("round {round}: node-{victim} back at {} ms", epoch_ms());
        eprintln!(
            "round {round}: killed node-{victim}; {seq} batches acknowledged so far ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }

    watching.store(true, std::sync::atomic::Ordering::SeqCst);
    let gaps = watcher.await?;

    // Everything acknowledged reaches the tables.
    let catalog = TableCatalog::open(cluster.catalog()).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut behind = Vec::new();
        for t in &tables {
            let table = catalog.load(&t.parse()?).await?;
            let anchored = table
                .metadata()
                .current_snapshot_id()
                .map(|id| anchored_offsets(table.metadata(), id))
                .unwrap_or_default();
            if written[t].0.iter().any(|(p, o)| anchored.get(*p).0 <= o.0) {
                behind.push(t.clone());
            }
        }
        if behind.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not committed within 60 s: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for t in &tables {
        let table = catalog.load(&t.parse()?).await?;
        // iceberg-rust's scan of the current snapshot (position deletes applied).
        let scan = table.scan().select(["id", "v", "n"]).build()?;
        let batches: Vec<RecordBatch> = read_scan(&table, &scan, ScanOptions::default())
            .await?
            .try_collect()
            .await?;
        let rows = kv_rows(&batches)?;
        ensure!(
            rows == model[t],
            "{t}: Iceberg has {} rows, the model {}",
            rows.len(),
            model[t].len()
        );
        // Every node's reads agree.
        for (i, node) in cluster.nodes.iter().enumerate() {
            let mut client = ReadServiceClient::connect(node.grpc_url()).await?;
            for mode in [ReadMode::Snapshot, ReadMode::Fresh] {
                let request = ReadRequest {
                    table: t.clone(),
                    mode: mode as i32,
                    ..ReadRequest::default()
                };
                let (batches, _) = read(&mut client, request).await?;
                let rows = kv_rows(&batches)?;
                ensure!(
                    rows == model[t],
                    "{t} {mode:?} on node-{i}: {} rows, model {}",
                    rows.len(),
                    model[t].len()
                );
            }
            let rows = lookup(&mut client, t).await?;
            ensure!(
                rows == model[t],
                "{t} LOOKUP on node-{i}: {} rows, model {}",
                rows.len(),
                model[t].len()
            );
        }
    }
    let (wait, wait_table, wait_since) = &gaps.uncommitted;
    let (to_commit, commit_table, commit_since) = &gaps.until_commit;
    let ms = |at: &SystemTime| {
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    };
    eprintln!(
        "soak: {ROUNDS} node kills, {seq} batches acknowledged, 0 lost, 0 duplicated; lease {LEASE}, commit interval 200ms; the longest wait of an acknowledged write for its commit was {:.2} s by the committing snapshot's timestamp ({commit_table}, acknowledged at {} ms since the epoch), {:.1} s until the watcher saw it ({wait_table}, acknowledged at {} ms); the longest stretch with the same snapshot was {:.1} s ({})",
        to_commit.as_secs_f64(),
        ms(commit_since),
        wait.as_secs_f64(),
        ms(wait_since),
        gaps.same_snapshot.0.as_secs_f64(),
        gaps.same_snapshot.1,
    );
    // For diagnosing a long wait: the nodes' logs, kept where UNITABLE_SOAK_LOGS says.
    if let Ok(dir) = std::env::var("UNITABLE_SOAK_LOGS") {
        for (i, node) in cluster.nodes.iter().enumerate() {
            std::fs::write(format!("{dir}/node-{i}.log"), node.log())?;
        }
    }
    drop(cluster);
    Ok(())
}
