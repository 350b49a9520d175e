//! Every read mode against a model: random upserts and deletes with a restart in the middle,
//! then FRESH, STREAM replayed from earliest, SNAPSHOT at every snapshot (against the changelog
//! replayed up to the snapshot's anchored offsets), SQL in both modes, LOOKUP of every key,
//! and filtered variants of each, with a compaction round among the rounds. Plus the snapshot-to-stream hand-over under a concurrent writer (no gap, no
//! duplicate) and SQL's rules (joins, CTEs, refused statements, clear errors).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use arrow::array::{Array, Int64Array};
use support::read::{
    Change, Client, Row, kv_rows, lookup_ids, query, read, replay, request, start, subscribe,
};
use support::{TABLE, create_kv_table, kv_line, write_lines};
use tonic::Code;
use unitable_proto::v1::compaction_service_client::CompactionServiceClient;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::stream_start::Kind;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{CompactRequest, ReadMode, ReadRequest, StreamStart, WriteOp};
use unitable_tests::Service;
use unitable_tests::iceberg_oracle::Rng;

type Writer = WriteServiceClient<tonic::transport::Channel>;

/// Ids of the every-mode test: `0..KEYS`.
const KEYS: i64 = 60;

/// Writes one random batch of upserts and deletes over ids `0..keys` and applies it to the
/// model. Returns the number of changelog records written.
async fn random_batch(
    rng: &mut Rng,
    writer: &mut Writer,
    model: &mut BTreeMap<i64, Row>,
    keys: u64,
    round: usize,
) -> Result<u64> {
    let mut upserts = String::new();
    let mut deletes = String::new();
    let mut upserted = BTreeMap::new();
    let mut deleted = BTreeSet::new();
    for _ in 0..1 + rng.below(40) {
        let id = rng.below(keys) as i64;
        if upserted.contains_key(&id) || deleted.contains(&id) {
            continue;
        }
        if rng.below(4) == 0 {
            deletes.push_str(&format!("{{\"id\":{id}}}\n"));
            deleted.insert(id);
        } else {
            let v = format!("r{round}-{}", rng.below(1000));
            let n = rng.below(100) as i64;
            upserts.push_str(&kv_line(id, &v, n));
            upserted.insert(id, (v, n));
        }
    }
    let mut records = 0;
    if !upserts.is_empty() {
        let r = write_lines(writer, WriteOp::Upsert, &upserts, false).await?;
        ensure!(r.rows_rejected == 0, "rejected: {:?}", r.errors);
        records += r.rows_written;
    }
    if !deletes.is_empty() {
        let r = write_lines(writer, WriteOp::Delete, &deletes, false).await?;
        ensure!(r.rows_rejected == 0, "rejected: {:?}", r.errors);
        records += r.rows_written;
    }
    model.extend(upserted);
    for id in deleted {
        model.remove(&id);
    }
    Ok(records)
}

fn passes(filter: impl Fn(i64, &Row) -> bool, model: &BTreeMap<i64, Row>) -> BTreeMap<i64, Row> {
    model
        .iter()
        .filter(|(id, row)| filter(**id, row))
        .map(|(id, row)| (*id, row.clone()))
        .collect()
}

/// The state after the changes below `offsets` (per partition).
fn replay_below(changes: &[Change], offsets: &BTreeMap<u32, i64>) -> BTreeMap<i64, Row> {
    let below: Vec<Change> = changes
        .iter()
        .filter(|c| {
            let p = c.partition.unwrap_or(-1) as u32;
            c.offset.unwrap_or(i64::MAX) < offsets.get(&p).copied().unwrap_or(0)
        })
        .cloned()
        .collect();
    let mut out = BTreeMap::new();
    replay(&mut out, &below);
    out
}

