//! Consumer groups over gRPC: members of a named group split a table's partitions, rebalance
//! when members join and leave, commit positions the server keeps in the catalog database, and
//! resume from them after a server restart; on one node (local changelog) and on two nodes
//! sharing a SQLite catalog and a Kafka cluster, with members on both. Checked against a model of what was written: every
//! record reaches the group, exactly once when members commit after each batch and nothing
//! crashes; commits by fenced members are refused; the lag metric equals records written minus
//! records committed.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use arrow::array::{Array, Int32Array, Int64Array};
use support::read::ipc;
use support::{TABLE, create_kv_table, kv_line, write_lines};
use tokio::sync::oneshot;
use tonic::Code;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{
    CommitGroupOffsetsRequest, ConsumerGroup, DescribeConsumerGroupsRequest, PartitionOffset,
    ReadMode, ReadRequest, StreamStart, WriteOp, read_response, stream_start,
};
use unitable_tests::{Kafka, Postgres, Service};

type ReadClient = ReadServiceClient<tonic::transport::Channel>;

const GROUP: &str = "billing";
const PARTITIONS: u32 = 6;

/// One record as a member processed it.
#[derive(Debug, Clone)]
struct Delivery {
    member: String,
    generation: i64,
    partition: u32,
    id: i64,
}

/// What the members did, shared with the test.
#[derive(Debug, Default)]
struct Log {
    deliveries: Vec<Delivery>,
    /// (member, generation) -> the partitions the server assigned.
    assignments: BTreeMap<(String, i64), Vec<u32>>,
    /// Commits the server refused (none may be, without crashes).
    refused: Vec<String>,
}

type Shared = Arc<Mutex<Log>>;

fn lock(log: &Shared) -> std::sync::MutexGuard<'_, Log> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A group member: reads its partitions, records every change it processes, commits after
/// each batch, reconnects with the same id on a rebalance, and leaves (drops its stream) when
/// `stop` fires.
async fn member(
    url: String,
    name: &'static str,
    log: Shared,
    mut stop: oneshot::Receiver<()>,
) -> Result<()> {
    let mut client = ReadServiceClient::connect(url).await?;
    'connect: loop {
        let request = ReadRequest {
            table: TABLE.into(),
            mode: ReadMode::Stream as i32,
            start: Some(StreamStart {
                kind: stream_start::Kind::Earliest as i32,
                ..StreamStart::default()
            }),
            consumer_group: GROUP.into(),
            consumer_member: name.into(),
            ..ReadRequest::default()
        };
        let mut stream = tokio::select! {
            started = client.read(request) => match started {
                Ok(s) => s.into_inner(),
                Err(s) if s.code() == Code::Aborted => continue 'connect,
                Err(s) => bail!("member {name}: the group stream did not start: {s}"),
            },
            _ = &mut stop => return Ok(()),
        };
        let mut generation = None;
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = &mut stop => return Ok(()),
            };
            let message = match message {
                Ok(Some(m)) => m,
                Ok(None) => bail!("member {name}: the group stream ended without a reason"),
                // Rebalanced: everything sent before was processed and committed; reconnect.
                Err(s) if s.code() == Code::Aborted => continue 'connect,
                Err(s) => bail!("member {name}: {s}"),
            };
            if let Some(g) = message.group {
                ensure!(g.member == name, "assigned to member {}", g.member);
                lock(&log)
                    .assignments
                    .insert((name.to_string(), g.generation), g.partitions.clone());
                generation = Some(g.generation);
            }
            let generation = generation.context("the first message carries the assignment")?;
            let Some(read_response::Body::Changes(batch)) = message.body else {
                bail!("a STREAM message without changes");
            };
            let mut processed = 0;
            for b in ipc(batch.arrow_ipc)? {
                let ids = b
                    .column_by_name("id")
                    .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                    .context("id column")?;
                let partitions = b
                    .column_by_name("_partition")
                    .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
                    .context("_partition column")?;
                let mut log = lock(&log);
                for i in 0..b.num_rows() {
                    ensure!(!partitions.is_null(i), "a change without a partition");
                    log.deliveries.push(Delivery {
                        member: name.to_string(),
                        generation,
                        partition: partitions.value(i) as u32,
                        id: ids.value(i),
                    });
                    processed += 1;
                }
            }
            if processed == 0 {
                continue;
            }
            let committed = client
                .commit_group_offsets(CommitGroupOffsetsRequest {
                    table: TABLE.into(),
                    group: GROUP.into(),
                    member: name.into(),
                    generation,
                    offsets: batch.next_offsets,
                })
                .await;
            match committed {
                Ok(_) => {}
                Err(s) if s.code() == Code::FailedPrecondition => {
                    lock(&log).refused.push(s.message().to_string());
                    continue 'connect;
                }
                Err(s) => bail!("member {name}: commit failed: {s}"),
            }
        }
    }
}

