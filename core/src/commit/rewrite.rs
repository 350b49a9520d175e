//! Rewrite files (operation `replace`): one snapshot that replaces a set of data files with new
//! ones holding the same live rows (compaction), removes the delete files that only targeted the
//! replaced files, and carries position deletes committed meanwhile over onto the new files.
//!
//! **Snapshot layout.** The parent manifests holding a removed file are merged, per content type
//! and partition spec, into one manifest of the live entries they keep (`EXISTING`, with their
//! snapshot ids and sequence numbers) and one manifest of the removed files (`DELETED`, keeping
//! their original data and file sequence numbers; it holds no live entry, so the next commit
//! drops it and deleted entries appear only in the snapshot that deleted the files). Earlier
//! `DELETED` entries are dropped. Manifests without removed files are carried over unchanged. The new data files are `ADDED` in a new
//! manifest with an explicit data sequence number; carried deletes are `ADDED` in a new delete
//! manifest and inherit the snapshot's sequence number.
//!
//! **Sequence numbers.** A new data file gets the data sequence number of the *starting*
//! snapshot (the one the rewrite read), not the new snapshot's: its rows are that snapshot's
//! rows, so a delete committed after the rewrite started (sequence number greater than the
//! starting one) must still apply to them. Equality deletes then apply by the spec's rule
//! (delete > data). Concurrent position deletes name the old paths, so they are carried over: a
//! new position-delete file per new data file, added in this snapshot, whose inherited sequence
//! number is above the starting one. Deletes that already applied at the starting snapshot have
//! sequence numbers at most the starting one: they never apply to the new files (position
//! deletes also name other paths), which is right because the rewrite dropped those rows.
//!
//! **Validation** on every attempt, against the commits that landed since the start: every
//! removed data or delete file must still be live; the starting snapshot must still be an
//! ancestor of the head; and each position delete committed since the start against a removed
//! file is carried through [`RewriteFiles::position_map`] (a row the map does not place must have
//! been deleted already at the start), or the rewrite fails with
//! [`CommitError::RewriteConflict`]. A delete is never dropped silently.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::spec::{DataContentType, DataFile, ManifestFile, Operation, TableMetadata};

use super::committer::{Attempt, Base, Committed, Staged, TurnRole, find_commit, new_snapshot_id};
use super::committer::{Committer, stage_snapshot};
use super::files::{PositionDelete, write_position_deletes};
use super::manifests::{Carry, ManifestGroup, write_carried_manifest};
use super::plan::{DeleteIndex, TrackedFile, has_live_entries, live_files, read_position_deletes};
use super::read::ancestors_between;
use super::row_delta::write_added_manifest;
use super::summary::{FileCounts, summarize};
use super::{CommitError, CommitResult};
use crate::naming::{TableName, summary};

/// Where the rows of replaced data files went: (old path, old position) -> (new path, new
/// position). A position with no entry is a row the rewrite dropped because it was already
/// deleted in the starting snapshot.
///
/// Stored as runs: consecutive old positions that went to consecutive positions of one new file
/// are one entry, so a rewrite that copies rows in order costs one entry per stretch of live
/// rows (deleted rows and file boundaries cut stretches), not one per row.
#[derive(Debug, Clone, Default)]
pub struct PositionMap {
    map: HashMap<String, Vec<Run>>,
}

/// `len` rows from `old_start` went to `new_start..` of `new_path`.
#[derive(Debug, Clone)]
struct Run {
    old_start: i64,
    len: i64,
    new_path: Arc<str>,
    new_start: i64,
}

