//! The row-delta commit: one snapshot that adds data files and position-delete files, carries
//! every manifest of the parent over, and records caller properties (the changelog offsets it
//! covers) in its summary, all in one compare-and-swap of the metadata pointer.
//!
//! Retries: on a conflict the commit reloads the table and rebases: the manifests it wrote stay
//! valid (their entries inherit the snapshot's sequence number from the manifest list), so only
//! the manifest list and the table metadata are written again. Every commit carries a commit id
//! in its summary (`unitable.commit-id`); before each attempt the table's snapshots are searched
//! for it, so a commit whose swap succeeded but whose answer was lost is never applied twice.
//!
//! Validation on every attempt (also after a rebase): the data files the delta's position
//! deletes target must still be live (a concurrent rewrite may have replaced them; the delete
//! would then silently miss the row's new copy), and the table properties must hold the
//! delta's `required_properties` (fencing of a stale committer).
//!
//! Merging on commit ([`CommitMerge`], Iceberg's `commit.manifest-merge.enabled` and
//! `commit.manifest.min-count-to-merge`): once the parent lists enough manifests, the row delta
//! also packs the small ones into larger ones in the same snapshot, so the manifests a head lists
//! stay bounded between compactions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFile, ManifestFile, ManifestWriterBuilder, Operation, TableMetadata,
};

use super::committer::{
    Attempt, Base, Staged, TurnRole, check_required, find_commit, new_snapshot_id, stage_snapshot,
};
pub use super::committer::{Committed, Committer};
use super::merge::{DEFAULT_TARGET_MANIFEST_BYTES, is_full, plan_merge, write_bins};
use super::plan::{has_live_entries, manifests_of};
use super::summary::{FileCounts, summarize};
use super::{CommitError, CommitResult};
use crate::naming::{TableName, summary};

/// What a row delta adds.
#[derive(Debug, Clone, Default)]
pub struct RowDelta {
    /// New data files.
    pub data_files: Vec<DataFile>,
    /// New position-delete files.
    pub delete_files: Vec<DataFile>,
    /// Paths of the data files the position deletes target. Each must still be live when the
    /// delta commits, else [`CommitError::DataFileRemoved`]. The `referenced_data_file` of every
    /// delete file is added automatically; list the targets of multi-file delete files here.
    pub deleted_from: BTreeSet<String>,
    /// Table properties that must hold exactly these values when the delta commits, else
    /// [`CommitError::Fenced`] (e.g. the committer epoch claimed with
    /// [`Committer::commit_properties`]).
    pub required_properties: BTreeMap<String, String>,
    /// Extra snapshot-summary properties (e.g. `unitable.changelog-offsets`).
    pub properties: BTreeMap<String, String>,
    /// A unique id of this commit; a retry with the same id never commits twice.
    pub commit_id: String,
}

impl Committer {
    /// Commits `delta` to `table` as one snapshot on the main branch.
    pub async fn commit_row_delta(
        &self,
        table: &TableName,
        delta: &RowDelta,
    ) -> CommitResult<Committed> {
        if delta.commit_id.is_empty() {
            return Err(CommitError::Invalid {
                reason: "a row delta needs a commit id".into(),
            });
        }
        for file in &delta.data_files {
            if file.content_type() != DataContentType::Data {
                return Err(CommitError::Invalid {
                    reason: format!("{} is not a data file", file.file_path()),
                });
            }
        }
        for file in &delta.delete_files {
            if file.content_type() != DataContentType::PositionDeletes {
                return Err(CommitError::Invalid {
                    reason: format!("{} is not a position-delete file", file.file_path()),
                });
            }
        }
        let mut deleted_from = delta.deleted_from.clone();
        deleted_from.extend(
            delta
                .delete_files
                .iter()
                .filter_map(DataFile::referenced_data_file),
        );
        // Deletes of rows this delta adds target files it commits itself.
        for file in &delta.data_files {
            deleted_from.remove(file.file_path());
        }
        let mut op = RowDeltaOp {
            delta,
            deleted_from,
            snapshot_id: new_snapshot_id(),
            manifests: None,
            merged: HashMap::new(),
        };
        self.run(table, &mut op).await
    }
}

struct RowDeltaOp<'a> {
    delta: &'a RowDelta,
    deleted_from: BTreeSet<String>,
    snapshot_id: i64,
    /// The manifests of the new files, written once and reused by every attempt.
    manifests: Option<Vec<ManifestFile>>,
    /// Merged manifests written by earlier attempts, by the paths of the manifests they merged.
    merged: HashMap<Vec<String>, ManifestFile>,
}

