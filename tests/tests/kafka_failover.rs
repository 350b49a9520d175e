//! unitable on a three-broker Apache Kafka cluster that loses brokers under a write load: the
//! broker leading the partitions is killed and brought back (each broker in turn), then the
//! whole cluster is down for 30 s. Writes during an outage fail with retryable codes only;
//! every acknowledged write reaches the Iceberg table exactly once (rows of failed writes may
//! be there or not, never twice), and a STREAM subscriber that resumes from its last positions
//! sees every acknowledged write.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use support::read::{Client, subscribe};
use support::{create_kv_table, kv_line, scan_kv, write_lines};
use tonic::Code;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::stream_start::Kind;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{PartitionOffset, StreamStart, WriteOp};
use unitable_tests::{Kafka, Service};

/// What the write load saw.
#[derive(Debug, Default)]
struct Load {
    acknowledged: BTreeSet<i64>,
    attempted: BTreeSet<i64>,
    failures: BTreeMap<String, u32>,
}

/// Writes one new key per request until `stop`, recording what was acknowledged; any error
/// that is not retryable fails the test.
async fn write_load(url: String, stop: Arc<AtomicBool>) -> Result<Load> {
    let mut client = WriteServiceClient::connect(url).await?;
    let mut load = Load::default();
    let mut id = 0;
    while !stop.load(Ordering::SeqCst) {
        load.attempted.insert(id);
        match write_lines(
            &mut client,
            WriteOp::Upsert,
            &kv_line(id, &format!("v{id}"), id),
            false,
        )
        .await
        {
            Ok(r) if r.rows_written == 1 => {
                load.acknowledged.insert(id);
            }
            // A row refused for a changelog failure is a row error of its request.
            Ok(r) => {
                let reason = r.errors.first().map_or("?", |e| e.reason.as_str());
                ensure!(
                    reason.contains("retry"),
                    "row error without retry advice: {r:?}"
                );
                *load.failures.entry("row error".into()).or_default() += 1;
            }
            Err(status) => {
                ensure!(
                    matches!(
                        status.code(),
                        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted
                    ),
                    "a write during an outage must fail retryably: {status:?}"
                );
                *load
                    .failures
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        id += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(load)
}

/// Follows the table's STREAM from the earliest offsets, resuming from its positions whenever
/// the stream fails, until it has seen every id in `wanted` (set once the load stopped).
async fn follow(
    url: String,
    done: Arc<AtomicBool>,
    wanted: Arc<tokio::sync::Mutex<Option<BTreeSet<i64>>>>,
) -> Result<(BTreeSet<i64>, u32)> {
    let mut seen = BTreeSet::new();
    let mut next: BTreeMap<u32, i64> = BTreeMap::new();
    let mut resumes = 0;
    loop {
        let start = if next.is_empty() {
            StreamStart {
                kind: Kind::Earliest as i32,
                ..StreamStart::default()
            }
        } else {
            StreamStart {
                kind: Kind::Offsets as i32,
                offsets: next
                    .iter()
                    .map(|(p, o)| PartitionOffset {
                        partition: *p,
                        offset: *o,
                    })
                    .collect(),
                ..StreamStart::default()
            }
        };
        let mut client: Client = match ReadServiceClient::connect(url.clone()).await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut changes = match subscribe(&mut client, start, "", 0).await {
            Ok(c) => c,
            Err(_) => {
                resumes += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        next.extend(changes.next.clone());
        loop {
            if let Some(want) = wanted.lock().await.as_ref()
                && want.is_subset(&seen)
            {
                return Ok((seen, resumes));
            }
            if done.load(Ordering::SeqCst) {
                return Ok((seen, resumes));
            }
            match tokio::time::timeout(Duration::from_secs(1), changes.next_batch()).await {
                Err(_) => continue,
                Ok(Ok(Some(batch))) => {
                    seen.extend(batch.iter().map(|c| c.id));
                    next.extend(changes.next.clone());
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    next.extend(changes.next.clone());
                    resumes += 1;
                    break;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "slow: a three-broker cluster loses each broker in turn, then all of them for 30 s"]
async fn acknowledged_writes_survive_broker_failures_exactly_once() -> Result<()> {
    let mut kafka = tokio::task::spawn_blocking(|| Kafka::cluster(3)).await??;
    let brokers = kafka.bootstrap();
    let service = tokio::task::spawn_blocking(move || {
        Service::start(&["--kafka-brokers", &brokers, "--commit-interval", "200ms"])
    })
    .await??;
    create_kv_table(&service, 3).await?;
    // Brokers learn a new topic's settings a moment after it is created.
    let mut topic = serde_json::Value::Null;
    for _ in 0..50 {
        let described = service
            .cli(&["table", "describe", support::TABLE, "--format", "json"])?
            .ok()?;
        let described: serde_json::Value = serde_json::from_str(&described)?;
        topic = described["changelog_topic"].clone();
        if topic["configs"].as_object().is_some_and(|c| !c.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        topic["problems"].as_array().is_some_and(Vec::is_empty),
        "{topic}"
    );
    ensure!(topic["replication_factor"] == 3, "replication: {topic}");
    ensure!(topic["configs"]["min.insync.replicas"] == "2", "{topic}");
    ensure!(topic["configs"]["cleanup.policy"] == "compact", "{topic}");

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(write_load(service.grpc_url(), stop.clone()));
    let done = Arc::new(AtomicBool::new(false));
    let wanted = Arc::new(tokio::sync::Mutex::new(None));
    let follower = tokio::spawn(follow(service.grpc_url(), done.clone(), wanted.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Each broker in turn: whichever led a partition loses it, and comes back.
    for node in 0..3 {
        kafka = tokio::task::spawn_blocking(move || -> Result<Kafka> {
            kafka.kill(node)?;
            std::thread::sleep(Duration::from_secs(4));
            kafka.restart(node)?;
            Ok(kafka)
        })
        .await??;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // The whole cluster down for 30 s.
    kafka = tokio::task::spawn_blocking(move || -> Result<Kafka> {
        kafka.kill_all()?;
        std::thread::sleep(Duration::from_secs(30));
        kafka.restart_all()?;
        Ok(kafka)
    })
    .await??;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    let load = load.await??;
    eprintln!(
        "{} writes acknowledged of {} attempted; failures {:?}",
        load.acknowledged.len(),
        load.attempted.len(),
        load.failures
    );
    ensure!(load.acknowledged.len() > 200, "too few writes acknowledged");
    ensure!(
        !load.failures.is_empty(),
        "the outage must have failed some writes"
    );

    // A last write that waits for its snapshot: every earlier acknowledged write is covered.
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    let last = 1_000_000;
    let mut tries = 0;
    loop {
        match write_lines(
            &mut client,
            WriteOp::Upsert,
            &kv_line(last, "last", 0),
            true,
        )
        .await
        {
            Ok(_) => break,
            Err(e) if tries < 20 => {
                tries += 1;
                eprintln!("last write: {e:?}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("the last write"),
        }
    }
    // Every partition's snapshot covers what was acknowledged: each write went to one
    // partition, so wait until the table holds every acknowledged id.
    let mut rows = BTreeMap::new();
    for _ in 0..120 {
        rows = scan_kv(&service.data_dir()).await?;
        if load.acknowledged.iter().all(|id| rows.contains_key(id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let missing: Vec<_> = load
        .acknowledged
        .iter()
        .filter(|id| !rows.contains_key(id))
        .collect();
    ensure!(
        missing.is_empty(),
        "acknowledged but not in the table: {missing:?}"
    );
    let unknown: Vec<_> = rows
        .keys()
        .filter(|id| **id != last && !load.attempted.contains(id))
        .collect();
    ensure!(
        unknown.is_empty(),
        "in the table but never written: {unknown:?}"
    );
    for (id, v) in &rows {
        if *id != last {
            ensure!(*v == format!("v{id}"), "id {id} has {v}");
        }
    }

    *wanted.lock().await = Some(load.acknowledged.clone());
    let (seen, resumes) = tokio::time::timeout(Duration::from_secs(120), follower)
        .await
        .context("the STREAM subscriber did not see every acknowledged write in 2 min")???;
    done.store(true, Ordering::SeqCst);
    let unseen: Vec<_> = load.acknowledged.difference(&seen).collect();
    ensure!(
        unseen.is_empty(),
        "acknowledged but never streamed: {unseen:?}"
    );
    eprintln!("the subscriber resumed {resumes} times");
    drop(service);
    drop(kafka);
    Ok(())
}
