//! The writer's promise under crashes: a client writes random upserts and deletes and records
//! what was acknowledged; the server is killed with SIGKILL at a random moment and restarted.
//! Afterwards the Iceberg table (read by iceberg-rust and, at the end, by PyIceberg) holds every
//! acknowledged change exactly once with its latest value. A row whose write was in flight at
//! the kill (never acknowledged) is either fully applied or absent.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use anyhow::{Result, ensure};
use support::{TABLE, create_kv_table, kv_line, scan_kv, scan_kv_pyiceberg, write_lines};
use tokio::sync::mpsc;
use unitable_core::offsets::PartitionId;
use unitable_proto::v1::WriteOp;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_tests::iceberg_oracle::Rng;
use unitable_tests::{Kafka, Service};

const KEYS: u64 = 300;

/// One write of the client: rows of one op, each `(id, Some(v))` for an upsert or
/// `(id, None)` for a delete.
#[derive(Debug, Clone)]
struct Sent {
    rows: Vec<(i64, Option<String>)>,
}

/// What a key may read as after a crash: its acknowledged state, or one of the unacknowledged
/// changes sent after it.
#[derive(Debug, Default)]
struct Model {
    acked: BTreeMap<i64, Option<String>>,
    maybe: BTreeMap<i64, Vec<Option<String>>>,
}

impl Model {
    fn ack(&mut self, sent: &Sent) {
        for (id, v) in &sent.rows {
            self.acked.insert(*id, v.clone());
            self.maybe.remove(id);
        }
    }

    fn unknown(&mut self, sent: &Sent) {
        for (id, v) in &sent.rows {
            self.maybe.entry(*id).or_default().push(v.clone());
        }
    }

    /// Takes in the client's reports: acknowledged batches and those whose outcome is unknown.
    async fn record(&mut self, rx: &mut mpsc::UnboundedReceiver<(Sent, bool)>) {
        while let Some((sent, acked)) = rx.recv().await {
            if acked {
                self.ack(&sent);
            } else {
                self.unknown(&sent);
            }
        }
    }

    /// Waits for a snapshot covering everything written so far (a sentinel write waited on a
    /// snapshot: that snapshot covers everything appended before it), then checks the table.
    async fn verify(&mut self, service: &Service, what: &str) -> Result<()> {
        let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
        let sentinel = format!("sentinel {what}");
        write_lines(
            &mut client,
            WriteOp::Upsert,
            &kv_line(-1, &sentinel, 0),
            true,
        )
        .await?;
        self.acked.insert(-1, Some(sentinel));
        let table = scan_kv(&service.data_dir()).await?;
        self.check_and_settle(&table, what)
            .map_err(|e| e.context(format!("server log:\n{}", tail(&service.log()))))
    }

    /// Checks `table` against the model, then adopts it (the unknown outcomes are now known).
    fn check_and_settle(&mut self, table: &BTreeMap<i64, String>, what: &str) -> Result<()> {
        let keys: BTreeSet<i64> = self
            .acked
            .keys()
            .chain(self.maybe.keys())
            .chain(table.keys())
            .copied()
            .collect();
        for id in keys {
            let got = table.get(&id).cloned();
            let acked = self.acked.get(&id).cloned().flatten();
            let allowed: Vec<Option<String>> = std::iter::once(acked.clone())
                .chain(self.maybe.get(&id).into_iter().flatten().cloned())
                .collect();
            ensure!(
                allowed.contains(&got),
                "{what}: key {id} reads {got:?}; acknowledged {acked:?}, in flight {:?}",
                self.maybe.get(&id)
            );
            self.acked.insert(id, got);
        }
        self.maybe.clear();
        Ok(())
    }
}

