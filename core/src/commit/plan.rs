//! Planning the files of a snapshot: every live data file with the delete files that apply to it,
//! and reading position deletes back.
//!
//! The rules are the Iceberg spec's (format v2, "Scan Planning"):
//! - a **position** delete file applies to a data file when the delete's data sequence number is
//!   greater than or equal to the data file's, both have the same partition spec and partition
//!   tuple, and (when set) the delete's `referenced_data_file` is the data file's path. The delete
//!   file's `file_path` bounds, when present, rule out data files outside them.
//! - an **equality** delete file applies when its data sequence number is strictly greater than
//!   the data file's and it has the data file's partition, or its spec is unpartitioned.
//!
//! Entries of a manifest inherit the snapshot id and sequence numbers of the manifest-list entry
//! when they are `ADDED` and carry none (iceberg-rust's `load_manifest` applies that).

use std::collections::{BTreeSet, HashMap, HashSet};

use arrow::array::{Array, Int64Array, StringArray};
use arrow::datatypes::DataType;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFile, ManifestContentType, ManifestFile, ManifestList, ManifestStatus,
    PrimitiveLiteral, SnapshotRef, Struct, TableMetadata,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::files::{DELETE_FILE_PATH_FIELD_ID, DELETE_POS_FIELD_ID, read_bytes};
use super::{CommitError, CommitResult};

/// How many manifests or delete files are read from storage at once. Each read is one small
/// object fetch, so on an object store the latency, not the bytes, is the cost: reading them
/// one after the other made a committer's start-up (which reads every manifest of the head)
/// take seconds on S3.
pub const READ_CONCURRENCY: usize = 16;

/// One manifest entry of a snapshot, with everything inherited from the manifest list resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedFile {
    /// The data or delete file.
    pub data_file: DataFile,
    /// The partition spec the file was written for (its manifest's spec).
    pub spec_id: i32,
    /// `ADDED`, `EXISTING` or `DELETED` in this snapshot's manifests.
    pub status: ManifestStatus,
    /// The snapshot that added the file (or, for `DELETED` entries, removed it).
    pub snapshot_id: i64,
    /// The data sequence number (used to decide which deletes apply).
    pub data_sequence_number: i64,
    /// The sequence number of the snapshot that added the file.
    pub file_sequence_number: i64,
    /// The manifest holding this entry.
    pub manifest_path: String,
}

impl TrackedFile {
    /// Whether the file is part of the snapshot (`ADDED` or `EXISTING`).
    pub fn is_live(&self) -> bool {
        self.status != ManifestStatus::Deleted
    }
}

/// A live data file of a snapshot and the delete files that apply to it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedFile {
    /// The data file.
    pub data_file: DataFile,
    /// Its partition spec id.
    pub spec_id: i32,
    /// Its data sequence number.
    pub data_sequence_number: i64,
    /// Position- (and equality-) delete files that apply to it, per the spec's rules.
    pub deletes: Vec<DataFile>,
}

/// The snapshot `snapshot_id` (the current one for `None`); `Ok(None)` for a table without
/// snapshots when `snapshot_id` is `None`.
pub fn resolve_snapshot(
    metadata: &TableMetadata,
    snapshot_id: Option<i64>,
) -> CommitResult<Option<SnapshotRef>> {
    match snapshot_id {
        None => Ok(metadata.current_snapshot().cloned()),
        Some(id) => metadata
            .snapshot_by_id(id)
            .cloned()
            .map(Some)
            .ok_or(CommitError::SnapshotNotFound { snapshot_id: id }),
    }
}

/// The manifests listed by `snapshot`'s manifest list.
pub async fn manifests_of(
    file_io: &FileIO,
    metadata: &TableMetadata,
    snapshot: &SnapshotRef,
) -> CommitResult<Vec<ManifestFile>> {
    let path = snapshot.manifest_list();
    let bytes = read_bytes(file_io, path).await?;
    let list = ManifestList::parse_with_version(&bytes, metadata.format_version())
        .map_err(|e| CommitError::iceberg(format!("parse the manifest list {path}"), e))?;
    Ok(list.consume_entries().into_iter().collect())
}

