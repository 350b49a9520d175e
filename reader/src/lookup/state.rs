//! One table's lookup state: the key index of a base snapshot, the changelog tail after it,
//! and the background task that re-bases onto newer snapshots.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;
use unitable_core::commit::files::roots_with_field_ids;

use arrow::array::RecordBatch;
use bytes::Bytes;
use iceberg::io::FileIO;
use iceberg::spec::{SnapshotRef, TableMetadata};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use unitable_core::catalog::TableCatalog;
use unitable_core::changelog::Changelog;
use unitable_core::commit::files::read_bytes;
use unitable_core::commit::plan::{delete_files_of, plan_files, read_position_deletes};
use unitable_core::commit::read::{ancestors_between, anchored_offsets, changelog_offsets};
use unitable_core::naming::TableName;
use unitable_core::offsets::{PartitionId, PartitionOffsets};
use unitable_core::record::RecordCodec;
use unitable_core::table::TableDef;

use super::FastSet;
use super::heads::Heads;
use super::index::{FileId, KeyIndex, RowLocation};
use super::rows::{BlockCache, DataFiles};
use super::tail::{PartitionTail, Rebase, Tasks, next_base, spawn_followers, wait_all};
use crate::error::{ReadError, ReadResult};

/// How often the state checks the catalog for a newer snapshot.
pub(crate) const REBASE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a re-base waits for the followers to reach the new snapshot's offsets.
const FOLLOW_WAIT: Duration = Duration::from_secs(30);

/// The data files the index points into.
#[derive(Debug, Default)]
struct Files {
    paths: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, FileId>,
    /// Files no longer live in the base snapshot; no index entry should point into one.
    gone: FastSet<FileId>,
}

impl Files {
    fn id(&mut self, path: &str) -> FileId {
        if let Some(&id) = self.ids.get(path) {
            return id;
        }
        let path: Arc<str> = Arc::from(path);
        let id = self.paths.len() as FileId;
        self.paths.push(path.clone());
        self.ids.insert(path, id);
        id
    }
}

/// The base snapshot and its index.
#[derive(Debug)]
pub(crate) struct Base {
    pub(crate) snapshot: Option<SnapshotRef>,
    pub(crate) offsets: PartitionOffsets,
    index: KeyIndex,
    files: Files,
}

