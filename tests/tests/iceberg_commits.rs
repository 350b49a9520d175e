//! The commit layer checked by an outside reader: after random row deltas, rewrites and
//! expirations, iceberg-rust's scan of every retained snapshot (position deletes applied)
//! equals the model; and a race between a row-delta committer and a rewrite committer loses and
//! resurrects no row.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use arrow::array::{Int64Array, RecordBatch, StringArray};
use futures::TryStreamExt;
use iceberg::spec::Struct;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::commit::CommitError;
use unitable_core::commit::files::{PositionDelete, write_position_deletes};
use unitable_core::commit::plan::plan_files;
use unitable_core::commit::pointer::SqlMetadataPointer;
use unitable_core::commit::row_delta::{Committer, RowDelta};
use unitable_core::naming::TableName;
use unitable_core::scan::{ScanOptions, read_scan};
use unitable_tests::iceberg_oracle::{
    ORACLE_TABLE, Oracle, Rng, compact, create_items_table, key_index, run_random_deltas,
    write_rows,
};

/// The rows of `snapshot_id` of the oracle table. A scan that does not end within two minutes
/// fails the test instead of hanging the run: iceberg-rust 0.10.1's own `to_arrow` lost a
/// wake-up here and hung (see `unitable_core::scan`).
async fn scan(catalog: &TableCatalog, snapshot_id: i64) -> Result<BTreeMap<i64, String>> {
    let name: TableName = ORACLE_TABLE.parse()?;
    let read = scan_table(catalog, &name, snapshot_id);
    tokio::time::timeout(std::time::Duration::from_secs(120), read)
        .await
        .map_err(|_| anyhow::anyhow!("the scan of snapshot {snapshot_id} did not end in 120 s"))?
}

/// iceberg-rust's scan of `snapshot_id` of `name`: id -> v (duplicate ids are an error).
async fn scan_table(
    catalog: &TableCatalog,
    name: &TableName,
    snapshot_id: i64,
) -> Result<BTreeMap<i64, String>> {
    let table = catalog.load(name).await?;
    let scan = table.scan().snapshot_id(snapshot_id).build()?;
    let batches: Vec<RecordBatch> = read_scan(&table, &scan, ScanOptions::default())
        .await?
        .try_collect()
        .await?;
    rows_of(batches)
}