/// Whether `manifest` may hold live entries. A manifest whose counts say it holds only `DELETED`
/// entries is not carried into later snapshots: deleted entries only need to appear in the
/// snapshot that deleted the files.
pub fn has_live_entries(manifest: &ManifestFile) -> bool {
    manifest.added_files_count.is_none_or(|n| n > 0)
        || manifest.existing_files_count.is_none_or(|n| n > 0)
}

/// Every entry (`ADDED`, `EXISTING` and `DELETED`) of `manifest`.
pub async fn manifest_entries(
    file_io: &FileIO,
    manifest: &ManifestFile,
) -> CommitResult<Vec<TrackedFile>> {
    let loaded = manifest.load_manifest(file_io).await.map_err(|e| {
        CommitError::iceberg(format!("read manifest {}", manifest.manifest_path), e)
    })?;
    let (entries, _) = loaded.into_parts();
    Ok(entries
        .into_iter()
        .map(|entry| {
            let data_sequence_number = entry.sequence_number().unwrap_or(0);
            TrackedFile {
                spec_id: manifest.partition_spec_id,
                status: entry.status(),
                snapshot_id: entry.snapshot_id().unwrap_or(manifest.added_snapshot_id),
                data_sequence_number,
                file_sequence_number: entry.file_sequence_number.unwrap_or(data_sequence_number),
                manifest_path: manifest.manifest_path.clone(),
                data_file: entry.data_file().clone(),
            }
        })
        .collect())
}

/// Every manifest entry of a snapshot (the current one for `None`; an empty table has none),
/// including `DELETED` entries.
pub async fn snapshot_entries(
    file_io: &FileIO,
    metadata: &TableMetadata,
    snapshot_id: Option<i64>,
) -> CommitResult<Vec<TrackedFile>> {
    let Some(snapshot) = resolve_snapshot(metadata, snapshot_id)? else {
        return Ok(Vec::new());
    };
    let manifests = manifests_of(file_io, metadata, &snapshot).await?;
    entries_of(file_io, manifests.iter()).await
}

/// Every entry of `manifests`, in their order, read [`READ_CONCURRENCY`] at a time.
async fn entries_of(
    file_io: &FileIO,
    manifests: impl Iterator<Item = &ManifestFile>,
) -> CommitResult<Vec<TrackedFile>> {
    // (Collected first: see read_position_deletes.)
    let reads: Vec<_> = manifests.map(|m| manifest_entries(file_io, m)).collect();
    let read: Vec<Vec<TrackedFile>> = stream::iter(reads)
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(read.into_iter().flatten().collect())
}

/// The live (`ADDED` or `EXISTING`) data and delete files of a snapshot.
pub async fn live_files(
    file_io: &FileIO,
    metadata: &TableMetadata,
    snapshot_id: Option<i64>,
) -> CommitResult<Vec<TrackedFile>> {
    let mut entries = snapshot_entries(file_io, metadata, snapshot_id).await?;
    entries.retain(TrackedFile::is_live);
    Ok(entries)
}

/// The paths of the live data files of the current snapshot (reads only data manifests).
pub async fn live_data_paths(
    file_io: &FileIO,
    metadata: &TableMetadata,
) -> CommitResult<HashSet<String>> {
    let Some(snapshot) = metadata.current_snapshot() else {
        return Ok(HashSet::new());
    };
    let manifests = manifests_of(file_io, metadata, snapshot).await?;
    let data = manifests
        .iter()
        .filter(|m| m.content == ManifestContentType::Data);
    Ok(entries_of(file_io, data)
        .await?
        .into_iter()
        .filter(TrackedFile::is_live)
        .map(|f| f.data_file.file_path().to_string())
        .collect())
}

