//! Where a committer resumes: the changelog offsets anchored in the table's snapshots, and the
//! primary-key index rebuilt from the live rows of the current snapshot. After a compaction the
//! index is not rebuilt: [`repoint_index`] reads only the key columns of the files the `replace`
//! snapshots added and points their keys there.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use unitable_core::commit::files::roots_with_field_ids;

use iceberg::spec::DataContentType;
use unitable_core::commit::committer::Committer;
use unitable_core::commit::plan::plan_live;

use arrow::array::RecordBatch;
use bytes::Bytes;
use iceberg::io::FileIO;
use iceberg::spec::{Struct, TableMetadata};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use unitable_core::commit::files::{PositionDelete, read_bytes};
use unitable_core::commit::plan::{PlannedFile, delete_files_of, read_position_deletes};
use unitable_core::commit::read;
use unitable_core::offsets::PartitionOffsets;
use unitable_core::record::RecordCodec;

use crate::error::{WriteError, WriteResult};
use crate::index::{KeyIndex, RowLocation};

/// The offsets the newest snapshot carrying `unitable.changelog-offsets` covers (snapshots of
/// other writers in between are skipped); empty for a table without one.
pub(crate) fn anchored_offsets(metadata: &TableMetadata) -> PartitionOffsets {
    metadata
        .current_snapshot_id()
        .map(|current| read::anchored_offsets(metadata, current))
        .unwrap_or_default()
}

/// An index rebuilt from a snapshot.
pub(crate) struct Rebuilt {
    pub(crate) index: KeyIndex,
    /// Older copies of keys found live twice (which unitable never writes); the next commit
    /// deletes them so the table heals.
    pub(crate) duplicates: Vec<(PositionDelete, Struct, i32)>,
    pub(crate) files: usize,
}

/// Reads the key columns of every live row of the current snapshot into `index` (empty).
pub(crate) async fn rebuild_index(
    committer: &Committer,
    file_io: &FileIO,
    metadata: &TableMetadata,
    codec: &Arc<RecordCodec>,
    key_field_ids: &[i32],
    mut index: KeyIndex,
) -> WriteResult<Rebuilt> {
    let live = committer.live_files(file_io, metadata, None).await?;
    let mut planned = plan_live(metadata, &live);
    planned.sort_by_key(|f| f.data_sequence_number);
    // Each delete file is read once, however many data files it touches.
    let deleted = read_position_deletes(file_io, &delete_files_of(&planned)).await?;
    // The live rows are known before any key is read: size the index's tables once (the
    // key bytes are not known; the arenas grow as they go).
    let rows: u64 = planned.iter().map(|f| f.data_file.record_count()).sum();
    let gone: usize = deleted.values().map(BTreeSet::len).sum();
    index.reserve(
        usize::try_from(rows)
            .unwrap_or(usize::MAX)
            .saturating_sub(gone),
        0,
    );
    let mut rebuilt = Rebuilt {
        index,
        duplicates: Vec::new(),
        files: planned.len(),
    };
    let planned: Vec<&PlannedFile> = planned.iter().collect();
    index_files_rows(
        file_io,
        codec,
        key_field_ids,
        &planned,
        &deleted,
        &mut rebuilt,
    )
    .await?;
    Ok(rebuilt)
}

/// Data files whose key columns are read at once by [`index_files_rows`]: each read is an
/// object fetch, so on an object store latency dominates; the keys of at most this many files
/// wait in memory for their turn.
const KEY_READ_CONCURRENCY: usize = 16;

