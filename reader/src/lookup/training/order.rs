//! Sorting a stream of batches by integer keys in bounded memory: rows are held until they
//! pass the memory given, then sorted and written as a run to an unlinked temporary file
//! (Arrow IPC); [`MAX_FAN_IN`] runs of one tier are merged into one run of the next tier, and
//! at the end the runs (and what is still held) are merged. Without a run the sort never
//! touches the disk.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, Int64Array, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{concat_batches, interleave_record_batch, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::{ReadError, ReadResult};
use crate::pinned::BatchStream;

/// Rows per batch written to a run and sent out.
const BATCH_ROWS: usize = 4096;
/// Most runs merged at once: past it, runs are first merged into longer runs (which keeps
/// open files and the merge's memory, a batch per run, bounded).
const MAX_FAN_IN: usize = 64;

/// A row's sort key: an int64 (0 when the sort has one key) then a uint64.
type Key = (i64, u64);

/// A sort under way: its rows, in key order, and what it has spilled so far.
pub(super) struct Sorted {
    pub(super) rows: BatchStream,
    pub(super) spilled: Arc<AtomicU64>,
}

fn internal(what: &str, e: impl std::fmt::Display) -> ReadError {
    ReadError::Internal {
        reason: format!("{what}: {e}"),
    }
}

/// Sorts `input` (batches of `schema`) ascending by `by`: the index of a uint64 column, or of
/// an int64 column and then a uint64 column. At most about `memory` bytes of rows are held
/// (twice that while a run is sorted); past it sorted runs go to temporary files.
pub(super) fn sort(memory: usize, schema: SchemaRef, input: BatchStream, by: Vec<usize>) -> Sorted {
    let (tx, rx) = mpsc::channel::<ReadResult<RecordBatch>>(2);
    let spilled = Arc::new(AtomicU64::new(0));
    let counter = spilled.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = drive(memory, schema, input, by, counter, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    // When the rows end, the task's end says whether they all came: a task that panicked
    // (here or in the join that feeds it) ends the stream with an error, not early.
    let rows = futures::stream::unfold((rx, Some(task)), |(mut rx, task)| async move {
        if let Some(batch) = rx.recv().await {
            return Some((batch, (rx, task)));
        }
        match task?.await {
            Ok(()) => None,
            Err(e) => Some((Err(internal("a training-set sort failed", e)), (rx, None))),
        }
    })
    .boxed();
    Sorted { rows, spilled }
}

async fn drive(
    memory: usize,
    schema: SchemaRef,
    mut input: BatchStream,
    by: Vec<usize>,
    spilled: Arc<AtomicU64>,
    tx: &mpsc::Sender<ReadResult<RecordBatch>>,
) -> ReadResult<()> {
    let mut held: Vec<RecordBatch> = Vec::new();
    let mut bytes = 0usize;
    // Runs with their tier (0: written from memory; n + 1: merged from runs of tier n).
    let mut runs: Vec<(u32, File)> = Vec::new();
    while let Some(batch) = input.next().await {
        if tx.is_closed() {
            return Ok(()); // Nobody reads the rows any more (the call was dropped).
        }
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        // The rows' own bytes: batches decoded from one message share its buffer, whose whole
        // size each column would otherwise count.
        bytes += batch
            .columns()
            .iter()
            .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
            .sum::<usize>();
        held.push(batch);
        if bytes > memory {
            let run = spill(&schema, std::mem::take(&mut held), &by, &spilled).await?;
            runs.push((0, run));
            bytes = 0;
            // Tiers: MAX_FAN_IN runs of one tier become one run of the next.
            while let Some(&(tier, _)) = runs.last()
                && runs.len() >= MAX_FAN_IN
                && runs[runs.len() - MAX_FAN_IN..]
                    .iter()
                    .all(|(t, _)| *t == tier)
            {
                let group: Vec<File> = runs
                    .drain(runs.len() - MAX_FAN_IN..)
                    .map(|(_, f)| f)
                    .collect();
                let (schema, by) = (schema.clone(), by.clone());
                let (run, size) =
                    tokio::task::spawn_blocking(move || merge_to_run(&schema, group, &by))
                        .await
                        .map_err(|e| internal("merge sorted runs", e))??;
                spilled.fetch_add(size, Ordering::Relaxed);
                runs.push((tier + 1, run));
            }
        }
    }
    drop(input);
    if runs.is_empty() {
        let sorted = sort_in_memory(&schema, &held, &by)?;
        drop(held);
        for at in (0..sorted.num_rows()).step_by(BATCH_ROWS) {
            let len = BATCH_ROWS.min(sorted.num_rows() - at);
            if tx.send(Ok(sorted.slice(at, len))).await.is_err() {
                return Ok(());
            }
        }
        return Ok(());
    }
    if !held.is_empty() {
        runs.push((0, spill(&schema, held, &by, &spilled).await?));
    }
    let runs: Vec<File> = runs.into_iter().map(|(_, f)| f).collect();
    let out = tx.clone();
    tokio::task::spawn_blocking(move || {
        merge(runs, &by, &mut |batch| {
            Ok(out.blocking_send(Ok(batch)).is_ok())
        })
    })
    .await
    .map_err(|e| internal("merge sorted runs", e))?
}

/// Writes `batches` as a sorted run on a blocking thread, counting its bytes in `spilled`.
async fn spill(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    by: &[usize],
    spilled: &AtomicU64,
) -> ReadResult<File> {
    let (schema, by) = (schema.clone(), by.to_vec());
    let (file, size) = tokio::task::spawn_blocking(move || write_run(&schema, &batches, &by))
        .await
        .map_err(|e| internal("spill a sorted run", e))??;
    spilled.fetch_add(size, Ordering::Relaxed);
    Ok(file)
}

/// The sort keys of `batch`'s rows.
fn keys(batch: &RecordBatch, by: &[usize]) -> ReadResult<Vec<Key>> {
    let column = |i: usize| batch.column(i).as_ref();
    let uint = |a: &dyn Array| {
        a.as_any()
            .downcast_ref::<UInt64Array>()
            .map(|a| a.values().clone())
            .ok_or_else(|| internal("a sort key", "not uint64"))
    };
    match by {
        [only] => Ok(uint(column(*only))?.iter().map(|&v| (0, v)).collect()),
        [first, second] => {
            let high = column(*first)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| internal("a sort key", "not int64"))?;
            let low = uint(column(*second))?;
            Ok(high
                .values()
                .iter()
                .copied()
                .zip(low.iter().copied())
                .collect())
        }
        _ => Err(internal("a sort", "takes one or two keys")),
    }
}

