//! Merge manifests (operation `replace`, no data change): one snapshot whose manifest list holds
//! the same live files as its parent in fewer manifests.
//!
//! Every row delta adds a manifest or two, so a table committing every second lists thousands of
//! small manifests after an hour, and every scan plan and every commit's validation reads them
//! all. The merge regroups the head's live entries: per content type (data or deletes) and
//! partition spec, manifests smaller than the target size are packed, oldest first, into new
//! manifests of about the target size. Every entry is written `EXISTING` with the snapshot id
//! that added it and both its sequence numbers, so which deletes apply to which files, time
//! travel and the writer's index are unchanged; `DELETED` entries of earlier snapshots are
//! dropped, and manifests holding only such entries leave the list.
//!
//! The merge validates nothing: it commits exactly the live set of the head it read, so it
//! conflicts with no commit. A lost race rebases on the new head; bins whose input manifests
//! are unchanged reuse the manifest written by the earlier attempt.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::spec::{ManifestFile, Operation, TableMetadata};

use super::committer::{Attempt, Base, Committed, Staged, TurnRole, find_commit, new_snapshot_id};
use super::committer::{Committer, stage_snapshot};
use super::manifests::{Carry, ManifestGroup, write_carried_manifest};
use super::plan::{TrackedFile, has_live_entries};
use super::summary::{FileCounts, summarize};
use super::{CommitError, CommitResult};
use crate::naming::{TableName, summary};

/// Default size the merge packs manifests to (as Iceberg's `commit.manifest.target-size-bytes`).
pub const DEFAULT_TARGET_MANIFEST_BYTES: u64 = 8 * 1024 * 1024;

/// A manifest merge.
#[derive(Debug, Clone)]
pub struct MergeManifests {
    /// Merge only when the head lists more manifests than this (0: whenever a merge would list
    /// fewer manifests).
    pub max_manifests: usize,
    /// Manifests at least this large (bytes) are kept as they are; smaller ones are packed into
    /// manifests of about this size.
    pub target_manifest_bytes: u64,
    /// Extra snapshot-summary properties. `unitable.changelog-offsets` is copied from the parent.
    pub properties: BTreeMap<String, String>,
    /// A unique id of this commit; a retry with the same id never commits twice.
    pub commit_id: String,
}

impl Default for MergeManifests {
    fn default() -> Self {
        Self {
            max_manifests: 0,
            target_manifest_bytes: DEFAULT_TARGET_MANIFEST_BYTES,
            properties: BTreeMap::new(),
            commit_id: String::new(),
        }
    }
}

/// What a merge committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedManifests {
    /// The `replace` snapshot.
    pub committed: Committed,
    /// Manifests the parent listed.
    pub manifests_before: usize,
    /// Manifests the new snapshot lists.
    pub manifests_after: usize,
}

/// Summary keys of a merge (the names Iceberg's Java `RewriteManifests` uses).
const MANIFESTS_CREATED: &str = "manifests-created";
const MANIFESTS_REPLACED: &str = "manifests-replaced";
const MANIFESTS_KEPT: &str = "manifests-kept";
const ENTRIES_PROCESSED: &str = "entries-processed";

impl Committer {
    /// Merges the current snapshot's manifests of `table` (see the module docs). `Ok(None)`: the
    /// head lists no more than `max_manifests` manifests, or merging would not reduce them.
    pub async fn merge_manifests(
        &self,
        table: &TableName,
        merge: &MergeManifests,
    ) -> CommitResult<Option<MergedManifests>> {
        if merge.commit_id.is_empty() {
            return Err(CommitError::Invalid {
                reason: "a manifest merge needs a commit id".into(),
            });
        }
        let mut op = MergeOp {
            merge,
            snapshot_id: new_snapshot_id(),
            written: HashMap::new(),
        };
        self.run(table, &mut op).await
    }
}