/// [`index_keys`] for each of `files` in order (callers pass them in data sequence
/// order), their key columns read concurrently. `deleted` holds the deleted positions per data
/// file path (paths are never reused, so every delete naming a file applies to it). Returns the
/// rows indexed.
pub(crate) async fn index_files_rows(
    file_io: &FileIO,
    codec: &Arc<RecordCodec>,
    key_field_ids: &[i32],
    files: &[&PlannedFile],
    deleted: &HashMap<String, BTreeSet<i64>>,
    rebuilt: &mut Rebuilt,
) -> WriteResult<u64> {
    use futures::{StreamExt, TryStreamExt, stream};
    let none = BTreeSet::new();
    // The futures are collected first: a stream mapping with a closure is not `Send` for
    // every lifetime, which the committer's task needs.
    let reads: Vec<_> = files
        .iter()
        .map(|file| {
            let gone = deleted.get(file.data_file.file_path()).unwrap_or(&none);
            file_keys(file_io, codec, key_field_ids, file, gone)
        })
        .collect();
    let mut read = stream::iter(reads).buffered(KEY_READ_CONCURRENCY);
    let mut indexed = 0;
    while let Some((file, keys)) = read.try_next().await? {
        indexed += index_keys(file, keys, rebuilt)?;
    }
    Ok(indexed)
}

/// [`live_keys`] of `file`, with the file.
async fn file_keys<'a>(
    file_io: &FileIO,
    codec: &Arc<RecordCodec>,
    key_field_ids: &[i32],
    file: &'a PlannedFile,
    gone: &BTreeSet<i64>,
) -> WriteResult<(&'a PlannedFile, Vec<(Bytes, u64)>)> {
    let keys = live_keys(
        file_io,
        codec,
        key_field_ids,
        file.data_file.file_path(),
        gone,
    )
    .await?;
    Ok((file, keys))
}

/// Points the keys of `keys` (every live row of `file`) at their rows, later files (callers go
/// in data sequence order) replacing earlier ones; a key already live elsewhere is recorded as
/// a duplicate whose older copy the next commit deletes. Returns the rows indexed.
fn index_keys(
    file: &PlannedFile,
    keys: Vec<(Bytes, u64)>,
    rebuilt: &mut Rebuilt,
) -> WriteResult<u64> {
    let path = file.data_file.file_path();
    let index = &mut rebuilt.index;
    let id = index.file_id(path, file.data_file.partition(), file.spec_id);
    let replaced = index.insert_many(insert_threads(), |sink| {
        for (key, pos) in &keys {
            sink(
                key,
                RowLocation {
                    file: id,
                    pos: *pos,
                },
            );
        }
    })?;
    for (older, older_pos) in replaced {
        tracing::error!(
            file = %path, older = %older.path, older_pos,
            "a key is live twice in the table; the older copy will be deleted"
        );
        rebuilt.duplicates.push((
            PositionDelete {
                file_path: older.path.to_string(),
                pos: older_pos as i64,
            },
            older.partition,
            older.spec_id,
        ));
    }
    Ok(keys.len() as u64)
}

/// Threads that insert keys into the index at a start ([`KeyIndex::insert_many`]).
pub(crate) fn insert_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// The canonical key and row position of every row of the data file at `path` whose position
/// is not in `gone`, in row order.
async fn live_keys(
    file_io: &FileIO,
    codec: &Arc<RecordCodec>,
    key_field_ids: &[i32],
    path: &str,
    gone: &BTreeSet<i64>,
) -> WriteResult<Vec<(Bytes, u64)>> {
    let mut keys = all_keys(file_io, codec, key_field_ids, path).await?;
    if !gone.is_empty() {
        keys.retain(|(_, pos)| !gone.contains(&(*pos as i64)));
    }
    Ok(keys)
}

/// The canonical key and row position of every row of the data file at `path`, in row order
/// (read, decoded and encoded off the async threads, so that the keys of several files are
/// made while the caller inserts others).
async fn all_keys(
    file_io: &FileIO,
    codec: &Arc<RecordCodec>,
    key_field_ids: &[i32],
    path: &str,
) -> WriteResult<Vec<(Bytes, u64)>> {
    let bytes = read_bytes(file_io, path).await?;
    let ids = key_field_ids.to_vec();
    let path = path.to_string();
    let codec = codec.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut pos: u64 = 0;
        for batch in read_keys(&path, bytes, &ids)? {
            let (keys, errors) = codec.encode_keys(&batch)?;
            if let Some(e) = errors.first() {
                return Err(WriteError::Internal {
                    reason: format!("{path}: a live row has an invalid key: {e}"),
                });
            }
            out.extend(keys.into_iter().map(|k| (k.key, pos + k.row as u64)));
            pos += batch.num_rows() as u64;
        }
        Ok(out)
    })
    .await
    .map_err(|e| WriteError::Internal {
        reason: format!("key reader task failed: {e}"),
    })?
}