/// `batches` as one batch in key order.
fn sort_in_memory(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    by: &[usize],
) -> ReadResult<RecordBatch> {
    let all = concat_batches(schema, batches).map_err(|e| internal("gather rows to sort", e))?;
    let keys = keys(&all, by)?;
    let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
    order.sort_unstable_by_key(|&i| keys[i as usize]);
    take_record_batch(&all, &UInt32Array::from(order)).map_err(|e| internal("sort rows", e))
}

/// Writes `batches` sorted to an unlinked temporary file; returns it (at its start) and its size.
fn write_run(schema: &SchemaRef, batches: &[RecordBatch], by: &[usize]) -> ReadResult<(File, u64)> {
    let sorted = sort_in_memory(schema, batches, by)?;
    let mut writer = run_writer(schema)?;
    for at in (0..sorted.num_rows()).step_by(BATCH_ROWS) {
        let len = BATCH_ROWS.min(sorted.num_rows() - at);
        write_batch(&mut writer, &sorted.slice(at, len))?;
    }
    finish_run(writer)
}

/// Merges `runs` into one longer run.
fn merge_to_run(schema: &SchemaRef, runs: Vec<File>, by: &[usize]) -> ReadResult<(File, u64)> {
    let mut writer = run_writer(schema)?;
    merge(runs, by, &mut |batch| {
        write_batch(&mut writer, &batch)?;
        Ok(true)
    })?;
    finish_run(writer)
}

/// A writer of a run to an unlinked temporary file.
fn run_writer(schema: &SchemaRef) -> ReadResult<FileWriter<File>> {
    let file = tempfile::tempfile()
        .map_err(|e| internal("create a spill file in the temporary directory (TMPDIR)", e))?;
    FileWriter::try_new(file, schema).map_err(|e| internal("spill rows", e))
}

fn write_batch(writer: &mut FileWriter<File>, batch: &RecordBatch) -> ReadResult<()> {
    writer
        .write(batch)
        .map_err(|e| internal("spill rows (is the temporary directory full?)", e))
}

/// Ends a run: its file, at its start, and its size.
fn finish_run(mut writer: FileWriter<File>) -> ReadResult<(File, u64)> {
    writer.finish().map_err(|e| internal("spill rows", e))?;
    let mut file = writer.into_inner().map_err(|e| internal("spill rows", e))?;
    let size = file
        .seek(SeekFrom::End(0))
        .and_then(|size| file.seek(SeekFrom::Start(0)).map(|_| size))
        .map_err(|e| internal("rewind a spill file", e))?;
    Ok((file, size))
}

/// One run being merged: its reader, its current batch (an index into the merge's sources)
/// with the batch's keys, and the next row.
struct Cursor {
    reader: FileReader<File>,
    source: usize,
    keys: Vec<Key>,
    row: usize,
}

impl Cursor {
    /// Loads the run's next batch into `sources`; false at the run's end.
    fn advance(&mut self, sources: &mut Vec<RecordBatch>, by: &[usize]) -> ReadResult<bool> {
        match self.reader.next() {
            Some(batch) => {
                let batch = batch.map_err(|e| internal("read a spilled run", e))?;
                self.keys = keys(&batch, by)?;
                self.row = 0;
                self.source = sources.len();
                sources.push(batch);
                Ok(!self.keys.is_empty())
            }
            None => Ok(false),
        }
    }
}