/// id -> v of `batches` (duplicate ids are an error).
fn rows_of(batches: Vec<RecordBatch>) -> Result<BTreeMap<i64, String>> {
    let mut rows = BTreeMap::new();
    for b in batches {
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| anyhow::anyhow!("id column"))?;
        let vs = b
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| anyhow::anyhow!("v column"))?;
        for i in 0..b.num_rows() {
            anyhow::ensure!(
                rows.insert(ids.value(i), vs.value(i).to_string()).is_none(),
                "duplicate id {}",
                ids.value(i)
            );
        }
    }
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_snapshot_of_random_row_deltas_reads_as_the_model() -> Result<()> {
    for seed in [3, 17, 99] {
        let dir = tempfile::tempdir()?;
        let steps = run_random_deltas(dir.path(), seed, 25).await?;
        let catalog = TableCatalog::open(CatalogConfig::embedded(dir.path())).await?;
        for (i, step) in steps.iter().enumerate() {
            let got = scan(&catalog, step.snapshot_id).await?;
            anyhow::ensure!(
                got == step.rows,
                "seed {seed} step {i}: scan differs from the model\n got {got:?}\nwant {:?}",
                step.rows
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_retained_snapshot_reads_as_the_model_through_rewrites_merges_and_expirations()
-> Result<()> {
    let (mut rewrites, mut expirations, mut merges) = (0, 0, 0);
    for seed in [7, 23, 61] {
        let dir = tempfile::tempdir()?;
        let mut oracle = Oracle::create(dir.path(), seed).await?;
        let mut expired_before = 0;
        while oracle.steps().len() < 40 {
            oracle.random_step().await?;
            let expired_now = oracle.steps().iter().filter(|s| s.expired).count();
            expirations += usize::from(expired_now > expired_before);
            expired_before = expired_now;
            // After every step, every retained snapshot still reads as its model, and the
            // expired ones are gone from the metadata.
            let table = oracle.catalog().load(&ORACLE_TABLE.parse()?).await?;
            for (i, step) in oracle.steps().iter().enumerate() {
                let present = table.metadata().snapshot_by_id(step.snapshot_id).is_some();
                anyhow::ensure!(
                    present != step.expired,
                    "seed {seed} step {i}: expired flag"
                );
                if step.expired {
                    continue;
                }
                let got = scan(oracle.catalog(), step.snapshot_id).await?;
                anyhow::ensure!(
                    got == step.rows,
                    "seed {seed} step {i} ({}): scan differs from the model\n got {got:?}\nwant {:?}",
                    step.op,
                    step.rows
                );
            }
        }
        rewrites += oracle.steps().iter().filter(|s| s.op == "rewrite").count();
        merges += oracle.steps().iter().filter(|s| s.op == "merge").count();
    }
    anyhow::ensure!(rewrites >= 5, "only {rewrites} rewrites ran");
    anyhow::ensure!(merges >= 3, "only {merges} manifest merges ran");
    anyhow::ensure!(expirations >= 3, "only {expirations} expirations ran");
    Ok(())
}

const RACE_TABLE: &str = "race.items";

/// The row-delta side of the race: updates (new row + position delete of the current copy),
/// inserts and deletes. On `DataFileRemoved` it rebuilds its key index from the table (which
/// must then equal its model: only this task changes rows) and recomputes its deletes.
async fn race_writer(
    catalog: TableCatalog,
    committer: Committer,
    commits: usize,
) -> Result<(
    BTreeMap<i64, String>,
    Vec<(i64, BTreeMap<i64, String>)>,
    usize,
)> {
    let name: TableName = RACE_TABLE.parse()?;
    let mut rng = Rng(0x5eed);
    let mut model: BTreeMap<i64, String> = BTreeMap::new();
    let mut location = BTreeMap::new();
    let mut history = Vec::new();
    let mut rebuilds = 0;
    let mut next_id = 0i64;
    for n in 0..commits {
        let table = catalog.load(&name).await?;
        let mut writes: BTreeMap<i64, String> = BTreeMap::new();
        for _ in 0..1 + rng.below(3) {
            next_id += 1;
            writes.insert(next_id, format!("w{n}-new"));
        }
        let live: Vec<i64> = model.keys().copied().collect();
        let mut deletes = Vec::new();
        for _ in 0..rng.below(4) {
            if let Some(&id) = live.get(rng.below(live.len() as u64) as usize) {
                if rng.below(4) == 0 && !writes.contains_key(&id) {
                    deletes.push(id);
                } else if !deletes.contains(&id) {
                    writes.insert(id, format!("w{n}-upd{id}"));
                }
            }
        }
        deletes.sort_unstable();
        deletes.dedup();
        let rows: Vec<(i64, String)> = writes.iter().map(|(k, v)| (*k, v.clone())).collect();
        let base = table.metadata().location().to_string();
        let file = write_rows(&table, &format!("{base}/data/w{n}.parquet"), &rows).await?;
        let mut attempt = 0;
        let committed = loop {
            attempt += 1;
            let mut delta = RowDelta {
                data_files: vec![file.clone()],
                commit_id: format!("w{n}"),
                ..RowDelta::default()
            };
            let targets: Vec<PositionDelete> = writes
                .keys()
                .chain(&deletes)
                .filter_map(|id| location.get(id))
                .map(|(path, pos): &(String, i64)| PositionDelete {
                    file_path: path.clone(),
                    pos: *pos,
                })
                .collect();
            if !targets.is_empty() {
                delta.deleted_from = targets.iter().map(|d| d.file_path.clone()).collect();
                delta.delete_files.push(
                    write_position_deletes(
                        table.file_io(),
                        &format!("{base}/data/w{n}-{attempt}-deletes.parquet"),
                        targets,
                        Struct::empty(),
                        0,
                    )
                    .await?,
                );
            }
            match committer.commit_row_delta(&name, &delta).await {
                Ok(c) => break c,
                Err(CommitError::DataFileRemoved { .. }) => {
                    rebuilds += 1;
                    let fresh = catalog.load(&name).await?;
                    let (index, rows) = key_index(&fresh).await?;
                    anyhow::ensure!(rows == model, "commit {n}: table differs from the model");
                    location = index;
                }
                Err(e) => return Err(e).with_context(|| format!("writer commit {n}")),
            }
        };
        for id in &deletes {
            model.remove(id);
            location.remove(id);
        }
        for (pos, id) in writes.keys().enumerate() {
            location.insert(*id, (file.file_path().to_string(), pos as i64));
        }
        model.extend(writes);
        history.push((committed.snapshot_id, model.clone()));
        // A writer commits at intervals (a real one every few seconds); back to back, it would
        // win every race against a rewrite, whose attempts take longer.
        tokio::time::sleep(std::time::Duration::from_millis(rng.below(30))).await;
    }
    Ok((model, history, rebuilds))
}

/// The rewrite side: merges 2 to 4 random live data files, over and over.
async fn race_rewriter(
    catalog: TableCatalog,
    committer: Committer,
    writer_done: Arc<AtomicBool>,
    at_least: usize,
) -> Result<(usize, usize)> {
    let name: TableName = RACE_TABLE.parse()?;
    let mut rng = Rng(0xc0ffee);
    let (mut done, mut conflicts, mut during) = (0, 0, 0);
    let mut n = 0;
    while !writer_done.load(Ordering::SeqCst) || done < at_least {
        n += 1;
        let table = catalog.load(&name).await?;
        let Some(start) = table.metadata().current_snapshot_id() else {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            continue;
        };
        let mut planned = plan_files(table.file_io(), table.metadata(), None).await?;
        if planned.len() < 2 {
            if writer_done.load(Ordering::SeqCst) {
                break; // Everything is merged and nothing new arrives.
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            continue;
        }
        let mut chosen = Vec::new();
        for _ in 0..2 + rng.below(3) {
            if !planned.is_empty() {
                chosen.push(planned.remove(rng.below(planned.len() as u64) as usize));
            }
        }
        let (rewrite, _) = compact(&table, &chosen, start, format!("rw{n}")).await?;
        match committer.commit_rewrite(&name, &rewrite).await {
            Ok(_) => {
                done += 1;
                if !writer_done.load(Ordering::SeqCst) {
                    during += 1;
                }
            }
            // A conflicting rewrite, or one that lost every race to the writer's back-to-back
            // commits, gives up without committing anything: the compactor retries later, so
            // does this loop. What the test checks is that no row is lost or resurrected.
            Err(CommitError::RewriteConflict { .. } | CommitError::CommitConflict { .. }) => {
                conflicts += 1
            }
            Err(e) => return Err(e).with_context(|| format!("rewrite {n}")),
        }
    }
    eprintln!("rewrites while the writer ran: {during}");
    Ok((done, conflicts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 500 racing commits take about 95 s in a debug build"]
async fn row_deltas_racing_rewrites_lose_and_resurrect_nothing() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let name: TableName = RACE_TABLE.parse()?;
    let (catalog, writer_committer) = create_items_table(dir.path(), &name).await?;
    let pointer =
        Arc::new(SqlMetadataPointer::connect(&CatalogConfig::embedded(dir.path())).await?);
    let rewriter_committer = Committer::new(catalog.clone(), pointer).with_max_attempts(50);
    let writer_committer = writer_committer.with_max_attempts(50);
    let writer_done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (catalog, done) = (catalog.clone(), writer_done.clone());
        tokio::spawn(async move {
            let out = race_writer(catalog, writer_committer, 400).await;
            done.store(true, Ordering::SeqCst);
            out
        })
    };
    let rewriter = tokio::spawn(race_rewriter(
        catalog.clone(),
        rewriter_committer,
        writer_done,
        100,
    ));
    let (model, history, rebuilds) = writer.await??;
    let (rewrites, conflicts) = rewriter.await??;
    let total = history.len() + rewrites;
    anyhow::ensure!(total >= 500, "only {total} commits");

    // The end state, read by iceberg-rust's scan and by the plan (files minus deletes).
    let table = catalog.load(&name).await?;
    let current = table
        .metadata()
        .current_snapshot_id()
        .context("no snapshot")?;
    anyhow::ensure!(
        scan_table(&catalog, &name, current).await? == model,
        "final scan"
    );
    anyhow::ensure!(key_index(&table).await?.1 == model, "final plan");
    // Checkpoints: every 20th writer snapshot reads as the model right after that commit.
    for (i, (snapshot, rows)) in history.iter().enumerate().step_by(20) {
        let got = scan_table(&catalog, &name, *snapshot).await?;
        anyhow::ensure!(
            &got == rows,
            "writer commit {i}: snapshot differs from its model"
        );
    }
    // Every rewrite snapshot reads as its parent (the first 25 checked).
    let mut checked = 0;
    let carried = table
        .metadata()
        .snapshots()
        .filter(|s| {
            s.summary().operation == iceberg::spec::Operation::Replace
                && s.summary()
                    .additional_properties
                    .get("added-position-deletes")
                    .is_some_and(|n| n != "0")
        })
        .count();
    for s in table.metadata().snapshots() {
        if s.summary().operation == iceberg::spec::Operation::Replace && checked < 25 {
            let parent = s.parent_snapshot_id().context("rewrite without parent")?;
            anyhow::ensure!(
                scan_table(&catalog, &name, s.snapshot_id()).await?
                    == scan_table(&catalog, &name, parent).await?,
                "rewrite {} changed the rows",
                s.snapshot_id()
            );
            checked += 1;
        }
    }
    eprintln!(
        "race: {} row deltas ({rebuilds} index rebuilds), {rewrites} rewrites ({conflicts} conflicts, {carried} carrying deletes), {} rows, {:.1?}",
        history.len(),
        model.len(),
        started.elapsed()
    );
    anyhow::ensure!(
        rebuilds > 0,
        "the race never made a row delta meet a rewrite"
    );
    Ok(())
}

/// How iceberg-rust 0.10.1's own `TableScan::to_arrow` fares on the tables of the test above
/// (rewrites merging the manifests they touch, manifest merges, expirations): after every step,
/// every retained snapshot is planned, then read with `to_arrow` `TO_ARROW_SCANS` times at once
/// (default 8), each read under a timeout. Planning and reading are timed apart, so a hang shows
/// where it is. Reports how many reads hung; `read_scan` (lanes of one file each) must read
/// every snapshot as the model, and so must every `to_arrow` read that ended.
///
/// This is the diagnosis of the hang that made the first manifest merge look unsafe: see
/// docs/compactor.md ("The scan hang of the first attempt").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "diagnostic: reads every snapshot many times with iceberg-rust's own to_arrow"]
async fn to_arrow_on_merged_manifests_hangs_where_read_scan_does_not() -> Result<()> {
    use std::time::Duration;
    let scans: usize = std::env::var("TO_ARROW_SCANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let limit = Duration::from_secs(10);
    let name: TableName = ORACLE_TABLE.parse()?;
    let mut c = Counts::default();
    for seed in [7, 23, 61] {
        let dir = tempfile::tempdir()?;
        let mut oracle = Oracle::create(dir.path(), seed).await?;
        while oracle.steps().len() < 40 {
            oracle.random_step().await?;
            let table = oracle.catalog().load(&name).await?;
            for step in oracle.steps().iter().filter(|s| !s.expired) {
                read_with_to_arrow(&table, step, scans, limit, &mut c).await?;
                let got = scan_table(oracle.catalog(), &name, step.snapshot_id).await?;
                anyhow::ensure!(got == step.rows, "read_scan differs from the model");
            }
        }
    }
    println!(
        "to_arrow: {} of {} reads hung (timeout {limit:?}), {} of them of snapshots where a delete file applies to several data files ({} of {} snapshot reads); planning: {} of {} ended; read_scan: all ended and equal the model",
        c.hung, c.reads, c.hung_shared, c.shared, c.plans, c.plans, c.plans
    );
    Ok(())
}

#[derive(Default)]
struct Counts {
    reads: usize,
    hung: usize,
    hung_shared: usize,
    plans: usize,
    shared: usize,
}

/// Plans `step`'s snapshot (must end), then reads it with `to_arrow` `scans` times at once.
async fn read_with_to_arrow(
    table: &iceberg::table::Table,
    step: &unitable_tests::iceberg_oracle::Step,
    scans: usize,
    limit: std::time::Duration,
    c: &mut Counts,
) -> Result<()> {
    let scan = table.scan().snapshot_id(step.snapshot_id).build()?;
    // Planning alone ends (iceberg-rust's planner, manifests included).
    let planned: Vec<_> = tokio::time::timeout(limit, async {
        scan.plan_files().await?.try_collect::<Vec<_>>().await
    })
    .await
    .map_err(|_| anyhow::anyhow!("planning snapshot {} hung", step.snapshot_id))??;
    c.plans += 1;
    // Whether a delete file applies to two or more of the planned files (what the reader's
    // shared delete cache then loads once and makes the others wait for).
    let mut users: BTreeMap<String, usize> = BTreeMap::new();
    for t in &planned {
        for d in &t.deletes {
            *users.entry(d.file_path.clone()).or_default() += 1;
        }
    }
    let shares = users.values().any(|n| *n > 1);
    c.shared += usize::from(shares);
    let tasks = (0..scans).map(|_| {
        let table = table.clone();
        let id = step.snapshot_id;
        tokio::spawn(async move {
            let read = async {
                let batches: Vec<RecordBatch> = table
                    .scan()
                    .snapshot_id(id)
                    .build()?
                    .to_arrow()
                    .await?
                    .try_collect()
                    .await?;
                rows_of(batches)
            };
            tokio::time::timeout(limit, read).await
        })
    });
    for outcome in futures::future::join_all(tasks).await {
        c.reads += 1;
        match outcome? {
            Err(_) => {
                c.hung += 1;
                c.hung_shared += usize::from(shares);
            }
            Ok(rows) => anyhow::ensure!(rows? == step.rows, "to_arrow read wrong rows"),
        }
    }
    Ok(())
}
