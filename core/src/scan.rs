//! Reading an iceberg-rust [`TableScan`] to Arrow without the hang in its shared delete cache.
//!
//! iceberg-rust 0.10.1's `TableScan::to_arrow` reads every data file of a scan through one
//! `ArrowReader`, whose position-delete cache is shared by the files read concurrently. A file
//! that finds a delete file being loaded by another waits on a `tokio::sync::Notify` that it
//! subscribes to only after releasing the cache's lock; when the loader finishes in that window
//! the wake-up is lost and the scan never ends (every task parked, nothing but timers pending).
//! Upstream fixed it after 0.10.1 (apache/iceberg-rust#2859). Tables with upserts share delete
//! files across data files, so the window is hit: our oracle test hung in 3 of 3 runs.
//!
//! [`read_scan`] keeps iceberg-rust's planning but spreads the planned files over
//! `concurrency` lanes, each a task of its own that reads its files one after the other. Most
//! files are read by parquet's reader directly ([`direct`]: position deletes as row selections,
//! each delete file loaded once per read); the others by an iceberg-rust `ArrowReader` of their
//! own, one file at a time, so no two files wait on its shared delete cache.

use futures::TryStreamExt;
use iceberg::scan::{ArrowRecordBatchStream, FileScanTask, TableScan};
use iceberg::table::Table;

/// How a [`read_scan`] reads.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// Data files read at once; at least 1.
    pub concurrency: usize,
    /// Rows per batch; `None` is iceberg-rust's default.
    pub batch_size: Option<usize>,
}

impl Default for ScanOptions {
    /// One file per core, as iceberg-rust's scan does.
    fn default() -> Self {
        Self {
            concurrency: std::thread::available_parallelism().map_or(2, usize::from),
            batch_size: None,
        }
    }
}

/// The record batches of `scan` (planned on `table`), read as iceberg-rust reads them (filters,
/// projection and deletes applied) but in lanes of one file at a time; see the module docs.
/// Batches of different lanes arrive in no particular order. Must run inside a tokio runtime.
pub async fn read_scan(
    table: &Table,
    scan: &TableScan,
    options: ScanOptions,
) -> iceberg::Result<ArrowRecordBatchStream> {
    let files = plan_scan(scan).await?;
    read_files(table, files, options)
}

/// The files (with their deletes) `scan` reads, as iceberg-rust plans them.
pub async fn plan_scan(scan: &TableScan) -> iceberg::Result<Vec<FileScanTask>> {
    scan.plan_files().await?.try_collect().await
}

/// Splits `files` into `groups` groups (at most one per file, at least one) of about equal
/// bytes: largest file first onto the group with the fewest bytes so far. The split depends
/// only on the files, not on their order, so planning the same scan again gives the same
/// groups.
pub fn split_files(mut files: Vec<FileScanTask>, groups: usize) -> Vec<Vec<FileScanTask>> {
    let groups = groups.clamp(1, files.len().max(1));
    files.sort_by(|a, b| {
        b.length
            .cmp(&a.length)
            .then_with(|| a.data_file_path.cmp(&b.data_file_path))
            .then_with(|| a.start.cmp(&b.start))
    });
    let mut out: Vec<(u64, Vec<FileScanTask>)> = vec![(0, Vec::new()); groups];
    for file in files {
        // The first of the least-loaded groups, so ties always go the same way.
        if let Some(group) = out.iter_mut().min_by_key(|(bytes, _)| *bytes) {
            group.0 += file.length;
            group.1.push(file);
        }
    }
    out.into_iter().map(|(_, files)| files).collect()
}

/// Reads planned `files` (from [`plan_scan`], or one group of [`split_files`]) in lanes, as
/// [`read_scan`] does: `concurrency` lanes, each a task of its own reading its files one after
/// the other, through parquet directly where it can ([`direct`]). The lanes start on the
/// tokio runtime that first polls the stream.
pub fn read_files(
    table: &Table,
    files: Vec<FileScanTask>,
    options: ScanOptions,
) -> iceberg::Result<ArrowRecordBatchStream> {
    let lanes = split_files(files, options.concurrency);
    Ok(direct::read_lanes(
        table.file_io().clone(),
        lanes,
        options.batch_size,
    ))
}

mod direct;

#[cfg(test)]
mod tests;
