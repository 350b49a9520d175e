//! Row-delta commit latency: how long one commit of N new files takes (manifests, manifest list,
//! metadata, pointer swap), with the files themselves written beforehand.
//!
//! ```sh
//! cargo run --release -p unitable-tests --bin commit-bench -- [ROUNDS]
//! ```
//! Each file count (1, 10, 100; half data files, half position-delete files from 10 on) is
//! committed ROUNDS times (default 20) to a local SQLite catalog and warehouse; prints p50/p99.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use iceberg::spec::Struct;
use unitable_core::commit::files::{PositionDelete, write_data_file, write_position_deletes};
use unitable_core::commit::row_delta::RowDelta;
use unitable_core::naming::TableName;
use unitable_tests::iceberg_oracle::create_items_table;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(20), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let name: TableName = "bench.commits".parse()?;
    let (catalog, committer) = create_items_table(dir.path(), &name).await?;
    println!("| files per commit | commits | p50 | p99 | table snapshots at the end |");
    println!("|---|---|---|---|---|");
    let mut commit_no = 0u64;
    for files in [1usize, 10, 100] {
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let table = catalog.load(&name).await?;
            let schema = table.metadata().current_schema().clone();
            let arrow_schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
            let base = table.metadata().location().to_string();
            let (n_data, n_deletes) = if files == 1 {
                (1, 0)
            } else {
                (files / 2, files / 2)
            };
            let mut delta = RowDelta {
                commit_id: format!("bench-{commit_no}"),
                ..RowDelta::default()
            };
            commit_no += 1;
            for f in 0..n_data {
                let batch = RecordBatch::try_new(
                    arrow_schema.clone(),
                    vec![
                        Arc::new(Int64Array::from_iter_values(0..100)),
                        Arc::new(StringArray::from_iter_values(
                            (0..100).map(|i| format!("v{i}")),
                        )),
                    ],
                )?;
                let path = format!("{base}/data/c{commit_no}-{f}.parquet");
                delta.data_files.push(
                    write_data_file(
                        table.file_io(),
                        &path,
                        schema.clone(),
                        &batch,
                        Struct::empty(),
                        0,
                    )
                    .await?,
                );
            }
            for f in 0..n_deletes {
                let target = delta.data_files[f % n_data.max(1)].file_path().to_string();
                let path = format!("{base}/data/c{commit_no}-{f}-del.parquet");
                let deletes = vec![PositionDelete {
                    file_path: target,
                    pos: 1,
                }];
                delta.delete_files.push(
                    write_position_deletes(table.file_io(), &path, deletes, Struct::empty(), 0)
                        .await?,
                );
            }
            let started = Instant::now();
            committer.commit_row_delta(&name, &delta).await?;
            times.push(started.elapsed());
        }
        times.sort();
        let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let snapshots = catalog.load(&name).await?.metadata().snapshots().count();
        println!(
            "| {files} | {rounds} | {:.1} ms | {:.1} ms | {snapshots} |",
            ms(pct(0.5)),
            ms(pct(0.99))
        );
    }
    Ok(())
}