/// Writes random batches until the server goes away; reports each batch and its outcome.
async fn client_loop(url: String, trial: u64, seed: u64, out: mpsc::UnboundedSender<(Sent, bool)>) {
    let mut rng = Rng(seed | 1);
    let Ok(mut client) = WriteServiceClient::connect(url).await else {
        return;
    };
    for seq in 0.. {
        let delete = rng.below(4) == 0;
        let n = 1 + rng.below(20) as usize;
        let mut lines = String::new();
        let mut rows = Vec::with_capacity(n);
        let mut seen = BTreeSet::new();
        for i in 0..n {
            let id = rng.below(KEYS) as i64;
            if !seen.insert(id) {
                continue;
            }
            if delete {
                lines.push_str(&format!("{{\"id\":{id}}}\n"));
                rows.push((id, None));
            } else {
                let v = format!("t{trial}-s{seq}-{i}");
                lines.push_str(&kv_line(id, &v, seq));
                rows.push((id, Some(v)));
            }
        }
        let op = if delete {
            WriteOp::Delete
        } else {
            WriteOp::Upsert
        };
        let sent = Sent { rows };
        match write_lines(&mut client, op, &lines, false).await {
            Ok(r) if r.rows_rejected == 0 && r.rows_written as usize == sent.rows.len() => {
                if out.send((sent, true)).is_err() {
                    return;
                }
            }
            Ok(r) => panic!("unexpected partial write {r:?}"),
            Err(_) => {
                let _ = out.send((sent, false));
                return;
            }
        }
    }
}

async fn run_trials(mut service: Service, trials: u64, seed: u64, pyiceberg: bool) -> Result<()> {
    create_kv_table(&service, 4).await?;
    let mut model = Model::default();
    let mut rng = Rng(seed);
    for trial in 0..trials {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let client = tokio::spawn(client_loop(service.grpc_url(), trial, seed ^ trial, tx));
        tokio::time::sleep(Duration::from_millis(30 + rng.below(700))).await;
        service.kill()?;
        client.await?;
        model.record(&mut rx).await;
        service = tokio::task::spawn_blocking(move || {
            service.restart()?;
            Ok::<_, anyhow::Error>(service)
        })
        .await??;
        model.verify(&service, &format!("trial {trial}")).await?;
    }
    if pyiceberg {
        let py = scan_kv_pyiceberg(&service.data_dir())?;
        let rs = scan_kv(&service.data_dir()).await?;
        ensure!(py == rs, "PyIceberg and iceberg-rust read different rows");
        let live: BTreeMap<i64, String> = model
            .acked
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
            .collect();
        ensure!(
            py == live,
            "PyIceberg's rows differ from the acknowledged writes"
        );
    }
    eprintln!(
        "{trials} crash trials on {TABLE}: {} live keys",
        scan_kv(&service.data_dir()).await?.len()
    );
    Ok(())
}