impl Base {
    pub(crate) fn keys(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn index_bytes(&self) -> usize {
        self.index.allocated_bytes()
    }
}

/// A row of a data file of the base: the file's number in the base (the same file has the
/// same number within one read of the base), its path, and the row's position.
#[derive(Debug, Clone)]
pub(crate) struct RowAt {
    pub(crate) file: u32,
    pub(crate) path: Arc<str>,
    pub(crate) pos: u32,
}

/// Where a requested key's answer comes from.
#[derive(Debug)]
pub(crate) enum Found {
    /// The tail's latest record: the row.
    Tail(RecordBatch),
    /// The base snapshot's row at this position of this file.
    Row(RowAt),
    /// No live row.
    Missing,
}

/// One table's lookup state.
#[derive(Debug)]
pub(crate) struct TableLookup {
    pub(crate) name: TableName,
    pub(crate) uuid: String,
    pub(crate) schema_id: i32,
    pub(crate) def: TableDef,
    pub(crate) codec: Arc<RecordCodec>,
    key_field_ids: Vec<i32>,
    /// The table's columns, all nullable: the schema of a lookup's rows when no columns are
    /// named (built once, not per lookup).
    pub(crate) all_columns: arrow::datatypes::SchemaRef,
    /// No rows of `all_columns` (the answer when no key is found).
    pub(crate) no_rows: RecordBatch,
    /// The field id of each of `all_columns`.
    pub(crate) all_field_ids: Vec<Option<i32>>,
    pub(crate) files: DataFiles,
    base: RwLock<Base>,
    pub(crate) tails: Vec<Arc<PartitionTail>>,
    /// The partitions' last high watermarks read (what FRESH lookups wait for).
    pub(crate) heads: Heads,
    tasks: Tasks,
    invalid: AtomicBool,
    /// Wakes the warming task (the base changed); `None` when the cache is not warmed.
    rebased: Option<Arc<tokio::sync::Notify>>,
}

/// The Iceberg field ids of the key columns.
fn key_field_ids(
    name: &TableName,
    metadata: &TableMetadata,
    key: &[String],
) -> ReadResult<Vec<i32>> {
    let schema = metadata.current_schema();
    key.iter()
        .map(|column| {
            schema
                .field_by_name(column)
                .map(|f| f.id)
                .ok_or_else(|| ReadError::BadRequest {
                    reason: format!(
                        "table `{name}`: primary-key column `{column}` is not in the schema"
                    ),
                })
        })
        .collect()
}

impl TableLookup {
    /// Builds the state of `table` from its current snapshot and starts its followers and its
    /// re-base task.
    pub(crate) async fn build(
        name: &TableName,
        table: &iceberg::table::Table,
        catalog: TableCatalog,
        changelog: Arc<dyn Changelog>,
        blocks: Arc<BlockCache>,
    ) -> ReadResult<Arc<Self>> {
        let metadata = table.metadata();
        let def = TableDef::from_iceberg(name.clone(), metadata)?;
        if def.is_append_only() {
            return Err(ReadError::BadRequest {
                reason: format!(
                    "table `{name}` has no primary key, so it has no rows by key; read it with SNAPSHOT or STREAM"
                ),
            });
        }
        let uuid = metadata.uuid().to_string();
        let schema_id = metadata.current_schema_id();
        let codec = Arc::new(RecordCodec::of_table(&def, metadata)?);
        let key_field_ids = key_field_ids(name, metadata, &def.primary_key)?;
        let snapshot = metadata.current_snapshot().cloned();
        let base = load_base(table.file_io(), metadata, snapshot, &codec, &key_field_ids).await?;
        let tails: Vec<Arc<PartitionTail>> = (0..def.changelog.partitions)
            .map(|p| Arc::new(PartitionTail::new(base.offsets.get(PartitionId(p)))))
            .collect();
        tracing::info!(
            table = %name, keys = base.keys(), index_bytes = base.index_bytes(),
            snapshot = ?base.snapshot.as_ref().map(|s| s.snapshot_id()),
            "lookup index built"
        );
        let all_columns = super::nullable(&codec.arrow_schema());
        let state = Arc::new(TableLookup {
            name: name.clone(),
            all_field_ids: super::field_ids_of(&all_columns),
            no_rows: RecordBatch::new_empty(all_columns.clone()),
            all_columns,
            uuid,
            schema_id,
            codec: codec.clone(),
            key_field_ids,
            files: DataFiles::new(table.file_io().clone(), blocks.clone(), name.to_string()),
            base: RwLock::new(base),
            tails: tails.clone(),
            heads: Heads::new(
                changelog.clone(),
                def.changelog.topic.clone(),
                def.changelog.partitions,
            ),
            tasks: Tasks::default(),
            def: def.clone(),
            invalid: AtomicBool::new(false),
            rebased: blocks.warms().then(|| Arc::new(tokio::sync::Notify::new())),
        });
        let mut tasks = spawn_followers(
            &changelog,
            &def.changelog.topic,
            &codec,
            &tails,
            &name.to_string(),
        );
        tasks.push(tokio::spawn(maintain(Arc::downgrade(&state), catalog)));
        if let Some(rebased) = &state.rebased {
            tasks.push(tokio::spawn(warm(Arc::downgrade(&state), rebased.clone())));
        }
        state.tasks.set(tasks);
        Ok(state)
    }

    /// Whether the state may still serve (not invalidated, every follower running).
    pub(crate) fn is_valid(&self) -> bool {
        !self.invalid.load(Ordering::Acquire) && self.tails.iter().all(|t| t.broken().is_none())
    }

    /// Marks the state unusable: the next lookup builds a new one.
    pub(crate) fn invalidate(&self, reason: &str) {
        if !self.invalid.swap(true, Ordering::AcqRel) {
            tracing::warn!(table = %self.name, "lookup state discarded: {reason}");
        }
    }

    /// The base snapshot and its offsets.
    pub(crate) fn base_snapshot(&self) -> (Option<SnapshotRef>, PartitionOffsets) {
        let base = self.base.read().unwrap_or_else(PoisonError::into_inner);
        (base.snapshot.clone(), base.offsets.clone())
    }

    /// The base snapshot alone.
    pub(crate) fn base_snapshot_ref(&self) -> Option<SnapshotRef> {
        let base = self.base.read().unwrap_or_else(PoisonError::into_inner);
        base.snapshot.clone()
    }

    /// Memory the state holds: its key index and its changelog tail.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.index_size().1 + self.tails.iter().map(|t| t.bytes()).sum::<usize>()
    }

    /// Keys held in the changelog tail.
    pub(crate) fn tail_keys(&self) -> usize {
        self.tails.iter().map(|t| t.len()).sum()
    }