/// Merges sorted runs into batches of [`BATCH_ROWS`] rows, given to `out` in key order until
/// it returns false.
fn merge(
    runs: Vec<File>,
    by: &[usize],
    out: &mut dyn FnMut(RecordBatch) -> ReadResult<bool>,
) -> ReadResult<()> {
    let mut sources: Vec<RecordBatch> = Vec::new();
    let mut cursors = Vec::with_capacity(runs.len());
    let mut heap = BinaryHeap::new();
    for file in runs {
        let reader = FileReader::try_new(file, None).map_err(|e| internal("open a run", e))?;
        let mut cursor = Cursor {
            reader,
            source: 0,
            keys: Vec::new(),
            row: 0,
        };
        if cursor.advance(&mut sources, by)? {
            heap.push(Reverse((cursor.keys[0], cursors.len())));
            cursors.push(cursor);
        }
    }
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(BATCH_ROWS);
    while let Some(Reverse((_, run))) = heap.pop() {
        let cursor = &mut cursors[run];
        picks.push((cursor.source, cursor.row));
        cursor.row += 1;
        let more = cursor.row < cursor.keys.len() || cursor.advance(&mut sources, by)?;
        if more {
            heap.push(Reverse((cursor.keys[cursor.row], run)));
        }
        if picks.len() == BATCH_ROWS || heap.is_empty() {
            let refs: Vec<&RecordBatch> = sources.iter().collect();
            let batch =
                interleave_record_batch(&refs, &picks).map_err(|e| internal("merge runs", e))?;
            picks.clear();
            if !out(batch)? {
                return Ok(());
            }
            // Keep only the batches the runs still read from.
            let mut kept = Vec::with_capacity(cursors.len());
            for cursor in &mut cursors {
                if cursor.row < cursor.keys.len() {
                    kept.push(sources[cursor.source].clone());
                    cursor.source = kept.len() - 1;
                }
            }
            sources = kept;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use arrow::array::{Array, Int64Array, RecordBatch, StringArray, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use futures::StreamExt;

    use super::sort;

    /// Rows of (time, position, label) in batches of 1 to 700 rows, times from a pseudo-random
    /// sequence with many repeats.
    type Rows = Vec<(i64, u64, String)>;

    fn input() -> (Arc<Schema>, Vec<RecordBatch>, Rows) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("label", DataType::Utf8, false),
            Field::new("time", DataType::Int64, false),
            Field::new("row", DataType::UInt64, false),
        ]));
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut batches, mut rows, mut row) = (Vec::new(), Vec::new(), 0u64);
        while row < 30_000 {
            let n = 1 + next() % 700;
            let times: Vec<i64> = (0..n).map(|_| (next() % 5_000) as i64 - 2_500).collect();
            let positions: Vec<u64> = (row..row + n).collect();
            let labels: Vec<String> = positions.iter().map(|p| format!("r{p}")).collect();
            for i in 0..n as usize {
                rows.push((times[i], positions[i], labels[i].clone()));
            }
            batches.push(
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(StringArray::from(labels)),
                        Arc::new(Int64Array::from(times)),
                        Arc::new(UInt64Array::from(positions)),
                    ],
                )
                .unwrap(),
            );
            row += n;
        }
        (schema, batches, rows)
    }

    async fn sorted(memory: usize, by: Vec<usize>) -> (Vec<(i64, u64, String)>, u64) {
        let (schema, batches, _) = input();
        let stream = futures::stream::iter(batches.into_iter().map(Ok)).boxed();
        let out = sort(memory, schema, stream, by);
        let spilled = out.spilled.clone();
        let mut rows = Vec::new();
        let batches: Vec<RecordBatch> = out.rows.map(|b| b.unwrap()).collect().await;
        for b in &batches {
            let labels = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let times = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            let positions = b.column(2).as_any().downcast_ref::<UInt64Array>().unwrap();
            for i in 0..b.num_rows() {
                rows.push((
                    times.value(i),
                    positions.value(i),
                    labels.value(i).to_string(),
                ));
            }
        }
        (rows, spilled.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn sorts_like_a_stable_sort_in_memory_and_through_spilled_runs() {
        let (_, _, rows) = input();
        let mut by_time = rows.clone();
        by_time.sort_by_key(|(t, p, _)| (*t, *p));
        for memory in [usize::MAX, 64 << 10, 4 << 10] {
            let (got, spilled) = sorted(memory, vec![1, 2]).await;
            assert_eq!(got, by_time, "memory {memory}");
            if memory == usize::MAX {
                assert_eq!(spilled, 0);
            } else {
                assert!(spilled > 0, "memory {memory}: nothing spilled");
            }
            // And back by position alone.
            let (got, _) = sorted(memory, vec![2]).await;
            assert_eq!(got, rows, "memory {memory}, by position");
        }
    }
}