/// Applies the `replace` snapshots `rewrites` (all committed after the index was last in step
/// with the table, and nothing else since) to `index`: every live row of the data files they
/// added (minus the deletes that apply to them now, e.g. deletes carried over by the rewrite)
/// becomes its key's location. Each such row is its key's only live row, so this is what a
/// rebuild would find. Afterwards every file the index points into must be live; otherwise
/// the caller must rebuild. Returns the keys re-pointed.
pub(crate) async fn repoint_index(
    committer: &Committer,
    file_io: &FileIO,
    metadata: &TableMetadata,
    codec: &Arc<RecordCodec>,
    key_field_ids: &[i32],
    index: &mut KeyIndex,
    rewrites: &HashSet<i64>,
) -> WriteResult<usize> {
    let live = committer.live_files(file_io, metadata, None).await?;
    let added: HashSet<&str> = live
        .iter()
        .filter(|f| {
            f.data_file.content_type() == DataContentType::Data && rewrites.contains(&f.snapshot_id)
        })
        .map(|f| f.data_file.file_path())
        .collect();
    let planned = plan_live(metadata, &live);
    let live_paths: HashSet<&str> = planned.iter().map(|f| f.data_file.file_path()).collect();
    let targets: Vec<_> = planned
        .iter()
        .filter(|f| added.contains(f.data_file.file_path()))
        .collect();
    let deleted = read_position_deletes(file_io, &delete_files_of(targets.iter().copied())).await?;
    let none = BTreeSet::new();
    let mut repointed = 0;
    for file in targets {
        let path = file.data_file.file_path();
        let gone = deleted.get(path).unwrap_or(&none);
        let keys = live_keys(file_io, codec, key_field_ids, path, gone).await?;
        let id = index.file_id(path, file.data_file.partition(), file.spec_id);
        repointed += keys.len();
        for (key, pos) in keys {
            index.insert(&key, RowLocation { file: id, pos })?;
        }
    }
    if let Some(stale) = index
        .files_in_use()
        .find(|f| !live_paths.contains(f.path.as_ref()))
    {
        return Err(WriteError::Internal {
            reason: format!(
                "after applying the rewrites the index still points into {}, which is not live",
                stale.path
            ),
        });
    }
    Ok(repointed)
}

/// The key columns (by Iceberg field id) of a Parquet data file, in row order.
fn read_keys(path: &str, bytes: Bytes, field_ids: &[i32]) -> WriteResult<Vec<RecordBatch>> {
    let fail = |e: String| WriteError::Internal {
        reason: format!("read the key columns of {path}: {e}"),
    };
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| fail(e.to_string()))?;
    let arrow_schema = builder.schema().clone();
    let wanted: BTreeSet<i32> = field_ids.iter().copied().collect();
    let roots = roots_with_field_ids(&arrow_schema, field_ids);
    if roots.len() != wanted.len() {
        return Err(fail(format!(
            "expected key columns with field ids {field_ids:?}, found {} of them",
            roots.len()
        )));
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))
}

/// Field ids of the key columns, by name in `codec`'s table.
pub(crate) fn key_field_ids(metadata: &TableMetadata, key: &[String]) -> WriteResult<Vec<i32>> {
    let schema = metadata.current_schema();
    key.iter()
        .map(|name| {
            schema
                .field_by_name(name)
                .map(|f| f.id)
                .ok_or_else(|| WriteError::Internal {
                    reason: format!("primary-key column `{name}` is not in the schema"),
                })
        })
        .collect()
}