impl PositionMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that row `old_pos` of `old_path` is row `new_pos` of `new_path` (each old row at
    /// most once). Cheapest when each old file's positions come in ascending order (as a
    /// rewrite reads them); any order is correct.
    pub fn insert(&mut self, old_path: &str, old_pos: i64, new_path: Arc<str>, new_pos: i64) {
        let runs = match self.map.get_mut(old_path) {
            Some(runs) => runs,
            None => self.map.entry(old_path.to_string()).or_default(),
        };
        if let Some(last) = runs.last_mut()
            && last.old_start + last.len == old_pos
            && last.new_start + last.len == new_pos
            && last.new_path == new_path
        {
            last.len += 1;
            return;
        }
        let run = Run {
            old_start: old_pos,
            len: 1,
            new_path,
            new_start: new_pos,
        };
        match runs.last() {
            Some(last) if last.old_start > old_pos => {
                // Out of order: keep the runs sorted.
                let at = runs.partition_point(|r| r.old_start < old_pos);
                runs.insert(at, run);
            }
            _ => runs.push(run),
        }
    }

    /// Where row `old_pos` of `old_path` went.
    pub fn get(&self, old_path: &str, old_pos: i64) -> Option<(&str, i64)> {
        let runs = self.map.get(old_path)?;
        let at = runs.partition_point(|r| r.old_start <= old_pos);
        let run = runs.get(at.checked_sub(1)?)?;
        (old_pos < run.old_start + run.len).then(|| {
            (
                run.new_path.as_ref(),
                run.new_start + old_pos - run.old_start,
            )
        })
    }

    /// Entries held (runs); a measure of the map's memory.
    pub fn runs(&self) -> usize {
        self.map.values().map(Vec::len).sum()
    }
}

/// A rewrite of data files.
#[derive(Debug, Clone, Default)]
pub struct RewriteFiles {
    /// Data files replaced (as planned from the starting snapshot).
    pub removed_data_files: Vec<DataFile>,
    /// The new data files holding their live rows.
    pub added_data_files: Vec<DataFile>,
    /// Delete files to remove; each must target only removed data files. Delete files that only
    /// target removed data files are found and removed anyway.
    pub removed_delete_files: Vec<DataFile>,
    /// The snapshot the rewrite read (`None` only for a table without snapshots).
    pub starting_snapshot_id: Option<i64>,
    /// Where replaced rows went; without it, any position delete committed since the start
    /// against a removed file is a conflict.
    pub position_map: Option<Arc<PositionMap>>,
    /// Extra snapshot-summary properties. `unitable.changelog-offsets` is copied from the parent
    /// snapshot unless set here.
    pub properties: BTreeMap<String, String>,
    /// A unique id of this commit; a retry with the same id never commits twice.
    pub commit_id: String,
}

impl Committer {
    /// Commits `rewrite` to `table` as one `replace` snapshot on the main branch.
    pub async fn commit_rewrite(
        &self,
        table: &TableName,
        rewrite: &RewriteFiles,
    ) -> CommitResult<Committed> {
        let invalid = |reason: String| Err(CommitError::Invalid { reason });
        if rewrite.commit_id.is_empty() {
            return invalid("a rewrite needs a commit id".into());
        }
        if rewrite.removed_data_files.is_empty() {
            return invalid("a rewrite must replace at least one data file".into());
        }
        let Some(starting_snapshot_id) = rewrite.starting_snapshot_id else {
            return invalid("a rewrite of existing files needs its starting snapshot".into());
        };
        for f in rewrite
            .removed_data_files
            .iter()
            .chain(&rewrite.added_data_files)
        {
            if f.content_type() != DataContentType::Data {
                return invalid(format!("{} is not a data file", f.file_path()));
            }
        }
        for f in &rewrite.removed_delete_files {
            if f.content_type() != DataContentType::PositionDeletes {
                return invalid(format!("{} is not a position-delete file", f.file_path()));
            }
        }
        let mut op = RewriteOp {
            rewrite,
            starting_snapshot_id,
            snapshot_id: new_snapshot_id(),
            removed: rewrite
                .removed_data_files
                .iter()
                .map(|f| f.file_path().to_string())
                .collect(),
            start: None,
            added_manifest: None,
        };
        self.run(table, &mut op).await
    }
}