async fn check_every_mode(
    reader: &mut Client,
    model: &BTreeMap<i64, Row>,
    records: u64,
    snapshots: &mut BTreeSet<i64>,
) -> Result<()> {
    // FRESH reflects every acknowledged write, whether or not a snapshot covers it yet.
    let (batches, as_of) = read(reader, request(ReadMode::Fresh, "")).await?;
    ensure!(kv_rows(&batches)? == *model, "FRESH differs from the model");
    ensure!(
        as_of.offsets.iter().map(|o| o.offset).sum::<i64>() == records as i64,
        "FRESH as_of offsets {:?} do not cover the {records} records written",
        as_of.offsets
    );
    // LOOKUP of every key (and some never written) reflects every acknowledged write too.
    let ids: Vec<i64> = (0..KEYS + 10).collect();
    let (batches, missing) = lookup_ids(reader, &ids).await?;
    ensure!(
        kv_rows(&batches)? == *model,
        "LOOKUP differs from the model"
    );
    let want_missing: Vec<u32> = (0..ids.len() as u32)
        .filter(|i| !model.contains_key(&ids[*i as usize]))
        .collect();
    ensure!(missing == want_missing, "LOOKUP missing {missing:?}");

    let filter = "n % 3 = 0 AND v <> 'none'";
    let want = passes(|_, (v, n)| n % 3 == 0 && v != "none", model);
    let (batches, _) = read(reader, request(ReadMode::Fresh, filter)).await?;
    ensure!(kv_rows(&batches)? == want, "filtered FRESH differs");

    // STREAM from earliest, replayed, is the model; offsets are 0.. without gaps.
    let changes = subscribe(reader, start(Kind::Earliest), "", records)
        .await?
        .collect()
        .await?;
    ensure!(
        changes.len() as u64 == records,
        "STREAM gave {} of {records} changes",
        changes.len()
    );
    let mut replayed = BTreeMap::new();
    replay(&mut replayed, &changes);
    ensure!(replayed == *model, "STREAM replay differs from the model");
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for c in &changes {
        per_partition
            .entry(c.partition.context("a change without partition")?)
            .or_default()
            .push(c.offset.context("a change without offset")?);
    }
    for (p, offsets) in &per_partition {
        let mut sorted = offsets.clone();
        sorted.sort_unstable();
        ensure!(
            sorted == (0..offsets.len() as i64).collect::<Vec<_>>(),
            "partition {p}: offsets not exactly 0..n"
        );
    }

    // A filtered stream replayed keeps exactly the rows that pass (upserts that stop passing
    // arrive as deletes).
    let mut filtered = BTreeMap::new();
    let filtered_changes = subscribe(reader, start(Kind::Earliest), filter, records)
        .await?
        .collect()
        .await?;
    replay(&mut filtered, &filtered_changes);
    ensure!(filtered == want, "filtered STREAM replay differs");

    // SNAPSHOT: the latest and every snapshot seen so far equal the changelog replayed below
    // their anchored offsets.
    let (_, latest) = read(reader, request(ReadMode::Snapshot, "")).await?;
    if let Some(id) = latest.snapshot_id {
        snapshots.insert(id);
    }
    for &id in snapshots.iter() {
        let mut req = request(ReadMode::Snapshot, "");
        req.snapshot_id = Some(id);
        let (batches, as_of) = read(reader, req).await?;
        let anchored = as_of
            .offsets
            .iter()
            .map(|o| (o.partition, o.offset))
            .collect();
        ensure!(
            kv_rows(&batches)? == replay_below(&changes, &anchored),
            "SNAPSHOT {id} differs from the changelog below its offsets {anchored:?}"
        );
        let mut req = request(ReadMode::Snapshot, "id < 40 AND n >= 50");
        req.snapshot_id = Some(id);
        let (batches, _) = read(reader, req).await?;
        let want = passes(
            |id, (_, n)| id < 40 && *n >= 50,
            &replay_below(&changes, &anchored),
        );
        ensure!(kv_rows(&batches)? == want, "filtered SNAPSHOT {id} differs");
    }

    // SQL, fresh: the rows and an aggregate.
    let (batches, as_of) = query(
        reader,
        &format!("SELECT id, v, n FROM {TABLE} ORDER BY id"),
        ReadMode::Fresh,
    )
    .await?;
    ensure!(
        kv_rows(&batches)? == *model,
        "fresh SQL differs from the model"
    );
    ensure!(
        as_of.contains_key(TABLE),
        "SQL as_of lacks {TABLE}: {as_of:?}"
    );
    let (batches, _) = query(
        reader,
        &format!("SELECT count(*) AS c, sum(n) AS s FROM {TABLE} WHERE n % 3 = 0"),
        ReadMode::Fresh,
    )
    .await?;
    let b = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .context("no aggregate row")?;
    let count = b
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .context("count")?;
    ensure!(
        count.value(0) == want_count(model),
        "fresh SQL count differs"
    );
    let sum = b
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .context("sum")?;
    let want_sum: i64 = model
        .values()
        .filter(|(_, n)| n % 3 == 0)
        .map(|(_, n)| n)
        .sum();
    ensure!(
        (sum.is_null(0) && want_sum == 0) || sum.value(0) == want_sum,
        "fresh SQL sum differs"
    );
    // SQL, snapshot: the latest snapshot's rows.
    let (batches, as_of) = query(
        reader,
        &format!("SELECT * FROM {TABLE}"),
        ReadMode::Snapshot,
    )
    .await?;
    let anchored = as_of[TABLE]
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    ensure!(
        kv_rows(&batches)? == replay_below(&changes, &anchored),
        "snapshot SQL differs from the changelog below its offsets"
    );
    Ok(())
}

