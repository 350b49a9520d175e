//! Key-index checkpoints: the primary-key index saved as a Parquet file in the table's
//! location, so a committer that starts (a restart, a failover, a hand-over) loads it and reads
//! only what changed since, instead of reading the key columns of every data file.
//!
//! **What a checkpoint holds.** The index as it was right after the commit of snapshot `S`: one
//! row per live key (`key` binary, `file` an index into the checkpoint's list of data files,
//! `pos`), and in the Parquet footer (key `unitable.index-checkpoint`) a JSON header: the
//! table uuid, `S` and its sequence number, the key columns (field id, name, type), and the
//! paths of every data file and every delete file live in `S`.
//!
//! **Loading it at a later head `H`** (`S` must be `H` or an ancestor of it, and every snapshot
//! after `S` must be unitable's own: a committer row delta or a compaction, both tagged with
//! `unitable.commit-id`). Data files are immutable and their paths never reused, so the live
//! rows of `H` are:
//! - the checkpoint's entries whose data file is still live in `H` and whose row no delete file
//!   added after `S` deletes, plus
//! - every live row of the data files that are live in `H` but were not in `S` (in data sequence
//!   order, later rows winning, exactly as a full rebuild reads them).
//!
//! The delete files read are the ones live in `H` but not in `S`, and any delete file that
//! applies to one of the new data files. Deletes already live in `S` are reflected in the
//! checkpoint. unitable's own snapshots never drop a delete file while a data file it targets
//! stays live, which is why snapshots of other writers (which might) make the checkpoint
//! unusable. Anything unexpected (no checkpoint, another table's, other key columns, a
//! snapshot not in `H`'s history, an unreadable file) falls back to the full rebuild, and the
//! reason is logged and counted.
//!
//! **When one is written**: after a commit, when reading what changed since the last
//! checkpoint would cost more than writing a new one (see [`CheckpointPolicy`]), at most once
//! per `min_interval`; and after the final commit of a graceful stop or a hand-over. The newest
//! [`KEEP`] checkpoints are kept; older ones are deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, RecordBatch, UInt32Array, UInt32Builder,
    UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use iceberg::io::FileIO;
use iceberg::spec::{DataContentType, TableMetadata};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves,
};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use unitable_core::commit::committer::Committer;
use unitable_core::commit::files::read_bytes;
use unitable_core::commit::plan::{PlannedFile, TrackedFile, plan_live, read_position_deletes};
use unitable_core::commit::read::ancestors_between;
use unitable_core::naming::{paths, summary};
use unitable_core::record::RecordCodec;
use unitable_core::storage::list_files;

use crate::error::{WriteError, WriteResult};
use crate::index::{FileId, KeyIndex, RowLocation};
use crate::recovery::{Rebuilt, index_files_rows, insert_threads};

/// Footer key of the checkpoint header.
const HEADER_KEY: &str = "unitable.index-checkpoint";
/// The header format this code writes and reads.
const FORMAT_VERSION: u32 = 1;
/// Checkpoints kept per table (the newest ones).
pub(crate) const KEEP: usize = 2;
/// Rows per Parquet batch written.
const BATCH_ROWS: usize = 64 * 1024;

/// When committers write checkpoints. A checkpoint is worth writing once loading it and
/// catching up would be cheaper than catching up from the previous one: the estimated catch-up
/// cost (per new data file opened, per new row read) exceeds `cost_ratio` times the estimated
/// cost of writing all keys.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointPolicy {
    /// Whether checkpoints are written and loaded at all.
    pub enabled: bool,
    /// At most one checkpoint per table per this interval (the final one of a stop excepted).
    pub min_interval: Duration,
    /// Estimated cost of opening one data file during catch-up (object-store latency).
    pub per_file: Duration,
    /// Estimated cost of reading one key during catch-up.
    pub per_new_row: Duration,
    /// Estimated cost of writing one key into a checkpoint.
    pub per_key: Duration,
    /// Write when the catch-up estimate exceeds this many times the write estimate.
    pub cost_ratio: f64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            min_interval: Duration::from_secs(2),
            per_file: Duration::from_millis(20),
            per_new_row: Duration::from_nanos(150),
            per_key: Duration::from_nanos(300),
            cost_ratio: 2.0,
        }
    }
}