    /// Keys and index bytes of the base.
    pub(crate) fn index_size(&self) -> (usize, usize) {
        let base = self.base.read().unwrap_or_else(PoisonError::into_inner);
        (base.keys(), base.index_bytes())
    }

    /// Where each key's answer is, as of the base and the tail now (the caller has waited for
    /// the followers). A location in a file that left the base is an error (never served).
    pub(crate) fn resolve(&self, keys: &[Bytes]) -> ReadResult<Vec<Found>> {
        let base = self.base.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let partition = self.codec.partition_of(key);
            let tail =
                self.tails
                    .get(partition.0 as usize)
                    .ok_or_else(|| ReadError::LookupState {
                        table: self.name.clone(),
                        reason: format!(
                            "key in partition {partition}, which the table does not have"
                        ),
                    })?;
            if let Some(entry) = tail.get(key) {
                out.push(entry.row.map_or(Found::Missing, Found::Tail));
                continue;
            }
            match base.index.get(key) {
                None => out.push(Found::Missing),
                Some(RowLocation { file, pos }) => {
                    if base.files.gone.contains(&file) {
                        return Err(ReadError::LookupState {
                            table: self.name.clone(),
                            reason: "the index points into a file no longer in the table".into(),
                        });
                    }
                    out.push(Found::Row(RowAt {
                        file,
                        path: base.files.paths[file as usize].clone(),
                        pos,
                    }));
                }
            }
        }
        Ok(out)
    }

    /// The data files of the base snapshot.
    fn live_files(&self) -> Vec<Arc<str>> {
        let base = self.base.read().unwrap_or_else(PoisonError::into_inner);
        base.files
            .ids
            .iter()
            .filter(|(_, id)| !base.files.gone.contains(id))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// The base snapshot's row of each key, from the index alone (the tail is not consulted):
    /// `None` when the base is no longer snapshot `snapshot_id` (it moved on) or an entry
    /// points into a file that left the base. The index holds exactly the base's live keys
    /// under the read lock, so this is a key lookup in that snapshot.
    pub(crate) fn base_rows(&self, snapshot_id: i64, keys: &[Bytes]) -> Option<Vec<Option<RowAt>>> {
        let base = self.base.read().unwrap_or_else(PoisonError::into_inner);
        if base.snapshot.as_ref().map(|s| s.snapshot_id()) != Some(snapshot_id) {
            return None;
        }
        keys.iter()
            .map(|key| match base.index.get(key) {
                None => Some(None),
                Some(RowLocation { file, pos }) if !base.files.gone.contains(&file) => {
                    Some(Some(RowAt {
                        file,
                        path: base.files.paths[file as usize].clone(),
                        pos,
                    }))
                }
                Some(_) => None,
            })
            .collect()
    }

    /// Checks the catalog and re-bases onto a newer snapshot.
    async fn refresh(&self, catalog: &TableCatalog) -> ReadResult<()> {
        let table = catalog.load(&self.name).await?;
        let metadata = table.metadata();
        let (old, old_offsets) = self.base_snapshot();
        let old_id = old.as_ref().map(|s| s.snapshot_id());
        let (newest, offsets) =
            match next_base(metadata, &self.uuid, self.schema_id, old_id, &old_offsets) {
                Rebase::Stay => return Ok(()),
                Rebase::Invalid(reason) => {
                    self.invalidate(reason);
                    return Ok(());
                }
                Rebase::To(newest, offsets) => (newest, offsets),
            };
        // Incremental only over a chain of unitable snapshots (row deltas and rewrites that
        // carry the offsets over); anything else rebuilds the index from the new snapshot.
        let incremental = ancestors_between(metadata, newest.snapshot_id(), old_id)
            .is_some_and(|chain| chain.iter().all(|s| changelog_offsets(s).is_some()));
        let update = if incremental {
            let indexed: HashSet<Arc<str>> = self.live_files().into_iter().collect();
            let mut added = Vec::new();
            let live = scan_keys(
                table.file_io(),
                metadata,
                newest.snapshot_id(),
                &self.codec,
                &self.key_field_ids,
                |path| !indexed.contains(path),
                |path, key, pos| added.push((path.clone(), key, pos)),
            )
            .await?;
            Update::Incremental { added, live }
        } else {
            let base = load_base(
                table.file_io(),
                metadata,
                Some(newest.clone()),
                &self.codec,
                &self.key_field_ids,
            )
            .await?;
            Update::Full(base)
        };
        match wait_all(&self.tails, &offsets, FOLLOW_WAIT).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(table = %self.name, "lookup follower is behind the newest snapshot; re-basing later");
                return Ok(());
            }
            Err(reason) => {
                self.invalidate(&reason);
                return Ok(());
            }
        }
        let removed = self.apply(update, newest, offsets);
        for path in removed {
            self.files.forget(&path).await;
        }
        if let Some(rebased) = &self.rebased {
            rebased.notify_one();
        }
        Ok(())
    }

    /// Moves the base to `newest` (at `offsets`) by `update`, under the write lock; returns
    /// the data files that left it.
    fn apply(
        &self,
        update: Update,
        newest: SnapshotRef,
        offsets: PartitionOffsets,
    ) -> Vec<Arc<str>> {
        let mut base = self.base.write().unwrap_or_else(PoisonError::into_inner);
        let removed = match update {
            Update::Incremental { added, live } => {
                for (path, key, pos) in added {
                    let file = base.files.id(&path);
                    base.index.insert(&key, RowLocation { file, pos });
                }
                let Base { index, .. } = &mut *base;
                for (p, tail) in self.tails.iter().enumerate() {
                    tail.prune_below(offsets.get(PartitionId(p as u32)), |key| {
                        index.remove(key);
                    });
                }
                let mut removed = Vec::new();
                for (path, &id) in &base.files.ids {
                    if !live.contains(path) && !base.files.gone.contains(&id) {
                        removed.push((path.clone(), id));
                    }
                }
                for (_, id) in &removed {
                    base.files.gone.insert(*id);
                }
                removed.into_iter().map(|(p, _)| p).collect::<Vec<_>>()
            }
            Update::Full(new) => {
                for (p, tail) in self.tails.iter().enumerate() {
                    tail.prune_below(offsets.get(PartitionId(p as u32)), |_| {});
                }
                let removed: Vec<Arc<str>> = base
                    .files
                    .paths
                    .iter()
                    .filter(|p| !new.files.ids.contains_key(*p))
                    .cloned()
                    .collect();
                *base = new;
                removed
            }
        };
        base.snapshot = Some(newest);
        base.offsets = offsets;
        removed
    }
}