fn want_count(model: &BTreeMap<i64, Row>) -> i64 {
    model.values().filter(|(_, n)| n % 3 == 0).count() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mode_matches_the_model_across_commits_and_a_restart() -> Result<()> {
    let mut service =
        tokio::task::spawn_blocking(|| Service::start(&["--commit-interval", "150ms"])).await??;
    create_kv_table(&service, 3).await?;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut model = BTreeMap::new();
    let mut records = 0;
    let mut snapshots = BTreeSet::new();
    for round in 0..8 {
        if round == 4 {
            tokio::task::block_in_place(|| service.restart())?;
        }
        let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
        let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;
        for _ in 0..3 {
            records += random_batch(&mut rng, &mut writer, &mut model, KEYS as u64, round).await?;
        }
        if round == 6 {
            // A compaction round: rewrites under the reads, every mode still the model.
            let done = CompactionServiceClient::connect(service.grpc_url())
                .await?
                .compact(CompactRequest {
                    table: TABLE.into(),
                    dry_run: false,
                })
                .await?
                .into_inner();
            ensure!(
                done.executed && done.files_rewritten > 0,
                "the compaction round rewrote nothing: {done:?}"
            );
        }
        check_every_mode(&mut reader, &model, records, &mut snapshots)
            .await
            .with_context(|| format!("round {round}"))?;
        if round % 2 == 1 {
            // Let the committer catch up now and then, so snapshots differ in what they cover.
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    ensure!(
        snapshots.len() >= 3,
        "only {} snapshots were checked",
        snapshots.len()
    );
    // The FRESH reads after the first of each server run were served from the followed tail
    // (the model checks above hold for both paths).
    let followed = followed_reads(&service)?;
    ensure!(
        followed >= 4.0,
        "only {followed} FRESH reads used the followed tail"
    );
    Ok(())
}

/// How many FRESH reads the server served from a followed tail (`/metrics`).
fn followed_reads(service: &Service) -> Result<f64> {
    Ok(service
        .http_get("/metrics")?
        .text()
        .lines()
        .filter(|l| l.starts_with("unitable_fresh_tails_total") && l.contains("followed"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// FRESH reads between writes with the base snapshot fixed (no commit after the first): each
/// read patches the last copy of the followed tail with what changed since (upserts of new and
/// tail keys, deletes, keys upserted again after a delete), and every read, plain and
/// filtered, equals the model, over many patches in a row.
#[tokio::test(flavor = "multi_thread")]
async fn fresh_reads_between_writes_patch_the_tail_and_match_the_model() -> Result<()> {
    let service =
        tokio::task::spawn_blocking(|| Service::start(&["--commit-interval", "3600s"])).await??;
    create_kv_table(&service, 3).await?;
    let mut rng = Rng(0x5eed_0000_f4e5_0002);
    let mut model = BTreeMap::new();
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
    let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;
    // The first read starts the followers; the later ones patch its copy.
    for round in 0..40 {
        random_batch(&mut rng, &mut writer, &mut model, 200, round).await?;
        let (batches, _) = read(&mut reader, request(ReadMode::Fresh, "")).await?;
        ensure!(
            kv_rows(&batches)? == model,
            "round {round}: FRESH differs from the model"
        );
        if round % 5 == 4 {
            let want = passes(|_, (_, n)| n % 2 == 0, &model);
            let (batches, _) = read(&mut reader, request(ReadMode::Fresh, "n % 2 = 0")).await?;
            ensure!(
                kv_rows(&batches)? == want,
                "round {round}: filtered FRESH differs"
            );
        }
    }
    let followed = followed_reads(&service)?;
    ensure!(
        followed >= 40.0,
        "only {followed} FRESH reads used the followed tail"
    );
    Ok(())
}

/// Streams from several snapshots while a writer keeps writing: each stream's snapshot rows
/// plus its changes replay to the final state, and its changes start exactly at the snapshot's
/// anchored offsets and run without gap or duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_to_stream_hand_over_has_no_gap_and_no_duplicate() -> Result<()> {
    let service =
        tokio::task::spawn_blocking(|| Service::start(&["--commit-interval", "100ms"])).await??;
    create_kv_table(&service, 4).await?;
    let url = service.grpc_url();
    let model = Arc::new(tokio::sync::Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, model, stop) = (url.clone(), model.clone(), stop.clone());
        tokio::spawn(async move {
            let mut writer = WriteServiceClient::connect(url).await?;
            let mut rng = Rng(0xfeed_0000_0000_0077);
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut m = model.lock().await;
                random_batch(&mut rng, &mut writer, &mut m, 200, round).await?;
                drop(m);
                round += 1;
                tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
            }
            anyhow::Ok(())
        })
    };
    let mut reader = ReadServiceClient::connect(url.clone()).await?;
    let mut streams = Vec::new();
    let mut seen = BTreeSet::new();
    while streams.len() < 4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (_, latest) = read(&mut reader, request(ReadMode::Snapshot, "")).await?;
        let Some(id) = latest.snapshot_id else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        let from = StreamStart {
            snapshot_id: Some(id),
            ..start(Kind::Snapshot)
        };
        let mut client = ReadServiceClient::connect(url.clone()).await?;
        let changes = subscribe(&mut client, from, "", 0).await?;
        ensure!(
            changes.as_of.snapshot_id == Some(id),
            "stream as_of names another snapshot"
        );
        streams.push((id, client, changes));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await??;
    let model = model.lock().await.clone();
    let (_, heads) = read(&mut reader, request(ReadMode::Fresh, "")).await?;
    let heads: BTreeMap<u32, i64> = heads
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    for (id, _client, mut stream) in streams {
        let anchored: BTreeMap<u32, i64> = stream
            .as_of
            .offsets
            .iter()
            .map(|o| (o.partition, o.offset))
            .collect();
        let mut state = BTreeMap::new();
        let mut expected_next = anchored.clone();
        let caught_up = |next: &BTreeMap<u32, i64>| {
            heads
                .iter()
                .all(|(p, h)| next.get(p).copied().unwrap_or(0) >= *h)
        };
        while !caught_up(&stream.next) {
            let batch = tokio::time::timeout(Duration::from_secs(30), stream.next_batch())
                .await
                .context("the stream stalled before reaching the heads")??
                .context("the stream ended")?;
            for change in &batch {
                match (change.partition, change.offset) {
                    (Some(p), Some(offset)) => {
                        let want = expected_next.entry(p as u32).or_insert(0);
                        ensure!(
                            offset == *want,
                            "snapshot {id}: partition {p} went from {} to {offset}",
                            *want
                        );
                        *want += 1;
                    }
                    _ => ensure!(
                        change.op == "insert",
                        "a snapshot row that is not an insert"
                    ),
                }
            }
            replay(&mut state, &batch);
        }
        ensure!(
            state == model,
            "snapshot {id} + stream differs from the final state ({} vs {} rows)",
            state.len(),
            model.len()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_reads_named_tables_only_and_explains_errors() -> Result<()> {
    let service = tokio::task::spawn_blocking(|| Service::start(&[])).await??;
    create_kv_table(&service, 2).await?;
    service
        .cli(&[
            "table",
            "create",
            "crash.labels",
            "--column",
            "n:int64!",
            "--column",
            "label:string",
            "--primary-key",
            "n",
        ])?
        .ok()?;
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
    let mut lines = String::new();
    for id in 0..20 {
        lines.push_str(&kv_line(id, &format!("v{id}"), id % 4));
    }
    write_lines(&mut writer, WriteOp::Upsert, &lines, true).await?;
    let labels: String = (0..4)
        .map(|n| format!("{{\"n\":{n},\"label\":\"L{n}\"}}\n"))
        .collect();
    let labels_file = service.data_dir().join("labels.jsonl");
    std::fs::write(&labels_file, labels)?;
    let labels_path = labels_file.to_string_lossy().to_string();
    service
        .cli(&[
            "write",
            "crash.labels",
            "--file",
            &labels_path,
            "--wait",
            "snapshot",
        ])?
        .ok()?;
    let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;

    // Joins, CTEs and subqueries all read the named tables.
    let shapes = [
        "SELECT l.label, count(*) AS c FROM crash.kv k JOIN crash.labels l ON k.n = l.n GROUP BY l.label ORDER BY l.label",
        "WITH k AS (SELECT n FROM crash.kv) SELECT l.label, count(*) AS c FROM k JOIN crash.labels l USING (n) GROUP BY l.label ORDER BY l.label",
        "SELECT l.label, (SELECT count(*) FROM crash.kv k WHERE k.n = l.n) AS c FROM crash.labels l ORDER BY l.label",
    ];
    for sql in shapes {
        let (batches, as_of) = query(&mut reader, sql, ReadMode::Snapshot)
            .await
            .with_context(|| sql.to_string())?;
        ensure!(as_of.len() == 2, "{sql}: as_of names {:?}", as_of.keys());
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        ensure!(rows == 4, "{sql}: {rows} rows");
        for b in &batches {
            let counts = b
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .context("count")?;
            ensure!(
                counts.iter().all(|c| c == Some(5)),
                "{sql}: counts {counts:?}"
            );
        }
    }

    // Refused or wrong statements: INVALID_ARGUMENT with a message that says why.
    let refused = [
        ("SELEC 1", "SELEC"),
        ("SELECT nope FROM crash.kv", "nope"),
        ("SELECT * FROM kv", "namespace.table"),
        ("CREATE TABLE crash.x AS SELECT 1", "only queries"),
        ("INSERT INTO crash.kv VALUES (1, 'a', 2)", "only queries"),
        (
            "COPY (SELECT 1) TO '/tmp/unitable-copy-test.csv'",
            "only queries",
        ),
    ];
    for (sql, hint) in refused {
        let status = query(&mut reader, sql, ReadMode::Snapshot)
            .await
            .err()
            .with_context(|| format!("`{sql}` succeeded"))?;
        ensure!(
            status.code() == Code::InvalidArgument,
            "`{sql}`: {:?} {}",
            status.code(),
            status.message()
        );
        ensure!(
            status.message().contains(hint),
            "`{sql}`: {}",
            status.message()
        );
    }
    ensure!(
        !std::path::Path::new("/tmp/unitable-copy-test.csv").exists(),
        "COPY wrote a file"
    );
    // Only unitable tables exist for SQL: no catalog views.
    for sql in [
        "SELECT * FROM crash.nope",
        "SELECT * FROM information_schema.tables",
    ] {
        let missing = query(&mut reader, sql, ReadMode::Snapshot)
            .await
            .err()
            .with_context(|| format!("`{sql}` succeeded"))?;
        ensure!(missing.code() == Code::NotFound, "{sql}: {missing:?}");
    }

    // The CLI: a table, and JSON lines in fresh mode.
    let table = service
        .cli(&["sql", "SELECT count(*) AS c FROM crash.kv"])?
        .ok()?;
    ensure!(
        table.contains("| c ") && table.contains("| 20 "),
        "table output:\n{table}"
    );
    let jsonl = service
        .cli(&[
            "sql",
            "SELECT id FROM crash.kv WHERE id < 2 ORDER BY id",
            "--mode",
            "fresh",
            "--format",
            "jsonl",
        ])?
        .ok()?;
    ensure!(
        jsonl == "{\"id\":0}\n{\"id\":1}\n",
        "jsonl output: {jsonl:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn read_requests_with_bad_arguments_are_refused_clearly() -> Result<()> {
    let service = tokio::task::spawn_blocking(|| Service::start(&[])).await??;
    create_kv_table(&service, 2).await?;
    let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;
    let cases: Vec<(ReadRequest, Code, &str)> = vec![
        (
            request(ReadMode::Snapshot, "colour = 'red'"),
            Code::InvalidArgument,
            "colour",
        ),
        (
            request(ReadMode::Fresh, "id +"),
            Code::InvalidArgument,
            "id +",
        ),
        (
            request(ReadMode::Fresh, "id + 1"),
            Code::InvalidArgument,
            "boolean",
        ),
        (
            request(ReadMode::Stream, ""),
            Code::InvalidArgument,
            "start",
        ),
        (
            ReadRequest {
                start: Some(StreamStart {
                    offsets: vec![unitable_proto::v1::PartitionOffset {
                        partition: 9,
                        offset: 0,
                    }],
                    ..start(Kind::Offsets)
                }),
                ..request(ReadMode::Stream, "")
            },
            Code::InvalidArgument,
            "partition 9",
        ),
        (
            ReadRequest {
                start: Some(StreamStart {
                    offsets: vec![unitable_proto::v1::PartitionOffset {
                        partition: 0,
                        offset: 5,
                    }],
                    ..start(Kind::Offsets)
                }),
                ..request(ReadMode::Stream, "")
            },
            Code::InvalidArgument,
            "past the end",
        ),
        (
            ReadRequest {
                snapshot_id: Some(1),
                ..request(ReadMode::Fresh, "")
            },
            Code::InvalidArgument,
            "SNAPSHOT mode",
        ),
        (
            ReadRequest {
                columns: vec!["nope".into()],
                ..request(ReadMode::Fresh, "")
            },
            Code::InvalidArgument,
            "nope",
        ),
    ];
    for (req, code, hint) in cases {
        let described = format!("{req:?}");
        let status = match reader.read(req).await {
            Err(s) => s,
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Err(s) => break s,
                        Ok(None) => anyhow::bail!("{described} succeeded"),
                        Ok(Some(_)) => {}
                    }
                }
            }
        };
        ensure!(
            status.code() == code && status.message().contains(hint),
            "{described}: {:?} {}",
            status.code(),
            status.message()
        );
    }
    Ok(())
}

/// The CLI: `scan --mode fresh` sees acknowledged writes no snapshot covers yet, `--where`
/// filters, `--format table` aligns, and `subscribe` prints one JSON object per change.
#[tokio::test(flavor = "multi_thread")]
async fn cli_scans_fresh_and_subscribes() -> Result<()> {
    // The committer waits an hour after its first cycle (which runs as soon as it starts, on
    // the first write): the row written before is committed, the rest only in the changelog.
    let service =
        tokio::task::spawn_blocking(|| Service::start(&["--commit-interval", "3600s"])).await??;
    create_kv_table(&service, 2).await?;
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
    write_lines(
        &mut writer,
        WriteOp::Upsert,
        &kv_line(100, "first", -100),
        true,
    )
    .await?;
    let lines: String = (0..10)
        .map(|id| kv_line(id, &format!("v{id}"), id))
        .collect();
    write_lines(&mut writer, WriteOp::Upsert, &lines, false).await?;
    write_lines(&mut writer, WriteOp::Delete, "{\"id\":7}\n", false).await?;

    let snapshot = service.cli(&["scan", TABLE])?.ok()?;
    ensure!(
        snapshot.trim() == "{\"id\":100,\"v\":\"first\",\"n\":-100}",
        "the snapshot holds only the first row, but scan printed {snapshot}"
    );
    let fresh = service
        .cli(&[
            "scan",
            TABLE,
            "--mode",
            "fresh",
            "--where",
            "n >= 5",
            "--columns",
            "id,v",
        ])?
        .ok()?;
    let ids: BTreeSet<i64> = fresh
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)?["id"]
                .as_i64()
                .context("id")
        })
        .collect::<Result<_>>()?;
    ensure!(
        ids == BTreeSet::from([5, 6, 8, 9]),
        "fresh scan ids {ids:?}"
    );
    let table = service
        .cli(&[
            "scan",
            TABLE,
            "--mode",
            "fresh",
            "--columns",
            "id,n",
            "--where",
            "id < 2",
            "--format",
            "table",
        ])?
        .ok()?;
    let expected = "+----+---+\n| id | n |\n+----+---+\n| 0  | 0 |\n| 1  | 1 |\n+----+---+\n";
    ensure!(table == expected, "table output:\n{table}");

    let out = service
        .cli(&["subscribe", TABLE, "--from", "earliest", "--limit", "12"])?
        .ok()?;
    let changes: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(changes.len() == 12, "{} changes:\n{out}", changes.len());
    let delete = changes
        .iter()
        .find(|c| c["op"] == "delete")
        .context("no delete among the changes")?;
    ensure!(delete["key"] == serde_json::json!({"id": 7}), "{delete}");
    ensure!(delete["row"].is_null(), "{delete}");
    let upsert = changes
        .iter()
        .find(|c| c["key"]["id"] == 3)
        .context("no change of id 3")?;
    ensure!(upsert["op"] == "upsert", "{upsert}");
    ensure!(
        upsert["row"] == serde_json::json!({"id": 3, "v": "v3", "n": 3}),
        "{upsert}"
    );
    ensure!(
        upsert["partition"].is_i64() && upsert["offset"].is_i64(),
        "{upsert}"
    );
    let stamp = upsert["timestamp"].as_str().context("timestamp")?;
    chrono::DateTime::parse_from_rfc3339(stamp).with_context(|| stamp.to_string())?;

    // A filtered subscription: upserts that fail the filter arrive as deletes of their key.
    let out = service
        .cli(&[
            "subscribe",
            TABLE,
            "--from",
            "earliest",
            "--where",
            "n >= 8",
            "--limit",
            "12",
        ])?
        .ok()?;
    let upserts = out
        .lines()
        .filter(|l| l.contains("\"op\":\"upsert\""))
        .count();
    let deletes = out
        .lines()
        .filter(|l| l.contains("\"op\":\"delete\""))
        .count();
    ensure!(
        (upserts, deletes) == (2, 10),
        "filtered subscription:\n{out}"
    );

    let bad = service.cli(&["subscribe", TABLE, "--from", "yesterday"])?;
    ensure!(
        bad.code() == Some(1) && bad.stderr.contains("earliest, latest"),
        "{bad:?}"
    );
    Ok(())
}

/// STREAM starts: resuming from a batch's `next_offsets` continues exactly after it (also when
/// the limit cut the batch), a time start begins at the first change at or after that time, and
/// a latest start sees only later changes.
#[tokio::test(flavor = "multi_thread")]
async fn stream_resumes_exactly_and_starts_at_a_time() -> Result<()> {
    let service = tokio::task::spawn_blocking(|| Service::start(&[])).await??;
    create_kv_table(&service, 3).await?;
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
    let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;
    let first: String = (0..30).map(|id| kv_line(id, "a", 1)).collect();
    write_lines(&mut writer, WriteOp::Upsert, &first, false).await?;
    let latest = subscribe(&mut reader, start(Kind::Latest), "", 10).await?;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let at = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let second: String = (100..110).map(|id| kv_line(id, "b", 2)).collect();
    write_lines(&mut writer, WriteOp::Upsert, &second, false).await?;

    let later = latest.collect().await?;
    let ids: BTreeSet<i64> = later.iter().map(|c| c.id).collect();
    ensure!(ids == (100..110).collect(), "latest start saw {ids:?}");
    let from_time = subscribe(
        &mut reader,
        StreamStart {
            timestamp_ms: at,
            ..start(Kind::Timestamp)
        },
        "",
        10,
    )
    .await?
    .collect()
    .await?;
    let ids: BTreeSet<i64> = from_time.iter().map(|c| c.id).collect();
    ensure!(ids == (100..110).collect(), "time start saw {ids:?}");

    // Read 7 changes, resume from where the stream said, read the rest: 40 distinct changes.
    let mut head = subscribe(&mut reader, start(Kind::Earliest), "", 7).await?;
    let mut got = Vec::new();
    while let Some(batch) = head.next_batch().await? {
        got.extend(batch);
    }
    ensure!(got.len() == 7, "{} changes before the resume", got.len());
    let resume = StreamStart {
        offsets: head
            .next
            .iter()
            .map(|(p, o)| unitable_proto::v1::PartitionOffset {
                partition: *p,
                offset: *o,
            })
            .collect(),
        ..start(Kind::Offsets)
    };
    got.extend(
        subscribe(&mut reader, resume, "", 33)
            .await?
            .collect()
            .await?,
    );
    let positions: BTreeSet<(Option<i32>, Option<i64>)> =
        got.iter().map(|c| (c.partition, c.offset)).collect();
    ensure!(
        positions.len() == 40 && got.len() == 40,
        "resume lost or repeated changes"
    );
    Ok(())
}

/// SQL operators share `--sql-memory-limit`: a sort larger than it spills and returns every row
/// in order; a join whose build side does not fit fails with RESOURCE_EXHAUSTED naming the
/// limit, and frees what it held (the next query runs).
#[tokio::test(flavor = "multi_thread")]
async fn sql_memory_is_bounded_sorts_spill_and_oversized_joins_fail_cleanly() -> Result<()> {
    let service =
        tokio::task::spawn_blocking(|| Service::start(&["--sql-memory-limit", "16MiB"])).await??;
    create_kv_table(&service, 2).await?;
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
    // 200,000 rows with ~120-byte values: ~24 MB of `v`, more than the limit.
    const ROWS: i64 = 200_000;
    let value = |id: i64| format!("v-{:08}-", (id * 7919) % ROWS).repeat(10);
    for chunk in 0..10 {
        let lines: String = (chunk * ROWS / 10..(chunk + 1) * ROWS / 10)
            .map(|id| kv_line(id, &value(id), id))
            .collect();
        write_lines(&mut writer, WriteOp::Upsert, &lines, chunk == 9).await?;
    }
    let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;
    let (batches, _) = query(
        &mut reader,
        &format!("SELECT id FROM {TABLE} ORDER BY v DESC"),
        ReadMode::Snapshot,
    )
    .await?;
    let mut got = Vec::new();
    for b in &batches {
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("id")?;
        got.extend(ids.iter().flatten());
    }
    let mut want: Vec<i64> = (0..ROWS).collect();
    want.sort_by_key(|id| std::cmp::Reverse(value(*id)));
    ensure!(
        got == want,
        "the spilled sort returned {} rows, not the model's order",
        got.len()
    );

    let status = query(
        &mut reader,
        &format!("SELECT count(*) FROM {TABLE} a JOIN {TABLE} b ON a.v = b.v"),
        ReadMode::Snapshot,
    )
    .await
    .err()
    .context("a join over the limit must fail")?;
    ensure!(
        status.code() == Code::ResourceExhausted && status.message().contains("--sql-memory-limit"),
        "{status:?}"
    );
    let (batches, _) = query(
        &mut reader,
        &format!("SELECT count(*) FROM {TABLE}"),
        ReadMode::Snapshot,
    )
    .await?;
    let count = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .context("a count row")?
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .context("count")?
        .value(0);
    assert_eq!(count, ROWS);
    Ok(())
}