/// What changed since a committer's last checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointDue {
    /// When the last checkpoint was written or loaded (or the index rebuilt).
    pub(crate) since: Instant,
    /// Data files a catch-up from the last checkpoint would read.
    pub(crate) new_files: u64,
    /// Rows in them.
    pub(crate) new_rows: u64,
    /// Whether the index moved at all since the last checkpoint.
    pub(crate) changed: bool,
}

impl CheckpointDue {
    /// Nothing to catch up: the index was just written, loaded or rebuilt.
    pub(crate) fn fresh() -> Self {
        Self {
            since: Instant::now(),
            new_files: 0,
            new_rows: 0,
            changed: false,
        }
    }

    /// A state that must be saved (rebuilt without a checkpoint, or loaded with a catch-up).
    pub(crate) fn after(new_files: u64, new_rows: u64) -> Self {
        Self {
            since: Instant::now(),
            new_files,
            new_rows,
            changed: true,
        }
    }

    /// Counts a commit or a compaction applied to the index.
    pub(crate) fn add(&mut self, files: u64, rows: u64) {
        self.new_files += files;
        self.new_rows += rows;
        self.changed = true;
    }

    /// Whether a checkpoint should be written now, for an index of `keys` keys.
    pub(crate) fn is_due(&self, policy: &CheckpointPolicy, keys: usize) -> bool {
        if !policy.enabled || !self.changed || self.since.elapsed() < policy.min_interval {
            return false;
        }
        let catch_up = policy.per_file.as_secs_f64() * self.new_files as f64
            + policy.per_new_row.as_secs_f64() * self.new_rows as f64;
        let write = policy.per_key.as_secs_f64() * keys as f64;
        catch_up > policy.cost_ratio * write
    }
}

/// The checkpoint header (the Parquet footer's `unitable.index-checkpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    version: u32,
    table_uuid: String,
    snapshot_id: i64,
    sequence_number: i64,
    /// `(field id, name, type)` of each key column, in key order.
    key_columns: Vec<(i32, String, String)>,
    data_files: Vec<String>,
    delete_files: Vec<String>,
    keys: u64,
}

/// What identifies the index's keys: a checkpoint made for other key columns is unusable.
pub(crate) fn key_columns(
    metadata: &TableMetadata,
    key_field_ids: &[i32],
) -> Vec<(i32, String, String)> {
    let schema = metadata.current_schema();
    key_field_ids
        .iter()
        .map(|&id| match schema.field_by_id(id) {
            Some(f) => (id, f.name.clone(), f.field_type.to_string()),
            None => (id, String::new(), String::new()),
        })
        .collect()
}

/// A written checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub(crate) path: String,
    pub(crate) bytes: u64,
    pub(crate) keys: u64,
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, false),
        Field::new("file", DataType::UInt32, false),
        Field::new("pos", DataType::UInt64, false),
    ]))
}