/// Every live data file of a snapshot (the current one for `None`) with the delete files that
/// apply to it; an empty table plans to nothing.
pub async fn plan_files(
    file_io: &FileIO,
    metadata: &TableMetadata,
    snapshot_id: Option<i64>,
) -> CommitResult<Vec<PlannedFile>> {
    let live = live_files(file_io, metadata, snapshot_id).await?;
    Ok(plan_live(metadata, &live))
}

/// [`plan_files`] over already loaded live entries.
pub fn plan_live(metadata: &TableMetadata, live: &[TrackedFile]) -> Vec<PlannedFile> {
    let index = DeleteIndex::new(metadata, live);
    live.iter()
        .filter(|f| f.data_file.content_type() == DataContentType::Data)
        .map(|f| PlannedFile {
            data_file: f.data_file.clone(),
            spec_id: f.spec_id,
            data_sequence_number: f.data_sequence_number,
            deletes: index
                .applying_to(f)
                .into_iter()
                .map(|d| d.data_file.clone())
                .collect(),
        })
        .collect()
}

/// Live delete files grouped for matching against data files.
pub(crate) struct DeleteIndex<'a> {
    by_partition: HashMap<(i32, &'a Struct), Vec<&'a TrackedFile>>,
    global_equality: Vec<&'a TrackedFile>,
}

impl<'a> DeleteIndex<'a> {
    pub(crate) fn new(metadata: &TableMetadata, live: &'a [TrackedFile]) -> Self {
        let mut by_partition: HashMap<(i32, &Struct), Vec<&TrackedFile>> = HashMap::new();
        let mut global_equality = Vec::new();
        for f in live.iter().filter(|f| f.is_live()) {
            match f.data_file.content_type() {
                DataContentType::Data => {}
                DataContentType::EqualityDeletes
                    if metadata
                        .partition_spec_by_id(f.spec_id)
                        .is_some_and(|s| s.is_unpartitioned()) =>
                {
                    global_equality.push(f)
                }
                DataContentType::PositionDeletes | DataContentType::EqualityDeletes => by_partition
                    .entry((f.spec_id, f.data_file.partition()))
                    .or_default()
                    .push(f),
            }
        }
        Self {
            by_partition,
            global_equality,
        }
    }

    /// The delete files that apply to the data file `data`.
    pub(crate) fn applying_to(&self, data: &TrackedFile) -> Vec<&'a TrackedFile> {
        let path = data.data_file.file_path();
        let same_partition = self
            .by_partition
            .get(&(data.spec_id, data.data_file.partition()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut out: Vec<&TrackedFile> = Vec::new();
        for d in same_partition.iter().chain(&self.global_equality) {
            let applies = match d.data_file.content_type() {
                DataContentType::PositionDeletes => {
                    d.data_sequence_number >= data.data_sequence_number
                        && position_delete_may_target(&d.data_file, path)
                }
                DataContentType::EqualityDeletes => {
                    d.data_sequence_number > data.data_sequence_number
                }
                DataContentType::Data => false,
            };
            // An unpartitioned table has both lists overlap only for equality deletes of the
            // unpartitioned spec, which go to `global_equality` alone; no duplicates arise.
            if applies {
                out.push(d);
            }
        }
        out
    }
}

/// Whether the position-delete file `delete` can hold deletes for `path`: its
/// `referenced_data_file` (when set) is `path`, and `path` lies within its `file_path` bounds.
pub fn position_delete_may_target(delete: &DataFile, path: &str) -> bool {
    if let Some(referenced) = delete.referenced_data_file() {
        return referenced == path;
    }
    let bound = |bounds: &HashMap<i32, iceberg::spec::Datum>| -> Option<String> {
        match bounds.get(&DELETE_FILE_PATH_FIELD_ID)?.literal() {
            PrimitiveLiteral::String(s) => Some(s.clone()),
            _ => None,
        }
    };
    let above_lower = bound(delete.lower_bounds()).is_none_or(|lower| path >= lower.as_str());
    // Bounds of string columns may be truncated; a truncated upper bound is still an upper bound
    // of the prefix, so compare on the bound's length.
    let below_upper = bound(delete.upper_bounds()).is_none_or(|upper| {
        let n = upper.len().min(path.len());
        path.as_bytes()[..n] <= upper.as_bytes()[..n]
    });
    above_lower && below_upper
}

/// The delete files that apply to any of `files`, each once, in first-seen order.
pub fn delete_files_of<'a>(files: impl IntoIterator<Item = &'a PlannedFile>) -> Vec<DataFile> {
    let mut seen = HashSet::new();
    files
        .into_iter()
        .flat_map(|f| f.deletes.iter())
        .filter(|d| seen.insert(d.file_path().to_string()))
        .cloned()
        .collect()
}