enum Update {
    Incremental {
        added: Vec<(Arc<str>, Bytes, u32)>,
        live: HashSet<Arc<str>>,
    },
    Full(Base),
}

/// Re-bases the state every [`REBASE_INTERVAL`] until it is dropped or invalidated.
async fn maintain(state: Weak<TableLookup>, catalog: TableCatalog) {
    loop {
        tokio::time::sleep(REBASE_INTERVAL).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        if !state.is_valid() {
            return;
        }
        if let Err(e) = state.refresh(&catalog).await {
            if e.is_retryable() {
                tracing::warn!(table = %state.name, "lookup re-base failed, retrying: {e}");
            } else {
                state.invalidate(&e.to_string());
                return;
            }
        }
    }
}

/// Warms the block cache with the base's data files: all of them once the state is built,
/// then those a re-base brings in (a commit's new files, a compaction's rewritten ones), while
/// they fit in the cache's warming share. Lookups of a table that fits are then served from
/// decoded blocks from the first request on, also right after a compaction.
async fn warm(state: Weak<TableLookup>, rebased: Arc<tokio::sync::Notify>) {
    let mut warmed: HashSet<Arc<str>> = HashSet::new();
    loop {
        let Some(live) = state.upgrade().map(|s| s.live_files()) else {
            return;
        };
        let live: HashSet<Arc<str>> = live.into_iter().collect();
        warmed.retain(|p| live.contains(p));
        let todo: Vec<Arc<str>> = live.into_iter().filter(|p| !warmed.contains(p)).collect();
        let (mut blocks, mut files) = (0u64, 0usize);
        let started = std::time::Instant::now();
        for path in &todo {
            let Some(s) = state.upgrade() else {
                return;
            };
            let alive = Arc::downgrade(&s);
            let go_on = move || alive.upgrade().is_some_and(|s| s.is_valid());
            match s.files.warm(path, go_on).await {
                Ok(Some(n)) => {
                    blocks += n;
                    files += 1;
                    warmed.insert(path.clone());
                }
                // No room now: tried again after the next re-base (which may free some).
                Ok(None) => {}
                // The file may be gone under an older base: the next re-base says so; lookups
                // still decode what they need.
                Err(e) => {
                    tracing::debug!(table = %s.name, "lookup cache warming skipped a file: {e}")
                }
            }
            drop(s);
            tokio::task::yield_now().await;
        }
        if blocks > 0
            && let Some(s) = state.upgrade()
        {
            tracing::info!(
                table = %s.name, files, blocks, ms = started.elapsed().as_millis() as u64,
                "lookup cache warmed"
            );
        }
        rebased.notified().await;
    }
}