struct MergeOp<'a> {
    merge: &'a MergeManifests,
    snapshot_id: i64,
    /// Manifests written by earlier attempts, by the paths of the manifests they merged.
    written: HashMap<Vec<String>, ManifestFile>,
}

/// The new manifest list of a merge, before writing: manifests kept as they are and bins of
/// manifests to merge into one.
#[derive(Debug, Default)]
pub(crate) struct MergePlan {
    pub(crate) kept: Vec<ManifestFile>,
    pub(crate) bins: Vec<(ManifestGroup, Vec<usize>)>,
    /// Manifests dropped because they hold no live entry.
    pub(crate) dropped: usize,
}

impl MergePlan {
    pub(crate) fn manifests_after(&self) -> usize {
        self.kept.len() + self.bins.len()
    }

    /// Records what the merge did in a snapshot summary (the keys Iceberg's Java
    /// `RewriteManifests` and merging appends use).
    pub(crate) fn summarize(&self, entries_processed: usize, props: &mut HashMap<String, String>) {
        let replaced: usize = self.bins.iter().map(|(_, m)| m.len()).sum::<usize>() + self.dropped;
        props.insert(MANIFESTS_CREATED.into(), self.bins.len().to_string());
        props.insert(MANIFESTS_REPLACED.into(), replaced.to_string());
        props.insert(MANIFESTS_KEPT.into(), self.kept.len().to_string());
        props.insert(ENTRIES_PROCESSED.into(), entries_processed.to_string());
    }
}

/// Writes each bin of `plan` (over `manifests`, a snapshot's list with their entries) as one
/// manifest of snapshot `snapshot_id` holding the bin's live entries as `EXISTING`. A bin whose
/// input manifests are those of a bin in `reuse` (written by an earlier attempt of the same
/// commit) takes that manifest instead; afterwards `reuse` holds exactly this attempt's bins.
/// Returns the new manifests and how many entries they carry.
pub(crate) async fn write_bins(
    base: &Base<'_>,
    snapshot_id: i64,
    plan: &MergePlan,
    manifests: &[(ManifestFile, Arc<Vec<TrackedFile>>)],
    reuse: &mut HashMap<Vec<String>, ManifestFile>,
) -> CommitResult<(Vec<ManifestFile>, usize)> {
    let mut out = Vec::with_capacity(plan.bins.len());
    let mut written = HashMap::new();
    let mut entries = 0usize;
    for (group, members) in &plan.bins {
        let key: Vec<String> = members
            .iter()
            .map(|&i| manifests[i].0.manifest_path.clone())
            .collect();
        let manifest = match reuse.remove(&key) {
            Some(m) => m,
            None => {
                let live = members
                    .iter()
                    .flat_map(|&i| manifests[i].1.iter())
                    .filter(|f| f.is_live())
                    .map(|f: &TrackedFile| (f, Carry::Existing));
                write_carried_manifest(base.file_io, base.metadata, snapshot_id, *group, live, "g")
                    .await?
            }
        };
        entries += members
            .iter()
            .map(|&i| manifests[i].1.iter().filter(|f| f.is_live()).count())
            .sum::<usize>();
        written.insert(key, manifest.clone());
        out.push(manifest);
    }
    // What an earlier attempt wrote and this one does not use stays unreferenced (orphan
    // removal takes it).
    *reuse = written;
    Ok((out, entries))
}

/// Whether a merge keeps `manifest` as it is: at least `target` bytes and holding no `DELETED`
/// entry.
pub(crate) fn is_full(manifest: &ManifestFile, target: u64) -> bool {
    u64::try_from(manifest.manifest_length).unwrap_or(0) >= target
        && manifest.deleted_files_count == Some(0)
}