#[async_trait]
impl Attempt for RowDeltaOp<'_> {
    type Output = Committed;

    fn landed(&self, metadata: &TableMetadata) -> Option<Committed> {
        find_commit(metadata, &self.delta.commit_id)
    }

    fn turn_role(&self) -> TurnRole {
        TurnRole::Yields
    }

    async fn stage(&mut self, base: &Base<'_>) -> CommitResult<Staged<Committed>> {
        check_required(base.table, base.metadata, &self.delta.required_properties)?;
        if !self.deleted_from.is_empty() {
            let live = base
                .cache
                .live_data_paths(base.file_io, base.metadata)
                .await?;
            if let Some(gone) = self
                .deleted_from
                .iter()
                .find(|p| !live.contains(p.as_str()))
            {
                return Err(CommitError::DataFileRemoved {
                    table: base.table.clone(),
                    path: gone.clone(),
                });
            }
        }
        let new_manifests = match &self.manifests {
            Some(m) => m.clone(),
            None => {
                let written =
                    write_manifests(base.file_io, base.metadata, self.snapshot_id, self.delta)
                        .await?;
                self.manifests = Some(written.clone());
                written
            }
        };
        let delta = self.delta;
        let mut props: HashMap<String, String> = delta
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        props.insert(summary::COMMIT_ID.into(), delta.commit_id.clone());
        let carried = self.carry(base, new_manifests.len(), &mut props).await?;
        let operation = match (delta.data_files.is_empty(), delta.delete_files.is_empty()) {
            (false, true) | (true, true) => Operation::Append,
            (true, false) => Operation::Delete,
            (false, false) => Operation::Overwrite,
        };
        let summary = summarize(
            base.metadata.current_snapshot().map(|p| p.summary()),
            operation,
            FileCounts::of(delta.data_files.iter().chain(&delta.delete_files)),
            FileCounts::default(),
            props,
        );
        let (metadata, committed) = stage_snapshot(
            base,
            self.snapshot_id,
            new_manifests.into_iter().chain(carried).collect(),
            summary,
        )
        .await?;
        Ok(Staged::Commit {
            metadata: Box::new(metadata),
            output: committed,
        })
    }
}

impl RowDeltaOp<'_> {
    /// The parent's manifests the new snapshot lists: as they are, or, once its small ones
    /// and the `new` ones reach the table's merge count, with the small ones merged (see
    /// [`CommitMerge`]); what a merge did goes into `props`. Manifests are read only to merge.
    async fn carry(
        &mut self,
        base: &Base<'_>,
        new: usize,
        props: &mut HashMap<String, String>,
    ) -> CommitResult<Vec<ManifestFile>> {
        let Some(head) = base.metadata.current_snapshot() else {
            return Ok(Vec::new());
        };
        let mut listed = manifests_of(base.file_io, base.metadata, head).await?;
        listed.retain(has_live_entries);
        let merge = CommitMerge::of(base.metadata);
        // Manifests of the target size are kept whatever their number; the small ones are
        // what commits pile up (as in Iceberg's merging appends, where a bin is merged once it
        // holds the count).
        let small = listed
            .iter()
            .filter(|m| !is_full(m, merge.target_bytes))
            .count();
        if !merge.enabled || small + new < merge.min_count {
            return Ok(listed);
        }
        let plan = plan_merge(&listed, merge.target_bytes);
        if plan.bins.is_empty() {
            return Ok(listed);
        }
        let manifests = base.cache.with_entries(base.file_io, listed).await?;
        let (mut carried, entries) =
            write_bins(base, self.snapshot_id, &plan, &manifests, &mut self.merged).await?;
        carried.extend(plan.kept.iter().cloned());
        plan.summarize(entries, props);
        Ok(carried)
    }
}

/// Iceberg's table property turning merging on commit on or off (default on).
pub const MANIFEST_MERGE_ENABLED: &str = "commit.manifest-merge.enabled";
/// Iceberg's table property: manifests a snapshot may list before a commit merges them.
pub const MANIFEST_MIN_COUNT_TO_MERGE: &str = "commit.manifest.min-count-to-merge";
/// Iceberg's table property: the size merged manifests are packed to.
pub const MANIFEST_TARGET_SIZE_BYTES: &str = "commit.manifest.target-size-bytes";
/// unitable's default for [`MANIFEST_MIN_COUNT_TO_MERGE`]. Iceberg's Java library uses 100;
/// unitable commits every second, and every manifest a head lists is read by each scan plan,
/// by each commit's validation and by a committer taking over the table after a failover.
pub const DEFAULT_MIN_COUNT_TO_MERGE: usize = 16;