/// The index of `snapshot` (empty for `None`).
async fn load_base(
    file_io: &FileIO,
    metadata: &TableMetadata,
    snapshot: Option<SnapshotRef>,
    codec: &RecordCodec,
    key_field_ids: &[i32],
) -> ReadResult<Base> {
    let mut index = KeyIndex::new();
    let mut files = Files::default();
    let offsets = match &snapshot {
        None => PartitionOffsets::default(),
        Some(s) => {
            scan_keys(
                file_io,
                metadata,
                s.snapshot_id(),
                codec,
                key_field_ids,
                |_| true,
                |path, key, pos| {
                    let file = files.id(path);
                    index.insert(&key, RowLocation { file, pos });
                },
            )
            .await?;
            anchored_offsets(metadata, s.snapshot_id())
        }
    };
    index.shrink();
    Ok(Base {
        snapshot,
        offsets,
        index,
        files,
    })
}

/// Reads the keys of the live rows of the data files of `snapshot_id` that `wanted` selects
/// (rows deleted in that snapshot skipped, so each live key appears once) and hands each to
/// `each` with its file and position. Returns the paths of every live data file.
async fn scan_keys(
    file_io: &FileIO,
    metadata: &TableMetadata,
    snapshot_id: i64,
    codec: &RecordCodec,
    key_field_ids: &[i32],
    wanted: impl Fn(&str) -> bool,
    mut each: impl FnMut(&Arc<str>, Bytes, u32),
) -> ReadResult<HashSet<Arc<str>>> {
    let planned = plan_files(file_io, metadata, Some(snapshot_id)).await?;
    let live: HashSet<Arc<str>> = planned
        .iter()
        .map(|f| Arc::from(f.data_file.file_path()))
        .collect();
    let todo: Vec<_> = planned
        .iter()
        .filter(|f| wanted(f.data_file.file_path()))
        .collect();
    let deleted = read_position_deletes(file_io, &delete_files_of(todo.iter().copied())).await?;
    let none = BTreeSet::new();
    for file in todo {
        let path: Arc<str> = Arc::from(file.data_file.file_path());
        let gone = deleted.get(path.as_ref()).unwrap_or(&none).clone();
        let bytes = read_bytes(file_io, &path).await?;
        let ids = key_field_ids.to_vec();
        let task_path = path.clone();
        // Parquet decoding off the async runtime; keys are encoded here (cheap per row).
        let batches =
            tokio::task::spawn_blocking(move || read_key_columns(&task_path, bytes, &ids))
                .await
                .map_err(|e| ReadError::DataFile {
                    path: path.to_string(),
                    reason: format!("key reader task failed: {e}"),
                })??;
        let mut at: u64 = 0;
        for batch in batches {
            let (keys, errors) = codec.encode_keys(&batch).map_err(|e| ReadError::DataFile {
                path: path.to_string(),
                reason: format!("key columns do not fit the table: {e}"),
            })?;
            if let Some(e) = errors.first() {
                return Err(ReadError::DataFile {
                    path: path.to_string(),
                    reason: format!("a live row has an invalid key: {e}"),
                });
            }
            for key in keys {
                let pos = at + key.row as u64;
                if gone.contains(&(pos as i64)) {
                    continue;
                }
                let pos = u32::try_from(pos).map_err(|_| ReadError::DataFile {
                    path: path.to_string(),
                    reason: "more than 4,294,967,295 rows in one file".into(),
                })?;
                each(&path, key.key, pos);
            }
            at += batch.num_rows() as u64;
        }
    }
    Ok(live)
}

/// The key columns (by field id) of a Parquet file, in row order.
fn read_key_columns(path: &str, bytes: Bytes, field_ids: &[i32]) -> ReadResult<Vec<RecordBatch>> {
    let fail = |e: String| ReadError::DataFile {
        path: path.to_string(),
        reason: format!("read the key columns: {e}"),
    };
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| fail(e.to_string()))?;
    let roots = roots_with_field_ids(builder.schema(), field_ids);
    if roots.len() != field_ids.len() {
        return Err(fail(format!(
            "expected key columns with field ids {field_ids:?}, found {}",
            roots.len()
        )));
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))
}