/// Reads position-delete files: data file path -> deleted row positions.
pub async fn read_position_deletes(
    file_io: &FileIO,
    delete_files: &[DataFile],
) -> CommitResult<HashMap<String, BTreeSet<i64>>> {
    if let Some(file) = delete_files
        .iter()
        .find(|f| f.content_type() != DataContentType::PositionDeletes)
    {
        return Err(CommitError::Invalid {
            reason: format!(
                "{} is not a position-delete file ({:?}); equality deletes are not supported here",
                file.file_path(),
                file.content_type()
            ),
        });
    }
    // Fetched concurrently, decoded one at a time as they arrive (in order).
    // (Collected first: a stream over a closure's futures is not `Send` for every lifetime,
    // which callers holding this future across awaits need.)
    let reads: Vec<_> = delete_files
        .iter()
        .map(|f| read_named(file_io, f.file_path()))
        .collect();
    let mut fetched = stream::iter(reads).buffered(READ_CONCURRENCY);
    let mut out: HashMap<String, BTreeSet<i64>> = HashMap::new();
    while let Some((path, bytes)) = fetched.try_next().await? {
        decode_position_deletes(path, bytes, &mut out)?;
    }
    Ok(out)
}

/// The bytes of the file at `path`, with the path.
async fn read_named<'a>(file_io: &FileIO, path: &'a str) -> CommitResult<(&'a str, Bytes)> {
    read_bytes(file_io, path).await.map(|bytes| (path, bytes))
}

/// Decodes the position-delete file at `location` (its `bytes`) into `out`: data file path ->
/// deleted row positions. Columns are found by field id, else by name.
pub(crate) fn decode_position_deletes(
    location: &str,
    bytes: Bytes,
    out: &mut HashMap<String, BTreeSet<i64>>,
) -> CommitResult<()> {
    let bad = |reason: String| CommitError::Invalid {
        reason: format!("position-delete file {location}: {reason}"),
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| bad(e.to_string()))?;
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let column = |name: &str, id: i32, ty: &DataType| {
            let schema = batch.schema();
            let index = schema
                .fields()
                .iter()
                .position(|f| {
                    f.metadata()
                        .get(parquet::arrow::PARQUET_FIELD_ID_META_KEY)
                        .is_some_and(|v| v == &id.to_string())
                })
                .or_else(|| schema.index_of(name).ok())
                .ok_or_else(|| bad(format!("no `{name}` column")))?;
            arrow::compute::cast(batch.column(index), ty).map_err(|e| bad(e.to_string()))
        };
        let paths = column("file_path", DELETE_FILE_PATH_FIELD_ID, &DataType::Utf8)?;
        let positions = column("pos", DELETE_POS_FIELD_ID, &DataType::Int64)?;
        let paths = paths
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad("`file_path` is not a string".into()))?;
        let positions = positions
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| bad("`pos` is not a long".into()))?;
        if paths.null_count() > 0 || positions.null_count() > 0 {
            return Err(bad("null `file_path` or `pos`".into()));
        }
        for (path, pos) in paths.iter().zip(positions.iter()) {
            if let (Some(path), Some(pos)) = (path, pos) {
                match out.get_mut(path) {
                    Some(set) => {
                        set.insert(pos);
                    }
                    None => {
                        out.insert(path.to_string(), BTreeSet::from([pos]));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "plan_tests.rs"]
pub(crate) mod tests;