/// Crashes the server at one named crash point (see writer/src/crash.rs) per trial, restarts
/// it, and checks the table against the acknowledged writes.
async fn crash_at(point: &'static str, trials: u64, seed: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let trigger = dir.path().join("crash-now");
    let trigger_env = trigger.to_string_lossy().into_owned();
    let mut service = tokio::task::spawn_blocking(move || {
        Service::start_with_env(
            &["--commit-interval", "100ms"],
            &[
                ("UNITABLE_CRASH_POINT", point),
                ("UNITABLE_CRASH_FILE", &trigger_env),
            ],
        )
    })
    .await??;
    create_kv_table(&service, 3).await?;
    let mut model = Model::default();
    for trial in 0..trials {
        std::fs::write(&trigger, b"")?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let client = if point == "after-claim" {
            // The claim happens when a committer starts: at start-up.
            drop(tx);
            service.kill()?;
            None
        } else {
            Some(tokio::spawn(client_loop(
                service.grpc_url(),
                trial,
                seed ^ trial,
                tx,
            )))
        };
        let mut reached = false;
        for _ in 0..400 {
            if !trigger.exists() {
                reached = true;
                break;
            }
            if point == "after-claim" {
                // Start-up aborts at the claim; restart until it does.
                service = tokio::task::spawn_blocking(move || {
                    let _ = service.restart();
                    service
                })
                .await?;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ensure!(
            reached,
            "crash point {point} was never reached in trial {trial}"
        );
        if let Some(client) = client {
            client.await?;
        }
        model.record(&mut rx).await;
        // The process aborts right after removing the trigger; then start it again.
        service = tokio::task::spawn_blocking(move || {
            let mut last = Ok(());
            for _ in 0..3 {
                last = service.restart();
                if last.is_ok() {
                    break;
                }
            }
            last.map(|()| service)
        })
        .await??;
        ensure!(
            service
                .log()
                .contains(&format!("crash point `{point}` reached")),
            "the server did not abort at {point}"
        );
        model
            .verify(&service, &format!("{point} trial {trial}"))
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_append_before_the_answer() -> Result<()> {
    crash_at("after-append", 4, 0xa1).await
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_writing_files_before_the_swap() -> Result<()> {
    crash_at("before-swap", 4, 0xa2).await
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_swap_before_the_index_update() -> Result<()> {
    crash_at("after-swap", 4, 0xa3).await
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_claiming_the_table_before_the_index_rebuild() -> Result<()> {
    crash_at("after-claim", 3, 0xa4).await
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn start(args: Vec<String>) -> Result<Service> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Service::start(&args)
    })
    .await?
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_20_kills_local_changelog() -> Result<()> {
    let service = start(vec!["--commit-interval".into(), "150ms".into()]).await?;
    run_trials(service, 20, 0x5eed_0001, true).await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "slow: 200 crash trials (soak)"]
async fn acknowledged_writes_survive_200_kills_soak() -> Result<()> {
    // Four tables of 50 trials each: without compaction every restart rebuilds the key index
    // from all of a table's small files, so one table of 200 trials costs quadratic time.
    for block in 0..4u64 {
        let service = start(vec!["--commit-interval".into(), "150ms".into()]).await?;
        run_trials(service, 50, 0x5eed_0002 + block, block == 3).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kills_with_kafka_changelog() -> Result<()> {
    let kafka = tokio::task::spawn_blocking(Kafka::start).await??;
    let service = start(vec![
        "--commit-interval".into(),
        "150ms".into(),
        "--kafka-brokers".into(),
        kafka.bootstrap(),
    ])
    .await?;
    run_trials(service, 8, 0x5eed_0003, false).await?;
    drop(kafka);
    Ok(())
}

/// Waits (up to two minutes) until the Iceberg table reads as `want`; fails with `what`, the
/// difference and the server log's tail.
async fn wait_for_rows(service: &Service, want: &BTreeMap<i64, String>, what: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let rows = scan_kv(&service.data_dir()).await.unwrap_or_default();
        if rows == *want {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: the table holds {} rows ({} as wanted), want {}\n{}",
            rows.len(),
            rows.iter().filter(|(k, v)| want.get(k) == Some(v)).count(),
            want.len(),
            tail(&service.log())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A backlog larger than one commit's record limit is committed batch after batch: all of it
/// at a graceful stop, and at once after a restart (not one batch per commit interval).
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_is_committed_in_full_at_stop_and_at_once_after_a_restart() -> Result<()> {
    // An hour-long interval: only the stop and the start may commit in this test.
    let mut service = start(
        ["--commit-interval", "1h", "--commit-max-records", "100"]
            .map(String::from)
            .to_vec(),
    )
    .await?;
    create_kv_table(&service, 2).await?;
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    let lines = |from: i64, to: i64, v: &str| -> String {
        (from..to).map(|id| kv_line(id, v, id)).collect()
    };
    // The first write starts the table's committer; let its first cycle pass.
    write_lines(&mut client, WriteOp::Upsert, &lines(5000, 5001, "w"), false).await?;
    let mut want = BTreeMap::from([(5000, "w".to_string())]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !service.log().contains("committer started") {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no committer started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for chunk in 0..10 {
        let (from, to) = (chunk * 100, chunk * 100 + 100);
        write_lines(&mut client, WriteOp::Upsert, &lines(from, to, "a"), false).await?;
        want.extend((from..to).map(|id| (id, "a".to_string())));
    }
    // (At most the first row, if the first cycle saw it.)
    ensure!(
        scan_kv(&service.data_dir()).await.unwrap_or_default().len() <= 1,
        "nothing more may be committed before the stop (1h interval)"
    );
    let status = tokio::task::block_in_place(|| service.stop())?;
    ensure!(
        status.success(),
        "graceful stop: {status:?}\n{}",
        tail(&service.log())
    );
    let rows = scan_kv(&service.data_dir()).await?;
    ensure!(
        rows == want,
        "after a graceful stop the snapshot must hold all {} acknowledged rows, it holds {}",
        want.len(),
        rows.len()
    );
    let catalog = unitable_core::catalog::TableCatalog::open(
        unitable_core::catalog::CatalogConfig::embedded(&service.data_dir()),
    )
    .await?;
    let table = catalog.load(&TABLE.parse()?).await?;
    let metadata = table.metadata();
    let current = metadata.current_snapshot_id().context("a snapshot")?;
    let mut chain: Vec<_> = unitable_core::commit::read::ancestors(metadata, current)
        .iter()
        .filter_map(unitable_core::commit::read::changelog_offsets)
        .collect();
    chain.reverse();
    ensure!(
        chain.len() >= 10,
        "1,000 records with a 100-record limit need at least 10 commits, saw {}",
        chain.len()
    );
    // The limit is shared: while both partitions still had records to commit, every commit
    // took some of each (neither partition waits for the other's backlog).
    let last = chain.last().context("offsets")?.clone();
    for pair in chain.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let pending = |p: u32| before.get(PartitionId(p)) < last.get(PartitionId(p));
        if pending(0) && pending(1) {
            ensure!(
                (0..2).all(|p| after.get(PartitionId(p)) > before.get(PartitionId(p))),
                "a commit took records of one partition only while both had a backlog: \
                 {before} -> {after}"
            );
        }
    }

    // Acknowledged, never committed, then a crash: the next start commits it without waiting
    // for the hour.
    tokio::task::block_in_place(|| service.restart())?;
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    for chunk in 0..5 {
        let (from, to) = (chunk * 100, chunk * 100 + 100);
        write_lines(&mut client, WriteOp::Upsert, &lines(from, to, "b"), false).await?;
        want.extend((from..to).map(|id| (id, "b".to_string())));
    }
    tokio::task::block_in_place(|| service.kill())?;
    tokio::task::block_in_place(|| service.restart())?;
    wait_for_rows(
        &service,
        &want,
        "the restarted committer did not commit the backlog",
    )
    .await?;
    Ok(())
}

/// A committer that panics (a bug) is restarted: the server keeps serving, and the rows
/// acknowledged before and after the panic all reach the Iceberg table exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_committer_is_restarted_and_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let trigger = dir.path().join("panic-now");
    let trigger_env = trigger.to_string_lossy().into_owned();
    let service = tokio::task::spawn_blocking(move || {
        Service::start_with_env(
            &["--commit-interval", "100ms"],
            &[
                ("UNITABLE_CRASH_POINT", "before-swap"),
                ("UNITABLE_CRASH_FILE", &trigger_env),
                ("UNITABLE_CRASH_MODE", "panic"),
            ],
        )
    })
    .await??;
    create_kv_table(&service, 2).await?;
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    let mut want = BTreeMap::new();
    let mut write = async |from: i64, v: &str| -> Result<()> {
        let lines: String = (from..from + 50).map(|id| kv_line(id, v, id)).collect();
        write_lines(&mut client, WriteOp::Upsert, &lines, false).await?;
        want.extend((from..from + 50).map(|id| (id, v.to_string())));
        Ok(())
    };
    write(0, "a").await?;
    std::fs::write(&trigger, b"")?;
    write(50, "b").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while trigger.exists() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the committer never reached the panic point"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write(0, "c").await?;
    wait_for_rows(
        &service,
        &want,
        "the rows written around the panic did not all commit",
    )
    .await?;
    let log = service.log();
    ensure!(
        log.contains("the committer panicked") && log.contains("restarting"),
        "the restart must be logged\n{}",
        tail(&log)
    );
    let metrics = service.http_get("/metrics")?;
    ensure!(
        String::from_utf8_lossy(&metrics.body).contains("unitable_committer_panics_total"),
        "the panic must be counted"
    );
    Ok(())
}