/// What the starting snapshot says about the removed files (immutable, read once).
struct StartState {
    sequence_number: i64,
    /// Paths of the delete files live at the start.
    delete_files: HashSet<String>,
    /// Positions of removed files already deleted at the start.
    deleted: HashMap<String, BTreeSet<i64>>,
}

struct RewriteOp<'a> {
    rewrite: &'a RewriteFiles,
    starting_snapshot_id: i64,
    snapshot_id: i64,
    removed: HashSet<String>,
    start: Option<StartState>,
    /// The manifest of the new data files (independent of the base, written once).
    added_manifest: Option<ManifestFile>,
}

impl RewriteOp<'_> {
    fn conflict(&self, base: &Base<'_>, reason: String) -> CommitError {
        CommitError::RewriteConflict {
            table: base.table.clone(),
            reason,
        }
    }

    async fn start_state(&mut self, base: &Base<'_>) -> CommitResult<&StartState> {
        if self.start.is_none() {
            let Some(start) = base.metadata.snapshot_by_id(self.starting_snapshot_id) else {
                return Err(self.conflict(
                    base,
                    format!(
                        "starting snapshot {} was expired",
                        self.starting_snapshot_id
                    ),
                ));
            };
            let sequence_number = start.sequence_number();
            let live =
                live_files(base.file_io, base.metadata, Some(self.starting_snapshot_id)).await?;
            let index = DeleteIndex::new(base.metadata, &live);
            let mut applying: Vec<DataFile> = Vec::new();
            let mut seen = HashSet::new();
            for f in live
                .iter()
                .filter(|f| self.removed.contains(f.data_file.file_path()))
            {
                for d in index.applying_to(f) {
                    if d.data_file.content_type() == DataContentType::PositionDeletes
                        && seen.insert(d.data_file.file_path().to_string())
                    {
                        applying.push(d.data_file.clone());
                    }
                }
            }
            let deleted = read_position_deletes(base.file_io, &applying).await?;
            self.start = Some(StartState {
                sequence_number,
                delete_files: live
                    .iter()
                    .filter(|f| f.data_file.content_type() != DataContentType::Data)
                    .map(|f| f.data_file.file_path().to_string())
                    .collect(),
                deleted,
            });
        }
        self.start.as_ref().ok_or_else(|| CommitError::Invalid {
            reason: "rewrite start state missing".into(),
        })
    }
}