fn failed(path: &str, reason: impl std::fmt::Display) -> WriteError {
    WriteError::IndexCheckpoint {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// Writes `index`, which is in step with snapshot `snapshot_id` of `metadata`, as a new
/// checkpoint, then deletes all but the newest [`KEEP`] checkpoints of the table.
pub(crate) async fn write(
    committer: &Committer,
    file_io: &FileIO,
    storage_props: &HashMap<String, String>,
    metadata: &TableMetadata,
    snapshot_id: i64,
    key_field_ids: &[i32],
    index: &KeyIndex,
) -> WriteResult<Written> {
    let snapshot = metadata
        .snapshot_by_id(snapshot_id)
        .ok_or_else(|| WriteError::Internal {
            reason: format!("checkpoint of snapshot {snapshot_id}, which the metadata lacks"),
        })?;
    let live = committer
        .live_files(file_io, metadata, Some(snapshot_id))
        .await?;
    let (mut data_files, mut delete_files) = (Vec::new(), Vec::new());
    for f in &live {
        let path = f.data_file.file_path().to_string();
        match f.data_file.content_type() {
            DataContentType::Data => data_files.push(path),
            DataContentType::PositionDeletes | DataContentType::EqualityDeletes => {
                delete_files.push(path)
            }
        }
    }
    let location = metadata.location();
    let path = paths::index_checkpoint(location, snapshot.sequence_number());
    let header = Header {
        version: FORMAT_VERSION,
        table_uuid: metadata.uuid().to_string(),
        snapshot_id,
        sequence_number: snapshot.sequence_number(),
        key_columns: key_columns(metadata, key_field_ids),
        data_files,
        delete_files,
        keys: index.len() as u64,
    };
    let bytes = encode(&path, &header, index)?;
    let size = bytes.len() as u64;
    file_io
        .new_output(&path)
        .map_err(|e| failed(&path, e))?
        .write(bytes)
        .await
        .map_err(|e| failed(&path, e))?;
    prune(file_io, storage_props, location).await;
    Ok(Written {
        path,
        bytes: size,
        keys: header.keys,
    })
}

/// Entries per row group of a checkpoint (about; a row group holds whole shards).
const GROUP_ROWS: usize = 1 << 20;

/// The index entries as Parquet, with `header` in the footer. Row groups are encoded on
/// several threads, each from a set of the index's shards, and appended as they are done
/// (their order does not matter to a load).
fn encode(path: &str, header: &Header, index: &KeyIndex) -> WriteResult<Bytes> {
    let by_path: HashMap<&str, u32> = header
        .data_files
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i as u32))
        .collect();
    // File id -> checkpoint file number.
    let mut numbers: Vec<Option<u32>> = vec![None; index.file_id_bound()];
    for (id, file) in index.files_by_id() {
        numbers[id as usize] = by_path.get(file.path.as_ref()).copied();
    }
    let json = serde_json::to_string(header).map_err(|e| failed(path, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).map_err(|e| failed(path, e))?,
        ))
        .set_column_dictionary_enabled("key".into(), false)
        .set_key_value_metadata(Some(vec![KeyValue::new(HEADER_KEY.to_string(), json)]))
        .build();
    let schema = schema();
    let (mut file, factory) = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
        .and_then(ArrowWriter::into_serialized_writer)
        .map_err(|e| failed(path, e))?;
    let threads = insert_threads();
    let groups = index
        .len()
        .div_ceil(GROUP_ROWS)
        .max(threads)
        .min(crate::index::SHARDS);
    // Row group g holds the shards g, g + groups, ...: every row group has keys of every part
    // of the shard range, so the threads of a load, each owning a contiguous part, share
    // every round's work.
    let ranges: Vec<std::iter::StepBy<std::ops::Range<usize>>> = (0..groups)
        .map(|g| (g..crate::index::SHARDS).step_by(groups))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let encoded = std::thread::scope(|scope| {
        // A few row groups wait at most; a worker blocks until the file takes one.
        let (done, arrived) = std::sync::mpsc::sync_channel(threads);
        for _ in 0..threads {
            let done = done.clone();
            let (ranges, next, factory, schema, numbers) =
                (&ranges, &next, &factory, &schema, &numbers);
            scope.spawn(move || {
                loop {
                    let g = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(range) = ranges.get(g) else { break };
                    let group =
                        encode_group(index, range.clone(), numbers, schema, factory, g, header);
                    let failed = group.is_err();
                    if done.send(group).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(done);
        for group in arrived {
            let chunks = group?;
            if chunks.is_empty() {
                continue;
            }
            let mut writer = file.next_row_group().map_err(|e| e.to_string())?;
            for chunk in chunks {
                chunk
                    .append_to_row_group(&mut writer)
                    .map_err(|e| e.to_string())?;
            }
            writer.close().map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    });
    // On an error the receiver is gone: the workers' sends fail and they stop.
    encoded.map_err(|e| failed(path, e))?;
    let buffer = file.into_inner().map_err(|e| failed(path, e))?;
    Ok(Bytes::from(buffer))
}

/// The entries of the index's `shards` as one row group's encoded column chunks (none when
/// they hold no key).
fn encode_group(
    index: &KeyIndex,
    shards: std::iter::StepBy<std::ops::Range<usize>>,
    numbers: &[Option<u32>],
    schema: &Arc<Schema>,
    factory: &ArrowRowGroupWriterFactory,
    group: usize,
    header: &Header,
) -> Result<Vec<ArrowColumnChunk>, String> {
    let mut writers = factory
        .create_column_writers(group)
        .map_err(|e| e.to_string())?;
    let mut builders = Builders::default();
    let mut rows = 0usize;
    let mut error: Option<String> = None;
    let flush = |builders: &mut Builders, writers: &mut Vec<ArrowColumnWriter>| {
        let batch = builders.finish(schema)?;
        for ((writer, field), column) in
            writers.iter_mut().zip(schema.fields()).zip(batch.columns())
        {
            for leaf in compute_leaves(field, column).map_err(|e| e.to_string())? {
                writer.write(&leaf).map_err(|e| e.to_string())?;
            }
        }
        Ok::<(), String>(())
    };
    index
        .for_each_in(shards, |key, location| {
            if error.is_some() {
                return;
            }
            let Some(number) = numbers.get(location.file as usize).copied().flatten() else {
                error = Some(format!(
                    "the index points into file id {}, which is not a live data file of snapshot {}",
                    location.file, header.snapshot_id
                ));
                return;
            };
            builders.push(key, number, location.pos);
            rows += 1;
            if builders.len == BATCH_ROWS
                && let Err(e) = flush(&mut builders, &mut writers)
            {
                error = Some(e);
            }
        })
        .map_err(|e| e.to_string())?;
    if let Some(e) = error {
        return Err(e);
    }
    if builders.len > 0 {
        flush(&mut builders, &mut writers)?;
    }
    if rows == 0 {
        return Ok(Vec::new());
    }
    writers
        .into_iter()
        .map(|w| w.close().map_err(|e| e.to_string()))
        .collect()
}

#[derive(Default)]
struct Builders {
    keys: BinaryBuilder,
    files: UInt32Builder,
    positions: UInt64Builder,
    len: usize,
}

impl Builders {
    fn push(&mut self, key: &[u8], file: u32, pos: u64) {
        self.keys.append_value(key);
        self.files.append_value(file);
        self.positions.append_value(pos);
        self.len += 1;
    }

    /// The pushed entries as a batch; the builders start again empty.
    fn finish(&mut self, schema: &Arc<Schema>) -> Result<RecordBatch, String> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.keys.finish()),
            Arc::new(self.files.finish()),
            Arc::new(self.positions.finish()),
        ];
        self.len = 0;
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
    }
}

/// The table's checkpoints, newest first.
async fn listed(storage_props: &HashMap<String, String>, location: &str) -> Vec<String> {
    let dir = paths::index_checkpoint_dir(location);
    match list_files(storage_props, &dir).await {
        Ok(files) => {
            let mut out: Vec<String> = files
                .into_iter()
                .map(|f| f.location)
                .filter(|p| p.ends_with(".parquet"))
                .collect();
            // Names start with the zero-padded sequence number, then a time-ordered uuid.
            out.sort_by(|a, b| file_name(b).cmp(file_name(a)));
            out
        }
        Err(e) => {
            tracing::warn!(%dir, error = %e, "cannot list the key-index checkpoints");
            Vec::new()
        }
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Deletes all but the newest [`KEEP`] checkpoints (failures are logged: a leftover file only
/// costs space, and the next prune tries again).
async fn prune(file_io: &FileIO, storage_props: &HashMap<String, String>, location: &str) {
    for old in listed(storage_props, location).await.into_iter().skip(KEEP) {
        if let Err(e) = file_io.delete(&old).await {
            tracing::warn!(path = %old, error = %e, "cannot delete an old key-index checkpoint");
        }
    }
}

/// Why no checkpoint was used.
#[derive(Debug)]
pub(crate) enum Unusable {
    /// The table has none.
    Missing,
    /// It is there but does not describe an ancestor of the head (the reason says why), or
    /// could not be read.
    Stale(String),
}

impl Unusable {
    /// The metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Unusable::Missing => "missing",
            Unusable::Stale(_) => "stale",
        }
    }
}

/// An index restored from a checkpoint and brought up to the head.
pub(crate) struct Restored {
    pub(crate) rebuilt: Rebuilt,
    /// The checkpoint used.
    pub(crate) path: String,
    /// The snapshot it described.
    pub(crate) snapshot_id: i64,
    /// Keys it held.
    pub(crate) checkpoint_keys: u64,
    /// Data files read to catch up, and the rows in them.
    pub(crate) new_files: u64,
    pub(crate) new_rows: u64,
    /// Where the time went, for the start-up log line.
    pub(crate) phases: Phases,
}

/// The time a [`restore`] spent in each of its steps.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Phases {
    /// Listing the checkpoints and reading the head's manifests (at the same time).
    pub(crate) list_and_plan: Duration,
    /// Fetching the checkpoint and reading its footer.
    pub(crate) read: Duration,
    /// Decoding its entries into the index.
    pub(crate) load: Duration,
    /// Reading what changed since it (new deletes and data files) into the index.
    pub(crate) catch_up: Duration,
}

/// Loads the newest usable checkpoint of the table and catches it up to the current snapshot
/// of `metadata`. Tries the newest [`KEEP`] checkpoints, newest first.
///
/// The head's manifests are read through the committer's cache while the checkpoints are
/// listed, so the first commit after a start (which validates against them) reads none again,
/// and neither does a rebuild when no checkpoint is usable.
pub(crate) async fn restore(
    committer: &Committer,
    file_io: &FileIO,
    storage_props: &HashMap<String, String>,
    metadata: &TableMetadata,
    codec: &Arc<RecordCodec>,
    key_field_ids: &[i32],
    empty: impl Fn() -> KeyIndex,
) -> Result<Restored, Unusable> {
    let started = Instant::now();
    let (candidates, live) = tokio::join!(
        listed(storage_props, metadata.location()),
        committer.live_files(file_io, metadata, None)
    );
    if candidates.is_empty() {
        return Err(Unusable::Missing);
    }
    let live = live.map_err(|e| Unusable::Stale(format!("reading the head's manifests: {e}")))?;
    let list_and_plan = started.elapsed();
    let mut reasons = Vec::new();
    for path in candidates.iter().take(KEEP) {
        match restore_from(
            file_io,
            path,
            metadata,
            &live,
            codec,
            key_field_ids,
            empty(),
        )
        .await
        {
            Ok(mut restored) => {
                restored.phases.list_and_plan = list_and_plan;
                return Ok(restored);
            }
            Err(reason) => {
                tracing::info!(%path, %reason, "key-index checkpoint not usable");
                reasons.push(format!("{}: {reason}", file_name(path)));
            }
        }
    }
    Err(Unusable::Stale(reasons.join("; ")))
}

async fn restore_from(
    file_io: &FileIO,
    path: &str,
    metadata: &TableMetadata,
    live: &[TrackedFile],
    codec: &Arc<RecordCodec>,
    key_field_ids: &[i32],
    index: KeyIndex,
) -> Result<Restored, String> {
    let started = Instant::now();
    let bytes = read_bytes(file_io, path).await.map_err(|e| e.to_string())?;
    let opened = open(path, bytes).map_err(|e| e.to_string())?;
    check_header(&opened.header, metadata, key_field_ids)?;
    let read = started.elapsed();
    let mut restored = catch_up(
        file_io,
        path,
        opened,
        metadata,
        live,
        codec,
        key_field_ids,
        index,
    )
    .await
    .map_err(|e| e.to_string())?;
    restored.phases.read = read;
    restored.phases.catch_up = started.elapsed() - read - restored.phases.load;
    Ok(restored)
}

/// A checkpoint's bytes with its footer read.
struct Opened {
    header: Header,
    bytes: Bytes,
    metadata: ArrowReaderMetadata,
}

/// Reads the footer and header of a checkpoint (its entries are decoded by [`load`]).
fn open(path: &str, bytes: Bytes) -> WriteResult<Opened> {
    let metadata =
        ArrowReaderMetadata::load(&bytes, Default::default()).map_err(|e| failed(path, e))?;
    let json = metadata
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|kv| kv.key == HEADER_KEY))
        .and_then(|kv| kv.value.clone())
        .ok_or_else(|| failed(path, format!("no `{HEADER_KEY}` header in the footer")))?;
    let header: Header = serde_json::from_str(&json).map_err(|e| failed(path, e))?;
    if header.version != FORMAT_VERSION {
        return Err(failed(
            path,
            format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                header.version
            ),
        ));
    }
    let rows = metadata.metadata().file_metadata().num_rows();
    if u64::try_from(rows).ok() != Some(header.keys) {
        return Err(failed(
            path,
            format!("holds {rows} entries, its header says {}", header.keys),
        ));
    }
    Ok(Opened {
        header,
        bytes,
        metadata,
    })
}

