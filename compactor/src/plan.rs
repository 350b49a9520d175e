//! Planning one table's compaction from its current snapshot and its settings.
//!
//! Per partition (spec id and partition tuple) of the live data files:
//! - **rewrite-deletes**: files whose position-deleted rows are at least `delete_ratio` of their
//!   rows are rewritten without those rows; the partition's small files join them.
//! - **bin-pack**: otherwise, once a partition has `min_input_files` small files (smaller than
//!   `small_file_fraction` of the target), they are merged into files of the target size.
//!
//! Inputs are cut into tasks of at most twice the target size of input; each task is one
//! `replace` commit. Files with equality deletes (unitable writes none) are left alone.
//! Expiration expires snapshots older than the retention, keeping at least `min_snapshots` (and
//! what the commit layer always keeps); orphan removal runs when asked.
//! - **merge-manifests**: when the current snapshot lists more than `max_manifests` manifests,
//!   or after rewrites (which leave the manifests of the replaced files behind as manifests of
//!   `DELETED` entries), the run ends by merging the current snapshot's manifests into one per
//!   content type and partition spec (of at most the commit layer's target size).

use std::collections::{BTreeMap, BTreeSet};

use iceberg::spec::{DataContentType, Struct};
use iceberg::table::Table;
use unitable_core::commit::expire::{ExpireSnapshots, expired_ids};
use unitable_core::commit::plan::{
    PlannedFile, delete_files_of, manifests_of, plan_files, read_position_deletes,
};

use crate::config::TableSettings;
use crate::error::Result;

/// The kinds of compaction work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskKind {
    /// Rewrite files with many deleted rows, applying their deletes.
    RewriteDeletes,
    /// Merge small files into target-size files.
    BinPack,
    /// Expire old snapshots and delete the files only they reached.
    ExpireSnapshots,
    /// Remove unreferenced files older than the safety age.
    RemoveOrphans,
    /// Merge the current snapshot's manifests into few (no data change).
    MergeManifests,
}

impl TaskKind {
    /// The name used in the API, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::RewriteDeletes => "rewrite-deletes",
            TaskKind::BinPack => "bin-pack",
            TaskKind::ExpireSnapshots => "expire-snapshots",
            TaskKind::RemoveOrphans => "remove-orphans",
            TaskKind::MergeManifests => "merge-manifests",
        }
    }
}

/// An input file of a rewrite, with what is deleted of it at the starting snapshot.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// The planned file (its deletes included).
    pub planned: PlannedFile,
    /// Positions deleted by the position deletes that apply to it.
    pub deleted: BTreeSet<i64>,
}

/// One `replace` commit: files of one partition rewritten together.
#[derive(Debug, Clone)]
pub struct RewriteTask {
    /// Why.
    pub kind: TaskKind,
    /// The partition spec of the inputs (and outputs).
    pub spec_id: i32,
    /// The partition tuple of the inputs (and outputs).
    pub partition: Struct,
    /// The files replaced.
    pub inputs: Vec<InputFile>,
}

impl RewriteTask {
    /// Bytes of the input files.
    pub fn input_bytes(&self) -> u64 {
        self.inputs
            .iter()
            .map(|f| f.planned.data_file.file_size_in_bytes())
            .sum()
    }

    /// Deleted rows the rewrite drops.
    pub fn deletes(&self) -> u64 {
        self.inputs.iter().map(|f| f.deleted.len() as u64).sum()
    }

    /// Rows of the input files (deleted ones included).
    pub fn input_rows(&self) -> u64 {
        self.inputs
            .iter()
            .map(|f| f.planned.data_file.record_count())
            .sum()
    }
}

/// How far a table is from freshly written: what compaction would remove.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backlog {
    /// Live data files.
    pub data_files: u64,
    /// Their bytes.
    pub data_bytes: u64,
    /// Live data files below the small-file size.
    pub small_files: u64,
    /// Live delete files.
    pub delete_files: u64,
    /// Rows in live data files (deleted ones included).
    pub rows: u64,
    /// Rows deleted by live position deletes.
    pub deleted_rows: u64,
    /// Snapshots in the metadata.
    pub snapshots: u64,
}

impl Backlog {
    /// Deleted rows / rows (0 for an empty table).
    pub fn delete_ratio(&self) -> f64 {
        if self.rows == 0 {
            0.0
        } else {
            self.deleted_rows as f64 / self.rows as f64
        }
    }
}

/// Everything compaction would do to a table now.
#[derive(Debug, Clone, Default)]
pub struct TablePlan {
    /// The snapshot planned from (`None`: empty table).
    pub starting_snapshot_id: Option<i64>,
    /// Rewrites, one commit each.
    pub rewrites: Vec<RewriteTask>,
    /// Snapshots that would expire.
    pub expire: Vec<i64>,
    /// Whether orphan removal runs.
    pub orphans: bool,
    /// Whether the run ends with a manifest merge.
    pub merge_manifests: bool,
    /// Manifests the starting snapshot lists.
    pub manifests: usize,
    /// The table's backlog at the starting snapshot.
    pub backlog: Backlog,
}

