//! Compaction throughput and the read speed it buys back.
//!
//! ```sh
//! cargo run --release -p unitable-tests --bin compact-bench -- [ROWS] [UPDATE_ROUNDS] [merge|no-merge]
//! ```
//! Builds a keyed table (`id int64`, `v string` of 80 characters) of ROWS rows (default
//! 1,000,000) in 20 files, then UPDATE_ROUNDS (default 10) row deltas that each update a random
//! 5% of the keys (new rows + position deletes of the old ones). Then measures:
//! - SNAPSHOT scan (iceberg-rust, deletes applied) of the heavily updated table;
//! - the compactor's run (read, apply deletes, write 32 MiB files, commit) in MB/s of input;
//! - raw Parquet read + rewrite (decode, encode ZSTD, write) of the same input files;
//! - SNAPSHOT scan after compaction, and of the same rows freshly written to a new table (in
//!   arrival order: by the round of each row's last update, then id; same number of files).
//!
//! Scans are best of seven. `no-merge` turns the compactor's manifest merge off
//! (`unitable.compaction.merge-manifests=false`) for comparison; the manifests the compacted
//! and the fresh snapshot list are printed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use futures::TryStreamExt;
use iceberg::spec::Struct;
use iceberg::table::Table;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use unitable_compactor::{CompactOptions, Compactor, SchedulerConfig};
use unitable_core::catalog::TableCatalog;
use unitable_core::clock::SystemClock;
use unitable_core::commit::files::{
    PositionDelete, read_bytes, write_data_file, write_position_deletes,
};
use unitable_core::commit::plan::{manifests_of, plan_files};
use unitable_core::commit::row_delta::{Committer, RowDelta};
use unitable_core::naming::TableName;
use unitable_core::scan::{ScanOptions, read_scan};
use unitable_tests::iceberg_oracle::{Rng, create_items_table};

const TARGET: u64 = 32 * 1024 * 1024;

fn value(id: i64, round: u64) -> String {
    let mut x = (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ round;
    let mut s = String::with_capacity(80);
    while s.len() < 80 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(80);
    s
}

async fn write_file(
    table: &Table,
    name: &str,
    rows: &[(i64, String)],
) -> anyhow::Result<iceberg::spec::DataFile> {
    let schema = table.metadata().current_schema().clone();
    let arrow_schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
    let batch = RecordBatch::try_new(
        arrow_schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
        ],
    )?;
    let path = format!("{}/data/{name}.parquet", table.metadata().location());
    Ok(write_data_file(table.file_io(), &path, schema, &batch, Struct::empty(), 0).await?)
}

async fn scan(catalog: &TableCatalog, name: &TableName, expect: usize) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..7 {
        let table = catalog.load(name).await?;
        let started = Instant::now();
        let scan = table.scan().build()?;
        let batches: Vec<RecordBatch> = read_scan(&table, &scan, ScanOptions::default())
            .await?
            .try_collect()
            .await?;
        let elapsed = started.elapsed();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        anyhow::ensure!(
            rows == expect,
            "scan of {name} read {rows} rows, expected {expect}"
        );
        best = best.min(elapsed);
    }
    Ok(best)
}

async fn head_manifests(catalog: &TableCatalog, name: &TableName) -> anyhow::Result<usize> {
    let table = catalog.load(name).await?;
    let snapshot = table
        .metadata()
        .current_snapshot()
        .ok_or_else(|| anyhow::anyhow!("{name} has no snapshot"))?;
    Ok(manifests_of(table.file_io(), table.metadata(), snapshot)
        .await?
        .len())
}