/// A running member and the switch that makes it leave.
struct Member {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

fn start_member(service: &Service, name: &'static str, log: &Shared) -> Member {
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(member(service.grpc_url(), name, log.clone(), stopped));
    Member { stop, task }
}

impl Member {
    async fn leave(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

async fn describe(client: &mut ReadClient) -> Result<ConsumerGroup> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let described = client
            .describe_consumer_groups(DescribeConsumerGroupsRequest {
                table: TABLE.into(),
                group: GROUP.into(),
            })
            .await;
        match described {
            Ok(r) => {
                return r
                    .into_inner()
                    .groups
                    .into_iter()
                    .next()
                    .context("the group is described");
            }
            // No member has joined yet.
            Err(s) if s.code() == Code::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // The connection broke (seen once in CI on a loaded machine: "broken pipe"): the
            // channel reconnects on the next call, and describing twice changes nothing.
            Err(s)
                if matches!(s.code(), Code::Unknown | Code::Unavailable)
                    && s.message().contains("transport error")
                    && Instant::now() < deadline =>
            {
                eprintln!("describe: {s}; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => return Err(s.into()),
        }
    }
}

/// Waits until the group has exactly `members`, all synced to the group's generation, and
/// checks their partitions against the model: disjoint, every partition, loads within one.
async fn wait_stable(client: &mut ReadClient, members: &[&str]) -> Result<ConsumerGroup> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let g = describe(client).await?;
        let names: Vec<&str> = g.members.iter().map(|m| m.member.as_str()).collect();
        if names == members && g.members.iter().all(|m| m.generation == g.generation) {
            let mut seen = BTreeSet::new();
            for m in &g.members {
                for p in &m.partitions {
                    ensure!(seen.insert(*p), "partition {p} assigned twice: {g:?}");
                }
            }
            ensure!(
                seen == (0..PARTITIONS).collect(),
                "the members' partitions are not all partitions: {g:?}"
            );
            let loads: Vec<usize> = g.members.iter().map(|m| m.partitions.len()).collect();
            let (min, max) = (
                loads.iter().min().copied().unwrap_or(0),
                loads.iter().max().copied().unwrap_or(0),
            );
            ensure!(max - min <= 1, "uneven assignment: {g:?}");
            return Ok(g);
        }
        if Instant::now() > deadline {
            bail!("the group did not settle on members {members:?}: {g:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the members processed `count` records and the group's lag is zero.
async fn wait_caught_up(client: &mut ReadClient, log: &Shared, count: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let delivered = lock(log).deliveries.len();
        let g = describe(client).await?;
        if delivered >= count && g.lag_records == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the group did not catch up: {delivered} of {count} delivered, {g:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn write_ids(
    client: &mut WriteServiceClient<tonic::transport::Channel>,
    ids: std::ops::Range<i64>,
) -> Result<()> {
    let lines: String = ids.map(|id| kv_line(id, &format!("v{id}"), id)).collect();
    write_lines(client, WriteOp::Upsert, &lines, false).await?;
    Ok(())
}

/// The value of `unitable_consumer_group_lag_records` (or `_members`) for the group.
fn metric(service: &Service, name: &str) -> Result<Option<f64>> {
    let text = service.http_get("/metrics")?.text();
    Ok(text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.split_once("} ")?;
        (labels.contains(&format!("group=\"{GROUP}\""))
            && labels.contains(&format!("table=\"{TABLE}\"")))
        .then(|| value.trim().parse().ok())
        .flatten()
    }))
}

/// The whole story on `nodes` (one, or several sharing a catalog and a changelog): members
/// connect to different nodes (`a` and `c` to the first, `b` and `d` to the last), writes go
/// to the first, and the first is the one that crashes and restarts.
async fn scenario(nodes: &mut [Service]) -> Result<()> {
    let last = nodes.len() - 1;
    create_kv_table(&nodes[0], PARTITIONS).await?;
    let mut writer = WriteServiceClient::connect(nodes[0].grpc_url()).await?;
    let mut reader = ReadServiceClient::connect(nodes[last].grpc_url()).await?;
    let log = Shared::default();

    // Two members split the partitions.
    let a = start_member(&nodes[0], "a", &log);
    let b = start_member(&nodes[last], "b", &log);
    let two = wait_stable(&mut reader, &["a", "b"]).await?;
    for first in 0..10 {
        write_ids(&mut writer, first * 10..first * 10 + 10).await?;
    }
    wait_caught_up(&mut reader, &log, 100).await?;

    // Writes go on while a third member joins and then the second leaves.
    let url = nodes[0].grpc_url();
    let background = tokio::spawn(async move {
        let mut writer = WriteServiceClient::connect(url).await?;
        for batch in 10..40 {
            write_ids(&mut writer, batch * 10..batch * 10 + 10).await?;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        anyhow::Ok(())
    });
    let c = start_member(&nodes[0], "c", &log);
    let three = wait_stable(&mut reader, &["a", "b", "c"]).await?;
    ensure!(three.generation > two.generation);
    b.leave().await?;
    let after_b = wait_stable(&mut reader, &["a", "c"]).await?;
    ensure!(after_b.generation > three.generation);
    background.await??;
    wait_caught_up(&mut reader, &log, 400).await?;

    // Every record reached the group exactly once, from the member that owned its partition
    // at that generation.
    {
        let log = lock(&log);
        ensure!(log.refused.is_empty(), "commits refused: {:?}", log.refused);
        let mut ids: Vec<i64> = log.deliveries.iter().map(|d| d.id).collect();
        ids.sort_unstable();
        let expected: Vec<i64> = (0..400).collect();
        if ids != expected {
            let mut counts = BTreeMap::<i64, usize>::new();
            for id in &ids {
                *counts.entry(*id).or_default() += 1;
            }
            let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
            let missing: Vec<_> = expected
                .iter()
                .filter(|i| !counts.contains_key(i))
                .collect();
            bail!(
                "delivered {} records; twice: {twice:?}; missing: {missing:?}",
                ids.len()
            );
        }
        for d in &log.deliveries {
            let assigned = &log.assignments[&(d.member.clone(), d.generation)];
            ensure!(
                assigned.contains(&d.partition),
                "{d:?} is outside the member's partitions {assigned:?}"
            );
        }
    }

    // Fencing: b left, and a synced past its first generation; their commits are refused and
    // change no position.
    let before = describe(&mut reader).await?;
    let a_first = lock(&log)
        .assignments
        .iter()
        .find(|((m, _), _)| m == "a")
        .map(|((_, g), p)| (*g, p.clone()))
        .context("a was assigned")?;
    let b_last = lock(&log)
        .assignments
        .iter()
        .filter(|((m, _), _)| m == "b")
        .map(|((_, g), p)| (*g, p.clone()))
        .next_back()
        .context("b was assigned")?;
    for (who, (generation, partitions)) in [("a", a_first), ("b", b_last)] {
        let partition = *partitions.first().context("a member with partitions")?;
        let refused = reader
            .commit_group_offsets(CommitGroupOffsetsRequest {
                table: TABLE.into(),
                group: GROUP.into(),
                member: who.into(),
                generation,
                offsets: vec![PartitionOffset {
                    partition,
                    offset: 0,
                }],
            })
            .await
            .expect_err("a fenced commit is refused");
        ensure!(
            refused.code() == Code::FailedPrecondition,
            "fenced commit of {who}: {refused:?}"
        );
        ensure!(refused.message().contains("fenced"), "{refused:?}");
    }
    let after = describe(&mut reader).await?;
    let positions = |g: &ConsumerGroup| {
        g.partitions
            .iter()
            .map(|p| (p.partition, p.committed_offset))
            .collect::<Vec<_>>()
    };
    ensure!(
        positions(&before) == positions(&after),
        "a fenced commit moved a position"
    );

    // Everyone leaves; 50 more records are written: the lag is exactly those 50.
    a.leave().await?;
    c.leave().await?;
    for batch in 40..45 {
        write_ids(&mut writer, batch * 10..batch * 10 + 10).await?;
    }
    for node in nodes.iter() {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let lag = metric(node, "unitable_consumer_group_lag_records")?;
            let members = metric(node, "unitable_consumer_group_members")?;
            if lag == Some(50.0) && members == Some(0.0) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "metrics: lag {lag:?} (model 50), members {members:?} (model 0)"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    ensure!(describe(&mut reader).await?.lag_records == 50);

    // After a crash (SIGKILL) and a restart, a new member resumes from the group's positions:
    // it gets exactly the 50 records nobody committed.
    nodes[0].restart()?;
    let mut reader = ReadServiceClient::connect(nodes[0].grpc_url()).await?;
    let resumed = Shared::default();
    let d = start_member(&nodes[last], "d", &resumed);
    wait_caught_up(&mut reader, &resumed, 50).await?;
    d.leave().await?;
    let mut ids: Vec<i64> = lock(&resumed).deliveries.iter().map(|d| d.id).collect();
    ids.sort_unstable();
    ensure!(
        ids == (400..450).collect::<Vec<_>>(),
        "after the restart the group got {ids:?}, not the 50 uncommitted records"
    );
    ensure!(lock(&resumed).refused.is_empty());

    // The command line: a group member that stops after 450 changes commits them all.
    let out = nodes[0]
        .cli(&[
            "subscribe",
            TABLE,
            "--group",
            "cli",
            "--from",
            "earliest",
            "--limit",
            "450",
        ])?
        .ok()?;
    ensure!(out.lines().count() == 450, "{out}");
    // Its stream ended at the limit: it left the group, with every position committed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cli = reader
            .describe_consumer_groups(DescribeConsumerGroupsRequest {
                table: TABLE.into(),
                group: "cli".into(),
            })
            .await?
            .into_inner()
            .groups;
        if cli
            .first()
            .is_some_and(|g| g.lag_records == 0 && g.members.is_empty())
        {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{cli:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SESSION: &str = "2s";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_members_split_rebalance_commit_and_resume() -> Result<()> {
    let service = Service::start(&[
        "--consumer-group-session",
        SESSION,
        "--compaction-interval",
        "0s",
    ])?;
    scenario(&mut [service]).await
}

/// Two nodes sharing a PostgreSQL catalog database (so the group SQL runs on Postgres; the
/// one-node test runs it on SQLite) and a Kafka changelog.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_on_kafka_and_postgres_share_the_group() -> Result<()> {
    let kafka = tokio::task::spawn_blocking(Kafka::start).await??;
    let postgres = tokio::task::spawn_blocking(Postgres::start).await??;
    let lake = tempfile::tempdir()?;
    let warehouse = format!("file://{}", lake.path().display());
    let first = node(&kafka, "node-1", &postgres.url(), &warehouse).await?;
    let second = node(&kafka, "node-2", &postgres.url(), &warehouse).await?;
    scenario(&mut [first, second]).await
}

/// A serve node on `kafka`, with the catalog database and warehouse given.
async fn node(kafka: &Kafka, id: &str, catalog: &str, warehouse: &str) -> Result<Service> {
    let args: Vec<String> = [
        "--node-id",
        id,
        "--kafka-brokers",
        &kafka.bootstrap(),
        "--consumer-group-session",
        SESSION,
        "--compaction-interval",
        "0s",
        "--catalog",
        catalog,
        "--warehouse",
        warehouse,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Service::start(&args)
    })
    .await?
}