/// Where the entries of one checkpoint data file go: the file's id in the index and the
/// positions deleted since the checkpoint; `None` when the file is no longer live.
type FileTarget = Option<(FileId, BTreeSet<i64>)>;

/// Decodes the checkpoint's entries into `index`, a few row groups at a time: each round
/// decodes one row group per thread, then inserts the round's entries with
/// [`KeyIndex::insert_many`] on the same threads. Only one round's entries are in memory at
/// once. Runs on a blocking thread.
fn load(
    path: &str,
    opened: &Opened,
    targets: &[FileTarget],
    index: &mut KeyIndex,
) -> WriteResult<()> {
    let threads = insert_threads();
    let groups = opened.metadata.metadata().row_groups();
    // Each key is stored as a 4-byte length and its bytes (plain encoding, no dictionary).
    let key_bytes: i64 = groups
        .iter()
        .map(|g| g.column(0).uncompressed_size() - 4 * g.num_rows())
        .sum();
    index.reserve(
        opened.header.keys as usize,
        usize::try_from(key_bytes).unwrap_or(0),
    );
    let group_numbers: Vec<usize> = (0..groups.len()).collect();
    for round in group_numbers.chunks(threads) {
        let decoded: Vec<WriteResult<Vec<RecordBatch>>> = std::thread::scope(|scope| {
            let workers: Vec<_> = round
                .iter()
                .map(|&g| scope.spawn(move || decode_group(path, opened, g, targets.len())))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let batches = decoded.into_iter().collect::<WriteResult<Vec<_>>>()?;
        let batches: Vec<&RecordBatch> = batches.iter().flatten().collect();
        index.insert_many(threads, |sink| {
            for batch in &batches {
                // Checked by `decode_group`.
                let (Some(keys), Some(numbers), Some(positions)) = (
                    column::<BinaryArray>(batch, 0),
                    column::<UInt32Array>(batch, 1),
                    column::<UInt64Array>(batch, 2),
                ) else {
                    continue;
                };
                for row in 0..batch.num_rows() {
                    let Some(Some((file, gone))) = targets.get(numbers.value(row) as usize) else {
                        continue;
                    };
                    let pos = positions.value(row);
                    if gone.contains(&(pos as i64)) {
                        continue;
                    }
                    sink(keys.value(row), RowLocation { file: *file, pos });
                }
            }
        })?;
    }
    Ok(())
}

/// Row group `group` of the checkpoint, its columns and file numbers checked.
fn decode_group(
    path: &str,
    opened: &Opened,
    group: usize,
    files: usize,
) -> WriteResult<Vec<RecordBatch>> {
    let batches = ParquetRecordBatchReaderBuilder::new_with_metadata(
        opened.bytes.clone(),
        opened.metadata.clone(),
    )
    .with_row_groups(vec![group])
    .with_batch_size(BATCH_ROWS)
    .build()
    .map_err(|e| failed(path, e))?
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| failed(path, e))?;
    for batch in &batches {
        let bad = |what: &str| failed(path, format!("column `{what}` is missing or mistyped"));
        column::<BinaryArray>(batch, 0).ok_or_else(|| bad("key"))?;
        column::<UInt64Array>(batch, 2).ok_or_else(|| bad("pos"))?;
        let numbers = column::<UInt32Array>(batch, 1).ok_or_else(|| bad("file"))?;
        if let Some(beyond) = numbers.values().iter().find(|&&n| n as usize >= files) {
            return Err(failed(
                path,
                format!(
                    "an entry of row group {group} names file number {beyond}, beyond its list of {files}"
                ),
            ));
        }
    }
    Ok(batches)
}

/// Whether the checkpoint describes this table's keys at an ancestor of the head whose
/// descendants are all unitable's own snapshots.
fn check_header(
    header: &Header,
    metadata: &TableMetadata,
    key_field_ids: &[i32],
) -> Result<(), String> {
    if header.table_uuid != metadata.uuid().to_string() {
        return Err(format!(
            "made for table uuid {}, the table is {}",
            header.table_uuid,
            metadata.uuid()
        ));
    }
    let keys = key_columns(metadata, key_field_ids);
    if header.key_columns != keys {
        return Err(format!(
            "made for key columns {:?}, the table's are {keys:?}",
            header.key_columns
        ));
    }
    let head = metadata
        .current_snapshot_id()
        .ok_or("the table has no snapshot")?;
    let chain = ancestors_between(metadata, head, Some(header.snapshot_id)).ok_or_else(|| {
        format!(
            "snapshot {} is not in the history of the current snapshot {head} (rolled back or expired)",
            header.snapshot_id
        )
    })?;
    if let Some(foreign) = chain.iter().find(|s| {
        !s.summary()
            .additional_properties
            .contains_key(summary::COMMIT_ID)
    }) {
        return Err(format!(
            "snapshot {} ({:?}) after it was not committed by unitable",
            foreign.snapshot_id(),
            foreign.summary().operation
        ));
    }
    Ok(())
}

/// The checkpoint's entries brought up to `live` (the head's live files) in `index` (empty);
/// see the module docs.
#[allow(clippy::too_many_arguments)]
async fn catch_up(
    file_io: &FileIO,
    path: &str,
    opened: Opened,
    metadata: &TableMetadata,
    live: &[TrackedFile],
    codec: &Arc<RecordCodec>,
    key_field_ids: &[i32],
    mut index: KeyIndex,
) -> WriteResult<Restored> {
    if live
        .iter()
        .any(|f| f.data_file.content_type() == DataContentType::EqualityDeletes)
    {
        return Err(failed(path, "the table has equality deletes"));
    }
    let header = &opened.header;
    let planned = plan_live(metadata, live);
    let old_data: HashSet<&str> = header.data_files.iter().map(String::as_str).collect();
    let old_deletes: HashSet<&str> = header.delete_files.iter().map(String::as_str).collect();
    let mut new_data: Vec<&PlannedFile> = planned
        .iter()
        .filter(|f| !old_data.contains(f.data_file.file_path()))
        .collect();
    new_data.sort_by_key(|f| f.data_sequence_number);
    // Deletes added since the checkpoint, and every delete applying to a new data file.
    let mut to_read = BTreeMap::new();
    for f in live {
        if f.data_file.content_type() == DataContentType::PositionDeletes
            && !old_deletes.contains(f.data_file.file_path())
        {
            to_read.insert(f.data_file.file_path().to_string(), f.data_file.clone());
        }
    }
    for f in &new_data {
        for d in &f.deletes {
            to_read.insert(d.file_path().to_string(), d.clone());
        }
    }
    let to_read: Vec<_> = to_read.into_values().collect();
    let mut deleted = read_position_deletes(file_io, &to_read).await?;

    // Checkpoint file number -> its index file id and newly deleted positions (the
    // checkpoint's files and the new ones are disjoint, so their deletes move here).
    let live_data: HashMap<&str, &PlannedFile> = planned
        .iter()
        .map(|f| (f.data_file.file_path(), f))
        .collect();
    let targets: Vec<FileTarget> = header
        .data_files
        .iter()
        .map(|p| {
            live_data.get(p.as_str()).map(|f| {
                (
                    index.file_id(p, f.data_file.partition(), f.spec_id),
                    deleted.remove(p.as_str()).unwrap_or_default(),
                )
            })
        })
        .collect();
    let loading = Instant::now();
    let task_path = path.to_string();
    let (index, opened) = tokio::task::spawn_blocking(move || {
        load(&task_path, &opened, &targets, &mut index).map(|()| (index, opened))
    })
    .await
    .map_err(|e| WriteError::Internal {
        reason: format!("checkpoint loader task failed: {e}"),
    })??;
    let load_time = loading.elapsed();

    // Rows of the data files added since.
    let mut rebuilt = Rebuilt {
        index,
        duplicates: Vec::new(),
        files: new_data.len(),
    };
    let new_rows = index_files_rows(
        file_io,
        codec,
        key_field_ids,
        &new_data,
        &deleted,
        &mut rebuilt,
    )
    .await?;
    Ok(Restored {
        rebuilt,
        path: path.to_string(),
        snapshot_id: opened.header.snapshot_id,
        checkpoint_keys: opened.header.keys,
        new_files: new_data.len() as u64,
        new_rows,
        phases: Phases {
            load: load_time,
            ..Phases::default()
        },
    })
}

fn column<T: 'static>(batch: &RecordBatch, i: usize) -> Option<&T> {
    batch.columns().get(i)?.as_any().downcast_ref::<T>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_due_when_catching_up_costs_more_than_writing() {
        let policy = CheckpointPolicy {
            min_interval: Duration::ZERO,
            ..CheckpointPolicy::default()
        };
        let mut due = CheckpointDue::fresh();
        assert!(!due.is_due(&policy, 0), "nothing changed");
        // A small table: one new file costs more than writing a few hundred keys.
        due.add(1, 10);
        assert!(due.is_due(&policy, 200));
        // 10M keys cost 3 s to write; 40 files and 100k rows cost 0.8 s + 15 ms to read.
        assert!(!due.is_due(&policy, 10_000_000));
        due.add(400, 30_000_000);
        assert!(due.is_due(&policy, 10_000_000));
        let disabled = CheckpointPolicy {
            enabled: false,
            ..policy.clone()
        };
        assert!(!due.is_due(&disabled, 200));
        let spaced = CheckpointPolicy {
            min_interval: Duration::from_secs(3600),
            ..policy
        };
        assert!(!due.is_due(&spaced, 200), "too soon after the last one");
    }
}