async fn commit(committer: &Committer, name: &TableName, delta: RowDelta) -> anyhow::Result<()> {
    committer.commit_row_delta(name, &delta).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows: i64 = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |s| s.parse())?;
    let rounds: u64 = std::env::args().nth(2).map_or(Ok(10), |s| s.parse())?;
    let merge = match std::env::args().nth(3).as_deref() {
        None | Some("merge") => true,
        Some("no-merge") => false,
        Some(other) => anyhow::bail!("unknown mode {other}; expected merge or no-merge"),
    };
    let dir = tempfile::tempdir()?;
    let name: TableName = "bench.updated".parse()?;
    let (catalog, committer) = create_items_table(dir.path(), &name).await?;
    committer
        .commit_properties(
            &name,
            Some("bench-props"),
            BTreeMap::from([
                (
                    "unitable.compaction.target-file-size-bytes".to_string(),
                    TARGET.to_string(),
                ),
                (
                    "unitable.compaction.min-input-files".to_string(),
                    "2".to_string(),
                ),
                (
                    "unitable.compaction.merge-manifests".to_string(),
                    merge.to_string(),
                ),
            ]),
            BTreeMap::new(),
        )
        .await?;

    // Base: 20 files.
    let mut model: BTreeMap<i64, String> = BTreeMap::new();
    let mut location: BTreeMap<i64, (String, i64)> = BTreeMap::new();
    let mut last_round: BTreeMap<i64, u64> = BTreeMap::new();
    let per_file = (rows / 20).max(1);
    let table = catalog.load(&name).await?;
    let mut delta = RowDelta {
        commit_id: "base".into(),
        ..RowDelta::default()
    };
    for f in 0..20 {
        let chunk: Vec<(i64, String)> = (f * per_file..((f + 1) * per_file).min(rows))
            .map(|id| (id, value(id, 0)))
            .collect();
        if chunk.is_empty() {
            continue;
        }
        let file = write_file(&table, &format!("base-{f}"), &chunk).await?;
        for (pos, (id, v)) in chunk.iter().enumerate() {
            model.insert(*id, v.clone());
            location.insert(*id, (file.file_path().to_string(), pos as i64));
        }
        delta.data_files.push(file);
    }
    commit(&committer, &name, delta).await?;

    // Updates: 5% of the keys per round.
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for round in 1..=rounds {
        let table = catalog.load(&name).await?;
        let mut keys = BTreeSet::new();
        while (keys.len() as i64) < rows / 20 {
            keys.insert(rng.below(rows as u64) as i64);
        }
        let new_rows: Vec<(i64, String)> = keys.iter().map(|id| (*id, value(*id, round))).collect();
        let file = write_file(&table, &format!("update-{round}"), &new_rows).await?;
        let mut deletes = Vec::new();
        let mut targets = BTreeSet::new();
        for (pos, (id, v)) in new_rows.iter().enumerate() {
            let (old, old_pos) = location
                .insert(*id, (file.file_path().to_string(), pos as i64))
                .expect("known key");
            targets.insert(old.clone());
            deletes.push(PositionDelete {
                file_path: old,
                pos: old_pos,
            });
            model.insert(*id, v.clone());
            last_round.insert(*id, round);
        }
        let delete_path = format!(
            "{}/data/update-{round}-deletes.parquet",
            table.metadata().location()
        );
        let delete_file =
            write_position_deletes(table.file_io(), &delete_path, deletes, Struct::empty(), 0)
                .await?;
        commit(
            &committer,
            &name,
            RowDelta {
                data_files: vec![file],
                delete_files: vec![delete_file],
                deleted_from: targets,
                commit_id: format!("update-{round}"),
                ..RowDelta::default()
            },
        )
        .await?;
    }
    let expect = model.len();

    let before = scan(&catalog, &name, expect).await?;

    // Raw Parquet read + rewrite of the same input files (no deletes applied, no commit).
    let table = catalog.load(&name).await?;
    let inputs = plan_files(table.file_io(), table.metadata(), None).await?;
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    let raw_started = Instant::now();
    let mut raw_bytes = 0u64;
    for (i, input) in inputs.iter().enumerate() {
        let bytes = read_bytes(table.file_io(), input.data_file.file_path()).await?;
        raw_bytes += bytes.len() as u64;
        let out = std::fs::File::create(raw_dir.join(format!("{i}.parquet")))?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
                .with_batch_size(64 * 1024)
                .build()?;
            // The properties unitable writes data files with.
            let props = unitable_core::commit::files::data_file_properties();
            let mut writer: Option<ArrowWriter<std::fs::File>> = None;
            let mut out = Some(out);
            for batch in reader {
                let batch = batch?;
                if writer.is_none() {
                    writer = Some(ArrowWriter::try_new(
                        out.take().expect("once"),
                        batch.schema(),
                        Some(props.clone()),
                    )?);
                }
                writer.as_mut().expect("set").write(&batch)?;
            }
            if let Some(w) = writer {
                w.close()?;
            }
            Ok(())
        })
        .await??;
    }
    let raw = raw_started.elapsed();

    // The compactor.
    let compactor = Compactor::new(
        catalog.clone(),
        committer.clone(),
        Arc::new(SystemClock),
        SchedulerConfig::default(),
    );
    let report = compactor.compact(&name, CompactOptions::default()).await?;
    let after = scan(&catalog, &name, expect).await?;

    // The same rows freshly written, in files of the same size.
    let fresh_name: TableName = "bench.fresh".parse()?;
    let (_, fresh_committer) = create_items_table(dir.path(), &fresh_name).await?;
    let fresh_table = catalog.load(&fresh_name).await?;
    let rows_per_file = if report.files_written == 0 {
        expect
    } else {
        expect.div_ceil(report.files_written as usize)
    };
    // In the order a writer would have written each row's final version: by the round of its
    // last update, then by id (a freshly written table in arrival order).
    let mut all: Vec<(u64, i64, String)> = model
        .into_iter()
        .map(|(id, v)| (last_round.get(&id).copied().unwrap_or(0), id, v))
        .collect();
    all.sort_unstable_by_key(|(round, id, _)| (*round, *id));
    let all: Vec<(i64, String)> = all.into_iter().map(|(_, id, v)| (id, v)).collect();
    let mut fresh = RowDelta {
        commit_id: "fresh".into(),
        ..RowDelta::default()
    };
    for (i, chunk) in all.chunks(rows_per_file.max(1)).enumerate() {
        fresh
            .data_files
            .push(write_file(&fresh_table, &format!("fresh-{i}"), chunk).await?);
    }
    commit(&fresh_committer, &fresh_name, fresh).await?;
    let fresh_scan = scan(&catalog, &fresh_name, expect).await?;
    let manifests_after = head_manifests(&catalog, &name).await?;
    let manifests_fresh = head_manifests(&catalog, &fresh_name).await?;

    let mb = |b: u64| b as f64 / 1e6;
    let compact_secs = report.duration.as_secs_f64();
    let compact_rate = mb(report.bytes_rewritten) / compact_secs;
    let raw_rate = mb(raw_bytes) / raw.as_secs_f64();
    println!(
        "rows {expect}, update rounds {rounds}, input files {}, input {:.1} MB, deleted rows applied {}",
        report.files_rewritten,
        mb(report.bytes_rewritten),
        report.deletes_applied
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| compaction | {:.2} s, {compact_rate:.1} MB/s ({} -> {} files, {:.1} MB written) |",
        compact_secs,
        report.files_rewritten,
        report.files_written,
        mb(report.bytes_written)
    );
    println!(
        "| raw Parquet read + rewrite | {:.2} s, {raw_rate:.1} MB/s |",
        raw.as_secs_f64()
    );
    println!("| compaction / raw | {:.2}x |", compact_rate / raw_rate);
    println!(
        "| SNAPSHOT scan before compaction | {:.3} s |",
        before.as_secs_f64()
    );
    println!(
        "| SNAPSHOT scan after compaction | {:.3} s |",
        after.as_secs_f64()
    );
    println!(
        "| SNAPSHOT scan of the same rows freshly written | {:.3} s |",
        fresh_scan.as_secs_f64()
    );
    println!(
        "| manifests listed: compacted / fresh | {manifests_after} / {manifests_fresh} (merge {}) |",
        if merge { "on" } else { "off" }
    );
    println!(
        "| speed after / fresh | {:.2}x |",
        fresh_scan.as_secs_f64() / after.as_secs_f64()
    );
    println!(
        "| speed before / fresh | {:.2}x |",
        fresh_scan.as_secs_f64() / before.as_secs_f64()
    );
    Ok(())
}