/// Merging on commit, as Iceberg's merging appends do: when the parent's manifests smaller than
/// `target_bytes` plus the commit's new ones number at least `min_count`, those small ones are
/// packed ([`plan_merge`]) into manifests of about that size, their live
/// entries written `EXISTING` with the snapshot ids and sequence numbers they had, in the
/// same snapshot. A head thus lists at most about `min_count` small manifests between
/// compactions, whatever the commit rate. Settings come from the table's Iceberg properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitMerge {
    /// [`MANIFEST_MERGE_ENABLED`].
    pub enabled: bool,
    /// [`MANIFEST_MIN_COUNT_TO_MERGE`] (at least 2).
    pub min_count: usize,
    /// [`MANIFEST_TARGET_SIZE_BYTES`] (at least 1).
    pub target_bytes: u64,
}

impl CommitMerge {
    /// The settings of a table. An invalid property is logged and its default used, as for
    /// the other write properties, so a typo never stops commits.
    pub fn of(metadata: &TableMetadata) -> Self {
        // The property's value (any case) if it parses and `valid` accepts it, else (logged)
        // `default`.
        fn setting<T: std::str::FromStr>(
            metadata: &TableMetadata,
            key: &str,
            default: T,
            valid: impl Fn(&T) -> bool,
        ) -> T {
            let Some(value) = metadata.properties().get(key) else {
                return default;
            };
            match value.trim().to_ascii_lowercase().parse::<T>() {
                Ok(v) if valid(&v) => v,
                _ => {
                    tracing::warn!(
                        property = key,
                        value = value.as_str(),
                        location = metadata.location(),
                        "invalid table property; using its default"
                    );
                    default
                }
            }
        }
        Self {
            enabled: setting(metadata, MANIFEST_MERGE_ENABLED, true, |_| true),
            min_count: setting(
                metadata,
                MANIFEST_MIN_COUNT_TO_MERGE,
                DEFAULT_MIN_COUNT_TO_MERGE,
                |_| true,
            )
            .max(2),
            target_bytes: setting(
                metadata,
                MANIFEST_TARGET_SIZE_BYTES,
                DEFAULT_TARGET_MANIFEST_BYTES,
                |n| *n > 0,
            ),
        }
    }
}

/// Writes one manifest of `ADDED` entries for `files` (all data or all deletes) for snapshot
/// `snapshot_id`. `sequence_number` < 0 leaves the entries' data sequence number unassigned: they
/// inherit the snapshot's from the manifest list, so a rebase needs no rewrite.
pub(crate) async fn write_added_manifest(
    file_io: &FileIO,
    metadata: &TableMetadata,
    snapshot_id: i64,
    files: &[DataFile],
    deletes: bool,
    sequence_number: i64,
) -> CommitResult<ManifestFile> {
    let schema = metadata.current_schema().clone();
    let spec = metadata.default_partition_spec().as_ref().clone();
    let path = format!(
        "{}/metadata/{}-m{}.avro",
        metadata.location(),
        uuid::Uuid::now_v7(),
        u8::from(deletes)
    );
    let output = file_io
        .new_output(&path)
        .map_err(|e| CommitError::iceberg(format!("open {path}"), e))?;
    let builder = ManifestWriterBuilder::new(output, Some(snapshot_id), schema, spec);
    let mut writer = if deletes {
        builder.build_v2_deletes()
    } else {
        builder.build_v2_data()
    };
    for file in files {
        writer
            .add_file(file.clone(), sequence_number)
            .map_err(|e| CommitError::iceberg("add a manifest entry", e))?;
    }
    writer
        .write_manifest_file()
        .await
        .map_err(|e| CommitError::iceberg(format!("write manifest {path}"), e))
}

async fn write_manifests(
    file_io: &FileIO,
    metadata: &TableMetadata,
    snapshot_id: i64,
    delta: &RowDelta,
) -> CommitResult<Vec<ManifestFile>> {
    let mut out = Vec::new();
    for (files, deletes) in [(&delta.data_files, false), (&delta.delete_files, true)] {
        if !files.is_empty() {
            out.push(
                write_added_manifest(file_io, metadata, snapshot_id, files, deletes, -1).await?,
            );
        }
    }
    Ok(out)
}