/// Plans the merge of `manifests` (a snapshot's list, newest first as unitable writes it):
/// per group, manifests smaller than `target` are packed oldest first into bins of at most
/// `target` bytes (a bin always takes at least one manifest); a bin of one manifest holding no
/// `DELETED` entry is kept as it is.
pub(crate) fn plan_merge(manifests: &[ManifestFile], target: u64) -> MergePlan {
    let mut plan = MergePlan::default();
    let mut open: BTreeMap<ManifestGroup, (u64, Vec<usize>)> = BTreeMap::new();
    let mut bins: Vec<(ManifestGroup, Vec<usize>)> = Vec::new();
    for (i, m) in manifests.iter().enumerate().rev() {
        if !has_live_entries(m) {
            plan.dropped += 1;
            continue;
        }
        let length = u64::try_from(m.manifest_length).unwrap_or(0);
        if is_full(m, target) {
            plan.kept.push(m.clone());
            continue;
        }
        let group = ManifestGroup::of(m);
        let bin = open.entry(group).or_default();
        if !bin.1.is_empty() && bin.0 + length > target {
            bins.push((group, std::mem::take(&mut bin.1)));
            bin.0 = 0;
        }
        bin.0 += length;
        bin.1.push(i);
    }
    bins.extend(
        open.into_iter()
            .map(|(group, (_, members))| (group, members)),
    );
    for (group, members) in bins {
        match members.as_slice() {
            [] => {}
            [only] if manifests[*only].deleted_files_count == Some(0) => {
                plan.kept.push(manifests[*only].clone());
            }
            _ => plan.bins.push((group, members)),
        }
    }
    plan
}

#[async_trait]
impl Attempt for MergeOp<'_> {
    type Output = Option<MergedManifests>;

    fn landed(&self, metadata: &TableMetadata) -> Option<Self::Output> {
        // A merge found landed reports no counts (they belong to the attempt that committed).
        find_commit(metadata, &self.merge.commit_id).map(|committed| {
            Some(MergedManifests {
                committed,
                manifests_before: 0,
                manifests_after: 0,
            })
        })
    }

    fn turn_role(&self) -> TurnRole {
        // Slower than a row delta (it writes manifests), like a rewrite.
        TurnRole::Claims
    }

    async fn stage(&mut self, base: &Base<'_>) -> CommitResult<Staged<Self::Output>> {
        let metadata = base.metadata;
        let Some(head) = metadata.current_snapshot() else {
            return Ok(Staged::Done(None));
        };
        let manifests = base.cache.head(base.file_io, metadata).await?;
        let before = manifests.len();
        if before <= self.merge.max_manifests {
            return Ok(Staged::Done(None));
        }
        let list: Vec<ManifestFile> = manifests.iter().map(|(m, _)| m.clone()).collect();
        let plan = plan_merge(&list, self.merge.target_manifest_bytes.max(1));
        if plan.bins.is_empty() && plan.dropped == 0 {
            return Ok(Staged::Done(None));
        }
        let after = plan.manifests_after();
        let (mut new_manifests, entries_processed) =
            write_bins(base, self.snapshot_id, &plan, &manifests, &mut self.written).await?;
        new_manifests.extend(plan.kept.iter().cloned());

        let mut props: HashMap<String, String> = self
            .merge
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        props.insert(summary::COMMIT_ID.into(), self.merge.commit_id.clone());
        plan.summarize(entries_processed, &mut props);
        // The snapshot covers what the head covered: its offsets (and their Kafka positions).
        for key in [summary::CHANGELOG_OFFSETS, summary::CHANGELOG_POSITIONS] {
            if let Some(value) = head.summary().additional_properties.get(key) {
                props.entry(key.into()).or_insert_with(|| value.clone());
            }
        }
        let summary = summarize(
            Some(head.summary()),
            Operation::Replace,
            FileCounts::default(),
            FileCounts::default(),
            props,
        );
        let (metadata, committed) =
            stage_snapshot(base, self.snapshot_id, new_manifests, summary).await?;
        Ok(Staged::Commit {
            metadata: Box::new(metadata),
            output: Some(MergedManifests {
                committed,
                manifests_before: before,
                manifests_after: after,
            }),
        })
    }
}