#[async_trait]
impl Attempt for RewriteOp<'_> {
    type Output = Committed;

    fn landed(&self, metadata: &TableMetadata) -> Option<Committed> {
        find_commit(metadata, &self.rewrite.commit_id)
    }

    fn turn_role(&self) -> TurnRole {
        TurnRole::Claims
    }

    async fn stage(&mut self, base: &Base<'_>) -> CommitResult<Staged<Committed>> {
        let metadata = base.metadata;
        let current = metadata
            .current_snapshot_id()
            .ok_or_else(|| self.conflict(base, "the table has no snapshot".into()))?;
        if ancestors_between(metadata, current, Some(self.starting_snapshot_id)).is_none() {
            return Err(self.conflict(
                base,
                format!(
                    "starting snapshot {} is no longer an ancestor of the head",
                    self.starting_snapshot_id
                ),
            ));
        }
        self.start_state(base).await?;

        // The head's manifests and entries.
        let head = metadata
            .current_snapshot()
            .ok_or_else(|| self.conflict(base, "the table has no snapshot".into()))?;
        let manifests = base.cache.head(base.file_io, metadata).await?;
        let live: Vec<TrackedFile> = manifests
            .iter()
            .flat_map(|(_, e)| e.iter().filter(|f| f.is_live()).cloned())
            .collect();
        let live_paths: HashSet<&str> = live.iter().map(|f| f.data_file.file_path()).collect();

        // (a) Everything removed must still be live.
        for f in self
            .rewrite
            .removed_data_files
            .iter()
            .chain(&self.rewrite.removed_delete_files)
        {
            if !live_paths.contains(f.file_path()) {
                return Err(self.conflict(
                    base,
                    format!(
                        "{} is no longer live (removed by a concurrent commit)",
                        f.file_path()
                    ),
                ));
            }
        }

        // Delete files touching removed data files, with what they hold.
        let index = DeleteIndex::new(metadata, &live);
        let mut touching: BTreeMap<String, DataFile> = BTreeMap::new();
        for f in live
            .iter()
            .filter(|f| self.removed.contains(f.data_file.file_path()))
        {
            for d in index.applying_to(f) {
                if d.data_file.content_type() == DataContentType::PositionDeletes {
                    touching.insert(d.data_file.file_path().to_string(), d.data_file.clone());
                }
            }
        }
        for d in &self.rewrite.removed_delete_files {
            touching.insert(d.file_path().to_string(), d.clone());
        }
        let touching: Vec<DataFile> = touching.into_values().collect();
        let mut to_remove: HashSet<String> = HashSet::new();
        let mut carried: BTreeMap<String, Vec<PositionDelete>> = BTreeMap::new();
        for d in &touching {
            let held = base.cache.deletes(base.file_io, d).await?;
            let only_removed = held.keys().all(|p| self.removed.contains(p));
            let caller_removes = self
                .rewrite
                .removed_delete_files
                .iter()
                .any(|r| r.file_path() == d.file_path());
            if caller_removes && !only_removed {
                return Err(CommitError::Invalid {
                    reason: format!(
                        "delete file {} also targets data files the rewrite keeps",
                        d.file_path()
                    ),
                });
            }
            if only_removed {
                to_remove.insert(d.file_path().to_string());
            }
            let start = self.start.as_ref().ok_or_else(|| CommitError::Invalid {
                reason: "rewrite start state missing".into(),
            })?;
            if start.delete_files.contains(d.file_path()) {
                continue; // Applied by the rewrite itself.
            }
            // (b) Committed since the start: carry every delete of a removed file over.
            for (path, positions) in held.iter().filter(|(p, _)| self.removed.contains(*p)) {
                let Some(map) = &self.rewrite.position_map else {
                    return Err(self.conflict(
                        base,
                        format!(
                            "{} deletes rows of replaced file {path} and the rewrite has no position map",
                            d.file_path()
                        ),
                    ));
                };
                for &pos in positions {
                    match map.get(path, pos) {
                        Some((new_path, new_pos)) => {
                            if !self
                                .rewrite
                                .added_data_files
                                .iter()
                                .any(|f| f.file_path() == new_path)
                            {
                                return Err(CommitError::Invalid {
                                    reason: format!(
                                        "position map sends {path}@{pos} to {new_path}, which the rewrite does not add"
                                    ),
                                });
                            }
                            carried
                                .entry(new_path.to_string())
                                .or_default()
                                .push(PositionDelete {
                                    file_path: new_path.to_string(),
                                    pos: new_pos,
                                });
                        }
                        None if start.deleted.get(path).is_some_and(|s| s.contains(&pos)) => {}
                        None => {
                            return Err(self.conflict(
                                base,
                                format!(
                                    "{} deletes {path}@{pos}, a row live at the start that the position map does not place",
                                    d.file_path()
                                ),
                            ));
                        }
                    }
                }
            }
        }
        let removed_deletes: Vec<&DataFile> = touching
            .iter()
            .filter(|d| to_remove.contains(d.file_path()))
            .collect();

        // Write the snapshot's manifests.
        let start_seq = self.start.as_ref().map_or(0, |s| s.sequence_number);
        let added_manifest = match &self.added_manifest {
            Some(m) => Some(m.clone()),
            None if self.rewrite.added_data_files.is_empty() => None,
            None => {
                let m = write_added_manifest(
                    base.file_io,
                    metadata,
                    self.snapshot_id,
                    &self.rewrite.added_data_files,
                    false,
                    start_seq,
                )
                .await?;
                self.added_manifest = Some(m.clone());
                Some(m)
            }
        };
        let mut carried_files = Vec::new();
        for (new_path, deletes) in carried {
            let location = format!(
                "{}/data/{}-carried-deletes.parquet",
                metadata.location(),
                uuid::Uuid::now_v7()
            );
            let partition = self
                .rewrite
                .added_data_files
                .iter()
                .find(|f| f.file_path() == new_path)
                .map(|f| f.partition().clone())
                .unwrap_or_else(iceberg::spec::Struct::empty);
            carried_files.push(
                write_position_deletes(
                    base.file_io,
                    &location,
                    deletes,
                    partition,
                    metadata.default_partition_spec_id(),
                )
                .await?,
            );
        }
        let mut new_manifests: Vec<ManifestFile> = added_manifest.into_iter().collect();
        if !carried_files.is_empty() {
            new_manifests.push(
                write_added_manifest(
                    base.file_io,
                    metadata,
                    self.snapshot_id,
                    &carried_files,
                    true,
                    -1,
                )
                .await?,
            );
        }
        let removing: HashSet<String> = self.removed.union(&to_remove).cloned().collect();
        // The manifests holding a removed file, per content type and partition spec, become
        // one manifest of the entries they keep (`EXISTING`) and one of the entries this
        // snapshot removes (`DELETED`, not carried into later snapshots); the other manifests
        // are carried over unchanged.
        let mut touched: BTreeMap<ManifestGroup, Vec<Arc<Vec<TrackedFile>>>> = BTreeMap::new();
        for (manifest, entries) in manifests {
            let affected = entries
                .iter()
                .any(|f| f.is_live() && removing.contains(f.data_file.file_path()));
            if affected {
                touched
                    .entry(ManifestGroup::of(&manifest))
                    .or_default()
                    .push(entries);
            } else if has_live_entries(&manifest) {
                new_manifests.push(manifest);
            }
        }
        for (group, manifests) in touched {
            let live = || {
                manifests
                    .iter()
                    .flat_map(|m| m.iter())
                    .filter(|f| f.is_live())
            };
            let is_removed = |f: &&TrackedFile| removing.contains(f.data_file.file_path());
            if live().any(|f| !is_removed(&f)) {
                let kept = live()
                    .filter(|f| !is_removed(f))
                    .map(|f| (f, Carry::Existing));
                new_manifests.push(
                    write_carried_manifest(
                        base.file_io,
                        metadata,
                        self.snapshot_id,
                        group,
                        kept,
                        "k",
                    )
                    .await?,
                );
            }
            let gone = live().filter(is_removed).map(|f| (f, Carry::Deleted));
            new_manifests.push(
                write_carried_manifest(base.file_io, metadata, self.snapshot_id, group, gone, "d")
                    .await?,
            );
        }

        let mut props: HashMap<String, String> = self
            .rewrite
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        props.insert(summary::COMMIT_ID.into(), self.rewrite.commit_id.clone());
        // The snapshot covers what the head covered: its offsets (and their Kafka positions).
        for key in [summary::CHANGELOG_OFFSETS, summary::CHANGELOG_POSITIONS] {
            if let Some(value) = head.summary().additional_properties.get(key) {
                props.entry(key.into()).or_insert_with(|| value.clone());
            }
        }
        let summary = summarize(
            Some(head.summary()),
            Operation::Replace,
            FileCounts::of(self.rewrite.added_data_files.iter().chain(&carried_files)),
            FileCounts::of(
                self.rewrite
                    .removed_data_files
                    .iter()
                    .chain(removed_deletes.iter().copied()),
            ),
            props,
        );
        let (metadata, committed) =
            stage_snapshot(base, self.snapshot_id, new_manifests, summary).await?;
        Ok(Staged::Commit {
            metadata: Box::new(metadata),
            output: committed,
        })
    }
}