/// Plans `table` (as loaded) with `settings` at time `now_ms`.
pub async fn plan_table(
    table: &Table,
    settings: &TableSettings,
    now_ms: i64,
    orphans: bool,
) -> Result<TablePlan> {
    let metadata = table.metadata();
    let file_io = table.file_io();
    let Some(start) = metadata.current_snapshot_id() else {
        return Ok(TablePlan {
            orphans,
            ..TablePlan::default()
        });
    };
    let planned = plan_files(file_io, metadata, Some(start)).await?;
    let all_deletes = delete_files_of(&planned);
    let delete_file_count = all_deletes.len() as u64;
    let position_files: Vec<_> = all_deletes
        .into_iter()
        .filter(|d| d.content_type() == DataContentType::PositionDeletes)
        .collect();
    let deleted = read_position_deletes(file_io, &position_files).await?;
    let small = settings.small_file_bytes();
    let mut backlog = Backlog {
        snapshots: metadata.snapshots().len() as u64,
        delete_files: delete_file_count,
        ..Backlog::default()
    };
    let mut groups: BTreeMap<(i32, String), (Struct, Vec<InputFile>)> = BTreeMap::new();
    for file in planned {
        let df = &file.data_file;
        let gone = deleted.get(df.file_path()).cloned().unwrap_or_default();
        backlog.data_files += 1;
        backlog.data_bytes += df.file_size_in_bytes();
        backlog.rows += df.record_count();
        backlog.deleted_rows += gone.len() as u64;
        if df.file_size_in_bytes() < small {
            backlog.small_files += 1;
        }
        let has_equality = file
            .deletes
            .iter()
            .any(|d| d.content_type() == DataContentType::EqualityDeletes);
        if has_equality {
            continue;
        }
        let key = (file.spec_id, format!("{:?}", df.partition()));
        groups
            .entry(key)
            .or_insert_with(|| (df.partition().clone(), Vec::new()))
            .1
            .push(InputFile {
                planned: file,
                deleted: gone,
            });
    }

    let mut rewrites = Vec::new();
    for ((spec_id, _), (partition, files)) in groups {
        let (heavy, rest): (Vec<InputFile>, Vec<InputFile>) = files.into_iter().partition(|f| {
            let rows = f.planned.data_file.record_count().max(1) as f64;
            !f.deleted.is_empty() && f.deleted.len() as f64 / rows >= settings.delete_ratio
        });
        let small_files: Vec<InputFile> = rest
            .into_iter()
            .filter(|f| f.planned.data_file.file_size_in_bytes() < small)
            .collect();
        let (kind, mut inputs) = if !heavy.is_empty() {
            let mut inputs = heavy;
            if small_files.len() + inputs.len() >= 2 {
                inputs.extend(small_files);
            }
            (TaskKind::RewriteDeletes, inputs)
        } else if small_files.len() >= settings.min_input_files.max(2) {
            (TaskKind::BinPack, small_files)
        } else {
            continue;
        };
        // Oldest first, so rows keep their commit order in the output.
        inputs.sort_by(|a, b| {
            (
                a.planned.data_sequence_number,
                a.planned.data_file.file_path(),
            )
                .cmp(&(
                    b.planned.data_sequence_number,
                    b.planned.data_file.file_path(),
                ))
        });
        let max_input = settings.target_file_bytes.saturating_mul(2);
        let mut task: Vec<InputFile> = Vec::new();
        let mut bytes = 0u64;
        for input in inputs {
            let size = input.planned.data_file.file_size_in_bytes();
            if !task.is_empty() && bytes + size > max_input {
                rewrites.push(task_of(
                    kind,
                    spec_id,
                    &partition,
                    std::mem::take(&mut task),
                ));
                bytes = 0;
            }
            bytes += size;
            task.push(input);
        }
        if !task.is_empty() {
            // A lone leftover joins the previous task rather than staying behind.
            match rewrites.last_mut() {
                Some(last)
                    if task.len() == 1
                        && last.spec_id == spec_id
                        && last.partition == partition =>
                {
                    last.inputs.extend(task);
                }
                _ => rewrites.push(task_of(kind, spec_id, &partition, task)),
            }
        }
    }
    // A lone leftover small file is not worth a commit, unless it carries deletes.
    rewrites.retain(|t| t.inputs.len() >= 2 || t.deletes() > 0);

    let expire = expired_ids(
        metadata,
        &ExpireSnapshots {
            older_than_ms: now_ms - settings.snapshot_retention_ms,
            retain_last: settings.min_snapshots,
            dry_run: true,
        },
    )?;
    let snapshot = metadata
        .snapshot_by_id(start)
        .ok_or(unitable_core::commit::CommitError::SnapshotNotFound { snapshot_id: start })?;
    let manifests = manifests_of(file_io, metadata, snapshot).await?.len();
    let merge_manifests = settings.merge_manifests
        && (manifests > settings.max_manifests || (!rewrites.is_empty() && manifests > 1));
    Ok(TablePlan {
        starting_snapshot_id: Some(start),
        rewrites,
        expire,
        orphans,
        merge_manifests,
        manifests,
        backlog,
    })
}

fn task_of(
    kind: TaskKind,
    spec_id: i32,
    partition: &Struct,
    inputs: Vec<InputFile>,
) -> RewriteTask {
    RewriteTask {
        kind,
        spec_id,
        partition: partition.clone(),
        inputs,
    }
}
